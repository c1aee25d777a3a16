"""Shared-memory regions left behind by dead or unlucky clients are reclaimed by `s2i serve`.

`s2i serve` sweeps its registered regions every `--shm-reap-period-s` (5 s by default,
`s2i.shm_reaper`). Loops here are bounded in time; the bounds are generous (the machine
is shared), and the time a reclaim took is printed, not asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm

from s2i.client import Client
from s2i.client.grpc_client import client_region_name, region_owner
from s2i.shm_reaper import DEFAULT_PERIOD_S
from tests.reliability.conftest import ADMIN_KEY, GRPC_ADMIN, good_translation, record_figures, tone

# A dead client's region must be gone within one sweep period of its request's end; the
# request stops within a decoding step of the dropped connection. Generous, not a speed test.
RECLAIM_BOUND_S = 120.0

# A client that loops on shared-memory translations until it is killed.
CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from s2i.client import Client

    url, key = sys.argv[1], sys.argv[2]
    audio = (0.1 * np.sin(2 * np.pi * 220 * np.arange(32_000) / 16_000)).astype(np.float32)
    with Client(url, timeout_s=300, use_shared_memory=True, admin_key=key) as client:
        while True:
            client.translate(audio, 16_000, max_new_tokens=60)
    """
)


def regions(url: str) -> dict[str, dict]:
    """The server's registered system shared-memory regions (name -> status)."""
    with grpcclient.InferenceServerClient(url) as client:
        return client.get_system_shared_memory_status(headers=GRPC_ADMIN, as_json=True).get("regions", {})


def regions_of(url: str, pid: int) -> list[str]:
    return [name for name, region in regions(url).items() if (region_owner(region["key"]) or (0, 0))[1] == pid]


def segments_of(pid: int) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if (region_owner(name) or (0, 0))[1] == pid]


def wait_for(condition, timeout_s: float, what: str) -> float:
    """Poll ``condition`` until true; return the seconds it took, fail after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what} not within {timeout_s:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


def test_killed_clients_region_and_segment_are_reclaimed_when_it_dies_mid_request(keyed_serve):
    url = keyed_serve.grpc_url
    with Client(url, timeout_s=120) as client:
        expected = client.translate(tone(seconds=2.0), 16_000, max_new_tokens=3).token_ids
    child = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, url, ADMIN_KEY])
    try:
        wait_for(lambda: regions_of(url, child.pid) or child.poll() is not None, 120, "the client's registration")
        assert child.poll() is None, "the client exited before it was killed"
        # Mid-request: the stubs are working on the client's translation.
        stubs = keyed_serve.stubs()
        cpu = sum(stub.cpu_times().user for stub in stubs)
        wait_for(lambda: sum(stub.cpu_times().user for stub in stubs) - cpu > 0.3, 60, "the client's request")
        assert regions_of(url, child.pid) and segments_of(child.pid)
    finally:
        child.kill()
        child.wait(timeout=30)
    took = wait_for(
        lambda: not regions_of(url, child.pid) and not segments_of(child.pid), RECLAIM_BOUND_S, "the reclaim"
    )
    print(f"\nkilled client's region reclaimed {took:.1f} s after kill -9 (sweep period {DEFAULT_PERIOD_S} s)")
    record_figures(
        "fault: kill -9 of a shared-memory client mid-request",
        {
            "sweep_period_s": DEFAULT_PERIOD_S,
            "region_and_segment_gone_after_s": round(took, 1),
            "regions_of_the_client_left": len(regions_of(url, child.pid)),
            "dev_shm_entries_of_the_client_left": len(segments_of(child.pid)),
        },
    )
    # The server still serves shared-memory clients, with the same answer as before.
    with Client(url, timeout_s=120, use_shared_memory=True, admin_key=ADMIN_KEY) as client:
        assert client.translate(tone(seconds=2.0), 16_000, max_new_tokens=3).token_ids == expected
        assert client.shared_memory_region is not None


def test_region_whose_segment_was_unlinked_is_unregistered_when_the_client_lost_the_race(keyed_serve):
    url = keyed_serve.grpc_url
    name = client_region_name()
    handle = shm.create_shared_memory_region(name, f"/{name}", 1 << 16)
    with grpcclient.InferenceServerClient(url) as client:
        client.register_system_shared_memory(name, f"/{name}", 1 << 16, headers=GRPC_ADMIN)
    # The client unlinks its segment, but its unregister never reached the server.
    shm.destroy_shared_memory_region(handle)
    assert name in regions(url)

    took = wait_for(lambda: name not in regions(url), RECLAIM_BOUND_S, "the stale region's unregistration")
    print(f"\nstale region unregistered after {took:.1f} s (sweep period {DEFAULT_PERIOD_S} s)")
    assert good_translation(url)


def test_live_clients_region_stays_registered_when_sweeps_pass(keyed_serve):
    url = keyed_serve.grpc_url
    with Client(url, timeout_s=120, use_shared_memory=True, admin_key=ADMIN_KEY) as client:
        client.translate(tone(seconds=2.0), 16_000, max_new_tokens=3)
        region = client.shared_memory_region
        assert region_owner(region) == region_owner(client_region_name())
        time.sleep(2.5 * DEFAULT_PERIOD_S)  # two sweeps pass: the region's owner is alive
        assert region in regions(url)
        assert client.translate(tone(seconds=2.0), 16_000, max_new_tokens=3).token_ids
        assert client.shared_memory_region == region
    assert region not in regions(url)
