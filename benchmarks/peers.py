"""Peers: what a user would run instead of a Triton deployment, on the same inputs in the same run.

``optimum``: Hugging Face Optimum's ONNX Runtime pipelines in-process —
``ORTModelForSpeechSeq2Seq`` (Whisper, with the KV cache) and
``ORTStableDiffusionPipeline`` — exported from the same checkpoints the server
serves. With optimum 2.1 / optimum-onnx 0.1, ``from_pretrained(..., export=True)``
cannot infer the library of a Stable Diffusion folder, so both are exported first
with ``main_export`` (``library_name="diffusers"`` for the pipeline) and loaded from
the export. The emotion classifier has no Optimum counterpart (it is this
project's own BiLSTM); the peer runs it with PyTorch as the reference does, and
composes the prompt with the same code, so only the model runtime differs.

A peer is a callable ``run(index)`` like the workload's baseline; the runner times
it one request at a time (``threads=1``) or ``threads`` requests at once from a
thread pool, and reports throughput, latency and CPU-seconds per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

LOGGER = logging.getLogger(__name__)

WHISPER_TASK = "automatic-speech-recognition-with-past"
DIFFUSION_TASK = "text-to-image"


def export_for_optimum(checkpoint: Path, output: Path, task: str, library_name: str | None = None) -> Path:
    """``main_export`` of ``checkpoint`` into ``output`` once (an existing export is reused)."""
    from optimum.exporters.onnx import main_export

    output = Path(output)
    marker = output / ".exported"
    if not marker.is_file():
        LOGGER.info("Exporting %s for Optimum (%s) into %s", checkpoint, task, output)
        options = {"library_name": library_name} if library_name else {}
        main_export(str(checkpoint), output=output, task=task, device="cpu", do_validation=False, **options)
        # Loading the exported folder needs the processor/scheduler files beside the graphs.
        marker.write_text(str(checkpoint))
    return output


class OptimumWhisper:
    """``ORTModelForSpeechSeq2Seq.generate`` on an Optimum export of a Whisper checkpoint."""

    def __init__(self, checkpoint: Path, work_dir: Path) -> None:
        from optimum.onnxruntime import ORTModelForSpeechSeq2Seq
        from transformers import WhisperProcessor

        exported = export_for_optimum(checkpoint, Path(work_dir) / "whisper", WHISPER_TASK)
        self.processor = WhisperProcessor.from_pretrained(checkpoint)
        self.model = ORTModelForSpeechSeq2Seq.from_pretrained(exported, use_cache=True)

    def generate(self, samples_16khz: np.ndarray, *, task: str = "translate", max_new_tokens: int = 128):
        """Token ids and text for one clip, as :class:`~s2i.stages.whisper.reference.WhisperReference`."""
        features = self.processor.feature_extractor(
            samples_16khz, sampling_rate=16_000, return_tensors="pt"
        ).input_features
        generated = self.model.generate(features, language="hi", task=task, max_new_tokens=max_new_tokens)
        token_ids = generated[0].tolist()
        return token_ids, self.processor.tokenizer.decode(token_ids, skip_special_tokens=True).strip()


class OptimumDiffusion:
    """``ORTStableDiffusionPipeline`` on an Optimum export of a diffusers checkpoint."""

    def __init__(self, checkpoint: Path, work_dir: Path) -> None:
        from optimum.onnxruntime import ORTStableDiffusionPipeline

        exported = export_for_optimum(checkpoint, Path(work_dir) / "diffusion", DIFFUSION_TASK, "diffusers")
        self.pipeline = ORTStableDiffusionPipeline.from_pretrained(exported)
        self.pipeline.set_progress_bar_config(disable=True)

    def generate(
        self, prompts: Sequence[str], negative_prompts: Sequence[str], *, seed: int, num_inference_steps: int
    ) -> list[np.ndarray]:
        """``uint8 [height, width, 3]`` images, one per prompt (a list is one batched pipeline call).

        Safe from several threads at once: the ONNX Runtime sessions are shared, the scheduler is not.
        """
        import copy

        import torch

        # The scheduler keeps each call's state (its timesteps, step index, PNDM's history): threads
        # sharing one corrupted it (`index 1001 is out of bounds` at concurrency 8).
        pipeline = copy.copy(self.pipeline)
        object.__setattr__(pipeline, "scheduler", copy.deepcopy(self.pipeline.scheduler))
        images = pipeline(
            list(prompts),
            negative_prompt=list(negative_prompts),
            num_inference_steps=num_inference_steps,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images
        return [(np.clip(image, 0, 1) * 255).round().astype(np.uint8) for image in images]


class OptimumPipeline:
    """The speech-to-image pipeline on Optimum's ORT pipelines (emotion on PyTorch, as the reference)."""

    def __init__(self, checkpoints: Mapping[str, Path], work_dir: Path) -> None:
        from s2i.pipeline.prompt import StyleTemplates
        from s2i.stages.emotion.reference import EmotionReference

        self.whisper = OptimumWhisper(checkpoints["whisper"], work_dir)
        self.diffusion = OptimumDiffusion(checkpoints["diffusion"], work_dir)
        self.emotion = EmotionReference(checkpoints["emotion"])
        self.templates = StyleTemplates.load(None)

    def run_batch(
        self, clips: Sequence[bytes], *, seed: int, num_inference_steps: int, max_new_tokens: int
    ) -> list[bytes]:
        """PNG bytes per clip; the diffusion pipeline gets all prompts as one batch."""
        from s2i import names
        from s2i.audio import load_request_audio
        from s2i.pipeline.prompt import compose_prompt
        from s2i.pipeline.steps import encode_png

        composed = []
        for clip in clips:
            samples = load_request_audio(None, None, clip)
            _, text = self.whisper.generate(samples, max_new_tokens=max_new_tokens)
            probabilities = np.asarray(self.emotion.probabilities(samples), dtype=np.float32).reshape(-1)
            emotion = names.EMOTION_LABELS[int(probabilities.argmax())]
            composed.append(compose_prompt(text, emotion, self.templates))
        images = self.diffusion.generate(
            [item.prompt for item in composed],
            [item.negative_prompt for item in composed],
            seed=seed,
            num_inference_steps=num_inference_steps,
        )
        return [encode_png(image) for image in images]


