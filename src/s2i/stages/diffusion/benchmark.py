"""Measure the served ``diffusion`` model: per-step UNet latency and batching speedup.

``python -m s2i.stages.diffusion.benchmark --size tiny --steps 20`` builds the
diffusion checkpoint of that size alone (cached under ``--build-dir``), converts
it, starts the embedded server and reports:

* 8 sequential requests: seconds per image, and the ``unet`` model's compute time
  per call (one call = one denoising step of one request, 2 rows with guidance);
* 8 concurrent requests (different seeds and prompts): seconds per image, UNet calls
  made and compute time per call (steps of several requests per call);
* the speedup per image of the concurrent batch over the sequential run.

UNet numbers come from Triton's own statistics (``compute_infer`` of ``unet``).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CONCURRENCY = 8


def _unet_stats(client) -> tuple[int, int]:
    stats = client._client.get_inference_statistics("unet", as_json=True)["model_stats"][0]
    compute = stats.get("inference_stats", {}).get("compute_infer", {})
    return int(stats.get("execution_count", 0)), int(compute.get("ns", 0))


def run(url: str, steps: int, height: int | None, width: int | None, scheduler: str) -> dict[str, float]:
    """Run the sequential and concurrent measurements against a server at ``url``."""
    from s2i.client import Client

    options = dict(num_inference_steps=steps, height=height, width=width, scheduler=scheduler, guidance_scale=7.5)
    prompts = [f"a photo of a cat, variation {i}" for i in range(CONCURRENCY)]
    with Client(url, timeout_s=600) as client:
        client.text_to_image("warm up", **{**options, "num_inference_steps": 2}, seed=0)
        calls0, ns0 = _unet_stats(client)
        started = time.perf_counter()
        for index, prompt in enumerate(prompts):
            client.text_to_image(prompt, seed=index, **options)
        sequential_s = time.perf_counter() - started
        calls1, ns1 = _unet_stats(client)

        def send(index: int):
            with Client(url, timeout_s=600) as own:
                return own.text_to_image(prompts[index], seed=index, **options)

        started = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(send, range(CONCURRENCY)))
        concurrent_s = time.perf_counter() - started
        calls2, ns2 = _unet_stats(client)
    return {
        "sequential_s_per_image": sequential_s / CONCURRENCY,
        "sequential_unet_calls": calls1 - calls0,
        "sequential_unet_ms_per_call": (ns1 - ns0) / max(calls1 - calls0, 1) / 1e6,
        "concurrent_s_per_image": concurrent_s / CONCURRENCY,
        "concurrent_unet_calls": calls2 - calls1,
        "concurrent_unet_ms_per_call": (ns2 - ns1) / max(calls2 - calls1, 1) / 1e6,
        "concurrent_unet_ms_per_request_step": (ns2 - ns1) / (CONCURRENCY * steps) / 1e6,
        "speedup_per_image": sequential_s / concurrent_s,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point: build, convert, serve, measure, print."""
    from s2i.conversion.convert import convert
    from s2i.server import ServerOptions, TritonServer
    from s2i.stages.diffusion.stage import DiffusionStage

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="checkpoint preset (tiny, base)")
    parser.add_argument("--checkpoint", type=Path, help="a diffusers checkpoint instead of a generated one")
    parser.add_argument("--build-dir", type=Path, default=Path("build/bench-diffusion"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--scheduler", default="euler")
    args = parser.parse_args(argv)

    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = args.build_dir / "checkpoints" / args.size
        if not (checkpoint / ".complete").is_file():
            DiffusionStage().build_tiny(checkpoint, args.size)
            (checkpoint / ".complete").write_text("ok\n")
    label = args.checkpoint or args.size
    report = convert({"diffusion": checkpoint}, args.build_dir / f"model_repository-{args.size}")
    options = ServerOptions(str(report.repository)).with_free_ports()
    with TritonServer(options, log_file=args.build_dir / "tritonserver.log") as server:
        results = run(server.grpc_url, args.steps, args.height, args.width, args.scheduler)
    print(f"checkpoint {label}, {args.steps} steps ({args.scheduler}), guidance 7.5, {CONCURRENCY} requests")
    for key, value in results.items():
        print(f"  {key:38s} {value:10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
