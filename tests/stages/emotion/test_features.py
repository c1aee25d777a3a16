import numpy as np
import pytest
from transformers import WhisperFeatureExtractor

from s2i.errors import InvalidInputError
from s2i.stages.emotion.features import check_features, log_mel_features, num_frames, slice_whisper_features


@pytest.fixture(scope="module")
def extractor():
    return WhisperFeatureExtractor(feature_size=80)


@pytest.mark.parametrize("num_samples", [1600, 16_037, 48_159, 479_900, 480_000])
def test_log_mel_features_equal_whisper_30s_features_sliced_when_clip_lengths_vary(extractor, num_samples):
    rng = np.random.default_rng(num_samples)
    samples = (0.2 * rng.standard_normal(num_samples) * np.sin(np.arange(num_samples) / 300)).astype(np.float32)
    padded = extractor(samples, sampling_rate=16_000, return_tensors="np").input_features
    expected = slice_whisper_features(padded, [num_samples])[0]
    actual = log_mel_features(samples, extractor)
    assert actual.shape == (1, 80, num_samples // 160)
    np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_slice_whisper_features_cuts_each_clip_of_a_batch_to_its_own_length(extractor):
    clips = [np.full(16_000, 0.1, np.float32), np.full(8_000, 0.1, np.float32)]
    padded = extractor(clips, sampling_rate=16_000, return_tensors="np").input_features
    first, second = slice_whisper_features(padded, [16_000, 8_000])
    assert first.shape == (1, 80, 100)
    assert second.shape == (1, 80, 50)


@pytest.mark.parametrize(("num_samples", "frames"), [(159, 0), (160, 1), (16_000, 100), (600_000, 3000)])
def test_num_frames_is_samples_over_hop_capped_at_30_s(num_samples, frames):
    assert num_frames(num_samples) == frames


@pytest.mark.parametrize(
    ("features", "match"),
    [
        (np.zeros((1, 80, 100), np.float64), r"`input_features`: must be float32, got float64"),
        (np.zeros((1, 64, 100), np.float32), r"must have shape \[1, 80, frames\] \(one clip\), got \[1, 64, 100\]"),
        (np.zeros((2, 80, 100), np.float32), r"got \[2, 80, 100\]"),
        (np.zeros((1, 80, 5), np.float32), r"has 5 frames; between 10 and 3000"),
        (np.zeros((1, 80, 3001), np.float32), r"has 3001 frames"),
        (np.full((1, 80, 100), np.nan, np.float32), r"contains 8000 NaN or infinite values"),
    ],
)
def test_check_features_raises_naming_the_field_when_features_are_invalid(features, match):
    with pytest.raises(InvalidInputError, match=match):
        check_features(features, 80)
