"""A prepared GPU check: per-stage and end-to-end times of the PyTorch reference at real dimensions.

Run by ``scripts/gpu-check.sh`` on an air-gapped GPU host (Python 3.12, PyTorch with
CUDA, transformers; no diffusers, no package index: the script installs the wheels
it carries, offline). This file imports only the standard library, torch,
transformers and diffusers, so it runs from a bare checkout without installing the
project. Weights are random at the real dimensions (Whisper-small, Stable Diffusion
1.5 at 512x512): compute is what is measured, not quality. No tokenizer files are
needed: prompts are random token ids, and the pipeline gets prompt embeddings.

``--dry-run`` runs the same code with tiny dimensions on the CPU (fp32) in seconds;
a CI test runs it so the check cannot rot before a GPU host is available.

Rows of the results table (``results.md`` and ``results.json`` in ``--output``):

* ``whisper_encoder`` at batch 1 and 8 (one 30 s window per row);
* ``whisper_decode_step``: one greedy decoding step with the KV cache at batch 1 and 8,
  after a 4-token prompt, per step and per token per sequence (the goal is <= 0.5 ms
  per token per sequence at batch 8 on an H100);
* ``text_encoder``, ``unet_step`` (classifier-free guidance: 2 rows per image),
  ``vae_decode`` at batch 1 and 8;
* ``sd_end_to_end``: ``StableDiffusionPipeline`` from prompt embeddings to an image
  array, batch 1 at 50 steps (goal <= 0.5 s on an H100) and batch 8 at 25 steps
  (goal >= 4 images/s), text encoder included;
* ``torch_runner_*``: the ``python-torch`` target's runners (``src/s2i/stages/*/torch_runner.py``,
  imported from this checkout) on the same random models: a greedy decoding step with the cache
  on the device and with the stage model's host copies, and a guided UNet step, each with CUDA
  graphs off and on (CUDA only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

LOGGER = logging.getLogger("gpu_check")
# The project's source, so a bare checkout on the GPU host imports the python-torch target's runners.
SOURCE = Path(__file__).resolve().parents[1] / "src"


@dataclasses.dataclass(frozen=True)
class Dimensions:
    """Model dimensions and workload sizes of one run."""

    whisper: dict
    text_hidden: int
    text_layers: int
    text_heads: int
    unet_channels: tuple[int, ...]
    unet_layers_per_block: int
    attention_head_dim: int
    vae_channels: tuple[int, ...]
    vae_norm_groups: int
    image_size: int
    batches: tuple[int, ...]
    steps_single: int
    steps_batched: int
    decode_tokens: int
    repeats: int


REAL = Dimensions(
    # Whisper-small.
    whisper=dict(
        d_model=768,
        encoder_layers=12,
        decoder_layers=12,
        encoder_attention_heads=12,
        decoder_attention_heads=12,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
        num_mel_bins=80,
        vocab_size=51865,
        max_source_positions=1500,
        max_target_positions=448,
    ),
    # Stable Diffusion 1.5.
    text_hidden=768,
    text_layers=12,
    text_heads=12,
    unet_channels=(320, 640, 1280, 1280),
    unet_layers_per_block=2,
    attention_head_dim=8,
    vae_channels=(128, 256, 512, 512),
    vae_norm_groups=32,
    image_size=512,
    batches=(1, 8),
    steps_single=50,
    steps_batched=25,
    decode_tokens=32,
    repeats=3,
)

DRY_RUN = Dimensions(
    whisper=dict(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_mel_bins=80,
        vocab_size=51865,
        max_source_positions=50,
        max_target_positions=64,
    ),
    text_hidden=32,
    text_layers=2,
    text_heads=4,
    unet_channels=(32, 64),
    unet_layers_per_block=1,
    attention_head_dim=8,
    vae_channels=(32, 32),
    vae_norm_groups=32,
    image_size=32,
    batches=(1, 2),
    steps_single=2,
    steps_batched=2,
    decode_tokens=3,
    repeats=1,
)


def row(stage: str, batch: int, seconds: float, **extra) -> dict:
    """One line of the results table."""
    return dict(stage=stage, batch=batch, ms=1000 * seconds, ms_per_item=1000 * seconds / batch, **extra)


def guarded(rows: list[dict], stage: str, batch: int, measure: Callable[[], list[dict]]) -> None:
    """Append ``measure()``'s rows, or one row naming its error: one failing variant must not cost the others.

    The check runs once, unattended, on a borrowed machine; a table with a hole beats no table.
    """
    try:
        rows.extend(measure())
    except Exception as error:  # noqa: BLE001 - recorded in the table, the run goes on
        LOGGER.exception("%s at batch %d failed", stage, batch)
        rows.append(
            dict(stage=stage, batch=batch, ms=None, ms_per_item=None, error=f"{type(error).__name__}: {error}"[:300])
        )


class Timer:
    """Wall time of a callable, synchronising the GPU around it."""

    def __init__(self, torch, device: str) -> None:
        self.torch, self.device = torch, device

    def _sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def median_s(self, call: Callable[[], object], repeats: int, warmup: int = 1) -> float:
        """Median seconds of ``repeats`` calls after ``warmup`` unmeasured ones."""
        with self.torch.inference_mode():
            for _ in range(warmup):
                call()
            self._sync()
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                call()
                self._sync()
                times.append(time.perf_counter() - started)
        return statistics.median(times)


def whisper_rows(torch, dims: Dimensions, device: str, dtype, timer: Timer) -> list[dict]:
    """Encoder and KV-cache decoding step times of a random Whisper at ``dims``."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(**dims.whisper, decoder_start_token_id=50258, pad_token_id=50257)
    with torch.device(device):
        model = WhisperForConditionalGeneration(config).to(dtype).eval()
    rows = []
    for batch in dims.batches:
        features = torch.randn(batch, config.num_mel_bins, 2 * config.max_source_positions, device=device, dtype=dtype)
        seconds = timer.median_s(lambda features=features: model.model.encoder(features), dims.repeats)
        rows.append(row("whisper_encoder", batch, seconds))
        with torch.inference_mode():
            encoder_out = model.model.encoder(features)
        prompt = torch.tensor([[50258, 50276, 50358, 50363]] * batch, device=device)

        def decode(encoder_out=encoder_out, prompt=prompt) -> None:
            transformers_greedy(torch, model, encoder_out, prompt, dims.decode_tokens + 1)

        def prompt_only(encoder_out=encoder_out, prompt=prompt) -> None:
            model(encoder_outputs=encoder_out, decoder_input_ids=prompt, use_cache=True)

        step_s = (timer.median_s(decode, dims.repeats) - timer.median_s(prompt_only, dims.repeats)) / dims.decode_tokens
        step_s = max(step_s, 0.0)
        rows.append(row("whisper_decode_step", batch, step_s))
        for cuda_graph in (False, True) if device == "cuda" else (False,):
            stage = "whisper_decode_step_static" + ("_cuda_graph" if cuda_graph else "")
            guarded(
                rows,
                stage,
                batch,
                lambda encoder_out=encoder_out, prompt=prompt, stage=stage, cuda_graph=cuda_graph: static_decode_rows(
                    torch, model, encoder_out, prompt, dims, timer, stage, cuda_graph
                ),
            )
    return rows


