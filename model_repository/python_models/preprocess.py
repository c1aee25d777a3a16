"""Triton Python-backend model ``preprocess``: audio (file bytes or samples) -> log-mel features, once.

Whisper gets the 30 s window, the emotion classifier the same array cut to the
clip's frames, so neither recomputes features.
"""

import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from s2i import names
from s2i.audio import InvalidInputError, load_request_audio
from s2i.model_repository.triton_io import optional_input, respond_each, scalar
from s2i.pipeline.steps import preprocess


class TritonPythonModel:
    """Decode, check, resample and featurise each request."""

    def initialize(self, args):
        """Load Whisper's feature extractor from ``assets/``."""
        from transformers import WhisperFeatureExtractor

        assets = Path(args["model_repository"]) / args["model_version"] / "assets"
        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(assets)

    def _respond(self, request):
        started = time.perf_counter()
        samples = optional_input(pb_utils, request, names.AUDIO_SAMPLES)
        if samples is not None and samples.shape[0] != 1:
            raise InvalidInputError(
                names.AUDIO_SAMPLES, f"must hold one mono clip per request, got shape {list(samples.shape)}."
            )
        audio = load_request_audio(
            None if samples is None else samples[0],
            scalar(optional_input(pb_utils, request, names.SAMPLE_RATE_HZ), names.SAMPLE_RATE_HZ),
            scalar(optional_input(pb_utils, request, names.AUDIO_BYTES), names.AUDIO_BYTES, text=False),
        )
        input_features, emotion_features = preprocess(audio, self.feature_extractor)
        elapsed_ms = np.array([[1000 * (time.perf_counter() - started)]], dtype=np.float32)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(names.INPUT_FEATURES, input_features[None]),
                pb_utils.Tensor(names.EMOTION_FEATURES, emotion_features[None]),
                pb_utils.Tensor(names.COMPUTE_MS, elapsed_ms),
            ]
        )

    def execute(self, requests):
        """One response per request; a bad request gets its own error."""
        return respond_each(pb_utils, requests, self._respond)
