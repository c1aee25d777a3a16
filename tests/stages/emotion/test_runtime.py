import numpy as np
import pytest

from s2i.audio import prepare_audio
from s2i.errors import InvalidInputError
from s2i.model_repository.onnx_stage import OnnxStage, onnx_stage_runner
from s2i.stages.emotion.reference import EmotionReference
from s2i.stages.emotion.runtime import EmotionRunner, group_by_frames, parse_request_inputs, softmax


@pytest.fixture(scope="module")
def emotion_dir(checkpoints):
    return checkpoints["emotion"]


@pytest.fixture(scope="module")
def onnx_runner(emotion_dir, model_repository):
    graph = OnnxStage(model_repository.repository / "emotion_classifier_graph" / "1" / "model.onnx")
    return EmotionRunner(emotion_dir, onnx_stage_runner({"emotion_classifier_graph": graph}))


@pytest.fixture(scope="module")
def reference(emotion_dir):
    return EmotionReference(emotion_dir)


@pytest.fixture(scope="module")
def clips(hindi_clips):
    return [prepare_audio(clip.samples, clip.sample_rate_hz) for clip in hindi_clips]


def test_runner_probabilities_match_pytorch_when_clips_of_different_lengths_run_together(onnx_runner, reference, clips):
    # The same clip twice (one graph call of 2) and the others alone.
    batch = [*clips, clips[0]]
    results = onnx_runner.classify(batch)
    for samples, result in zip(batch, results, strict=True):
        expected = reference.probabilities(samples)
        np.testing.assert_allclose(result.probabilities, expected, atol=1e-4)
        assert result.label == reference.label(samples)
        assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    # Different clips give clearly different outputs, so the comparison is not trivial.
    assert np.ptp(np.stack([r.probabilities for r in results[:3]]), axis=0).max() > 0.02


def test_group_by_frames_batches_equal_lengths_up_to_the_limit():
    features = [np.zeros((1, 80, n)) for n in (100, 50, 100, 100, 50)]
    assert group_by_frames(features, max_batch_size=2) == [[0, 2], [3], [1, 4]]


def test_softmax_is_stable_and_sums_to_one_when_logits_are_large():
    probabilities = softmax(np.array([[1000.0, 1000.0, -1000.0]], dtype=np.float32))
    np.testing.assert_allclose(probabilities, [[0.5, 0.5, 0.0]], atol=1e-7)
    assert probabilities.dtype == np.float32


def test_parse_request_inputs_accepts_features_cut_from_whisper_features(onnx_runner, clips, reference):
    from s2i.stages.emotion.features import slice_whisper_features

    padded = onnx_runner.feature_extractor(clips[1], sampling_rate=16_000, return_tensors="np").input_features
    features = parse_request_inputs({"input_features": slice_whisper_features(padded, [len(clips[1])])[0]}, onnx_runner)
    result = onnx_runner.classify_features([features])[0]
    np.testing.assert_allclose(result.probabilities, reference.probabilities(clips[1]), atol=1e-4)


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        (
            dict(audio_samples=np.zeros((1, 1600), np.float32), input_features=np.zeros((1, 80, 20), np.float32)),
            "not both",
        ),
        (
            dict(audio_samples=np.zeros((2, 1600), np.float32), sample_rate_hz=np.array([[16000], [16000]], np.int32)),
            r"`audio_samples`: must hold one mono",
        ),
        (dict(), r"`audio_samples`: send exactly one of"),
        (dict(audio_bytes=np.array([[b"RIFF....garbage"]], np.object_)), r"`audio_bytes`: could not be decoded"),
        (
            dict(audio_samples=np.zeros((1, 1600), np.float32), sample_rate_hz=np.array([[16000, 8000]], np.int32)),
            r"`sample_rate_hz`: must hold one value",
        ),
    ],
)
def test_parse_request_inputs_raises_naming_the_field_when_inputs_conflict(onnx_runner, inputs, match):
    with pytest.raises(InvalidInputError, match=match):
        parse_request_inputs(inputs, onnx_runner)