def transformers_greedy(torch, model, encoder_out, prompt, new_tokens: int):
    """Greedy tokens by transformers' own forward and cache (generate's loop, minus its rules)."""
    out = model(encoder_outputs=encoder_out, decoder_input_ids=prompt, use_cache=True)
    tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
    for _ in range(new_tokens - 1):
        out = model(
            encoder_outputs=encoder_out,
            decoder_input_ids=tokens[-1],
            past_key_values=out.past_key_values,
            use_cache=True,
        )
        tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat(tokens, dim=1)


def static_decode_rows(torch, model, encoder_out, prompt, dims: Dimensions, timer: Timer, stage: str, cuda_graph: bool):
    """A decoding step of :class:`StaticWhisperDecoder` (the python-torch target's decoder), tokens checked.

    The preallocated cache gives each step fixed shapes, so on CUDA the step is one graph replay.
    """
    from s2i.stages.whisper.static_decoding import StaticWhisperDecoder

    batch, new_tokens = prompt.shape[0], dims.decode_tokens + 1
    decoder = StaticWhisperDecoder(model, batch, prompt.shape[1] + new_tokens, encoder_out[0].shape[1])
    decoder.set_encoder_output(encoder_out[0])
    if cuda_graph:
        decoder.capture()
    with torch.inference_mode():
        tokens = decoder.generate(prompt, new_tokens)
        expected = transformers_greedy(torch, model, encoder_out, prompt, new_tokens)
    # A fraction, not an assertion: fp16 kernels of the two paths may round a near-tie differently.
    agree = float((tokens == expected).float().mean())
    full_s = timer.median_s(lambda: decoder.generate(prompt, new_tokens), dims.repeats)
    first_s = timer.median_s(lambda: decoder.generate(prompt, 1), dims.repeats)
    return [row(stage, batch, max(full_s - first_s, 0.0) / dims.decode_tokens, tokens_equal_generate=agree)]


