"""The main job: Hindi speech in, an emotion-aware image out, through the real server, with progress."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from pathlib import Path

from s2i.speech import HINDI_SENTENCES


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


def run_demo(build_dir: Path, text: str | None, output: Path, *, steps: int, seed: int, max_new_tokens: int) -> int:
    """Build the tiny models, convert, serve, stream one Hindi clip through ``speech_to_image_stream``."""
    from s2i.conversion.convert import convert
    from s2i.server import ServerOptions, TritonServer
    from s2i.speech import synthesize
    from s2i.tiny import build_tiny_checkpoints

    print("[1/5] building the tiny checkpoints (cached) ...", flush=True)
    checkpoints = build_tiny_checkpoints(build_dir / "checkpoints")
    print("[2/5] exporting to ONNX, validating against PyTorch, writing the model repository ...", flush=True)
    report = convert(checkpoints, build_dir / "model_repository")
    worst = max(report.max_abs_diff.items(), key=lambda item: item[1])
    print(f"      {len(report.max_abs_diff)} graphs validated (largest max abs diff: {worst[0]} {worst[1]:.1e})")
    sentence = text or HINDI_SENTENCES[1]
    speech = synthesize(sentence, build_dir / "speech" / "hindi.wav")
    print(f"[3/5] Hindi speech: {speech} ({sentence})", flush=True)
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


async def _stream(url: str, speech: Path, *, steps: int, seed: int, max_new_tokens: int):
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
                print(f"      {elapsed:5.1f} s  denoising step {event.step}/{steps}", flush=True)
            else:
                print(f"      {elapsed:5.1f} s  image done", flush=True)
                final = event.result
    if final is None:
        raise RuntimeError("The stream ended without an image; see the server log.")
    final.timings_ms["total"] = 1000 * (time.perf_counter() - started)
    return final
