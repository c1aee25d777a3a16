"""The main job: Hindi speech in, an emotion-aware image out, through the real server, with progress."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from s2i.speech import HINDI_SENTENCES, speak


@contextlib.contextmanager
def ticking(label: str, every_s: float = 1.0):
    """Show elapsed seconds while a blocking step runs (one updating line on a terminal)."""
    done = threading.Event()
    started = time.perf_counter()
    interactive = sys.stdout.isatty()

    def tick():
        while not done.wait(every_s if interactive else 5 * every_s):
            elapsed = time.perf_counter() - started
            print(
                f"\r      {label} {elapsed:.0f} s" if interactive else f"      {label} {elapsed:.0f} s",
                end="" if interactive else "\n",
                flush=True,
            )

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if interactive:
            print("\r", end="")


def run_demo(
    build_dir: Path,
    text: str | None,
    output: Path,
    *,
    steps: int | None,
    seed: int,
    max_new_tokens: int | None,
    checkpoints: Mapping[str, Path] | None = None,
    voice_emotion: str | None = None,
    voice_strong: bool = False,
    work_dir: Path | None = None,
) -> int:
    """Convert checkpoints, serve them, stream one Hindi clip through ``speech_to_image_stream``.

    Args:
        build_dir: Where the repository, the spoken clip and the server log go.
        text: Hindi sentence to speak (default: a built-in one).
        output: PNG to write.
        steps: Denoising steps (``None``: the server's default).
        seed: Seed of the image.
        max_new_tokens: Whisper token budget (``None``: the server's default).
        checkpoints: Stage -> checkpoint folder to serve; every stage not named here serves
            its tiny random checkpoint (built once into ``build_dir``; all of them: the Quick start).
        voice_emotion: Speak the sentence with this emotion's prosody (``None``: espeak-ng's plain voice).
        voice_strong: Speak it at RAVDESS's strong intensity.
        work_dir: ONNX export cache (default ``build_dir/onnx``).
    """
    from s2i.conversion.convert import convert
    from s2i.server import ServerOptions, TritonServer
    from s2i.stages.registry import STAGES
    from s2i.tiny import build_tiny_checkpoints

    given = {name: Path(path) for name, path in (checkpoints or {}).items()}
    unknown = sorted(set(given) - set(STAGES))
    if unknown:
        raise ValueError(f"`checkpoints` names unknown stages {unknown}; stages are {sorted(STAGES)}.")
    missing = {name: str(path) for name, path in given.items() if not path.is_dir()}
    if missing:
        raise FileNotFoundError(f"Checkpoint folders not found: {missing}.")
    tiny = [name for name in STAGES if name not in given]
    print(f"[1/5] checkpoints: tiny {tiny or 'none'} (built once, cached), given {sorted(given) or 'none'}", flush=True)
    chosen = build_tiny_checkpoints(build_dir / "checkpoints", sizes=dict.fromkeys(tiny, "tiny")) if tiny else {}
    chosen |= given
    print("[2/5] exporting to ONNX, validating against PyTorch, writing the model repository ...", flush=True)
    report = convert(chosen, build_dir / "model_repository", work_dir=work_dir or build_dir / "onnx")
    worst = max(report.max_abs_diff.items(), key=lambda item: item[1])
    print(f"      {len(report.max_abs_diff)} graphs validated (largest max abs diff: {worst[0]} {worst[1]:.1e})")
    sentence = text or HINDI_SENTENCES[1]
    speech = speak(sentence, build_dir / "speech" / "hindi.wav", emotion=voice_emotion, strong=voice_strong)
    spoken = f", spoken {'strongly ' if voice_strong else ''}{voice_emotion}" if voice_emotion else ""
    print(f"[3/5] Hindi speech: {speech} ({sentence}{spoken})", flush=True)
    print(f"[4/5] starting tritonserver with {len(report.models)} models ...", flush=True)
    log_file = build_dir / "tritonserver.log"
    server = TritonServer(ServerOptions(str(report.repository)).with_free_ports(), log_file=log_file)
    with ticking("starting"):
        server.start()
    try:
        print(f"      ready: {server.describe_binds()} (log: {log_file})", flush=True)
        print("[5/5] speech -> server -> image:", flush=True)
        result = asyncio.run(_stream(server.grpc_url, speech, steps=steps, seed=seed, max_new_tokens=max_new_tokens))
    finally:
        server.stop()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(result.png)
    timings = ", ".join(f"{step} {ms:.0f} ms" for step, ms in result.timings_ms.items())
    print(f"English translation: {result.text}")
    print(f"emotion: {result.emotion} ({result.emotion_scores[result.emotion]:.2f})")
    print(f"prompt: {result.prompt}")
    print(f"server timings: {timings}")
    print(f"image: {output} (seed {result.seed})")
    return 0


async def _stream(url: str, speech: Path, *, steps: int | None, seed: int, max_new_tokens: int | None):
    from s2i.client import AsyncClient

    started = time.perf_counter()
    final = None
    async with AsyncClient(url) as client:
        async for event in client.stream_speech_to_image(
            speech, preview_every=1, seed=seed, num_inference_steps=steps, max_new_tokens=max_new_tokens
        ):
            elapsed = time.perf_counter() - started
            if event.kind == "text":
                print(f"      {elapsed:5.1f} s  translated and classified: {event.result.emotion!r}", flush=True)
            elif event.kind == "preview":
                print(f"      {elapsed:5.1f} s  denoising step {event.step}{f'/{steps}' if steps else ''}", flush=True)
            else:
                print(f"      {elapsed:5.1f} s  image done", flush=True)
                final = event.result
    if final is None:
        raise RuntimeError("The stream ended without an image; see the server log.")
    final.timings_ms["total"] = 1000 * (time.perf_counter() - started)
    return final