def diffusion_components(torch, dims: Dimensions, device: str, dtype):
    """Random CLIP text encoder, UNet and VAE at ``dims``, plus an SD-1.5 DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig(
        hidden_size=dims.text_hidden,
        intermediate_size=4 * dims.text_hidden,
        num_hidden_layers=dims.text_layers,
        num_attention_heads=dims.text_heads,
        vocab_size=49408,
        max_position_embeddings=77,
    )
    levels = len(dims.unet_channels)
    with torch.device(device):
        text_encoder = CLIPTextModel(text_config).to(dtype).eval()
        unet = (
            UNet2DConditionModel(
                sample_size=dims.image_size // 8,
                block_out_channels=dims.unet_channels,
                layers_per_block=dims.unet_layers_per_block,
                down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
                cross_attention_dim=dims.text_hidden,
                attention_head_dim=dims.attention_head_dim,
                norm_num_groups=min(32, dims.unet_channels[0]),
            )
            .to(dtype)
            .eval()
        )
        vae = (
            AutoencoderKL(
                block_out_channels=dims.vae_channels,
                down_block_types=("DownEncoderBlock2D",) * len(dims.vae_channels),
                up_block_types=("UpDecoderBlock2D",) * len(dims.vae_channels),
                latent_channels=4,
                norm_num_groups=dims.vae_norm_groups,
                sample_size=dims.image_size,
            )
            .to(dtype)
            .eval()
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return text_encoder, unet, vae, scheduler


def diffusion_rows(torch, dims: Dimensions, device: str, dtype, timer: Timer, compile_unet: bool = True) -> list[dict]:
    """Text encoder, UNet step, VAE decode and end-to-end pipeline times at ``dims``."""
    from diffusers import StableDiffusionPipeline

    text_encoder, unet, vae, scheduler = diffusion_components(torch, dims, device, dtype)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=None,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    latent = dims.image_size // 8
    # vae_scale_factor comes from the VAE's depth; real SD has 4 levels, so 8.
    rows = []
    timestep = torch.tensor(500, device=device)
    for batch in dims.batches:
        ids = torch.randint(0, 49408, (2 * batch, 77), device=device)
        seconds = timer.median_s(lambda ids=ids: text_encoder(ids), dims.repeats)
        rows.append(row("text_encoder", batch, seconds))
        with torch.inference_mode():
            embeddings = text_encoder(ids)[0]
        sample = torch.randn(2 * batch, 4, latent, latent, device=device, dtype=dtype)
        seconds = timer.median_s(
            lambda sample=sample, embeddings=embeddings: unet(sample, timestep, encoder_hidden_states=embeddings),
            dims.repeats,
        )
        rows.append(row("unet_step", batch, seconds))
        latents = torch.randn(batch, 4, latent, latent, device=device, dtype=dtype)
        seconds = timer.median_s(lambda latents=latents: vae.decode(latents / 0.18215), dims.repeats)
        rows.append(row("vae_decode", batch, seconds))
    for batch, steps in ((dims.batches[0], dims.steps_single), (dims.batches[-1], dims.steps_batched)):
        ids = torch.randint(0, 49408, (batch, 77), device=device)

        def end_to_end(ids=ids, batch=batch, steps=steps) -> None:
            embeddings = text_encoder(ids)[0]
            pipeline(
                prompt_embeds=embeddings,
                negative_prompt_embeds=torch.zeros_like(embeddings),
                num_inference_steps=steps,
                height=dims.image_size,
                width=dims.image_size,
                output_type="np",
            )

        seconds = timer.median_s(end_to_end, max(1, dims.repeats - 1))
        rows.append(row(f"sd_end_to_end_{steps}_steps", batch, seconds))
    guarded(
        rows,
        "sd_loop",
        0,
        lambda: loop_rows(torch, dims, device, dtype, timer, text_encoder, unet, vae, scheduler, compile_unet),
    )
    return rows


class GraphedUNet:
    """The UNet's noise prediction at fixed shapes, recorded once as a CUDA graph and replayed.

    At batch 1 a UNet step is hundreds of small kernels whose launches cost about as much as
    their arithmetic; a replay launches them all at once.
    """

    def __init__(self, torch, unet, sample, timestep, embeddings, warmup_calls: int = 2) -> None:
        self.sample, self.timestep, self.embeddings = sample.clone(), timestep.clone(), embeddings.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(warmup_calls):
                unet(self.sample, self.timestep, encoder_hidden_states=self.embeddings)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.noise = unet(self.sample, self.timestep, encoder_hidden_states=self.embeddings).sample

    def __call__(self, sample, timestep, embeddings):
        """The noise prediction for these inputs (a view of the graph's output: read before the next call)."""
        self.sample.copy_(sample)
        self.timestep.copy_(timestep)
        self.embeddings.copy_(embeddings)
        self.graph.replay()
        return self.noise


def denoise(
    torch, unet_call, scheduler, vae, embeddings, batch: int, steps: int, latent: int, guidance_scale: float = 7.5
):
    """The served loop's arithmetic in-process: guided DDIM steps from seeded noise, then the VAE."""
    scheduler.set_timesteps(steps, device=embeddings.device)
    generator = torch.Generator(embeddings.device).manual_seed(0)
    latents = torch.randn((batch, 4, latent, latent), generator=generator, device=embeddings.device)
    latents = latents.to(embeddings.dtype) * scheduler.init_noise_sigma
    for timestep in scheduler.timesteps:
        unconditional, conditional = unet_call(torch.cat([latents] * 2), timestep, embeddings).chunk(2)
        guided = unconditional + guidance_scale * (conditional - unconditional)
        latents = scheduler.step(guided, timestep, latents).prev_sample
    image = vae.decode(latents / 0.18215).sample
    return (image / 2 + 0.5).clamp(0, 1)


def tune(torch, unet) -> None:
    """Channels-last activations, one fused QKV projection per attention, cuDNN's algorithm search."""
    unet.to(memory_format=torch.channels_last)
    unet.fuse_qkv_projections()
    torch.backends.cudnn.benchmark = True


def loop_rows(
    torch,
    dims: Dimensions,
    device: str,
    dtype,
    timer: Timer,
    text_encoder,
    unet,
    vae,
    scheduler,
    compile_unet: bool = True,
) -> list[dict]:
    """Whole images through :func:`denoise`: eager, then (on CUDA) the UNet as a CUDA graph, tuned, compiled.

    Variants apply on top of each other. ``max_pixel_difference`` compares each image with the
    plain eager one (same seed, [0, 1] range): the optimisations must not change the picture.
    """
    latent = dims.image_size // 8
    reference_images: dict[int, object] = {}

    def eager_unet(sample, timestep, embeddings):
        return unet(sample, timestep, encoder_hidden_states=embeddings).sample

    def variant_rows(variant: str) -> list[dict]:
        rows: list[dict] = []
        runner = unet
        if variant == "_tuned":
            tune(torch, unet)
        if variant == "_compiled":
            runner = torch.compile(unet)
        for batch, steps in ((dims.batches[0], dims.steps_single), (dims.batches[-1], dims.steps_batched)):
            generator = torch.Generator(device).manual_seed(batch)
            ids = torch.randint(0, 49408, (batch, 77), device=device, generator=generator)
            with torch.inference_mode():
                conditional = text_encoder(ids)[0]
                embeddings = torch.cat([torch.zeros_like(conditional), conditional])
            calls = {"eager": eager_unet} if variant != "_compiled" else {}
            if device == "cuda":
                sample = torch.randn(2 * batch, 4, latent, latent, device=device, dtype=dtype)
                compile_started = time.perf_counter()
                with torch.inference_mode():
                    graphed = GraphedUNet(torch, runner, sample, scheduler.timesteps[:1][0].to(device), embeddings)
                calls["cuda_graph"] = graphed
                seconds = timer.median_s(
                    lambda graphed=graphed, sample=sample, embeddings=embeddings: graphed(
                        sample, torch.tensor(500, device=device), embeddings
                    ),
                    dims.repeats,
                )
                rows.append(
                    row(
                        f"unet_step_cuda_graph{variant}",
                        batch,
                        seconds,
                        capture_s=time.perf_counter() - compile_started,
                    )
                )
            for name, call in calls.items():
                images: dict[str, object] = {}

                def end_to_end(call=call, ids=ids, batch=batch, steps=steps, images=images):
                    conditional = text_encoder(ids)[0]
                    embeddings = torch.cat([torch.zeros_like(conditional), conditional])
                    images["last"] = denoise(torch, call, scheduler, vae, embeddings, batch, steps, latent)

                seconds = timer.median_s(end_to_end, max(1, dims.repeats - 1))
                reference_images.setdefault(batch, images["last"])
                difference = float((images["last"] - reference_images[batch]).abs().max())
                rows.append(
                    row(f"sd_loop_{name}{variant}_{steps}_steps", batch, seconds, max_pixel_difference=difference)
                )
        return rows

    rows: list[dict] = []
    for variant in ["", "_tuned"] + (["_compiled"] if device == "cuda" and compile_unet else []):
        guarded(rows, f"sd_loop{variant}", 0, lambda variant=variant: variant_rows(variant))
    return rows


def markdown_row(result: dict) -> str:
    """One table line; checks made along the way (token agreement, pixel differences, errors) go in notes."""
    notes = ", ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key}: {value}"
        for key, value in result.items()
        if key not in ("stage", "batch", "ms", "ms_per_item")
    )
    if result["ms"] is None:
        return f"| {result['stage']} | {result['batch']} | – | – | {notes} |"
    return f"| {result['stage']} | {result['batch']} | {result['ms']:.2f} | {result['ms_per_item']:.2f} | {notes} |"


