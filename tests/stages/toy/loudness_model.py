"""Triton Python-backend model of the toy ``loudness`` stage: checks the clip, calls the graph through BLS."""

import numpy as np
import triton_python_backend_utils as pb_utils

from s2i.errors import InvalidInputError
from s2i.model_repository.triton_io import answer_batch, make_stage_runner

MAX_SAMPLES = 16_000 * 30


class TritonPythonModel:
    def initialize(self, args):
        self.run_stage = make_stage_runner(pb_utils)

    def _parse(self, inputs):
        samples = inputs["audio_samples"]
        if samples.ndim != 2 or samples.shape[0] != 1 or not 1 <= samples.shape[1] <= MAX_SAMPLES:
            raise InvalidInputError(
                "audio_samples", f"must hold one clip of 1 to {MAX_SAMPLES} samples, got shape {list(samples.shape)}."
            )
        if not np.isfinite(samples).all():
            raise InvalidInputError("audio_samples", "must be finite.")
        return samples.astype(np.float32)

    def _run(self, clips):
        return [self.run_stage("loudness_graph", {"samples": clip}, ["loudness"])["loudness"] for clip in clips]

    def execute(self, requests):
        return answer_batch(
            pb_utils,
            requests,
            self._parse,
            self._run,
            lambda loudness, compute_ms: {"loudness": loudness.astype(np.float32)},
        )
