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

    from s2i.stages.whisper.specs import whisper_components

    config = json.loads((checkpoints["whisper"] / "config.json").read_text())
    encoder = whisper_components(config)[0]
    rendered = parse_config(render_config(stage_model_spec(encoder, ONNXRUNTIME)))
    assert rendered.platform == "onnxruntime_onnx"
    assert rendered.default_model_filename == "model.onnx"
    assert [i.name for i in rendered.input] == ["input_features"]
    assert list(rendered.output[0].dims) == [1500, 64]


def test_stage_model_spec_raises_when_target_unknown(checkpoints):
    import json

    from s2i.stages.whisper.specs import whisper_components

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


def test_stage_repository_model_carries_external_weights_under_the_name_the_graph_uses(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from s2i.conversion.repository import PYTHON_ONNXRUNTIME, stage_repository_model, write_model
    from s2i.model_repository.components import OnnxComponent
    from s2i.model_repository.config import TensorSpec
    from s2i.model_repository.deployment import ModelPolicy
    from s2i.model_repository.onnx_stage import OnnxStage

    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(1, 4096), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4096])],
        [weight],
    )
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        export_dir / "big.onnx",
        save_as_external_data=True,
        location="big.onnx_data",
        size_threshold=0,
    )
    component = OnnxComponent(
        "big",
        "big.onnx",
        (TensorSpec("x", "FP32", (4096,)),),
        (TensorSpec("y", "FP32", (4096,)),),
        1e-6,
        batching=ModelPolicy(max_batch_size=4),
    )
    model_dir = write_model(tmp_path / "repo", stage_repository_model(component, export_dir, PYTHON_ONNXRUNTIME))
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["big.onnx_data", "model.onnx", "model.py"]
    outputs = OnnxStage(model_dir / "1" / "model.onnx").run({"x": np.ones((1, 4096), np.float32)})
    assert outputs["y"][0, 10] == 11.0