def markdown(results: dict) -> str:
    """The results table."""
    lines = [
        f"GPU check on {results['device_name']} ({results['mode']}, {results['dtype']}), "
        f"torch {results['versions']['torch']}, transformers {results['versions']['transformers']}, "
        f"diffusers {results['versions']['diffusers']}, {results['total_s']:.0f} s in all.",
        "",
        "| stage | batch | ms per call | ms per item | notes |",
        "|---|---|---|---|---|",
    ]
    lines += [markdown_row(r) for r in results["rows"]]
    return "\n".join(lines) + "\n"


def run(dry_run: bool, output: Path, device: str | None = None, compile_unet: bool = True) -> dict:
    """Measure every row and write ``results.json`` and ``results.md`` into ``output``."""
    import diffusers
    import torch
    import transformers

    if str(SOURCE) not in sys.path:
        sys.path.insert(0, str(SOURCE))
    started = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not dry_run and device != "cuda":
        raise SystemExit("no CUDA device: run with `--dry-run` (tiny dimensions, CPU) instead")
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    dims = DRY_RUN if dry_run else REAL
    timer = Timer(torch, device)
    rows = whisper_rows(torch, dims, device, dtype, timer)
    LOGGER.info("whisper done after %.0f s", time.perf_counter() - started)
    rows += diffusion_rows(torch, dims, device, dtype, timer, compile_unet)
    rows += torch_runner_rows(torch, dims, device, dtype, timer)
    results = {
        "mode": "dry-run (tiny dimensions)" if dry_run else "Whisper-small and SD-1.5 dimensions",
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "diffusers": diffusers.__version__,
        },
        "rows": rows,
        "total_s": time.perf_counter() - started,
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results, indent=2))
    (output / "results.md").write_text(markdown(results))
    return results


