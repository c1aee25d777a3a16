"""Emotion inference on the exported graph: features, batching by length, softmax and label.

The graph is reached through a :data:`~s2i.stages.runner.StageRunner`,
so the same code runs inside Triton (BLS calls to ``emotion_classifier_graph``)
and in tests (an ONNX Runtime session).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from s2i import names
from s2i.errors import InvalidInputError
from s2i.model_repository.triton_io import request_audio
from s2i.stages.emotion.config import load_config
from s2i.stages.emotion.features import check_features, log_mel_features
from s2i.stages.runner import StageRunner

# Parameter of the `emotion_classifier` model: the graph model's `max_batch_size`.
GRAPH_MAX_BATCH_SIZE = "graph_max_batch_size"


@dataclasses.dataclass(frozen=True)
class EmotionPrediction:
    """What the classifier made of one clip.

    Attributes:
        label: The most probable emotion.
        probabilities: float32 ``[num_labels]``, summing to 1, in the checkpoint's label order.
    """

    label: str
    probabilities: np.ndarray


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float32, stable for large logits."""
    shifted = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def group_by_frames(features: Sequence[np.ndarray], max_batch_size: int) -> list[list[int]]:
    """Indices of clips that can share one graph call: same frame count, at most ``max_batch_size`` each."""
    groups: dict[int, list[list[int]]] = {}
    for index, clip in enumerate(features):
        chunks = groups.setdefault(clip.shape[-1], [[]])
        if len(chunks[-1]) == max_batch_size:
            chunks.append([])
        chunks[-1].append(index)
    return [chunk for chunks in groups.values() for chunk in chunks]


class EmotionRunner:
    """Features and classification for a batch of clips, on any stage runner."""

    def __init__(self, checkpoint_dir: Path, run_stage: StageRunner, graph_max_batch_size: int = 8) -> None:
        from transformers import WhisperFeatureExtractor

        checkpoint_dir = Path(checkpoint_dir)
        self.config = load_config(checkpoint_dir)
        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(checkpoint_dir)
        if self.feature_extractor.feature_size != self.config.num_mel_bins:
            raise ValueError(
                f"{checkpoint_dir}: the feature extractor makes {self.feature_extractor.feature_size} mel bins "
                f"but the classifier expects {self.config.num_mel_bins}."
            )
        self.run_stage = run_stage
        # The graph model's `max_batch_size`: one call must not carry more clips than Triton accepts.
        self.graph_max_batch_size = graph_max_batch_size

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names, in probability order."""
        return self.config.labels

    def features(self, samples: np.ndarray) -> np.ndarray:
        """Log-mel features ``[1, n_mels, frames]`` of one checked 16 kHz clip (its real length)."""
        return log_mel_features(samples, self.feature_extractor)

    def check_features(self, features: np.ndarray) -> np.ndarray:
        """Check features sent directly by a client (see :func:`~s2i.stages.emotion.features.check_features`)."""
        return check_features(features, self.config.num_mel_bins)

    def classify_features(self, features: Sequence[np.ndarray]) -> list[EmotionPrediction]:
        """Classify clips given as ``[1, n_mels, frames]`` features; equal lengths share one graph call."""
        results: list[EmotionPrediction | None] = [None] * len(features)
        for indices in group_by_frames(features, self.graph_max_batch_size):
            batch = np.concatenate([features[index] for index in indices]).astype(np.float32, copy=False)
            logits = self.run_stage(names.EMOTION_CLASSIFIER_GRAPH, {names.INPUT_FEATURES: batch}, [names.LOGITS])
            probabilities = softmax(np.asarray(logits[names.LOGITS]))
            if probabilities.shape != (len(indices), len(self.labels)):
                raise RuntimeError(
                    f"`{names.EMOTION_CLASSIFIER_GRAPH}` returned logits of shape {list(probabilities.shape)}, "
                    f"expected {[len(indices), len(self.labels)]}."
                )
            for row, index in enumerate(indices):
                results[index] = EmotionPrediction(
                    label=self.labels[int(probabilities[row].argmax())], probabilities=probabilities[row]
                )
        return results  # type: ignore[return-value]

    def classify(self, clips: Sequence[np.ndarray]) -> list[EmotionPrediction]:
        """Classify checked 16 kHz mono clips."""
        return self.classify_features([self.features(samples) for samples in clips])


def parse_request_inputs(inputs: Mapping[str, np.ndarray], runner: EmotionRunner) -> np.ndarray:
    """Turn one request's tensors (as received, batch axis included) into checked ``[1, n_mels, frames]`` features.

    Exactly one of audio (``audio_samples`` with ``sample_rate_hz``, or ``audio_bytes``) and
    ``input_features`` must be given. The audio tensors are checked in the order a
    client most likely got wrong: the clip's shape first, then its rate.
    """
    features = inputs.get(names.INPUT_FEATURES)
    if features is not None:
        if names.AUDIO_SAMPLES in inputs or names.AUDIO_BYTES in inputs:
            raise InvalidInputError(
                names.INPUT_FEATURES,
                "send either audio (`audio_samples` or `audio_bytes`) or `input_features`, not both.",
            )
        return runner.check_features(features)
    return runner.features(request_audio(inputs))
