"""Run a benchmark: warm-up, concurrency sweep, Poisson runs, the in-process baseline, and ratios."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import platform
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from tritonclient.utils import InferenceServerException

from s2i.benchmarks import server_stats
from s2i.benchmarks.cpu import process_tree_cpu_s
from s2i.benchmarks.loadgen import Stability, closed_loop, open_loop
from s2i.benchmarks.peers import in_process_summary, peer_ratios, run_peer
from s2i.benchmarks.protocols import Endpoint, as_endpoint
from s2i.benchmarks.workloads import Workload
from s2i.client.transport import Connection, wrap_error

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to run.

    Attributes:
        concurrencies: Closed-loop levels.
        requests_per_level: Requests per closed-loop level (at least the level itself).
        max_duration_s: Bound of each run, whatever the request count.
        rates_per_s: Open-loop (Poisson) arrival rates; empty for none.
        warmup_requests: Sent first and not measured (model load, caches, thread pools).
        baseline_requests: In-process reference requests, one at a time; 0 disables the baseline.
        server_pid: The server's process id when this machine runs it: each run then reports
            the server's CPU-seconds per request (``/proc``); ``None`` for a remote server.
        statistics: Read the per-model breakdown from Triton's statistics API (restricted in a
            hardened deployment: pass the admin key, or turn this off).
        stability: Measure each level in windows until they agree (perf_analyzer's criterion,
            :class:`~s2i.benchmarks.loadgen.Stability`); ``requests_per_level`` is then the size
            of a count window. ``None``: one run of ``requests_per_level`` requests per level.
    """

    concurrencies: Sequence[int] = (1, 2, 4, 8)
    requests_per_level: int = 16
    max_duration_s: float = 120.0
    rates_per_s: Sequence[float] = ()
    warmup_requests: int = 2
    baseline_requests: int = 8
    server_pid: int | None = None
    statistics: bool = True
    stability: Stability | None = None


def machine_info(url: str | Connection | Endpoint) -> dict:
    """Host, CPU, package versions and the server's version."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for package in ("speech2image-triton", "tritonclient", "onnxruntime", "torch", "transformers", "diffusers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    versions["tritonserver"] = as_endpoint(url).call("get_server_metadata").get("version")
    return {"hostname": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "versions": versions}


def _progress(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="req", leave=False, disable=None)


def run_baseline(workload: Workload, requests: int) -> dict | None:
    """The reference, as the research ran it: in-process, one request at a time."""
    if workload.baseline is None or requests <= 0:
        return None
    workload.baseline(0)  # warm-up
    latencies = []
    cpu_started, started = time.process_time(), time.perf_counter()
    with _progress(requests, "baseline") as bar:
        for index in range(requests):
            began = time.perf_counter()
            workload.baseline(index)
            latencies.append(time.perf_counter() - began)
            bar.update()
    return in_process_summary(latencies, time.perf_counter() - started, time.process_time() - cpu_started)


def _statistics_state(url: Endpoint, wanted: bool) -> str:
    """``on``, ``off``, or why Triton's statistics API cannot be read (the run goes on without it)."""
    if not wanted:
        return "off"
    try:
        server_stats.snapshot(url)
    except InferenceServerException as e:
        reason = str(wrap_error(e))
        LOGGER.warning("Server statistics unavailable, benchmarking without the per-model breakdown: %s", reason)
        return f"unavailable: {reason}"
    return "on"


def run_benchmark(url: str | Connection | Endpoint, workload: Workload, config: BenchConfig) -> dict:
    """Run everything ``config`` asks for against the server at ``url``; return the report dict.

    ``url`` is ``host:port`` (gRPC), a connection (gRPC), or an :class:`Endpoint` (its protocol
    and shared-memory mode).
    """
    return add_in_process(run_served(url, workload, config), workload, config)


