"""The reference: ``StableDiffusionPipeline`` run in-process with diffusers, no Triton, no ONNX.

Parity tests compare the served model with :meth:`DiffusionReference.generate`,
and benchmarks use it as the in-process baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from s2i import names


class DiffusionReference:
    """The checkpoint's own pipeline class (``StableDiffusionPipeline``, ``LatentConsistencyModelPipeline``).

    A scheduler is chosen per call; options left out take the pipeline's defaults.
    """

    def __init__(self, checkpoint_dir: Path) -> None:
        from diffusers import DiffusionPipeline

        # The safety checker is not served (`s2i convert --no-safety-checker`): compare without it.
        self.pipeline = DiffusionPipeline.from_pretrained(checkpoint_dir, safety_checker=None)
        self.pipeline.set_progress_bar_config(disable=True)
        self.default_scheduler = self.pipeline.scheduler

    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        seed: int = 0,
        scheduler: str | None = None,
    ) -> np.ndarray:
        """The pipeline's image as ``uint8 [height, width, 3]`` (its ``output_type="pil"`` pixels)."""
        import inspect

        import diffusers
        import torch

        from s2i.stages.diffusion.sampling import SCHEDULERS

        # The pipeline resets both sides to its default when either is missing; the
        # served model defaults each side on its own, so fill them in here.
        default_size = self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor
        height, width = height or default_size, width or default_size
        if scheduler is None:
            self.pipeline.scheduler = self.default_scheduler
        else:
            cls = getattr(diffusers, SCHEDULERS[scheduler])
            self.pipeline.scheduler = cls.from_config(self.default_scheduler.config)
        options = {
            key: value
            for key, value in dict(
                negative_prompt=negative_prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale
            ).items()
            if value is not None
        }
        if "negative_prompt" not in inspect.signature(self.pipeline.__call__).parameters:
            # LCM pipelines take no negative prompt (their guidance is the UNet's w-embedding).
            options.pop("negative_prompt", None)
        image = self.pipeline(
            prompt,
            **options,
            height=height,
            width=width,
            generator=torch.Generator().manual_seed(seed),
            output_type="pil",
        ).images[0]
        return np.asarray(image)

    def step(self, inputs: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
        """The ``diffusion`` step of the reference pipeline: the prompts and the request's options to an image."""
        wired = (names.PROMPT, names.NEGATIVE_PROMPT)
        options = {name: value for name, value in inputs.items() if name not in wired and value is not None}
        seed = options.pop(names.SEED, 0)
        image = self.generate(inputs[names.PROMPT], negative_prompt=inputs[names.NEGATIVE_PROMPT], seed=seed, **options)
        return {names.IMAGE: image, names.SEED: seed}
