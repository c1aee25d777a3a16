import pytest
from tritonclient.grpc import model_config_pb2

from s2i.model_repository.config import (
    DynamicBatching,
    EnsembleStep,
    InstanceGroup,
    ModelSpec,
    TensorSpec,
    parse_config,
    render_config,
)


def spec(**overrides):
    values = dict(
        name="m",
        inputs=(TensorSpec("x", "FP32", (-1, 4)), TensorSpec("s", "BYTES", (1,), optional=True)),
        outputs=(TensorSpec("y", "INT64", (-1,)),),
        max_batch_size=8,
        dynamic_batching=DynamicBatching((4, 8), 100),
        instance_groups=(InstanceGroup(2),),
        parameters={"onnx_file": "model.onnx"},
    )
    values.update(overrides)
    return ModelSpec(**values)


def test_render_config_round_trips_through_triton_protobuf():
    config = parse_config(render_config(spec()))
    assert config.name == "m"
    assert config.backend == "python"
    assert config.max_batch_size == 8
    assert [(i.name, list(i.dims), i.optional) for i in config.input] == [("x", [-1, 4], False), ("s", [1], True)]
    assert config.input[1].data_type == model_config_pb2.TYPE_STRING
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.instance_group[0].count == 2
    assert config.parameters["onnx_file"].string_value == "model.onnx"


def test_render_config_allows_ragged_batches_only_for_inputs_marked_ragged():
    inputs = (TensorSpec("audio", "FP32", (-1,), ragged=True), TensorSpec("rate", "INT32", (1,)))
    config = parse_config(render_config(spec(inputs=inputs)))
    assert [(i.name, i.allow_ragged_batch) for i in config.input] == [("audio", True), ("rate", False)]


def test_whisper_loop_batches_raw_clips_of_different_lengths_when_rendered():
    from s2i import names
    from s2i.stages.whisper.specs import whisper_model_spec

    config = parse_config(render_config(whisper_model_spec()))
    ragged = {i.name for i in config.input if i.allow_ragged_batch}
    assert ragged == {names.AUDIO_SAMPLES}
    assert config.dynamic_batching.max_queue_delay_microseconds > 0


def test_render_config_writes_platform_and_no_backend_when_platform_is_set():
    config = parse_config(render_config(spec(backend="", platform="onnxruntime_onnx", parameters={})))
    assert config.platform == "onnxruntime_onnx"
    assert config.backend == ""


def test_render_config_writes_ensemble_steps_without_instance_groups():
    ensemble = spec(
        platform="ensemble",
        backend="",
        dynamic_batching=None,
        ensemble_steps=(EnsembleStep("a", {"x": "x"}, {"y": "y"}),),
    )
    config = parse_config(render_config(ensemble))
    assert config.ensemble_scheduling.step[0].model_name == "a"
    assert dict(config.ensemble_scheduling.step[0].input_map) == {"x": "x"}
    assert len(config.instance_group) == 0


def test_render_config_sets_decoupled_policy_when_streaming():
    assert parse_config(render_config(spec(decoupled=True))).model_transaction_policy.decoupled


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(max_batch_size=0), "has `dynamic_batching` but `max_batch_size` is 0"),
        (dict(dynamic_batching=DynamicBatching((16,))), "preferred batch size 16 exceeds `max_batch_size` 8"),
        (dict(outputs=(TensorSpec("y", "FP32", (1,)),) * 2), r"declares outputs \['y'\] more than once"),
    ],
)
def test_model_spec_raises_when_inconsistent(overrides, match):
    with pytest.raises(ValueError, match=match):
        spec(**overrides)


@pytest.mark.parametrize(
    ("args", "match"),
    [(("x", "FLOAT", (1,)), "`datatype` of `x` must be one of"), (("x", "FP32", (0,)), "must be positive or -1")],
)
def test_tensor_spec_raises_when_invalid(args, match):
    with pytest.raises(ValueError, match=match):
        TensorSpec(*args)


def test_every_generated_config_parses_and_names_its_folder(model_repository):
    configs = sorted(model_repository.repository.glob("*/config.pbtxt"))
    assert {path.parent.name for path in configs} >= {
        "whisper",
        "whisper_encoder",
        "whisper_decoder",
        "whisper_decoder_with_past",
    }
    for path in configs:
        config = parse_config(path.read_text())
        assert config.name == path.parent.name
        assert len(config.input) > 0 and len(config.output) > 0
