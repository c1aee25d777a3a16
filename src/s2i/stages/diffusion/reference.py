"""The reference: ``StableDiffusionPipeline`` run in-process with diffusers, no Triton, no ONNX.

Parity tests compare the served model with :meth:`DiffusionReference.generate`,
and benchmarks use it as the in-process baseline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class DiffusionReference:
    """``StableDiffusionPipeline`` on a checkpoint folder, with a scheduler chosen per call."""

    def __init__(self, checkpoint_dir: Path) -> None:
        from diffusers import StableDiffusionPipeline

        self.pipeline = StableDiffusionPipeline.from_pretrained(checkpoint_dir)
        self.pipeline.set_progress_bar_config(disable=True)
        self.default_scheduler = self.pipeline.scheduler

    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        seed: int = 0,
        scheduler: str | None = None,
    ) -> np.ndarray:
        """The pipeline's image as ``uint8 [height, width, 3]`` (its ``output_type="pil"`` pixels)."""
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
        image = self.pipeline(
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            generator=torch.Generator().manual_seed(seed),
            output_type="pil",
        ).images[0]
        return np.asarray(image)
