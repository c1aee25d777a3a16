"""A bounded soak: many requests from concurrent clients leave memory, files and shared memory flat.

CI runs the bounded version (100 requests, 8 clients, at most 30 s of load). A longer run is
one command, e.g. `S2I_SOAK_REQUESTS=300 S2I_SOAK_CLIENTS=32 S2I_SOAK_SECONDS=60 .venv/bin/python
-m pytest tests/reliability/test_soak.py -s`. Figures are printed (`-s`) and kept as test properties.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import tritonclient.grpc as grpcclient

from s2i.client import Client
from s2i.client.transport import NO_RETRY
from tests.reliability.conftest import GRPC_ADMIN, tone

REQUESTS = int(os.environ.get("S2I_SOAK_REQUESTS", "100"))
CLIENTS = int(os.environ.get("S2I_SOAK_CLIENTS", "8"))
SECONDS = float(os.environ.get("S2I_SOAK_SECONDS", "30"))
MB = 1024 * 1024
# Tolerances, after a warm-up that brings pools and caches to their working size.
SERVER_RSS_GROWTH = 64 * MB
# All stubs together. The whisper loop runs its decoder in process (python-onnxruntime): ONNX
# Runtime's arenas grow to the largest decoder batch the loop meets, which the warm-up need not
# reach (one measured soak: +282 MB); growth past that would be a leak.
STUBS_RSS_GROWTH = 384 * MB
FD_GROWTH = 8


def snapshot(served) -> dict[str, int]:
    """RSS and open files of `tritonserver` and its stubs, and /dev/shm entries."""
    server = served.tritonserver()
    stubs = served.stubs()
    return {
        "server_rss": server.memory_info().rss,
        "stubs_rss": sum(stub.memory_info().rss for stub in stubs),
        "fds": server.num_fds() + sum(stub.num_fds() for stub in stubs),
        "dev_shm": len(os.listdir("/dev/shm")),
        "stubs": len(stubs),
    }


def registered_regions(url: str) -> list:
    with grpcclient.InferenceServerClient(url) as client:
        return list(client.get_system_shared_memory_status(headers=GRPC_ADMIN, as_json=True).get("regions", {}))


def translate_once(url: str, audio) -> list[int]:
    with Client(url, timeout_s=120, retry=NO_RETRY) as client:
        return client.translate(audio, 16_000, max_new_tokens=3).token_ids


@pytest.mark.soak
def test_soak_keeps_memory_files_and_shared_memory_flat_when_clients_run_concurrently(keyed_serve, record_property):
    url = keyed_serve.grpc_url
    audio = tone(seconds=2.0)  # 128 KB: over the client's shared-memory threshold
    with Client(url, timeout_s=120, retry=NO_RETRY) as client:
        expected = client.translate(audio, 16_000, max_new_tokens=3).token_ids
    deadline = time.monotonic() + SECONDS
    issued = iter(range(REQUESTS))
    lock = threading.Lock()

    def worker(index: int) -> tuple[int, list]:
        # Half the clients send the audio through registered shared memory (with the admin key).
        shared = index % 2 == 1
        headers = GRPC_ADMIN if shared else {}
        done, errors = 0, []
        with Client(url, timeout_s=120, retry=NO_RETRY, use_shared_memory=shared, headers=headers) as client:
            while time.monotonic() < deadline:
                with lock:
                    if next(issued, None) is None:
                        break
                try:
                    ids = client.translate(audio, 16_000, max_new_tokens=3).token_ids
                    if ids != expected:
                        errors.append(f"tokens {ids} != {expected}")
                except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                    errors.append(repr(e)[:200])
                done += 1
        return done, errors

    # Warm-up: one round per client, then the baseline.
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        warm = list(pool.map(lambda _: translate_once(url, audio), range(CLIENTS)))
    assert all(ids == expected for ids in warm)
    before = snapshot(keyed_serve)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        outcomes = list(pool.map(worker, range(CLIENTS)))
    elapsed = time.monotonic() - started
    after = snapshot(keyed_serve)
    done = sum(count for count, _ in outcomes)
    errors = [error for _, worker_errors in outcomes for error in worker_errors]
    figures = {
        "requests": done,
        "clients": CLIENTS,
        "seconds": round(elapsed, 1),
        "errors": len(errors),
        **{f"{key}_before": value for key, value in before.items()},
        **{f"{key}_after": value for key, value in after.items()},
        "registered_regions_after": len(registered_regions(url)),
    }
    for key, value in figures.items():
        record_property(key, value)
    print("\nsoak figures:", figures)
    assert not errors, errors[:5]
    assert done >= min(REQUESTS, CLIENTS)
    assert after["stubs"] == before["stubs"]
    assert after["server_rss"] - before["server_rss"] < SERVER_RSS_GROWTH
    assert after["stubs_rss"] - before["stubs_rss"] < STUBS_RSS_GROWTH
    assert after["fds"] - before["fds"] <= FD_GROWTH
    # Other servers on the host may add or drop segments; ours must leave none registered.
    assert figures["registered_regions_after"] == 0
