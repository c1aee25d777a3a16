"""Load generation over the asyncio gRPC client: closed-loop concurrency and open-loop Poisson arrivals.

``tritonclient`` 2.73 does not ship ``perf_analyzer``, so this is the load
generator. Every run is bounded by a request count *and* a duration, and stops
by itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable

import numpy as np
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from s2i.client.transport import Connection

# Builds request number i: (model name, inputs, requested outputs).
RequestFactory = Callable[[int], tuple[str, list, list]]
# Checks a response; raises when its content is wrong (empty outputs are errors, not successes).
ResponseCheck = Callable[[object], None]


@dataclasses.dataclass
class RunResult:
    """Raw outcome of one load run."""

    mode: str
    concurrency: int | None
    rate_per_s: float | None
    latencies_s: list[float]
    errors: list[str]
    wall_s: float
    client_cpu_s: float

    @property
    def completed(self) -> int:
        """Requests that succeeded."""
        return len(self.latencies_s)

    def summary(self) -> dict:
        """Throughput, latency percentiles (ms), errors and client CPU per request."""
        latencies_ms = np.asarray(self.latencies_s) * 1000
        percentiles = (
            {f"p{p}": float(np.percentile(latencies_ms, p)) for p in (50, 90, 95, 99)} if len(latencies_ms) else {}
        )
        sent = self.completed + len(self.errors)
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate_per_s": self.rate_per_s,
            "requests": sent,
            "completed": self.completed,
            "errors": len(self.errors),
            "error_examples": sorted(set(self.errors))[:3],
            "wall_s": self.wall_s,
            "throughput_per_s": self.completed / self.wall_s if self.wall_s > 0 else 0.0,
            "latency_ms": {
                **percentiles,
                "mean": float(latencies_ms.mean()) if len(latencies_ms) else None,
                "max": float(latencies_ms.max()) if len(latencies_ms) else None,
            },
            "client_cpu_ms_per_request": 1000 * self.client_cpu_s / max(sent, 1),
        }


def as_connection(target: str | Connection) -> Connection:
    """A :class:`~s2i.client.transport.Connection` for ``host:port`` or a connection (headers, TLS, admin key)."""
    return target if isinstance(target, Connection) else Connection(url=target)


async def _one(
    client, factory: RequestFactory, index: int, check: ResponseCheck | None, timeout_s: float, connection: Connection
):
    model, inputs, outputs = factory(index)
    started = time.perf_counter()
    try:
        headers = connection.call_headers()
        response = await client.infer(model, inputs, outputs=outputs, client_timeout=timeout_s, headers=headers)
        if check is not None:
            check(response)
    except (InferenceServerException, ValueError, AssertionError) as e:
        return None, f"{type(e).__name__}: {str(e)[:200]}"
    return time.perf_counter() - started, None


async def closed_loop(
    url: str | Connection,
    factory: RequestFactory,
    *,
    concurrency: int,
    max_requests: int,
    max_duration_s: float,
    check: ResponseCheck | None = None,
    timeout_s: float = 300.0,
    on_done: Callable[[], None] | None = None,
) -> RunResult:
    """``concurrency`` workers, each sending its next request when the last one returns."""
    latencies, errors = [], []
    counter = iter(range(max_requests))
    cpu_started, started = time.process_time(), time.perf_counter()
    deadline = started + max_duration_s
    connection = as_connection(url)
    async with grpcclient_aio.InferenceServerClient(**connection.client_kwargs()) as client:

        async def worker():
            for index in counter:
                if time.perf_counter() > deadline:
                    return
                latency, error = await _one(client, factory, index, check, timeout_s, connection)
                (errors.append(error) if error else latencies.append(latency))
                if on_done:
                    on_done()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return RunResult(
        "closed", concurrency, None, latencies, errors, time.perf_counter() - started, time.process_time() - cpu_started
    )


async def open_loop(
    url: str | Connection,
    factory: RequestFactory,
    *,
    rate_per_s: float,
    max_requests: int,
    max_duration_s: float,
    check: ResponseCheck | None = None,
    timeout_s: float = 300.0,
    seed: int = 0,
    on_done: Callable[[], None] | None = None,
) -> RunResult:
    """Poisson arrivals at ``rate_per_s``, whatever the server's speed (shows queueing)."""
    rng = random.Random(seed)
    latencies, errors, tasks = [], [], []
    cpu_started, started = time.process_time(), time.perf_counter()
    connection = as_connection(url)
    async with grpcclient_aio.InferenceServerClient(**connection.client_kwargs()) as client:

        async def send(index):
            latency, error = await _one(client, factory, index, check, timeout_s, connection)
            (errors.append(error) if error else latencies.append(latency))
            if on_done:
                on_done()

        next_at = started
        for index in range(max_requests):
            next_at += rng.expovariate(rate_per_s)
            if next_at - started > max_duration_s:
                break
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            tasks.append(asyncio.create_task(send(index)))
        await asyncio.gather(*tasks)
    return RunResult(
        "open", None, rate_per_s, latencies, errors, time.perf_counter() - started, time.process_time() - cpu_started
    )
