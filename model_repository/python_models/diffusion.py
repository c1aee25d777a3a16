"""Triton Python-backend (BLS) model ``diffusion``: a prompt in, an RGB image out.

Tokenisation, the classifier-free-guidance + scheduler loop and pixel conversion
are in :mod:`s2i.stages.diffusion.sampling`; ``text_encoder``, ``unet`` and
``vae_decoder`` are separate stage models reached through BLS, so Triton batches
their calls across concurrent requests. Checkpoint configs and the tokenizer sit
in ``assets/`` beside this file.
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from s2i import names
from s2i.model_repository.triton_io import answer_batch, make_stage_runner, optional_input, scalar
from s2i.stages.diffusion.sampling import image_request_from


class TritonPythonModel:
    """Validates each request on its own, then runs all valid ones as one lock-step batch."""

    def initialize(self, args):
        """Load the tokenizer and the scheduler, UNet and VAE configs."""
        from s2i.stages.diffusion.sampling import DiffusionRunner

        assets = Path(args["model_repository"]) / args["model_version"] / "assets"
        self.runner = DiffusionRunner(assets, make_stage_runner(pb_utils))

    def _parse(self, request):
        return self.runner.check(image_request_from(lambda name: scalar(optional_input(pb_utils, request, name), name)))

    def execute(self, requests):
        """Answer every request; a bad one gets its own error and never fails its neighbours."""
        return answer_batch(
            pb_utils,
            requests,
            self._parse,
            # A request whose client left (deadline, cancel) stops within one denoising step.
            lambda items, cancelled: self.runner.generate(items, cancelled=cancelled),
            lambda result, compute_ms: [
                pb_utils.Tensor(names.IMAGE, result.image[None]),
                pb_utils.Tensor(names.SEED, np.array([[result.seed]], dtype=np.int64)),
                pb_utils.Tensor(names.COMPUTE_MS, compute_ms),
            ],
            cancellable=True,
        )
