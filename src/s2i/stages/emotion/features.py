"""The emotion model's input: Whisper's log-mel features, cut to the clip's real length.

Whisper's feature extractor pads every clip to 30 s (3000 frames of 10 ms). The
pipeline computes those features once and hands the same array to Whisper and to
the emotion classifier; the classifier takes only the frames that hold the clip:

    frames = num_samples // HOP_LENGTH      (160 samples = 10 ms at 16 kHz)

The padding after the clip is silence, so its frames carry no emotion, and
mean/std pooling over them would dilute the clip's statistics by its length.

:func:`log_mel_features` gives the same values without computing 30 s: it pads the
clip with :data:`TAIL_PADDING` zeros only, enough that every kept frame's STFT
window (400 samples, centred) sees zeros after the clip as in the 30 s version,
and that the log-spectrum's maximum (Whisper clamps at ``max - 8``) is the same,
since frames further out hold only zeros. ``tests/stages/emotion`` checks both
ways agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from s2i import names
from s2i.audio import MODEL_SAMPLE_RATE_HZ
from s2i.errors import InvalidInputError, check_finite

HOP_LENGTH = 160
N_FFT = 400
# Zeros after the clip: one STFT window, so the last kept frame's window and the
# reflection padding of the final frames both see silence only.
TAIL_PADDING = N_FFT
# Whisper's window: 30 s.
MAX_FRAMES = 3000
# 0.1 s, the shortest audio the server accepts (s2i.audio.MIN_DURATION_S).
MIN_FRAMES = 10


def num_frames(num_samples: int) -> int:
    """Frames of a 16 kHz clip of ``num_samples`` samples: ``num_samples // 160``, at most 3000."""
    return min(num_samples // HOP_LENGTH, MAX_FRAMES)


def slice_whisper_features(features: np.ndarray, num_samples: Sequence[int]) -> list[np.ndarray]:
    """Cut Whisper's padded features ``[batch, n_mels, 3000]`` to each clip's frames.

    Returns:
        One ``[1, n_mels, frames]`` array per clip (lengths differ, so they are not stacked).
    """
    return [features[index : index + 1, :, : num_frames(count)] for index, count in enumerate(num_samples)]


def log_mel_features(samples: np.ndarray, feature_extractor) -> np.ndarray:
    """Whisper log-mel features of one 16 kHz clip, ``[1, n_mels, num_samples // 160]``.

    Args:
        samples: Mono float32 samples at 16 kHz.
        feature_extractor: A ``WhisperFeatureExtractor`` (the checkpoint's).
    """
    frames = num_frames(samples.shape[0])
    length = min(samples.shape[0] + TAIL_PADDING, feature_extractor.n_samples)
    features = feature_extractor(
        samples,
        sampling_rate=MODEL_SAMPLE_RATE_HZ,
        padding="max_length",
        max_length=length,
        truncation=True,
        return_tensors="np",
    ).input_features
    return features[:, :, :frames].astype(np.float32)


def check_features(features: np.ndarray, num_mel_bins: int, field: str = names.INPUT_FEATURES) -> np.ndarray:
    """Check features a request sends directly: ``[1, n_mels, frames]`` float32, finite, 0.1-30 s.

    Returns:
        The features as a contiguous float32 array.
    """
    if features.dtype != np.float32:
        raise InvalidInputError(field, f"must be float32, got {features.dtype}.")
    if features.ndim != 3 or features.shape[0] != 1 or features.shape[1] != num_mel_bins:
        raise InvalidInputError(
            field, f"must have shape [1, {num_mel_bins}, frames] (one clip), got {list(features.shape)}."
        )
    frames = features.shape[2]
    if not MIN_FRAMES <= frames <= MAX_FRAMES:
        raise InvalidInputError(
            field,
            f"has {frames} frames; between {MIN_FRAMES} and {MAX_FRAMES} (0.1-30 s of 10 ms frames) are accepted.",
        )
    check_finite(features, field)
    return np.ascontiguousarray(features)
