"""Per-token decoding time: the served ``whisper`` loop vs the same decoder graphs in-process.

The served side sends log-mel features (computed once, so feature extraction is not
timed) to the ``whisper`` model with two token budgets; the in-process side runs the
same request through :class:`~s2i.stages.whisper.decoding.WhisperRunner` on ONNX
Runtime sessions of the repository's own graph files (``whisper_encoder``,
``whisper_decoder``, ``whisper_decoder_with_past``), one process, all cores. The
per-token time is the difference of the two budgets' median latencies divided by
the difference of their token counts, which cancels the encoder and the request's
fixed costs on both sides.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from s2i import names


def _median_seconds(call: Callable[[], int], repeats: int, cpu_s: Callable[[], float]) -> tuple[float, int, float]:
    """Median wall seconds, tokens produced and mean CPU-seconds (as ``cpu_s`` counts them) of ``repeats`` calls."""
    call()  # warm-up: sessions, allocator, caches
    walls, tokens = [], set()
    cpu_started = cpu_s()
    for _ in range(repeats):
        started = time.perf_counter()
        tokens.add(call())
        walls.append(time.perf_counter() - started)
    if len(tokens) != 1:
        raise RuntimeError(f"token counts differ between identical requests: {sorted(tokens)}")
    return float(np.median(walls)), tokens.pop(), (cpu_s() - cpu_started) / repeats


def served_call(url: str, features: np.ndarray, budget: int) -> Callable[[], int]:
    """One ``whisper`` request with ``features`` and ``budget`` tokens; returns the tokens produced."""
    client = grpcclient.InferenceServerClient(url)
    inputs = [grpcclient.InferInput(names.INPUT_FEATURES, [1, *features.shape], "FP32")]
    inputs[0].set_data_from_numpy(features[None])
    limit = grpcclient.InferInput(names.MAX_NEW_TOKENS, [1, 1], "INT32")
    limit.set_data_from_numpy(np.array([[budget]], dtype=np.int32))
    inputs.append(limit)

    def call() -> int:
        result = client.infer(names.WHISPER, inputs, outputs=[grpcclient.InferRequestedOutput(names.TOKEN_IDS)])
        token_ids = result.as_numpy(names.TOKEN_IDS)
        if token_ids is None or token_ids.size == 0:
            raise ValueError("`token_ids` came back empty")
        return int(token_ids.size)

    return call


def in_process_runner(checkpoint_dir: Path, repository: Path):
    """A :class:`WhisperRunner` on local sessions of the repository's stage graphs (numpy in and out)."""
    from s2i.model_repository.onnx_stage import OnnxStage, onnx_stage_runner
    from s2i.stages.whisper.decoding import WhisperRunner

    graphs = (names.WHISPER_ENCODER, names.WHISPER_DECODER, names.WHISPER_DECODER_WITH_PAST)
    stages = {name: OnnxStage(Path(repository) / name / "1" / "model.onnx") for name in graphs}
    return WhisperRunner(checkpoint_dir, onnx_stage_runner(stages))


def token_benchmark(
    url: str,
    checkpoint_dir: Path,
    repository: Path,
    clip: np.ndarray,
    budgets: Sequence[int] = (4, 36),
    repeats: int = 3,
    server_pid: int | None = None,
) -> dict:
    """Per-token decoding time served vs in-process, for one 16 kHz clip at concurrency 1.

    With ``server_pid`` (a server on this machine) CPU-seconds per token are compared
    too: the server's processes against this process running the graphs — the figure
    that holds on a loaded, shared machine, where wall time depends on the neighbours.
    """
    from s2i.benchmarks.cpu import process_tree_cpu_s
    from s2i.stages.whisper.decoding import TranscriptionRequest

    runner = in_process_runner(checkpoint_dir, repository)
    features = runner.features([clip])[0]
    short, long = sorted(budgets)

    def local(budget: int) -> Callable[[], int]:
        request = TranscriptionRequest(None, features=features, max_new_tokens=budget)
        return lambda: len(runner.transcribe([request])[0].token_ids)

    def server_cpu_s() -> float:
        return (process_tree_cpu_s(server_pid) or 0.0) if server_pid else 0.0

    sides = {
        "served": (lambda budget: served_call(url, features, budget), server_cpu_s),
        "in_process": (local, time.process_time),
    }
    result: dict = {"budgets": [short, long], "repeats": repeats}
    for side, (make, cpu_s) in sides.items():
        (short_s, short_n, short_cpu), (long_s, long_n, long_cpu) = (
            _median_seconds(make(budget), repeats, cpu_s) for budget in (short, long)
        )
        if long_n <= short_n:
            raise RuntimeError(f"{side}: {long} tokens asked, {long_n} produced; no per-token difference")
        result[side] = {
            "tokens": [short_n, long_n],
            "latency_ms": [1000 * short_s, 1000 * long_s],
            "ms_per_token": 1000 * (long_s - short_s) / (long_n - short_n),
            "cpu_ms_per_request": [1000 * short_cpu, 1000 * long_cpu],
            "cpu_ms_per_token": 1000 * (long_cpu - short_cpu) / (long_n - short_n) if server_pid else None,
        }
    served, local_side = result["served"], result["in_process"]
    result["served_vs_in_process_per_token"] = served["ms_per_token"] / local_side["ms_per_token"]
    if server_pid:
        result["served_vs_in_process_cpu_per_token"] = served["cpu_ms_per_token"] / local_side["cpu_ms_per_token"]
    return result


def markdown(result: dict) -> str:
    """The per-token table."""
    short, long = result["budgets"]
    lines = [
        f"| path | p50 ms at {short} tokens | p50 ms at {long} tokens | ms per token | CPU ms per token |",
        "|---|---|---|---|---|",
    ]
    for side in ("served", "in_process"):
        row = result[side]
        cpu = "–" if row["cpu_ms_per_token"] is None else f"{row['cpu_ms_per_token']:.2f}"
        lines.append(
            f"| {side.replace('_', '-')} | {row['latency_ms'][0]:.0f} | {row['latency_ms'][1]:.0f} "
            f"| {row['ms_per_token']:.2f} | {cpu} |"
        )
    lines += ["", f"Served / in-process per token: {result['served_vs_in_process_per_token']:.2f}× wall"]
    if "served_vs_in_process_cpu_per_token" in result:
        lines[-1] += f", {result['served_vs_in_process_cpu_per_token']:.2f}× CPU-seconds"
    return "\n".join(lines)
