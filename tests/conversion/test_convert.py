import pytest

from s2i.conversion.convert import CheckpointError, convert, resolve_checkpoint
from s2i.conversion.repository import ONNXRUNTIME, stage_model_spec
from s2i.model_repository.config import parse_config, render_config


def test_convert_writes_stage_graphs_bls_model_and_assets(model_repository):
    repository = model_repository.repository
    for stage in ("whisper_encoder", "whisper_decoder", "whisper_decoder_with_past"):
        assert (repository / stage / "1" / "model.onnx").stat().st_size > 0
        assert "onnx_stage" in (repository / stage / "1" / "model.py").read_text()
    assert (repository / "whisper" / "1" / "assets" / "tokenizer.json").is_file()
    assert (repository / "whisper" / "1" / "assets" / "generation_config.json").is_file()
    assert "TritonPythonModel" in (repository / "whisper" / "1" / "model.py").read_text()


def test_stage_model_spec_renders_native_onnxruntime_model_when_target_is_onnxruntime(checkpoints):
    import json

    from s2i.stages.whisper.models import whisper_components

    config = json.loads((checkpoints["whisper"] / "config.json").read_text())
    encoder = whisper_components(config)[0]
    rendered = parse_config(render_config(stage_model_spec(encoder, ONNXRUNTIME)))
    assert rendered.platform == "onnxruntime_onnx"
    assert rendered.default_model_filename == "model.onnx"
    assert [i.name for i in rendered.input] == ["input_features"]
    assert list(rendered.output[0].dims) == [1500, 64]


def test_stage_model_spec_raises_when_target_unknown(checkpoints):
    import json

    from s2i.stages.whisper.models import whisper_components

    encoder = whisper_components(json.loads((checkpoints["whisper"] / "config.json").read_text()))[0]
    with pytest.raises(ValueError, match="`target` must be one of"):
        stage_model_spec(encoder, "tensorflow")


def test_resolve_checkpoint_raises_when_folder_has_no_config(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        resolve_checkpoint(tmp_path)


def test_resolve_checkpoint_raises_for_hub_ids_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="looks like a hub id, but HF_HUB_OFFLINE is set"):
        resolve_checkpoint("openai/whisper-small")


def test_convert_raises_when_stage_is_unknown(tmp_path):
    with pytest.raises(ValueError, match="`checkpoints` must name stages among"):
        convert({"wisper": tmp_path}, tmp_path / "repo")
