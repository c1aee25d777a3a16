"""Per-model breakdown from Triton's statistics API: where the time goes, stage by stage."""

from __future__ import annotations

import time

from s2i.benchmarks.protocols import Endpoint, as_endpoint
from s2i.client.transport import Connection

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def snapshot(url: str | Connection | Endpoint) -> dict[str, dict]:
    """Cumulative statistics of every model (over the endpoint's protocol): counts and nanoseconds per phase."""
    stats = as_endpoint(url).call("get_inference_statistics")
    models = {}
    for model in stats.get("model_stats", []):
        inference = model.get("inference_stats", {})
        models[model["name"]] = {
            "success_count": int(inference.get("success", {}).get("count", 0)),
            "fail_count": int(inference.get("fail", {}).get("count", 0)),
            "inference_count": int(model.get("inference_count", 0)),
            "execution_count": int(model.get("execution_count", 0)),
            **{f"{phase}_ns": int(inference.get(phase, {}).get("ns", 0)) for phase in PHASES},
        }
    return models


def settled_snapshot(url: str | Connection | Endpoint, timeout_s: float = 2.0, poll_s: float = 0.05) -> dict[str, dict]:
    """A snapshot taken once the counters stop moving.

    Triton updates a model's statistics just after it sends the response, so a
    snapshot taken right after the client's last reply can miss that request.
    """
    deadline = time.monotonic() + timeout_s
    previous = snapshot(url)
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        current = snapshot(url)
        if current == previous:
            return current
        previous = current
    return previous


def breakdown(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """What happened between two snapshots, per model that ran: requests, batch size, ms per request."""
    result = {}
    for name, end in after.items():
        start = before.get(name, {})
        requests = end["success_count"] - start.get("success_count", 0)
        if requests <= 0:
            continue
        executions = end["execution_count"] - start.get("execution_count", 0)
        inferences = end["inference_count"] - start.get("inference_count", 0)
        result[name] = {
            "requests": requests,
            "failed": end["fail_count"] - start.get("fail_count", 0),
            "executions": executions,
            # Rows: a loop that batches requests sends one stage call carrying several clips.
            "inferences": inferences,
            "mean_batch_size": inferences / executions if executions else 0.0,
            **{
                f"{phase}_ms_per_request": (end[f"{phase}_ns"] - start.get(f"{phase}_ns", 0)) / requests / 1e6
                for phase in PHASES
            },
        }
    return result
