import dataclasses
import json

import pytest

from s2i.conversion.validation import ValidationError
from s2i.model_repository.components import GraphMismatchError
from s2i.model_repository.config import TensorSpec
from s2i.stages.whisper.export import validate_whisper_export
from s2i.stages.whisper.specs import whisper_components


def test_export_validation_reports_small_differences_for_every_graph(model_repository):
    whisper_graphs = ("whisper_encoder", "whisper_decoder", "whisper_decoder_with_past")
    diffs = {name: model_repository.max_abs_diff[name] for name in whisper_graphs}
    assert all(0 <= diff < 1e-4 for diff in diffs.values()), diffs


def test_export_validation_raises_when_tolerance_is_exceeded(checkpoints, model_repository):
    config = json.loads((checkpoints["whisper"] / "config.json").read_text())
    strict = [dataclasses.replace(c, atol=1e-12, rtol=1e-12) for c in whisper_components(config)]
    onnx_dir = next((model_repository.repository.parent / "onnx").glob("whisper-*"))
    with pytest.raises(ValidationError, match=r"`whisper_encoder` differs from PyTorch by .* of its output range"):
        validate_whisper_export(checkpoints["whisper"], onnx_dir, strict)


def test_component_check_graph_raises_when_declared_dims_differ(checkpoints, model_repository):
    config = json.loads((checkpoints["whisper"] / "config.json").read_text())
    encoder = whisper_components(config)[0]
    wrong = dataclasses.replace(encoder, inputs=(TensorSpec("input_features", "FP32", (128, 3000)),))
    with pytest.raises(GraphMismatchError, match=r"declared \[128, 3000\] but the graph has \[80, 3000\]"):
        wrong.check_graph(model_repository.repository / "whisper_encoder" / "1" / "model.onnx")


def test_component_check_graph_raises_when_names_differ(checkpoints, model_repository):
    config = json.loads((checkpoints["whisper"] / "config.json").read_text())
    encoder = whisper_components(config)[0]
    wrong = dataclasses.replace(encoder, outputs=(TensorSpec("hidden", "FP32", (1500, 64)),))
    with pytest.raises(GraphMismatchError, match=r"declares outputs \['hidden'\] but"):
        wrong.check_graph(model_repository.repository / "whisper_encoder" / "1" / "model.onnx")