def optimum_pipeline_peer(
    checkpoints: Mapping[str, Path],
    work_dir: Path,
    clips: Sequence[bytes],
    *,
    num_inference_steps: int,
    max_new_tokens: int,
) -> Callable[[int], None]:
    """``run(index)``: request ``index`` of the pipeline workload on the Optimum peer."""
    pipeline = OptimumPipeline(checkpoints, work_dir)

    def run(index: int) -> None:
        (png,) = pipeline.run_batch(
            [clips[index % len(clips)]],
            seed=index,
            num_inference_steps=num_inference_steps,
            max_new_tokens=max_new_tokens,
        )
        if not png.startswith(b"\x89PNG"):
            raise ValueError("the Optimum peer produced no PNG")

    return run


def optimum_whisper_peer(
    checkpoint: Path, work_dir: Path, clips: Sequence[np.ndarray], *, max_new_tokens: int
) -> Callable[[int], None]:
    """``run(index)``: request ``index`` of the whisper workload on ``ORTModelForSpeechSeq2Seq``."""
    whisper = OptimumWhisper(checkpoint, work_dir)

    def run(index: int) -> None:
        token_ids, _ = whisper.generate(clips[index % len(clips)], max_new_tokens=max_new_tokens)
        if not token_ids:
            raise ValueError("the Optimum peer produced no tokens")

    return run


