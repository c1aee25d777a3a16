"""Faults an operator meets: a stub killed by the kernel, SIGTERM during a rolling update.

Each test gets its own `s2i serve` (the fault ends it), on the Whisper-path repository.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from s2i import names
from s2i.client import Client, ClientError
from s2i.client.transport import NO_RETRY
from tests.reliability.conftest import good_translation, start_serve, tone

S2I = [sys.executable, "-m", "s2i.cli"]


@pytest.fixture()
def fresh_serve(small_repository, tmp_path):
    served = start_serve(small_repository, tmp_path / "server.log", "--exit-timeout-s", "60")
    yield served
    served.stop()


def health(url: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([*S2I, "health", "--url", url, *flags], capture_output=True, text=True, timeout=120)


def test_deep_health_fails_and_requests_are_unavailable_when_a_stage_stub_is_killed(fresh_serve):
    before = health(fresh_serve.grpc_url, "--deep")
    assert before.returncode == 0, before.stdout + before.stderr
    assert {line.split(":")[0] for line in before.stdout.splitlines()} == {names.PREPROCESS, names.WHISPER}
    good_translation(fresh_serve.grpc_url)

    # The encoder is a BLS stage on every target (the decoder runs inside the loop on python-onnxruntime).
    (stub,) = fresh_serve.stubs_of(names.WHISPER_ENCODER)
    stub.send_signal(signal.SIGKILL)
    # Triton does not reap (or restart) it: it stays a zombie.
    deadline = time.monotonic() + 30
    while stub.is_running() and stub.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not stub.is_running() or stub.status() == psutil.STATUS_ZOMBIE

    # Triton itself still says ready: the reason the deep check exists.
    shallow = health(fresh_serve.grpc_url)
    assert shallow.returncode == 0, shallow.stdout
    after = health(fresh_serve.grpc_url, "--deep")
    assert after.returncode == 1, after.stdout
    assert f"{names.WHISPER}: UNHEALTHY" in after.stdout
    assert f"{names.PREPROCESS}: ok" in after.stdout
    # A request through the dead stage is UNAVAILABLE (retryable elsewhere), not INTERNAL.
    with Client(fresh_serve.grpc_url, timeout_s=60, retry=NO_RETRY) as client, pytest.raises(ClientError) as failed:
        client.translate(tone(), 16_000, max_new_tokens=3)
    assert failed.value.status == "UNAVAILABLE", failed.value
    assert "is not healthy" in str(failed.value)


def test_sigterm_answers_every_in_flight_request_with_its_result_or_unavailable_when_under_load(fresh_serve):
    expected = good_translation(fresh_serve.grpc_url)
    tritonserver = fresh_serve.tritonserver()
    results: list[object] = []
    started = threading.Barrier(7)

    def one_request(_):
        with Client(fresh_serve.grpc_url, timeout_s=300, retry=NO_RETRY) as client:
            started.wait(timeout=60)
            try:
                return client.translate(tone(), 16_000, max_new_tokens=60).token_ids
            except ClientError as e:
                return e

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(one_request, index) for index in range(6)]
        started.wait(timeout=60)
        # Let the six requests reach the server (the stubs' CPU time grows once they run).
        stubs = fresh_serve.stubs()
        cpu = sum(stub.cpu_times().user for stub in stubs)
        deadline = time.monotonic() + 60
        while sum(stub.cpu_times().user for stub in stubs) - cpu < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        fresh_serve.process.send_signal(signal.SIGTERM)
        results = [future.result(timeout=300) for future in futures]
    assert fresh_serve.process.wait(timeout=120) == 0
    assert not tritonserver.is_running() or tritonserver.status() == psutil.STATUS_ZOMBIE
    # Every in-flight request was answered: with the tokens an undisturbed server gives, or,
    # where the request still needed a BLS call after SIGTERM (Triton 2.51 refuses new
    # inferences, BLS ones included, once it is exiting: "Server not ready"), with UNAVAILABLE,
    # which clients retry on another replica. Never INTERNAL, never a dropped connection.
    answered = [result for result in results if not isinstance(result, Exception)]
    refused = [result for result in results if isinstance(result, Exception)]
    assert all(error.status == "UNAVAILABLE" and "Server not ready" in str(error) for error in refused), refused
    assert all(ids[:3] == expected[:3] and (len(ids) == 60 or ids[-1] == 50257) for ids in answered)
    print(f"\nSIGTERM under load: {len(answered)} of 6 in-flight requests finished, {len(refused)} UNAVAILABLE")