# --- The python-torch target's runners (issue #20 item 4) -------------------------------------


def torch_runner_classes():
    """The ``python-torch`` runners, imported from this checkout's ``src`` (no install needed)."""
    if str(SOURCE) not in sys.path:
        sys.path.insert(0, str(SOURCE))
    from s2i.stages import torch_runner
    from s2i.stages.diffusion.torch_runner import UNetRunner
    from s2i.stages.whisper.torch_runner import WhisperDecoderRunner, WhisperDecoderWithPastRunner

    return torch_runner, UNetRunner, WhisperDecoderRunner, WhisperDecoderWithPastRunner


# Decoding steps timed with the stage model's host copies of the cache.
HOST_COPY_TOKENS = 8


def runner_variants(device: str) -> list[tuple[str, bool]]:
    """(row suffix, CUDA graphs on): both on CUDA; on the CPU graphs are a no-op, so one variant."""
    return [("", False), ("_cuda_graphs", True)] if device == "cuda" else [("", False)]


def runner_decode_rows(torch, dims: Dimensions, device: str, dtype, timer: Timer) -> list[dict]:
    """Greedy decoding steps of a random Whisper at ``dims`` through the ``python-torch`` runners.

    ``torch_runner_decode_step``: the cache stays on the device (``run_torch``), as a loop
    owning the runner would keep it; ms per item is ms per token per sequence.
    ``torch_runner_decode_step_host_copies``: the stage model's contract (``run``: numpy in
    and out, the whole cache copied to the host and back at every step), the floor of the
    BLS path before shared memory and Triton.
    """
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch_runner, _, decoder_class, with_past_class = torch_runner_classes()
    names = sys.modules["s2i.names"]
    config = WhisperConfig(**dims.whisper, decoder_start_token_id=50258, pad_token_id=50257)
    with torch.device(device):
        model = WhisperForConditionalGeneration(config).to(dtype).eval()
    dtype_name = str(dtype).removeprefix("torch.")
    frames = config.max_source_positions
    rows = []
    for suffix, graphs in [*runner_variants(device), ("_host_copies", False)]:
        for batch in dims.batches:
            options = torch_runner.TorchOptions(device=device, dtype=dtype_name, cuda_graphs=graphs)
            # A runner per batch size: its CUDA graphs (one per cache length) stay within the cap.
            first_step = decoder_class(model=model, options=options)
            step = with_past_class(model=model, options=options)
            hidden = torch.randn(batch, frames, config.d_model, device=device, dtype=dtype)
            prompt = torch.tensor([[50258, 50276, 50358, 50363]] * batch, device=device)
            with torch.inference_mode():
                first = first_step.run_torch({names.INPUT_IDS: prompt, names.ENCODER_HIDDEN_STATES: hidden})
            past = {
                name.replace("present", "past_key_values", 1): value
                for name, value in first.items()
                if name.startswith("present")
            }
            start = first[names.LOGITS][:, -1].argmax(-1, keepdim=True)
            host = suffix == "_host_copies"
            if host:
                past = {name: value.float().cpu().numpy() for name, value in past.items()}
                start = start.cpu().numpy()

            # Host copies move the whole cache twice a step (near 1 GB at batch 8): fewer steps suffice.
            tokens = min(dims.decode_tokens, HOST_COPY_TOKENS) if host else dims.decode_tokens

            def decode(step=step, past=past, start=start, host=host, tokens=tokens) -> None:
                cache, token = dict(past), start
                for _ in range(tokens):
                    inputs = {names.INPUT_IDS: token, **cache}
                    out = step.run(inputs) if host else step.run_torch(inputs)
                    logits = out[names.LOGITS][:, -1]
                    token = logits.argmax(-1, keepdims=True) if host else logits.argmax(-1, keepdim=True)
                    for name, value in out.items():
                        if name.startswith("present"):
                            cache[name.replace("present", "past_key_values", 1)] = value

            # Two unmeasured passes: the first sees each cache length, the second captures its graph.
            seconds = timer.median_s(decode, dims.repeats, warmup=1 if host else 2) / tokens
            result = row(f"torch_runner_decode_step{suffix}", batch, seconds)
            result["graphs_captured"] = step.graphs_captured
            rows.append(result)
            del first_step, step, past, first
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def runner_unet_rows(torch, dims: Dimensions, device: str, dtype, timer: Timer) -> list[dict]:
    """A guided UNet step (2 rows per image) at ``dims`` through the ``python-torch`` runner."""
    torch_runner, unet_class, _, _ = torch_runner_classes()
    names = sys.modules["s2i.names"]
    text_encoder, unet, vae, _ = diffusion_components(torch, dims, device, dtype)
    del text_encoder, vae
    latent = dims.image_size // 8
    dtype_name = str(dtype).removeprefix("torch.")
    rows = []
    for suffix, graphs in runner_variants(device):
        runner = unet_class(model=unet, options=torch_runner.TorchOptions(device, dtype_name, cuda_graphs=graphs))
        for batch in dims.batches:
            inputs = {
                names.SAMPLE: torch.randn(2 * batch, 4, latent, latent, device=device, dtype=dtype),
                names.TIMESTEP: torch.full((2 * batch, 1), 500.0, device=device, dtype=dtype),
                names.ENCODER_HIDDEN_STATES: torch.randn(2 * batch, 77, dims.text_hidden, device=device, dtype=dtype),
            }
            seconds = timer.median_s(
                lambda runner=runner, inputs=inputs: runner.run_torch(inputs), dims.repeats, warmup=2
            )
            result = row(f"torch_runner_unet_step{suffix}", batch, seconds)
            result["graphs_captured"] = runner.graphs_captured
            rows.append(result)
        del runner
    del unet
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def torch_runner_rows(torch, dims: Dimensions, device: str, dtype, timer: Timer) -> list[dict]:
    """Rows of the ``python-torch`` runners: Whisper decoding steps and the UNet step.

    A failing group leaves one row naming its error: the check runs once, unattended, on a
    borrowed machine, and the other rows must still come back.
    """
    rows: list[dict] = []
    for stage, measure in (
        ("torch_runner_decode_step", runner_decode_rows),
        ("torch_runner_unet_step", runner_unet_rows),
    ):
        try:
            rows += measure(torch, dims, device, dtype, timer)
        except Exception as error:  # noqa: BLE001 - recorded in the table, the run goes on
            LOGGER.exception("%s failed", stage)
            rows.append(
                dict(stage=stage, batch=0, ms=None, ms_per_item=None, error=f"{type(error).__name__}: {error}"[:300])
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/gpu_check.py [--dry-run] [--output DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny dimensions on the CPU (what CI runs)")
    parser.add_argument("--output", type=Path, default=Path("build/gpu-check"), help="results folder")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile variant (about 50 s of compiling per shape)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = run(args.dry_run, args.output, args.device, compile_unet=not args.no_compile)
    sys.stdout.write(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
