"""Faults an operator meets: a stub killed by the kernel, SIGTERM during a rolling update.

Each test gets its own `s2i serve` (the fault ends it), on the Whisper-path repository.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from s2i import names
from s2i.client import Client, ClientError, ServerUnavailableError
from s2i.client.transport import NO_RETRY
from tests.reliability.conftest import good_translation, record_figures, start_serve, tone

S2I = [sys.executable, "-m", "s2i.cli"]
EXIT_TIMEOUT_S = 60
# Concurrent 60-token translations sent before the SIGTERM.
IN_FLIGHT = 8


@pytest.fixture()
def fresh_serve(small_repository, tmp_path):
    served = start_serve(small_repository, tmp_path / "server.log", "--exit-timeout-s", str(EXIT_TIMEOUT_S))
    yield served
    served.stop()


def segments_of_server(served) -> list[str]:
    """The /dev/shm entries of the Python backend of the server that `s2i serve` started."""
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"s2i{served.process.pid}-")]


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
    # The dead stub's shared memory does not outlive the server (its prefix starts `s2i<serve pid>-`).
    assert segments_of_server(fresh_serve), "the server has no Python-backend segments to check"
    fresh_serve.stop()
    left = segments_of_server(fresh_serve)
    assert left == [], left
    record_figures(
        "fault: kill -9 of the whisper_encoder stub",
        {
            "tritonserver": "keeps the stub a zombie, no restart; /v2/health/ready stays 200",
            "s2i health": "exit 0 (shallow)",
            "s2i health --deep": f"exit {after.returncode}: {' / '.join(after.stdout.strip().splitlines()[:2])}",
            "client sees": f"{failed.value.status}: {str(failed.value)[:120]}",
            "dev_shm_entries_left_after_stop": len(left),
        },
    )


def test_sigterm_answers_every_in_flight_request_with_its_result_or_unavailable_when_under_load(fresh_serve):
    expected = good_translation(fresh_serve.grpc_url)
    tritonserver = fresh_serve.tritonserver()
    started = threading.Barrier(IN_FLIGHT + 1)

    def one_request(_):
        with Client(fresh_serve.grpc_url, timeout_s=300, retry=NO_RETRY) as client:
            started.wait(timeout=60)
            result = translate_or_error(client)
            return result, time.monotonic()

    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        futures = [pool.submit(one_request, index) for index in range(IN_FLIGHT)]
        started.wait(timeout=60)
        # Signal while the requests run: once the stubs' CPU time grows, or the first one is answered.
        stubs = fresh_serve.stubs()
        cpu = sum(stub.cpu_times().user for stub in stubs)
        deadline = time.monotonic() + 60
        while (
            sum(stub.cpu_times().user for stub in stubs) - cpu < 0.2
            and not any(future.done() for future in futures)
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        signalled = time.monotonic()
        fresh_serve.process.send_signal(signal.SIGTERM)
        # A request that arrives once Triton drains (it then reports not ready): answered or UNAVAILABLE too.
        draining = wait_until_not_ready(fresh_serve.grpc_url, timeout_s=60)
        with Client(fresh_serve.grpc_url, timeout_s=300, retry=NO_RETRY) as late_client:
            late = translate_or_error(late_client)
        outcomes = [future.result(timeout=300) for future in futures]
    results = [result for result, _ in outcomes]
    # Requests answered after the signal were in flight when it came; without one the test proves nothing.
    in_flight_at_signal = sum(answered_at > signalled for _, answered_at in outcomes)
    assert in_flight_at_signal > 0, "every request was answered before SIGTERM"
    assert fresh_serve.process.wait(timeout=300) == 0
    exited_after_s = time.monotonic() - signalled
    assert not tritonserver.is_running() or tritonserver.status() == psutil.STATUS_ZOMBIE
    # The grace period: `--exit-timeout-s` (60 here) for Triton, plus the 10 s `s2i serve` gives it before
    # it kills the group; generous slack for a loaded machine, not a speed threshold.
    assert exited_after_s < EXIT_TIMEOUT_S + 10 + 60, exited_after_s
    # Every in-flight request was answered: with the tokens an undisturbed server gives, or,
    # where the request still needed a BLS call after SIGTERM (Triton 2.51 refuses new
    # inferences, BLS ones included, once it is exiting: "Server not ready"), with UNAVAILABLE,
    # which clients retry on another replica. Never INTERNAL, never a dropped connection or a hang.
    answered = [result for result in results if not isinstance(result, Exception)]
    refused = [result for result in results if isinstance(result, Exception)]
    assert all(error.status == "UNAVAILABLE" and "Server not ready" in str(error) for error in refused), refused
    assert all(ids[:3] == expected[:3] and (len(ids) == 60 or ids[-1] == 50257) for ids in answered)
    assert draining, "the server still said ready 60 s after SIGTERM"
    if isinstance(late, ClientError):
        # UNAVAILABLE, or NOT_FOUND "has no available versions" once Triton has unloaded its models
        # while its frontend still answers: both retried on another replica.
        assert isinstance(late, ServerUnavailableError), late
    else:
        assert late[:3] == expected[:3]
    record_figures(
        "fault: SIGTERM to `s2i serve` under load",
        {
            "requests": len(results),
            "in_flight_at_sigterm": in_flight_at_signal,
            "finished_with_correct_tokens": len(answered),
            "unavailable": len(refused),
            "other_errors": 0,
            "late_request": f"{late.status}: {late}" if isinstance(late, ClientError) else "answered",
            "late_request_after_not_ready": draining,
            "exit_timeout_s": EXIT_TIMEOUT_S,
            "exited_after_s": round(exited_after_s, 1),
            "exit_code": 0,
        },
    )
    print(
        f"\nSIGTERM under load: {in_flight_at_signal} of {IN_FLIGHT} requests in flight; {len(answered)} finished, "
        f"{len(refused)} UNAVAILABLE; "
        f"late request: {late if isinstance(late, ClientError) else 'answered'}; "
        f"`s2i serve` exited {exited_after_s:.1f} s after SIGTERM (exit timeout {EXIT_TIMEOUT_S} s)"
    )


def wait_until_not_ready(url: str, timeout_s: float) -> bool:
    """Poll until the server stops saying it is ready (it is exiting); whether it did in time."""
    deadline = time.monotonic() + timeout_s
    with grpcclient.InferenceServerClient(url) as client:
        while time.monotonic() < deadline:
            try:
                if not client.is_server_ready(client_timeout=5):
                    return True
            except InferenceServerException:
                return True  # already gone
            time.sleep(0.02)
    return False


def translate_or_error(client: Client) -> list[int] | ClientError:
    """A 60-token translation's ids, or the client error it ended with."""
    try:
        return client.translate(tone(), 16_000, max_new_tokens=60).token_ids
    except ClientError as e:
        return e
