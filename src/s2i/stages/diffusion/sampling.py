"""Stable Diffusion inference on exported stage graphs: prompts, CFG + scheduler loop, VAE decode.

The loop follows ``StableDiffusionPipeline.__call__`` step for step, so images
match it on the same weights:

* prompts are padded/truncated to CLIP's 77 tokens (longer prompts are cut, as
  the pipeline does); the negative prompt defaults to ``""``;
* classifier-free guidance runs when ``guidance_scale > 1``: unconditional and
  conditional rows go through one UNet call, ``uncond + g * (cond - uncond)``;
* schedulers are diffusers' own classes configured from the checkpoint's
  ``scheduler_config.json``; initial latents come from
  ``randn_tensor(shape, generator=torch.Generator().manual_seed(seed))`` and the
  same generator feeds stochastic schedulers (Euler ancestral), as in the pipeline;
* the VAE decoder sees ``latents / scaling_factor``; pixels are
  ``round(clamp(x / 2 + 0.5, 0, 1) * 255)`` like the pipeline's PIL output.

A batch of requests runs in lock-step: at every step, the active requests whose
latents have the same shape share one UNet call, each with its own timestep,
scheduler state and generator, so requests never mix. Stage graphs are reached
through a :data:`~s2i.stages.runner.StageRunner` (BLS inside Triton, ONNX
Runtime sessions in tests).
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from s2i import names
from s2i.errors import InvalidInputError, RequestCancelledError, shown
from s2i.stages.runner import Cancelled, StageRunner

# Request name -> diffusers scheduler class.
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lcm": "LCMScheduler",
}
DEFAULT_NUM_INFERENCE_STEPS = 50  # the pipeline's default
DEFAULT_GUIDANCE_SCALE = 7.5  # the pipeline's default
# `LatentConsistencyModelPipeline`'s defaults: few steps, guidance through the UNet's w-embedding.
LCM_NUM_INFERENCE_STEPS = 4
LCM_GUIDANCE_SCALE = 8.5
MAX_NUM_INFERENCE_STEPS = 150
MAX_IMAGE_SIZE = 1024
MAX_PROMPT_CHARS = 4096  # prompts are cut to 77 tokens anyway; this only bounds the work of tokenising
MAX_SEED = 2**63 - 1
# Pipelines use 1-20; far larger values only overflow the latents (3.4e38 gave an image of inf/NaN).
MAX_GUIDANCE_SCALE = 100.0


def scheduler_class(name: str):
    """The diffusers scheduler class for a request's ``scheduler`` name."""
    import diffusers

    if name not in SCHEDULERS:
        raise InvalidInputError(names.SCHEDULER, f"must be one of {sorted(SCHEDULERS)}, got {shown(name)}.")
    return getattr(diffusers, SCHEDULERS[name])


@dataclasses.dataclass(frozen=True)
class ImageRequest:
    """One text-to-image request; ``None`` fields take the checkpoint's or pipeline's defaults."""

    prompt: str
    negative_prompt: str = ""
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    seed: int | None = None
    scheduler: str | None = None


def image_request_from(value: Callable[[str], object]) -> ImageRequest:
    """An :class:`ImageRequest` from a getter of the request's values (``None`` where left out)."""

    def integer(name: str) -> int | None:
        number = value(name)
        return None if number is None else int(number)

    steps, guidance = value(names.NUM_INFERENCE_STEPS), value(names.GUIDANCE_SCALE)
    return ImageRequest(
        prompt=value(names.PROMPT) or "",
        negative_prompt=value(names.NEGATIVE_PROMPT) or "",
        num_inference_steps=None if steps is None else int(steps),
        guidance_scale=None if guidance is None else float(guidance),
        height=integer(names.HEIGHT),
        width=integer(names.WIDTH),
        seed=integer(names.SEED),
        scheduler=value(names.SCHEDULER),
    )


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """What one request produced: ``uint8 [height, width, 3]`` RGB and the seed used."""

    image: np.ndarray
    seed: int


@dataclasses.dataclass
class _Job:
    """The state of one request's denoising loop."""

    request: ImageRequest
    seed: int
    guided: bool
    embeddings: np.ndarray  # [2 or 1, 77, hidden]: unconditional first, as the pipeline concatenates
    scheduler: object
    generator: object
    latents: object  # torch.Tensor [1, C, h, w]
    step_kwargs: dict
    # LCM UNets: the guidance scale's embedding `[1, time_cond_proj_dim]` (None for other UNets).
    timestep_cond: np.ndarray | None = None
    step: int = 0
    cancelled: bool = False

    @property
    def done(self) -> bool:
        return self.cancelled or self.step >= len(self.scheduler.timesteps)

    @property
    def rows(self) -> int:
        return 2 if self.guided else 1