def run_peer(run: Callable[[int], None], requests: int, concurrency: int = 1) -> dict:
    """Time ``requests`` calls of ``run``, ``concurrency`` at a time (threads; ONNX Runtime releases the GIL).

    CPU-seconds are this process's (every thread), so ``cores`` = CPU-seconds / wall
    seconds says how much of the machine the peer actually obtained.
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    run(0)  # warm-up: sessions, allocator, caches
    latencies: list[float] = []

    def timed(index: int) -> None:
        began = time.perf_counter()
        run(index)
        latencies.append(time.perf_counter() - began)

    cpu_started, started = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(timed, range(requests)))
    summary = in_process_summary(latencies, time.perf_counter() - started, time.process_time() - cpu_started)
    return {**summary, "concurrency": concurrency}


def in_process_summary(latencies_s: Sequence[float], wall_s: float, cpu_s: float) -> dict:
    """Throughput, latency (ms) and CPU use of requests run in this process (baseline or peer)."""
    requests = len(latencies_s)
    latencies_ms = np.asarray(latencies_s) * 1000
    return {
        "requests": requests,
        "wall_s": wall_s,
        "throughput_per_s": requests / wall_s,
        "latency_ms": {
            "p50": float(np.percentile(latencies_ms, 50)),
            "p90": float(np.percentile(latencies_ms, 90)),
            "mean": float(latencies_ms.mean()),
            "max": float(latencies_ms.max()),
        },
        "cpu_s": cpu_s,
        "cpu_s_per_request": cpu_s / requests,
        "cores": cpu_s / wall_s,
    }


def peer_ratios(runs: Sequence[dict], peers: Mapping[str, Sequence[dict]]) -> dict:
    """Served throughput / peer throughput at each level the peer ran, and p50 latency ratio at 1."""
    closed = {run["concurrency"]: run for run in runs if run["mode"] == "closed" and run["completed"]}
    result = {}
    for name, peer_runs in peers.items():
        ratios = {}
        for peer in peer_runs:
            served = closed.get(peer["concurrency"])
            if served is None:
                continue
            ratios[f"throughput_at_{peer['concurrency']}"] = served["throughput_per_s"] / peer["throughput_per_s"]
            if peer["concurrency"] == 1:
                ratios["latency_p50_at_1"] = served["latency_ms"]["p50"] / peer["latency_ms"]["p50"]
        result[name] = ratios
    return result


def comparison_markdown(report: dict) -> list[str]:
    """Served, reference and peers side by side (one run), with CPU-seconds per request and cores obtained."""
    rows = []

    def row(path: str, level, throughput: float, p50: float, cpu_s: float | None, cores: float | None) -> None:
        cpu = "–" if cpu_s is None else f"{cpu_s:.2f}"
        used = "–" if cores is None else f"{cores:.2f}"
        rows.append(f"| {path} | {level} | {throughput:.3f} | {p50:.0f} | {cpu} | {used} |")

    for run in report["runs"]:
        if run["mode"] == "closed" and run["completed"]:
            row(
                "served",
                run["concurrency"],
                run["throughput_per_s"],
                run["latency_ms"]["p50"],
                run.get("server_cpu_s_per_request"),
                run.get("server_cores"),
            )
    baseline = report.get("baseline")
    if baseline:
        row(
            "reference (PyTorch, in-process)",
            1,
            baseline["throughput_per_s"],
            baseline["latency_ms"]["p50"],
            baseline.get("cpu_s_per_request"),
            baseline.get("cores"),
        )
    for name, runs in (report.get("peers") or {}).items():
        for peer in runs:
            row(
                f"{name} (in-process)",
                peer["concurrency"],
                peer["throughput_per_s"],
                peer["latency_ms"]["p50"],
                peer["cpu_s_per_request"],
                peer["cores"],
            )
    if not rows or len(rows) == sum(1 for run in report["runs"] if run["mode"] == "closed"):
        return []
    lines = [
        "",
        "Side by side (same inputs, same run; CPU-s per request: the server's processes, or the in-process peer's):",
        "",
        "| path | concurrency | req/s | p50 ms | CPU-s/req | cores |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    for name, ratios in (report.get("peer_ratios") or {}).items():
        described = ", ".join(f"{key.replace('_', ' ')}: {value:.2f}×" for key, value in ratios.items())
        lines.append(f"\nServed / {name}: {described}.")
    return lines
