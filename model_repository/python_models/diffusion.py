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
from s2i.model_repository.observability import RequestObserver
from s2i.model_repository.triton_io import answer_batch, make_stage_runner, scalar
from s2i.stages.diffusion.sampling import image_request_from


class TritonPythonModel:
    """Validates each request on its own, then runs all valid ones as one lock-step batch."""

    def initialize(self, args):
        """Load the tokenizer and the scheduler, UNet and VAE configs."""
        from s2i.stages.diffusion.sampling import DiffusionRunner

        assets = Path(args["model_repository"]) / args["model_version"] / "assets"
        self.run_stage = make_stage_runner(pb_utils)
        self.runner = DiffusionRunner(assets, self.run_stage)
        self.observer = RequestObserver(
            pb_utils, args["model_name"], self.run_stage, counters=("denoising_steps", "images")
        )

    def _parse(self, inputs):
        return self.runner.check(image_request_from(lambda name: scalar(inputs.get(name), name)))

    def _generate(self, items, cancelled):
        """The batch's images; counts every denoising step of every request."""
        steps = []
        # A request whose client left (deadline, cancel) stops within one denoising step.
        results = self.runner.generate(items, on_step=lambda *_: steps.append(1), cancelled=cancelled)
        self.observer.count("denoising_steps", len(steps))
        self.observer.count("images", sum(not isinstance(result, Exception) for result in results))
        return results

    def execute(self, requests):
        """Answer every request; a bad one gets its own error and never fails its neighbours."""
        started = self.observer.start()
        with self.run_stage.parent(requests[0]):
            responses = answer_batch(
                pb_utils,
                requests,
                self._parse,
                self._generate,
                lambda result, compute_ms: {
                    names.IMAGE: result.image[None],
                    names.SEED: np.array([[result.seed]], dtype=np.int64),
                    names.COMPUTE_MS: compute_ms,
                },
                cancellable=True,
            )
        self.observer.finish_responses(requests, responses, started)
        return responses
