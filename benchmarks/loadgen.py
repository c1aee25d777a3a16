"""Load generation over the asyncio clients: closed-loop concurrency and open-loop Poisson arrivals.

``tritonclient`` 2.73 does not ship ``perf_analyzer``, so this is the load
generator. Every run is bounded by a request count *and* a duration, and stops
by itself; with a :class:`Stability` it is measured in windows until they agree,
as perf_analyzer does. Unary requests are timed to their response, streamed ones
(``speech_to_image_stream``) to their first message of each kind and their image.
Unary requests go over gRPC or HTTP, their tensors inline or through system shared
memory (:mod:`s2i.benchmarks.protocols`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable

import aiohttp
import grpc
import numpy as np
from tritonclient.utils import InferenceServerException
from tritonclient.utils.shared_memory import SharedMemoryException

from s2i import names
from s2i.benchmarks.protocols import Endpoint, RegionPool, SharedResponse, Tensor, as_endpoint
from s2i.client.transport import Connection

# Builds request number i: (model name, input tensors, requested output names).
RequestFactory = Callable[[int], tuple[str, list[Tensor], list[str]]]
# Checks a response; raises when its content is wrong (empty outputs are errors, not successes).
ResponseCheck = Callable[[object], None]
# What fails one unary request (counted as its error) rather than the run: the server's refusal,
# a wrong response, HTTP transport errors and timeouts, a shared-memory copy that did not fit.
UNARY_ERRORS = (
    InferenceServerException,
    ValueError,
    AssertionError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    SharedMemoryException,
)


@dataclasses.dataclass(frozen=True)
class Stability:
    """perf_analyzer's stability criterion: measure in windows until the last ones agree.

    A run is cut into measurement windows, either ``interval_s`` seconds long (perf_analyzer's
    ``time_windows``, ``--measurement-interval``) or, when ``interval_s`` is ``None``, of the
    run's request count each (``count_windows``, ``--measurement-request-count``). The load
    never pauses between windows. After each window, the last ``windows`` windows are stable
    when each one's throughput and p50 latency lie within ``percentage`` % of their mean over
    those windows (perf_analyzer checks the same, with 3 windows, 10 % and 10 trials by
    default). The run stops once stable or after ``max_trials`` windows; its figures are those
    of the last ``windows`` windows, stable or not.

    Attributes:
        percentage: Largest deviation from the windows' mean, in percent.
        windows: How many of the last windows must agree.
        max_trials: Most windows per run.
        interval_s: Length of a time window; ``None`` for count windows.
    """

    percentage: float = 10.0
    windows: int = 3
    max_trials: int = 10
    interval_s: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.percentage <= 100:
            raise ValueError(f"`stability_percentage` must be in (0, 100], got {self.percentage}.")
        if self.windows < 1:
            raise ValueError(f"`stability_windows` must be at least 1, got {self.windows}.")
        if self.max_trials < self.windows:
            raise ValueError(f"`max_trials` ({self.max_trials}) must be at least `stability_windows` ({self.windows}).")
        if self.interval_s is not None and not 0 < self.interval_s <= 3600:
            raise ValueError(f"`measurement_interval_s` must be in (0, 3600], got {self.interval_s}.")


@dataclasses.dataclass
class Window:
    """What completed in one measurement window."""

    started: float
    latencies_s: list[float] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    # Event kind -> seconds from sending a streamed request to its first message of that kind.
    marks_s: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def sent(self) -> int:
        """Requests that finished in the window, failed or not."""
        return len(self.latencies_s) + len(self.errors)

    @property
    def throughput_per_s(self) -> float:
        """Completed requests per second."""
        return len(self.latencies_s) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def p50_s(self) -> float | None:
        """Median latency, ``None`` when nothing completed."""
        return float(np.percentile(self.latencies_s, 50)) if self.latencies_s else None

    def describe(self) -> dict:
        """The figures the stability criterion compares."""
        p50 = self.p50_s
        return {
            "completed": len(self.latencies_s),
            "errors": len(self.errors),
            "duration_s": self.duration_s,
            "throughput_per_s": self.throughput_per_s,
            "p50_ms": None if p50 is None else 1000 * p50,
        }


def _within(values: list[float], percentage: float) -> bool:
    mean = sum(values) / len(values)
    return all(abs(value - mean) <= percentage / 100 * mean for value in values)


def is_stable(windows: list[Window], stability: Stability) -> bool:
    """Whether the last ``stability.windows`` windows agree on throughput and p50 latency."""
    if len(windows) < stability.windows:
        return False
    last = windows[-stability.windows :]
    if any(not window.latencies_s or window.duration_s <= 0 for window in last):
        return False
    throughputs = [window.throughput_per_s for window in last]
    medians = [window.p50_s for window in last]
    return _within(throughputs, stability.percentage) and _within(medians, stability.percentage)


class Recorder:
    """Collects finished requests into measurement windows and decides when a run may stop.

    Without a :class:`Stability`, the whole run is one window (the request count and the
    duration bound it, as before windows existed).
    """

    def __init__(self, stability: Stability | None, window_requests: int, clock=time.perf_counter) -> None:
        self.stability = stability
        self.window_requests = window_requests
        self.clock = clock
        self.started = clock()
        self.current = Window(self.started)
        self.closed: list[Window] = []
        self.stop = asyncio.Event()

    @property
    def counts_windows(self) -> bool:
        """Whether windows close on a request count (rather than on a clock)."""
        return self.stability is not None and self.stability.interval_s is None

    def add(self, latency_s: float | None, error: str | None, marks_s: dict[str, float] | None = None) -> None:
        """Record one finished request; ignored once the run has decided to stop (it was in flight)."""
        if self.stop.is_set():
            return
        window = self.current
        if error is not None:
            window.errors.append(error)
        else:
            window.latencies_s.append(latency_s)
            for kind, mark in (marks_s or {}).items():
                window.marks_s.setdefault(kind, []).append(mark)
        if self.counts_windows and window.sent >= self.window_requests:
            self.close()

    def close(self) -> None:
        """End the current window, start the next, and stop the run when it is stable or out of trials."""
        now = self.clock()
        self.current.duration_s = now - self.current.started
        self.closed.append(self.current)
        self.current = Window(now)
        if self.stability is None:
            return
        if is_stable(self.closed, self.stability) or len(self.closed) >= self.stability.max_trials:
            self.stop.set()

    async def tick(self) -> None:
        """Close time windows on the clock until the run stops (cancelled when the load ends first)."""
        assert self.stability is not None and self.stability.interval_s is not None
        while not self.stop.is_set():
            await asyncio.sleep(max(0.0, self.current.started + self.stability.interval_s - self.clock()))
            self.close()

    def finish(self) -> tuple[list[Window], bool | None]:
        """The windows the run reports (the last ``stability.windows``) and whether they were stable."""
        if self.stability is None:
            self.close()
            return self.closed[-1:], None
        if not self.closed or (
            not self.stop.is_set() and self.current.sent and len(self.closed) < self.stability.windows
        ):
            # The load ran out (its request or time bound) before enough windows closed: keep what there is.
            self.close()
        stable = is_stable(self.closed, self.stability)
        return self.closed[-self.stability.windows :], stable


@dataclasses.dataclass
class RunResult:
    """Raw outcome of one load run (its reported windows merged)."""

    mode: str
    concurrency: int | None
    rate_per_s: float | None
    latencies_s: list[float]
    errors: list[str]
    wall_s: float
    client_cpu_s: float
    marks_s: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    stable: bool | None = None
    windows: list[dict] = dataclasses.field(default_factory=list)
    windows_run: int = 1
    # The whole run, all windows (for figures such as the server's CPU per request).
    run_completed: int | None = None
    run_wall_s: float | None = None
    run_mean_latency_s: float | None = None

    @classmethod
    def from_windows(cls, mode: str, level: dict, recorder: Recorder, client_cpu_s: float) -> RunResult:
        """Merge the windows the recorder reports into one result."""
        reported, stable = recorder.finish()
        every = [*recorder.closed, recorder.current]
        marks: dict[str, list[float]] = {}
        for window in reported:
            for kind, values in window.marks_s.items():
                marks.setdefault(kind, []).extend(values)
        return cls(
            mode,
            level.get("concurrency"),
            level.get("rate_per_s"),
            [latency for window in reported for latency in window.latencies_s],
            [error for window in reported for error in window.errors],
            sum(window.duration_s for window in reported),
            client_cpu_s,
            marks,
            stable,
            [window.describe() for window in reported],
            len(recorder.closed),
            sum(len(window.latencies_s) for window in every),
            recorder.clock() - recorder.started,
            float(np.mean(everything)) if (everything := [x for window in every for x in window.latencies_s]) else None,
        )

    @property
    def completed(self) -> int:
        """Requests that succeeded."""
        return len(self.latencies_s)

    def summary(self) -> dict:
        """Throughput, latency percentiles (ms), errors, client CPU per request, stream marks and windows."""
        sent = self.completed + len(self.errors)
        summary = {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate_per_s": self.rate_per_s,
            "requests": sent,
            "completed": self.completed,
            "errors": len(self.errors),
            "error_examples": sorted(set(self.errors))[:3],
            "wall_s": self.wall_s,
            "throughput_per_s": self.completed / self.wall_s if self.wall_s > 0 else 0.0,
            "latency_ms": percentiles_ms(self.latencies_s),
            "client_cpu_ms_per_request": 1000 * self.client_cpu_s / max(sent, 1),
        }
        if self.marks_s:
            summary["time_to_first_ms"] = {
                kind: {**percentiles_ms(values), "count": len(values)} for kind, values in self.marks_s.items()
            }
        if self.stable is not None:
            summary["stability"] = {"stable": self.stable, "windows_run": self.windows_run, "windows": self.windows}
            # Over every window, as the server's statistics are (perf_analyzer-style server columns).
            if self.run_mean_latency_s is not None:
                summary["stability"]["all_windows_mean_latency_ms"] = 1000 * self.run_mean_latency_s
        return summary


def percentiles_ms(values_s: list[float]) -> dict:
    """p50/p90/p95/p99, mean and max of ``values_s`` in milliseconds (empty when there are none)."""
    values_ms = np.asarray(values_s) * 1000
    if not len(values_ms):
        return {"mean": None, "max": None}
    return {
        **{f"p{p}": float(np.percentile(values_ms, p)) for p in (50, 90, 95, 99)},
        "mean": float(values_ms.mean()),
        "max": float(values_ms.max()),
    }


def as_connection(target: str | Connection) -> Connection:
    """A :class:`~s2i.client.transport.Connection` for ``host:port`` or a connection (headers, TLS, admin key)."""
    return target if isinstance(target, Connection) else Connection(url=target)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:200]}"


class _Sender:
    """Sends one unary request over the endpoint's protocol, inline or through shared memory."""

    def __init__(self, client, endpoint: Endpoint, output_bytes: dict[str, int]) -> None:
        self.client = client
        self.endpoint = endpoint
        self.pool = RegionPool(client, endpoint, output_bytes) if endpoint.shared_memory == "system" else None

    async def __call__(
        self, factory: RequestFactory, index: int, check: ResponseCheck | None, timeout_s: float
    ) -> tuple[float | None, str | None, dict[str, float]]:
        model, tensors, outputs = factory(index)
        started = time.perf_counter()
        try:
            if self.pool is None:
                response = await self._infer(model, self.endpoint.inputs(tensors), self.endpoint.outputs(outputs))
                if check is not None:
                    check(response)
            else:
                async with self.pool.lease() as regions:
                    inputs, requested = await regions.inputs(tensors), await regions.outputs(outputs)
                    response = SharedResponse(await self._infer(model, inputs, requested), regions)
                    if check is not None:
                        check(response)  # while the lease holds: the region is the next request's afterwards
        except UNARY_ERRORS as e:
            return None, _error(e), {}
        return time.perf_counter() - started, None, {}

    async def _infer(self, model: str, inputs: list, outputs: list):
        options = self.endpoint.infer_options(self.endpoint.connection.timeout_s)
        return await self.client.infer(model, inputs, outputs=outputs, headers=self.endpoint.headers(), **options)

    async def close(self) -> None:
        """Unregister and unlink the shared-memory regions (if any)."""
        if self.pool is not None:
            await self.pool.close()


