"""Which shared-memory regions the reaper reclaims, decided from real processes and files (no server)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s2i.client.grpc_client import client_region_name, pid_namespace, region_owner
from s2i.shm_reaper import OWNER_GONE, SEGMENT_GONE, SharedMemoryReaper, orphan_reason, process_alive


def dead_pid() -> int:
    """The pid of a process that ran and was reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_region_owner_reads_namespace_and_pid_when_the_name_is_a_clients():
    name = client_region_name()

    assert region_owner(name) == (pid_namespace(), os.getpid())
    assert region_owner(f"/{name}") == (pid_namespace(), os.getpid())


@pytest.mark.parametrize("key", ["/s2i-victim-segment", "s2i4242-0a1b2c3d_preprocess_0_0", "/s2i-client-1-x-ff", ""])
def test_region_owner_is_none_when_the_name_is_not_a_clients(key):
    assert region_owner(key) is None


def test_process_alive_is_true_for_this_process_and_false_for_a_reaped_one():
    assert process_alive(os.getpid())
    assert not process_alive(dead_pid())


def test_process_alive_is_false_when_the_process_is_a_zombie():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.05)
        assert not process_alive(child.pid)
    finally:
        child.wait()


def test_orphan_reason_names_a_gone_owner_when_the_clients_pid_is_dead(tmp_path):
    key = f"s2i-client-{pid_namespace()}-{dead_pid()}-abcdef012345"
    (tmp_path / key).write_bytes(b"\0")

    assert orphan_reason(f"/{key}", tmp_path) == OWNER_GONE


def test_orphan_reason_names_a_gone_segment_when_the_key_is_not_in_dev_shm(tmp_path):
    assert orphan_reason(f"/{client_region_name()}", tmp_path) == SEGMENT_GONE
    assert orphan_reason("/someone-elses-region", tmp_path) == SEGMENT_GONE


def test_orphan_reason_is_none_when_the_owner_lives_and_the_segment_exists(tmp_path):
    key = client_region_name()
    (tmp_path / key).write_bytes(b"\0")
    (tmp_path / "not-a-client").write_bytes(b"\0")

    assert orphan_reason(f"/{key}", tmp_path) is None
    assert orphan_reason("/not-a-client", tmp_path) is None


def test_orphan_reason_ignores_the_pid_when_the_client_is_in_another_pid_namespace(tmp_path):
    key = f"s2i-client-{pid_namespace() + 1}-{dead_pid()}-abcdef012345"
    (tmp_path / key).write_bytes(b"\0")

    assert orphan_reason(f"/{key}", tmp_path) is None


def test_reaper_refuses_a_period_that_is_not_positive():
    with pytest.raises(ValueError, match="`period_s`"):
        SharedMemoryReaper("127.0.0.1:1", {}, period_s=0)
