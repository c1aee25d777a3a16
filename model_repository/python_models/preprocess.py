"""Triton Python-backend model ``preprocess``: audio (file bytes or samples) -> log-mel features, once.

Whisper gets the 30 s window, the emotion classifier the same array cut to the
clip's frames, so neither recomputes features.
"""

from pathlib import Path

import triton_python_backend_utils as pb_utils

from s2i import names
from s2i.model_repository.triton_io import answer_batch, each, request_audio
from s2i.pipeline.steps import preprocess


class TritonPythonModel:
    """Decode, check, resample and featurise each request."""

    def initialize(self, args):
        """Load Whisper's feature extractor from ``assets/``."""
        from transformers import WhisperFeatureExtractor

        assets = Path(args["model_repository"]) / args["model_version"] / "assets"
        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(assets)

    def execute(self, requests):
        """One response per request; a bad request gets its own error."""
        return answer_batch(
            pb_utils,
            requests,
            request_audio,
            each(lambda audio: preprocess(audio, self.feature_extractor)),
            lambda features, compute_ms: {
                names.INPUT_FEATURES: features[0][None],
                names.EMOTION_FEATURES: features[1][None],
                names.COMPUTE_MS: compute_ms,
            },
        )