@contextlib.asynccontextmanager
async def _sending(
    target: str | Connection | Endpoint, streaming: bool, output_bytes: dict[str, int] | None, timeout_s: float
):
    """The call one request makes (unary or streamed), its client open and its regions cleaned up after."""
    endpoint = as_endpoint(target)
    endpoint = dataclasses.replace(endpoint, connection=dataclasses.replace(endpoint.connection, timeout_s=timeout_s))
    async with endpoint.aio_client() as client:
        if streaming:

            async def stream(factory, index, check, timeout_s):
                return await _one_stream(client, factory, index, check, timeout_s, endpoint)

            yield stream
            return
        sender = _Sender(client, endpoint, output_bytes or {})
        try:
            yield sender
        finally:
            await sender.close()


def _event_kind(result) -> str | None:
    event = result.as_numpy(names.EVENT)
    return None if event is None or event.size != 1 else event.reshape(-1)[0].decode("utf-8", "replace")


async def _one_stream(
    client, factory: RequestFactory, index: int, check: ResponseCheck | None, timeout_s: float, endpoint: Endpoint
) -> tuple[float | None, str | None, dict[str, float]]:
    """One streamed request: the time to its first message of each kind, and to its ``image`` (the latency).

    The stream is read to its end and never cancelled: Triton 2.51 can crash (SIGSEGV) when a
    client cancels a gRPC stream whose final response is still on its way
    (triton-inference-server/server#7368, fixed in 24.12), and a bench must not take its server down.
    """
    model, tensors, outputs = factory(index)
    inputs, requested = endpoint.inputs(tensors), endpoint.outputs(outputs)
    request = {"model_name": model, "inputs": inputs, "outputs": requested, "enable_empty_final_response": True}
    request["request_id"] = f"bench-{index}"

    async def requests():
        yield request

    started = time.perf_counter()
    marks: dict[str, float] = {}
    image, failure = None, None
    try:
        async for result, error in client.stream_infer(
            requests(), stream_timeout=timeout_s, headers=endpoint.headers()
        ):
            if error is not None:
                failure = failure or error
                continue
            kind = _event_kind(result)
            if kind is not None:  # None: the empty final response
                marks.setdefault(kind, time.perf_counter() - started)
                image = result if kind == "image" and image is None else image
        if failure is not None:
            raise failure
        if image is None:
            raise ValueError(f"the stream ended without an `image` message (messages: {sorted(marks)})")
        if "text" not in marks or marks["text"] > marks["image"]:
            raise ValueError("the stream sent its `image` without a `text` message first")
        if check is not None:
            check(image)
    except (InferenceServerException, grpc.RpcError, ValueError, AssertionError) as e:
        return None, _error(e), {}
    return marks["image"], None, marks


