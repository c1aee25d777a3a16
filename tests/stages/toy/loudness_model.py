"""Triton Python-backend model of the toy ``loudness`` stage: checks the features, calls the graph through BLS."""

import numpy as np
import triton_python_backend_utils as pb_utils

from s2i.errors import InvalidInputError
from s2i.model_repository.triton_io import answer_batch, make_stage_runner

MAX_MEL_BINS = 256
MAX_FRAMES = 3000


class TritonPythonModel:
    def initialize(self, args):
        self.run_stage = make_stage_runner(pb_utils)

    def _parse(self, inputs):
        features = inputs["features"]
        if features.ndim != 3 or features.shape[0] != 1 or not 1 <= features.shape[1] <= MAX_MEL_BINS:
            raise InvalidInputError(
                "features", f"must hold one [mel bins, frames] array, got shape {list(features.shape)}."
            )
        if not 1 <= features.shape[2] <= MAX_FRAMES:
            raise InvalidInputError("features", f"must have 1 to {MAX_FRAMES} frames, got {features.shape[2]}.")
        if not np.isfinite(features).all():
            raise InvalidInputError("features", "must be finite.")
        return features.astype(np.float32)

    def _run(self, clips):
        return [self.run_stage("loudness_graph", {"features": clip}, ["loudness"])["loudness"] for clip in clips]

    def execute(self, requests):
        return answer_batch(
            pb_utils,
            requests,
            self._parse,
            self._run,
            lambda loudness, compute_ms: {"loudness": loudness.astype(np.float32), "compute_ms": compute_ms},
        )
