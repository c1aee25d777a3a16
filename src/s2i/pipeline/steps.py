"""The pipeline's own steps around the models: features once, and PNG encoding."""

from __future__ import annotations

import io

import numpy as np

from s2i import names
from s2i.errors import InvalidInputError
from s2i.stages.emotion.features import slice_whisper_features


def preprocess(samples_16khz: np.ndarray, feature_extractor) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel features computed once for both models.

    Returns:
        ``input_features`` ``[n_mels, 3000]`` (Whisper's 30 s window) and
        ``emotion_features`` ``[n_mels, frames]``, the same array cut to the clip's frames.
    """
    features = feature_extractor(
        samples_16khz, sampling_rate=feature_extractor.sampling_rate, return_tensors="np"
    ).input_features.astype(np.float32)
    (emotion_features,) = slice_whisper_features(features, [samples_16khz.shape[0]])
    return features[0], np.ascontiguousarray(emotion_features[0])


def encode_png(image: np.ndarray) -> bytes:
    """An ``[height, width, 3]`` uint8 RGB image as PNG bytes."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(
            names.IMAGE, f"must be uint8 [height, width, 3], got {image.dtype} {list(image.shape)}."
        )
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes back to a uint8 RGB array."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