async def closed_loop(
    url: str | Connection | Endpoint,
    factory: RequestFactory,
    *,
    concurrency: int,
    max_requests: int,
    max_duration_s: float,
    check: ResponseCheck | None = None,
    timeout_s: float = 300.0,
    on_done: Callable[[], None] | None = None,
    stability: Stability | None = None,
    streaming: bool = False,
    output_bytes: dict[str, int] | None = None,
) -> RunResult:
    """``concurrency`` workers, each sending its next request when the last one returns.

    With ``stability``, ``max_requests`` is the size of a count window (or ignored with time
    windows) and the run goes on until the windows agree or run out (:class:`Stability`).
    ``output_bytes``: outputs read back through shared memory (with ``--shared-memory system``)
    and the most bytes each can take.
    """
    window_requests = max_requests
    if stability is not None:
        max_requests = max_requests * stability.max_trials if stability.interval_s is None else 2**62
    counter = iter(range(max_requests))
    cpu_started, started = time.process_time(), time.perf_counter()
    deadline = started + max_duration_s
    recorder = Recorder(stability, window_requests)
    async with _sending(url, streaming, output_bytes, timeout_s) as call:

        async def worker():
            for index in counter:
                if time.perf_counter() > deadline or recorder.stop.is_set():
                    return
                recorder.add(*await call(factory, index, check, timeout_s))
                if on_done:
                    on_done()

        await _with_ticker(recorder, asyncio.gather(*(worker() for _ in range(concurrency))))
    level = {"concurrency": concurrency}
    return RunResult.from_windows("closed", level, recorder, time.process_time() - cpu_started)


