"""Bounds on concurrent jobs, per client and overall: refuse at once with a clear message, never queue.

A queue in front of a CPU- or GPU-bound pipeline only turns "busy" into a hang; the
browser shows the refusal and the person tries again. All state lives on the event
loop's thread, so no lock is needed.
"""

from __future__ import annotations

import dataclasses


class BusyError(RuntimeError):
    """No job slot free.

    Attributes:
        status: 429 (this client has too many jobs) or 503 (the app is full).
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class JobCounts:
    """What the limiter has seen; reported by the health endpoint."""

    active: int = 0
    started: int = 0
    finished: int = 0
    cancelled: int = 0
    refused_busy: int = 0


class JobLimiter:
    """At most ``max_jobs`` jobs, and ``max_per_client`` per client key, at once."""

    def __init__(self, max_jobs: int, max_per_client: int) -> None:
        self.max_jobs = max_jobs
        self.max_per_client = max_per_client
        self.counts = JobCounts()
        self._per_client: dict[str, int] = {}

    def acquire(self, client: str) -> Slot:
        """A slot for ``client``, or :class:`BusyError`."""
        if self._per_client.get(client, 0) >= self.max_per_client:
            self.counts.refused_busy += 1
            raise BusyError(
                f"You already have {self.max_per_client} image(s) being made; wait for it to finish.", status=429
            )
        if self.counts.active >= self.max_jobs:
            self.counts.refused_busy += 1
            raise BusyError("The app is busy with other people's images; try again in a minute.", status=503)
        self._per_client[client] = self._per_client.get(client, 0) + 1
        self.counts.active += 1
        self.counts.started += 1
        return Slot(self, client)

    def _release(self, client: str, cancelled: bool) -> None:
        remaining = self._per_client[client] - 1
        if remaining:
            self._per_client[client] = remaining
        else:
            del self._per_client[client]
        self.counts.active -= 1
        self.counts.finished += 1
        if cancelled:
            self.counts.cancelled += 1


class Slot:
    """One running job; :meth:`release` is idempotent."""

    def __init__(self, limiter: JobLimiter, client: str) -> None:
        self._limiter = limiter
        self._client = client
        self._released = False
        self.cancelled = False

    def release(self) -> None:
        """Give the slot back (once)."""
        if not self._released:
            self._released = True
            self._limiter._release(self._client, self.cancelled)
