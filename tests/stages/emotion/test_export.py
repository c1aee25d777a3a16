import dataclasses

import numpy as np
import pytest

from s2i.conversion.validation import ValidationError
from s2i.model_repository.components import GraphMismatchError
from s2i.model_repository.config import TensorSpec, parse_config
from s2i.model_repository.onnx_stage import OnnxStage
from s2i.stages.emotion.checkpoint import build_tiny_emotion
from s2i.stages.emotion.config import load_config
from s2i.stages.emotion.export import export_emotion, validate_emotion_export
from s2i.stages.emotion.modeling import EmotionClassifier
from s2i.stages.emotion.specs import emotion_component


@pytest.fixture(scope="module")
def transformer_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("emotion-transformer")
    checkpoint = build_tiny_emotion(root / "checkpoint", architecture="transformer", init_scale=8.0)
    return checkpoint, export_emotion(checkpoint, root / "onnx")


def test_export_validation_reports_small_difference_when_the_stage_is_converted(model_repository):
    assert 0 <= model_repository.max_abs_diff["emotion_classifier_graph"] < 1e-5
    assert {"emotion_classifier", "emotion_classifier_graph"} <= set(model_repository.models)


def test_transformer_export_matches_pytorch_when_batch_and_length_differ_from_the_trace(transformer_export):
    checkpoint, exported = transformer_export
    assert exported.max_abs_diff["emotion_classifier_graph"] < 1e-5
    stage = OnnxStage(exported.onnx_dir / "emotion_classifier.onnx")
    model = EmotionClassifier.from_pretrained(checkpoint)
    import torch

    features = torch.randn(5, 80, 333, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(features).numpy()
    actual = stage.run({"input_features": features.numpy()})["logits"]
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    # Different inputs give different logits: the comparison is not between constants.
    assert np.ptp(expected, axis=0).max() > 0.1


def test_export_reuses_the_graph_when_the_config_is_unchanged(transformer_export):
    checkpoint, exported = transformer_export
    onnx_path = exported.onnx_dir / "emotion_classifier.onnx"
    before = onnx_path.stat().st_mtime_ns
    export_emotion(checkpoint, exported.onnx_dir, validate=False)
    assert onnx_path.stat().st_mtime_ns == before


def test_export_validation_raises_when_tolerance_is_exceeded(transformer_export):
    checkpoint, exported = transformer_export
    strict = dataclasses.replace(exported.components[0], atol=1e-12, rtol=1e-12)
    with pytest.raises(ValidationError, match=r"`emotion_classifier_graph` differs from PyTorch by .* tolerance 1e-12"):
        validate_emotion_export(checkpoint, exported.onnx_dir, strict)


def test_component_check_graph_raises_when_declared_mel_bins_differ(transformer_export):
    checkpoint, exported = transformer_export
    wrong = dataclasses.replace(
        emotion_component(load_config(checkpoint)), inputs=(TensorSpec("input_features", "FP32", (128, -1)),)
    )
    with pytest.raises(GraphMismatchError, match=r"declared \[128, -1\] but the graph has \[80, -1\]"):
        wrong.check_graph(exported.onnx_dir / "emotion_classifier.onnx")


def test_rendered_configs_batch_dynamically_with_a_dynamic_time_axis(model_repository):
    repository = model_repository.repository
    graph = parse_config((repository / "emotion_classifier_graph" / "config.pbtxt").read_text())
    bls = parse_config((repository / "emotion_classifier" / "config.pbtxt").read_text())
    assert graph.max_batch_size == 8 and list(graph.input[0].dims) == [80, -1]
    assert graph.dynamic_batching.max_queue_delay_microseconds > 0
    assert bls.dynamic_batching.preferred_batch_size == [4, 8]
    assert [t.name for t in bls.input] == ["audio_samples", "sample_rate_hz", "audio_bytes", "input_features"]
    assert all(t.optional for t in bls.input)
    assert [(t.name, list(t.dims)) for t in bls.output] == [
        ("emotion_label", [1]),
        ("emotion_probabilities", [8]),
        ("emotion_label_names", [8]),
        ("compute_ms", [1]),
    ]
    assets = sorted(p.name for p in (repository / "emotion_classifier" / "1" / "assets").iterdir())
    assert assets == ["config.json", "preprocessor_config.json"]