async def _with_ticker(recorder: Recorder, load) -> None:
    """Await ``load`` while time windows close on the clock (when the run measures in time windows)."""
    if recorder.stability is None or recorder.stability.interval_s is None:
        await load
        return
    ticker = asyncio.create_task(recorder.tick())
    try:
        await load
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


async def open_loop(
    url: str | Connection | Endpoint,
    factory: RequestFactory,
    *,
    rate_per_s: float,
    max_requests: int,
    max_duration_s: float,
    check: ResponseCheck | None = None,
    timeout_s: float = 300.0,
    seed: int = 0,
    on_done: Callable[[], None] | None = None,
    stability: Stability | None = None,
    streaming: bool = False,
    output_bytes: dict[str, int] | None = None,
) -> RunResult:
    """Poisson arrivals at ``rate_per_s``, whatever the server's speed (shows queueing).

    ``stability`` as in :func:`closed_loop`.
    """
    rng = random.Random(seed)
    window_requests = max_requests
    if stability is not None:
        max_requests = max_requests * stability.max_trials if stability.interval_s is None else 2**62
    tasks = []
    cpu_started, started = time.process_time(), time.perf_counter()
    recorder = Recorder(stability, window_requests)
    async with _sending(url, streaming, output_bytes, timeout_s) as call:

        async def send(index):
            recorder.add(*await call(factory, index, check, timeout_s))
            if on_done:
                on_done()

        async def arrivals():
            next_at = started
            for index in range(max_requests):
                next_at += rng.expovariate(rate_per_s)
                if next_at - started > max_duration_s or recorder.stop.is_set():
                    break
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                if recorder.stop.is_set():
                    break
                tasks.append(asyncio.create_task(send(index)))
            await asyncio.gather(*tasks)

        await _with_ticker(recorder, arrivals())
    level = {"rate_per_s": rate_per_s}
    return RunResult.from_windows("open", level, recorder, time.process_time() - cpu_started)
