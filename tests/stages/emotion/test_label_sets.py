"""An emotion classifier trained on another label set (6 classes): runtime, client parsing, prompt templates."""

import dataclasses
import json

import numpy as np
import pytest

from s2i import names
from s2i.audio import InvalidInputError, prepare_audio
from s2i.client.operations import classify_emotion, parse_speech_to_image
from s2i.model_repository.onnx_stage import OnnxStage, onnx_stage_runner
from s2i.pipeline.prompt import StyleTemplates, compose_prompt
from s2i.stages.emotion.checkpoint import EMOTION_SIZES, save_emotion_checkpoint
from s2i.stages.emotion.export import export_emotion
from s2i.stages.emotion.modeling import EmotionClassifier
from s2i.stages.emotion.reference import EmotionReference
from s2i.stages.emotion.runtime import EmotionRunner
from s2i.stages.emotion.specs import emotion_model_spec
from s2i.stages.emotion.stage import TINY_INIT_SCALE, EmotionStage
from tests.conftest import BUILD_DIR

# Ekman's six, as many public speech-emotion sets label them.
SIX_LABELS = ("anger", "disgust", "fear", "joy", "sadness", "surprise")


@pytest.fixture(scope="module")
def six_class_checkpoint():
    import torch

    config = dataclasses.replace(EMOTION_SIZES["tiny"], labels=SIX_LABELS, num_mel_bins=128)
    torch.manual_seed(3)
    model = EmotionClassifier(config).eval()
    with torch.no_grad():
        model.head.weight.mul_(TINY_INIT_SCALE)
    return save_emotion_checkpoint(model, BUILD_DIR / "checkpoints-matrix" / "emotion-6-labels-128-mels")


@pytest.fixture(scope="module")
def runner(six_class_checkpoint, tmp_path_factory):
    EmotionStage().check_checkpoint(six_class_checkpoint)
    exported = export_emotion(six_class_checkpoint, tmp_path_factory.mktemp("onnx"))
    graph = OnnxStage(exported.onnx_dir / exported.components[0].onnx_file)
    return EmotionRunner(six_class_checkpoint, onnx_stage_runner({names.EMOTION_CLASSIFIER_GRAPH: graph}))


@pytest.fixture(scope="module")
def predictions(runner, hindi_clips):
    return runner.classify([prepare_audio(clip.samples, clip.sample_rate_hz) for clip in hindi_clips])


def test_runner_matches_pytorch_with_six_labels_when_classifier_has_another_label_set(
    six_class_checkpoint, predictions, hindi_clips
):
    reference = EmotionReference(six_class_checkpoint)
    for clip, prediction in zip(hindi_clips, predictions, strict=True):
        samples = prepare_audio(clip.samples, clip.sample_rate_hz)
        np.testing.assert_allclose(prediction.probabilities, reference.probabilities(samples), atol=1e-4)
        assert prediction.label == reference.label(samples)
        assert prediction.label in SIX_LABELS
        assert prediction.probabilities.shape == (6,)


def test_emotion_model_spec_declares_six_probabilities_when_checkpoint_has_six_labels(six_class_checkpoint):
    from s2i.stages.emotion.config import load_config

    spec = emotion_model_spec(load_config(six_class_checkpoint))
    outputs = {tensor.name: tensor for tensor in spec.outputs}
    assert outputs[names.EMOTION_PROBABILITIES].dims == (6,)
    inputs = {tensor.name: tensor for tensor in spec.inputs}
    assert inputs[names.INPUT_FEATURES].dims[0] == 128


def _served(prediction, label_names=SIX_LABELS):
    """The outputs the server sends for one prediction (batch axis first)."""
    outputs = {
        names.EMOTION_LABEL: np.array([[prediction.label.encode()]], dtype=np.object_),
        names.EMOTION_PROBABILITIES: prediction.probabilities[None, :].astype(np.float32),
    }
    if label_names:
        outputs[names.EMOTION_LABEL_NAMES] = np.array([[label.encode() for label in label_names]], dtype=np.object_)
    return outputs


def test_client_keys_scores_by_label_names_when_server_sends_another_label_set(predictions):
    prediction = predictions[0]
    result = classify_emotion(np.zeros(1600, np.float32), 16_000).parse(_served(prediction))
    assert result.label == prediction.label
    assert result.label_names == SIX_LABELS
    np.testing.assert_array_equal(result.probabilities, prediction.probabilities)
    assert list(result.scores) == list(SIX_LABELS)
    assert result.scores[prediction.label] == max(result.scores.values())


