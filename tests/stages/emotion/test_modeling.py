import dataclasses
import json

import numpy as np
import pytest
import torch

from s2i.stages.emotion.checkpoint import build_tiny_emotion
from s2i.stages.emotion.config import EMOTIONS, EmotionConfig, load_config
from s2i.stages.emotion.modeling import EmotionClassifier


@pytest.mark.parametrize("architecture", ["bilstm", "transformer"])
def test_classifier_returns_one_logit_per_emotion_when_given_any_batch_and_length(architecture):
    torch.manual_seed(0)
    model = EmotionClassifier(EmotionConfig(architecture=architecture, hidden_size=16, num_layers=1)).eval()
    for batch, frames in ((1, 10), (3, 257)):
        with torch.no_grad():
            logits = model(torch.randn(batch, 80, frames))
        assert logits.shape == (batch, 8)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("architecture", ["bilstm", "transformer"])
def test_save_and_load_pretrained_gives_identical_logits_when_round_tripped(tmp_path, architecture):
    path = build_tiny_emotion(tmp_path / architecture, architecture=architecture, init_scale=4.0)
    first = EmotionClassifier.from_pretrained(path)
    second = EmotionClassifier.from_pretrained(path)
    features = torch.randn(2, 80, 120, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(first(features), second(features))
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]


def test_config_json_has_hugging_face_keys_and_ravdess_labels(tmp_path):
    path = build_tiny_emotion(tmp_path / "tiny")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "s2i-speech-emotion"
    assert config["id2label"] == {str(i): label for i, label in enumerate(EMOTIONS)}
    assert config["label2id"]["surprised"] == 7
    assert load_config(path) == dataclasses.replace(load_config(path))
    assert json.loads((path / "preprocessor_config.json").read_text())["feature_size"] == 80


def test_tiny_builder_writes_the_same_bytes_when_given_the_same_seed(tmp_path):
    first = build_tiny_emotion(tmp_path / "a", seed=3)
    second = build_tiny_emotion(tmp_path / "b", seed=3)
    other = build_tiny_emotion(tmp_path / "c", seed=4)
    weights = [(path / "model.safetensors").read_bytes() for path in (first, second, other)]
    assert weights[0] == weights[1]
    assert weights[0] != weights[2]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"architecture": "gru"}, r"`architecture` must be one of \['bilstm', 'transformer'\], got 'gru'"),
        ({"hidden_size": 33}, r"`hidden_size` must be even for a BiLSTM"),
        ({"architecture": "transformer", "hidden_size": 30, "num_heads": 4}, r"divisible by `num_heads`"),
        ({"labels": ("a", "a")}, r"`labels` must be distinct"),
    ],
)
def test_config_raises_when_fields_are_invalid(fields, match):
    with pytest.raises(ValueError, match=match):
        EmotionConfig(**fields)


def test_load_config_raises_when_model_type_is_another_models(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ValueError, match=r"`model_type` 'whisper', expected 's2i-speech-emotion'"):
        load_config(tmp_path)


def test_statistics_pooling_makes_logits_independent_of_repeating_the_clip():
    # Mean and std over time do not change when a (stem-aligned) sequence is repeated,
    # up to the conv edges: a sanity check that the head pools over time, not position.
    torch.manual_seed(0)
    model = EmotionClassifier(EmotionConfig(architecture="transformer", hidden_size=16, num_layers=1)).eval()
    x = torch.randn(1, 80, 400)
    with torch.no_grad():
        once, twice = model(x), model(torch.cat([x, x], dim=-1))
    np.testing.assert_allclose(once.numpy(), twice.numpy(), atol=0.05)