def run_served(url: str | Connection | Endpoint, workload: Workload, config: BenchConfig) -> dict:
    """The served runs of ``config`` (warm-up, closed-loop levels, Poisson rates): the report without in-process paths.

    :func:`add_in_process` completes it; a bench that started the server stops it in between,
    so the in-process paths do not share the machine with idle stage processes.
    """
    url = as_endpoint(url)
    statistics = _statistics_state(url, config.statistics)
    asyncio.run(
        closed_loop(
            url,
            workload.factory,
            concurrency=max(config.concurrencies),
            max_requests=max(config.warmup_requests, max(config.concurrencies)),
            max_duration_s=config.max_duration_s,
            check=workload.check,
            streaming=workload.streaming,
            output_bytes=workload.output_bytes,
        )
    )
    common = dict(
        factory=workload.factory,
        max_duration_s=config.max_duration_s,
        check=workload.check,
        stability=config.stability,
        streaming=workload.streaming,
        output_bytes=workload.output_bytes,
    )
    plan = [
        (f"concurrency {level}", max(config.requests_per_level, level), closed_loop, {"concurrency": level})
        for level in config.concurrencies
    ]
    plan += [
        (f"poisson {rate}/s", config.requests_per_level, open_loop, {"rate_per_s": rate}) for rate in config.rates_per_s
    ]
    runs = []
    for description, requests, loop, options in plan:
        # With stability windows the request count is open until the windows agree.
        with _progress(None if config.stability else requests, description) as bar:
            before = server_stats.settled_snapshot(url) if statistics == "on" else {}
            cpu_before = process_tree_cpu_s(config.server_pid) if config.server_pid else None
            result = asyncio.run(loop(url, max_requests=requests, on_done=bar.update, **common, **options))
            cpu_after = process_tree_cpu_s(config.server_pid) if config.server_pid else None
            stages = server_stats.breakdown(before, server_stats.settled_snapshot(url)) if statistics == "on" else {}
        summary = result.summary()
        # The server worked through every window, not only the reported ones.
        completed, wall_s = result.run_completed or summary["completed"], result.run_wall_s or summary["wall_s"]
        if cpu_before is not None and cpu_after is not None and completed:
            summary["server_cpu_s_per_request"] = (cpu_after - cpu_before) / completed
            summary["server_cores"] = (cpu_after - cpu_before) / wall_s
        runs.append({**summary, "server": stages})
    for run in runs:
        run["items_per_s"] = run["throughput_per_s"] * workload.items_per_request
    return {
        "workload": workload.name,
        "streaming": workload.streaming,
        "protocol": url.protocol,
        "shared_memory": url.shared_memory,
        "statistics": statistics,
        "config": dataclasses.asdict(config),
        "machine": machine_info(url),
        "runs": runs,
        "baseline": None,
        "ratios": {},
        "peers": {},
        "peer_ratios": {},
    }


def add_in_process(report: dict, workload: Workload, config: BenchConfig) -> dict:
    """``report`` with the in-process reference and peers run on the same inputs, and the ratios to them."""
    baseline = run_baseline(workload, config.baseline_requests)
    peers = {
        name: [run_peer(peer, config.baseline_requests, level) for level in sorted({1, max(config.concurrencies)})]
        for name, peer in workload.peers.items()
        if config.baseline_requests > 0
    }
    return {
        **report,
        "baseline": baseline,
        "ratios": ratios(report["runs"], baseline),
        "peers": peers,
        "peer_ratios": peer_ratios(report["runs"], peers),
    }


def ratios(runs: list[dict], baseline: dict | None) -> dict:
    """Served/baseline throughput per concurrency, and the latency overhead at concurrency 1."""
    if not baseline:
        return {}
    closed = [run for run in runs if run["mode"] == "closed" and run["completed"]]
    result = {
        "throughput_vs_baseline": {
            str(run["concurrency"]): run["throughput_per_s"] / baseline["throughput_per_s"] for run in closed
        }
    }
    single = next((run for run in closed if run["concurrency"] == 1), None)
    if single:
        result["latency_overhead_at_concurrency_1"] = single["latency_ms"]["p50"] / baseline["latency_ms"]["p50"] - 1
    return result
