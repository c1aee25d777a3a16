"""Fixtures of the diffusion tests: the tiny checkpoint and a cached diffusers reference."""

from __future__ import annotations

import pytest

from s2i.stages.diffusion.reference import DiffusionReference

# One request's options, used by parity tests; non-square so a height/width swap shows.
PARITY_REQUEST = dict(
    prompt="a photo of an astronaut riding a horse on the moon",
    negative_prompt="blurry, low quality",
    num_inference_steps=6,
    guidance_scale=7.5,
    height=64,
    width=48,
    seed=1234,
)


class CachedReference:
    """``StableDiffusionPipeline`` images, computed once per set of options."""

    def __init__(self, reference: DiffusionReference) -> None:
        self.reference = reference
        self._images = {}

    def image(self, **options):
        key = tuple(sorted(options.items()))
        if key not in self._images:
            self._images[key] = self.reference.generate(**options)
        return self._images[key]


@pytest.fixture(scope="session")
def diffusion_dir(checkpoints):
    return checkpoints["diffusion"]


@pytest.fixture(scope="session")
def diffusers_reference(diffusion_dir):
    return CachedReference(DiffusionReference(diffusion_dir))
