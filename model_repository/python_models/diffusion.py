"""Triton Python-backend (BLS) model ``diffusion``: a prompt in, an RGB image out.

Tokenisation, the classifier-free-guidance + scheduler loop and pixel conversion
are in :mod:`s2i.stages.diffusion.sampling`; ``text_encoder``, ``unet`` and
``vae_decoder`` are separate stage models reached through BLS, so Triton batches
their calls across concurrent requests. Checkpoint configs and the tokenizer sit
in ``assets/`` beside this file.
"""

import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from s2i import names
from s2i.model_repository.triton_io import error_response, make_stage_runner, optional_input, scalar
from s2i.stages.diffusion.sampling import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, ImageRequest


class TritonPythonModel:
    """Validates each request on its own, then runs all valid ones as one lock-step batch."""

    def initialize(self, args):
        """Load the tokenizer and the scheduler, UNet and VAE configs."""
        from s2i.stages.diffusion.sampling import DiffusionRunner

        assets = Path(args["model_repository"]) / args["model_version"] / "assets"
        self.runner = DiffusionRunner(assets, make_stage_runner(pb_utils))

    def _parse(self, request):
        def value(name, default=None, **kwargs):
            return scalar(optional_input(pb_utils, request, name), name, default, **kwargs)

        def integer(name):
            number = value(name)
            return None if number is None else int(number)

        parsed = ImageRequest(
            prompt=value(names.PROMPT, ""),
            negative_prompt=value(names.NEGATIVE_PROMPT, ""),
            num_inference_steps=int(value(names.NUM_INFERENCE_STEPS, DEFAULT_NUM_INFERENCE_STEPS)),
            guidance_scale=float(value(names.GUIDANCE_SCALE, DEFAULT_GUIDANCE_SCALE)),
            height=integer(names.HEIGHT),
            width=integer(names.WIDTH),
            seed=integer(names.SEED),
            scheduler=value(names.SCHEDULER),
        )
        return self.runner.check(parsed)

    def execute(self, requests):
        """Answer every request; a bad one gets its own error and never fails its neighbours."""
        started = time.perf_counter()
        responses = [None] * len(requests)
        valid = {}
        for index, request in enumerate(requests):
            try:
                valid[index] = self._parse(request)
            except Exception as error:  # noqa: BLE001 - becomes this request's error response
                responses[index] = error_response(pb_utils, error)
        if valid:
            try:
                results = self.runner.generate(list(valid.values()))
            except Exception as error:  # noqa: BLE001
                results = [error] * len(valid)
            for index, result in zip(valid, results, strict=False):
                if isinstance(result, Exception):
                    responses[index] = error_response(pb_utils, result)
                    continue
                responses[index] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(names.IMAGE, result.image[None]),
                        pb_utils.Tensor(names.SEED, np.array([[result.seed]], dtype=np.int64)),
                        pb_utils.Tensor(
                            names.COMPUTE_MS, np.array([[1000 * (time.perf_counter() - started)]], dtype=np.float32)
                        ),
                    ]
                )
        return responses
