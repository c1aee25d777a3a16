"""The reference: the classifier run in PyTorch on Whisper's own 30 s features, cut to the clip.

It shares no code path with serving beyond the checkpoint: features come from the
feature extractor's default (30 s padded) output sliced to ``num_samples // 160``
frames, as the pipeline does, and softmax is PyTorch's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from s2i import names
from s2i.audio import MODEL_SAMPLE_RATE_HZ
from s2i.stages.emotion.features import slice_whisper_features
from s2i.stages.emotion.modeling import EmotionClassifier


class EmotionReference:
    """:class:`EmotionClassifier` in PyTorch on a checkpoint folder."""

    def __init__(self, checkpoint_dir: Path) -> None:
        from transformers import WhisperFeatureExtractor

        self.model = EmotionClassifier.from_pretrained(checkpoint_dir)
        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(checkpoint_dir)

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names, in probability order."""
        return self.model.config.labels

    def probabilities(self, samples_16khz: np.ndarray) -> np.ndarray:
        """Softmax probabilities ``[num_labels]`` for one 16 kHz mono clip."""
        import torch

        padded = self.feature_extractor(
            samples_16khz, sampling_rate=MODEL_SAMPLE_RATE_HZ, return_tensors="np"
        ).input_features
        features = slice_whisper_features(padded, [samples_16khz.shape[0]])[0]
        with torch.no_grad():
            return self.model(torch.from_numpy(features)).softmax(dim=-1)[0].numpy()

    def label(self, samples_16khz: np.ndarray) -> str:
        """The most probable emotion of one clip."""
        return self.labels[int(self.probabilities(samples_16khz).argmax())]

    def step(self, inputs: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
        """The ``emotion_classifier`` step of the reference pipeline: probabilities, their labels, the top one."""
        probabilities = np.asarray(self.probabilities(request[names.AUDIO_SAMPLES]), dtype=np.float32).reshape(-1)
        return {
            names.EMOTION_PROBABILITIES: probabilities,
            # The checkpoint's own labels: RAVDESS's for the classifiers this project trains.
            names.EMOTION_LABEL_NAMES: tuple(self.labels),
            names.EMOTION_LABEL: self.labels[int(probabilities.argmax())],
        }
