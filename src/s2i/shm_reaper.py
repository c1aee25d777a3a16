"""Reclaim the system shared-memory regions that dead clients left registered in the server.

A client killed mid-request (kill -9, the OOM killer) never unregisters its region: Triton
keeps it mapped until restart, and its ``/dev/shm`` segment stays on the host. Clients of
this project name their regions ``s2i-client-<pid namespace>-<pid>-<random>``
(:func:`s2i.client.grpc_client.client_region_name`), so a sweep can tell whose region it is.

Every ``period_s`` a sweep reads the server's registered system shared-memory regions
(an admin API: ``s2i serve`` always knows its key) and unregisters a region when

- its client is gone: the owner pid no longer exists (or is a zombie) in this pid
  namespace; the sweep then also unlinks the client's ``/dev/shm`` segment, or
- its segment is gone from ``/dev/shm`` (any region): the client unlinked it but its
  unregister lost the race with Triton releasing the region.

Triton refuses to unregister a region a request still uses; the sweep tries again the next
period. Regions of clients in another pid namespace (another container) are judged only by
their segment, never by a pid that means something else there. So a dead client's region is
gone at most one period after its last request ended (a dropped connection cancels that
request within one step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from pathlib import Path

from s2i.client.grpc_client import pid_namespace, region_owner

LOGGER = logging.getLogger(__name__)

# How often `s2i serve` sweeps; the stated bound for a dead client's region (docs/security.md).
DEFAULT_PERIOD_S = 5.0
DEV_SHM = Path("/dev/shm")
OWNER_GONE = "owner gone"
SEGMENT_GONE = "segment unlinked"


def process_alive(pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether ``pid`` runs in this pid namespace; a zombie (killed, not yet reaped) counts as dead."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    # Field 3, after the command name in parentheses (which may itself hold spaces or parentheses).
    return stat[stat.rfind(")") + 2 :].split(" ", 1)[0] not in ("Z", "X")


def orphan_reason(key: str, dev_shm: Path = DEV_SHM) -> str | None:
    """Why the region with ``key`` should be reclaimed, or ``None`` while its client may still use it."""
    owner = region_owner(key)
    if owner is not None and owner[0] == pid_namespace() and not process_alive(owner[1]):
        return OWNER_GONE
    if not (dev_shm / key.lstrip("/")).exists():
        return SEGMENT_GONE
    return None


@dataclasses.dataclass
class SweepResult:
    """What one sweep did: regions unregistered (name -> reason) and those Triton still used."""

    reclaimed: dict[str, str] = dataclasses.field(default_factory=dict)
    busy: list[str] = dataclasses.field(default_factory=list)


class SharedMemoryReaper:
    """Sweeps a server's system shared-memory regions every ``period_s`` in a background thread.

    Args:
        url: ``host:port`` of the server's gRPC endpoint.
        headers: gRPC metadata that opens the shared-memory API (the admin key).
        period_s: Seconds between sweeps.
        dev_shm: Where the host's POSIX shared-memory segments are.
    """

    def __init__(
        self, url: str, headers: dict[str, str], period_s: float = DEFAULT_PERIOD_S, dev_shm: Path = DEV_SHM
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"`period_s` must be positive, got {period_s}.")
        self.url = url
        self.headers = dict(headers)
        self.period_s = period_s
        self.dev_shm = dev_shm
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> SweepResult:
        """Unregister every orphaned region once; unlink the segments of dead clients."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        result = SweepResult()
        with grpcclient.InferenceServerClient(self.url) as client:
            status = client.get_system_shared_memory_status(headers=self.headers, as_json=True, client_timeout=10)
            for name, region in status.get("regions", {}).items():
                reason = orphan_reason(region.get("key", ""), self.dev_shm)
                if reason is None:
                    continue
                try:
                    client.unregister_system_shared_memory(name, headers=self.headers, client_timeout=10)
                except InferenceServerException as e:
                    LOGGER.debug("region %s (%s) not unregistered yet: %s", name, reason, e.message())
                    result.busy.append(name)
                    continue
                if reason == OWNER_GONE:
                    with contextlib.suppress(FileNotFoundError):
                        (self.dev_shm / region["key"].lstrip("/")).unlink()
                LOGGER.info("reclaimed shared-memory region %s (%s)", name, reason)
                result.reclaimed[name] = reason
        return result

    def _run(self) -> None:
        while not self._stopped.wait(self.period_s):
            try:
                self.sweep()
            except Exception as e:  # noqa: BLE001 - a busy or restarting server must not end the sweeps
                LOGGER.warning("shared-memory sweep failed: %s", e)

    def start(self) -> None:
        """Sweep every ``period_s`` until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="shm-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sweeping (waits for a sweep in progress)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