def test_client_keys_scores_by_index_when_server_sends_no_label_names(predictions):
    prediction = predictions[0]
    result = classify_emotion(np.zeros(1600, np.float32), 16_000).parse(_served(prediction, label_names=()))
    assert list(result.scores) == ["0", "1", "2", "3", "4", "5"]
    assert result.scores[str(SIX_LABELS.index(prediction.label))] == max(result.scores.values())


def test_client_raises_naming_label_names_when_their_count_differs_from_probabilities(predictions):
    from s2i.client import ClientError

    outputs = _served(predictions[0], label_names=SIX_LABELS[:5])
    with pytest.raises(ClientError, match="5 `emotion_label_names` for 6 probabilities"):
        classify_emotion(np.zeros(1600, np.float32), 16_000).parse(outputs)


def test_client_parses_pipeline_result_when_classifier_has_six_labels(predictions):
    prediction = predictions[0]
    composed = compose_prompt("a red boat", prediction.label, StyleTemplates.load())
    outputs = {
        **_served(prediction),
        names.TEXT: np.array([[b"a red boat"]], dtype=np.object_),
        names.EMOTION: np.array([[composed.emotion.encode()]], dtype=np.object_),
        names.PROMPT: np.array([[composed.prompt.encode()]], dtype=np.object_),
        names.NEGATIVE_PROMPT: np.array([[composed.negative_prompt.encode()]], dtype=np.object_),
    }
    result = parse_speech_to_image(outputs)
    assert result.detected_emotion == prediction.label
    assert list(result.emotion_scores) == list(SIX_LABELS)
    assert result.prompt == f"a red boat, {prediction.label} atmosphere, photograph"


def test_compose_prompt_uses_template_fallback_when_emotion_is_not_a_ravdess_label():
    templates = StyleTemplates.load()
    photo = compose_prompt("a cat", "joy", templates)
    painting = compose_prompt("a cat", "joy", templates, template_name="painting")
    assert (photo.prompt, photo.emotion) == ("a cat, joy atmosphere, photograph", "joy")
    assert painting.prompt == "a cat, painting with a joy mood"
    # RAVDESS labels keep their own prompts.
    assert compose_prompt("a cat", "happy", templates).prompt.startswith("a cat, bright sunshine")


def test_compose_prompt_accepts_override_from_checkpoint_labels_when_classifier_has_another_label_set():
    templates = StyleTemplates.load()
    composed = compose_prompt("a cat", "fear", templates, emotion_override="joy", labels=SIX_LABELS)
    assert (composed.emotion, composed.prompt) == ("joy", "a cat, joy atmosphere, photograph")
    # RAVDESS's labels stay accepted: the templates have prompts for them.
    assert compose_prompt("a cat", "fear", templates, emotion_override="happy", labels=SIX_LABELS).emotion == "happy"
    with pytest.raises(InvalidInputError, match=r"`emotion_override`: must be one of \['anger'.*'surprised'\]"):
        compose_prompt("a cat", "fear", templates, emotion_override="elated", labels=SIX_LABELS)
    with pytest.raises(InvalidInputError, match="`emotion_override`"):
        compose_prompt("a cat", "fear", templates, emotion_override="joy")  # RAVDESS classifier: not a label


def test_pipeline_models_carry_checkpoint_labels_when_classifier_has_another_label_set(six_class_checkpoint):
    from s2i.pipeline.specs import prompt_composer_spec
    from s2i.stages.emotion.config import load_config

    config = load_config(six_class_checkpoint)
    outputs = {tensor.name: tensor for tensor in emotion_model_spec(config).outputs}
    assert outputs[names.EMOTION_LABEL_NAMES].dims == (6,)
    assert outputs[names.EMOTION_LABEL_NAMES].datatype == "BYTES"
    parameters = prompt_composer_spec(emotion_labels=config.labels).parameters
    assert json.loads(parameters[names.EMOTION_LABELS_PARAMETER]) == list(SIX_LABELS)


def test_compose_prompt_bounds_label_when_classifier_label_is_long():
    composed = compose_prompt("a cat", "x" * 1000 + " \n y", StyleTemplates.load())
    assert composed.emotion == "x" * 64
    assert len(composed.prompt) < 120


def test_style_templates_load_raises_when_fallback_uses_unknown_placeholder(tmp_path):
    styles = tmp_path / "styles.toml"
    emotions = "\n".join(f'{emotion} = "{{text}}"' for emotion in names.EMOTION_LABELS)
    styles.write_text(
        f'default_template = "t"\n[templates.t]\nfallback = "{{text}} {{colour}}"\n[templates.t.emotions]\n{emotions}\n'
    )
    with pytest.raises(ValueError, match="the `fallback` prompt may use only `{text}` and `{emotion}`"):
        StyleTemplates.load(styles)