def guidance_scale_embedding(w: float, embedding_dim: int) -> np.ndarray:
    """``[1, embedding_dim]`` sinusoidal embedding of ``w`` (``guidance_scale - 1``), as the LCM pipeline makes it.

    ``LatentConsistencyModelPipeline.get_guidance_scale_embedding`` in float32 torch, so
    the UNet sees the same bits as in the pipeline.
    """
    import torch

    scaled = torch.tensor([w], dtype=torch.float32) * 1000.0
    half = embedding_dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = scaled[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if embedding_dim % 2:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding.numpy().astype(np.float32)


def request_defaults(checkpoint_dir: Path, unet: dict) -> tuple[int, float]:
    """The steps and guidance scale a request without them gets: what the checkpoint's pipeline class defaults to.

    ``LatentConsistencyModelPipeline`` (an LCM UNet) defaults to 4 steps at guidance 8.5;
    ``StableDiffusionPipeline`` (SD 1.x/2.x, and SD-Turbo, whose folder names it too) to 50 at 7.5.
    """
    index_file = Path(checkpoint_dir) / "model_index.json"
    pipeline = json.loads(index_file.read_text()).get("_class_name", "") if index_file.is_file() else ""
    if pipeline == "LatentConsistencyModelPipeline" or (not pipeline and unet.get("time_cond_proj_dim") is not None):
        return LCM_NUM_INFERENCE_STEPS, LCM_GUIDANCE_SCALE
    return DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_GUIDANCE_SCALE


class DiffusionRunner:
    """Prompts, denoising loops and VAE decoding for a batch of requests, on any :data:`StageRunner`.

    Args:
        checkpoint_dir: A diffusers checkpoint (or the BLS model's ``assets`` copy of its configs).
        run_stage: Runs ``text_encoder``, ``unet`` and ``vae_decoder``.
    """

    def __init__(self, checkpoint_dir: Path, run_stage: StageRunner) -> None:
        from transformers import CLIPTokenizer

        checkpoint_dir = Path(checkpoint_dir)
        self.tokenizer = CLIPTokenizer.from_pretrained(checkpoint_dir / "tokenizer")
        self.scheduler_config = json.loads((checkpoint_dir / "scheduler" / "scheduler_config.json").read_text())
        unet = json.loads((checkpoint_dir / "unet" / "config.json").read_text())
        vae = json.loads((checkpoint_dir / "vae" / "config.json").read_text())
        self.latent_channels = int(unet["in_channels"])
        self.vae_scale_factor = 2 ** (len(vae["block_out_channels"]) - 1)
        self.scaling_factor = float(vae.get("scaling_factor", 0.18215))
        # LCM-distilled UNets take the guidance scale as an embedding (`timestep_cond`), not as CFG.
        self.time_cond_proj_dim = unet.get("time_cond_proj_dim")
        self.guidance_allowed = self.time_cond_proj_dim is None
        self.default_steps, self.default_guidance = request_defaults(checkpoint_dir, unet)
        self.default_size = int(unet["sample_size"]) * self.vae_scale_factor
        # The exported UNet is traced for latents its downsamplings divide evenly
        # (the pipeline's odd-size path is a Python branch the graph does not keep).
        self.size_multiple = self.vae_scale_factor * 2 ** (len(unet["block_out_channels"]) - 1)
        default_class = self.scheduler_config["_class_name"]
        known = {cls: name for name, cls in SCHEDULERS.items()}
        self.default_scheduler = known.get(default_class, default_class)
        self.run_stage = run_stage

    # -- checks ---------------------------------------------------------------------------------------------------

    def check(self, request: ImageRequest) -> ImageRequest:
        """Validate a request; return it with defaults filled in.

        Raises:
            InvalidInputError: Naming the offending field.
        """
        for field, text in ((names.PROMPT, request.prompt), (names.NEGATIVE_PROMPT, request.negative_prompt)):
            if not isinstance(text, str):
                raise InvalidInputError(field, f"must be text, got {type(text).__name__}.")
            if len(text) > MAX_PROMPT_CHARS:
                raise InvalidInputError(field, f"has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}.")
        steps = self.default_steps if request.num_inference_steps is None else request.num_inference_steps
        if not 1 <= steps <= MAX_NUM_INFERENCE_STEPS:
            raise InvalidInputError(
                names.NUM_INFERENCE_STEPS, f"must be between 1 and {MAX_NUM_INFERENCE_STEPS}, got {steps}."
            )
        guidance = self.default_guidance if request.guidance_scale is None else request.guidance_scale
        if not (math.isfinite(guidance) and 0 <= guidance <= MAX_GUIDANCE_SCALE):
            raise InvalidInputError(
                names.GUIDANCE_SCALE, f"must be a finite number between 0 and {MAX_GUIDANCE_SCALE:g}, got {guidance}."
            )
        height = self.default_size if request.height is None else request.height
        width = self.default_size if request.width is None else request.width
        for field, size in ((names.HEIGHT, height), (names.WIDTH, width)):
            if size % 8 or size % self.size_multiple or not self.size_multiple <= size <= MAX_IMAGE_SIZE:
                raise InvalidInputError(
                    field,
                    f"must be a multiple of {self.size_multiple} (8 for the VAE, times 2 per UNet downsampling) "
                    f"between {self.size_multiple} and {MAX_IMAGE_SIZE}, got {size}.",
                )
        seed = secrets.randbelow(MAX_SEED) if request.seed is None else request.seed
        if not 0 <= seed <= MAX_SEED:
            raise InvalidInputError(names.SEED, f"must be between 0 and {MAX_SEED}, got {seed}.")
        scheduler = request.scheduler or self.default_scheduler
        if scheduler != self.default_scheduler:
            scheduler_class(scheduler)
        return dataclasses.replace(
            request,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=height,
            width=width,
            seed=seed,
            scheduler=scheduler,
        )

    # -- stages -----------------------------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), 77]`` ids, padded and truncated as the pipeline does."""
        return self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="np",
        ).input_ids.astype(np.int64)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP's last hidden state ``[len(texts), 77, hidden]``."""
        outputs = self.run_stage(names.TEXT_ENCODER, {names.INPUT_IDS: self.tokenize(texts)}, [names.LAST_HIDDEN_STATE])
        return outputs[names.LAST_HIDDEN_STATE]

    def _make_scheduler(self, name: str):
        if name == self.default_scheduler and name not in SCHEDULERS:
            import diffusers

            cls = getattr(diffusers, name)
        else:
            cls = scheduler_class(name)
        return cls.from_config(self.scheduler_config)

    def _start(self, request: ImageRequest, embeddings: np.ndarray) -> _Job:
        import inspect

        import torch
        from diffusers.utils.torch_utils import randn_tensor

        scheduler = self._make_scheduler(request.scheduler)
        scheduler.set_timesteps(request.num_inference_steps, device="cpu")
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        shape = (
            1,
            self.latent_channels,
            request.height // self.vae_scale_factor,
            request.width // self.vae_scale_factor,
        )
        latents = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        latents = latents * scheduler.init_noise_sigma
        accepted = set(inspect.signature(scheduler.step).parameters)
        step_kwargs = {}
        if "eta" in accepted:
            step_kwargs["eta"] = 0.0
        if "generator" in accepted:
            step_kwargs["generator"] = generator
        guided = request.guidance_scale > 1 and self.guidance_allowed
        timestep_cond = None
        if self.time_cond_proj_dim is not None:
            timestep_cond = guidance_scale_embedding(request.guidance_scale - 1, int(self.time_cond_proj_dim))
        return _Job(
            request, request.seed, guided, embeddings, scheduler, generator, latents, step_kwargs, timestep_cond
        )

    def _denoise_group(self, jobs: Sequence[_Job]) -> None:
        """One step of several same-shape jobs in one UNet call."""
        import torch

        samples, timesteps, hidden = [], [], []
        for job in jobs:
            t = job.scheduler.timesteps[job.step]
            model_input = torch.cat([job.latents] * 2) if job.guided else job.latents
            samples.append(job.scheduler.scale_model_input(model_input, t).numpy())
            timesteps.append(np.full((job.rows, 1), float(t), dtype=np.float32))
            hidden.append(job.embeddings)
        inputs = {
            names.SAMPLE: np.concatenate(samples).astype(np.float32),
            names.TIMESTEP: np.concatenate(timesteps),
            names.ENCODER_HIDDEN_STATES: np.concatenate(hidden).astype(np.float32),
        }
        if self.time_cond_proj_dim is not None:
            inputs[names.TIMESTEP_COND] = np.concatenate([job.timestep_cond for job in jobs])
        outputs = self.run_stage(names.UNET, inputs, [names.OUT_SAMPLE])
        noise = torch.from_numpy(np.ascontiguousarray(outputs[names.OUT_SAMPLE]))
        offset = 0
        for job in jobs:
            prediction = noise[offset : offset + job.rows]
            offset += job.rows
            if job.guided:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + job.request.guidance_scale * (cond - uncond)
            t = job.scheduler.timesteps[job.step]
            job.latents = job.scheduler.step(prediction, t, job.latents, **job.step_kwargs, return_dict=False)[0]
            job.step += 1

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """VAE-decode ``[batch, C, h, w]`` latents to ``uint8 [batch, H, W, 3]``."""
        outputs = self.run_stage(
            names.VAE_DECODER,
            {names.LATENT_SAMPLE: (latents / np.float32(self.scaling_factor)).astype(np.float32)},
            [names.SAMPLE],
        )
        image = np.clip(outputs[names.SAMPLE] / np.float32(2) + np.float32(0.5), 0, 1).transpose(0, 2, 3, 1)
        return (image * 255).round().astype(np.uint8)

    def _start_jobs(self, requests: Sequence[ImageRequest]) -> list[_Job]:
        """Encode every prompt in one call and set up each request's loop."""
        texts: list[str] = []
        for request in requests:
            if request.guidance_scale > 1 and self.guidance_allowed:
                texts.append(request.negative_prompt)
            texts.append(request.prompt)
        embeddings = self.encode_text(texts)
        jobs, row = [], 0
        for request in requests:
            guided = request.guidance_scale > 1 and self.guidance_allowed
            rows = 2 if guided else 1
            jobs.append(self._start(request, embeddings[row : row + rows]))
            row += rows
        return jobs

    def _denoise(self, jobs: list[_Job], on_step, cancelled: Cancelled | None) -> None:
        """Step every unfinished job, same-shape jobs in one UNet call, until all are done or cancelled."""
        while True:
            if cancelled is not None:
                for index, job in enumerate(jobs):
                    job.cancelled = job.cancelled or (not job.done and cancelled(index))
            active = [job for job in jobs if not job.done]
            if not active:
                return
            groups: dict[tuple, list[_Job]] = {}
            for job in active:
                groups.setdefault(tuple(job.latents.shape), []).append(job)
            for group in groups.values():
                self._denoise_group(group)
                if on_step is not None:
                    for job in group:
                        on_step(jobs.index(job), job.step, len(job.scheduler.timesteps), job.latents.numpy())

    def _decode_jobs(self, jobs: list[_Job]) -> list[np.ndarray | None]:
        """VAE-decode the finished jobs, same-shape latents in one call (``None`` for cancelled ones)."""
        images: list[np.ndarray | None] = [None] * len(jobs)
        by_shape: dict[tuple, list[int]] = {}
        for index, job in enumerate(jobs):
            if not job.cancelled:
                by_shape.setdefault(tuple(job.latents.shape), []).append(index)
        for indices in by_shape.values():
            decoded = self.decode(np.concatenate([jobs[i].latents.numpy() for i in indices]))
            for i, image in zip(indices, decoded, strict=True):
                images[i] = image
        return images

    def generate(
        self,
        requests: Sequence[ImageRequest],
        on_step: Callable[[int, int, int, np.ndarray], None] | None = None,
        cancelled: Cancelled | None = None,
    ) -> list[DecodedImage | RequestCancelledError]:
        """Generate one image per request; requests are checked here (defaults filled in).

        Args:
            requests: The requests.
            on_step: Called after each denoising step as ``on_step(request index, steps done,
                total steps, latents)``; streaming uses it for previews.
            cancelled: Asked for each unfinished request before every step; a cancelled request
                stops there and its result is a :class:`~s2i.audio.RequestCancelledError`.
        """
        jobs = self._start_jobs([self.check(request) for request in requests])
        self._denoise(jobs, on_step, cancelled)
        images = self._decode_jobs(jobs)
        return [
            RequestCancelledError() if job.cancelled else DecodedImage(image=image, seed=job.seed)
            for image, job in zip(images, jobs, strict=True)
        ]
