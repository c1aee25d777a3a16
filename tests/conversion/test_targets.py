"""Every target's stage configs parse into Triton's protobuf and agree with the exported graphs."""

import json

import pytest

from s2i.conversion.repository import TARGETS, TENSORRT, stage_model_spec
from s2i.model_repository.config import parse_config, render_config
from s2i.model_repository.deployment import CPU, GPU, POLICIES, policy
from s2i.stages.whisper.specs import whisper_components

TYPE_NAMES = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "INT32": "TYPE_INT32", "BYTES": "TYPE_STRING"}


@pytest.fixture(scope="module")
def components(checkpoints):
    return whisper_components(json.loads((checkpoints["whisper"] / "config.json").read_text()))


@pytest.mark.parametrize("target", TARGETS)
def test_stage_configs_match_onnx_graph_names_types_and_dims_for_every_target(target, components, model_repository):
    from tritonclient.grpc import model_config_pb2

    for component in components:
        component.check_graph(model_repository.repository / component.model_name / "1" / "model.onnx")
        config = parse_config(render_config(stage_model_spec(component, target)))
        for rendered, declared in ((config.input, component.inputs), (config.output, component.outputs)):
            assert [tensor.name for tensor in rendered] == [tensor.name for tensor in declared]
            for tensor, spec in zip(rendered, declared, strict=True):
                assert model_config_pb2.DataType.Name(tensor.data_type) == TYPE_NAMES[spec.datatype]
                assert list(tensor.dims) == list(spec.dims)


@pytest.mark.parametrize(
    ("target", "platform", "backend", "kind"),
    [
        ("python-onnxruntime", "", "python", "KIND_CPU"),
        ("onnxruntime", "onnxruntime_onnx", "", "KIND_CPU"),
        ("onnxruntime-gpu", "onnxruntime_onnx", "", "KIND_GPU"),
        ("tensorrt", "tensorrt_plan", "", "KIND_GPU"),
    ],
)
def test_stage_config_platform_and_instance_kind_follow_the_target(target, platform, backend, kind, components):
    from tritonclient.grpc import model_config_pb2

    config = parse_config(render_config(stage_model_spec(components[0], target)))
    assert (config.platform, config.backend) == (platform, backend)
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == kind
    expected = policy(components[0].model_name, GPU if kind == "KIND_GPU" else CPU)
    assert config.max_batch_size == expected.max_batch_size
    assert list(config.dynamic_batching.preferred_batch_size) == list(expected.preferred_batch_sizes)
    if target == TENSORRT:
        assert config.default_model_filename == "model.plan"


def test_deployment_policies_cover_the_same_models_on_every_device():
    assert set(POLICIES[CPU]) == set(POLICIES[GPU])


def test_deployment_policy_raises_for_unknown_models_without_default():
    with pytest.raises(KeyError, match="No batching policy for model `nope` on gpu"):
        policy("nope", GPU)


def test_whisper_components_declare_profiles_that_cover_the_decoder_positions(components):
    _, decoder, with_past = components
    assert decoder.profile(16, 8)["input_ids"] == ((1, 1), (8, 4), (16, 448))
    low, opt, high = with_past.profile(16, 8)["past_key_values.0.decoder.key"]
    assert low == (1, 4, 1, 16) and opt == (8, 4, 64, 16) and high == (16, 4, 447, 16)
    assert with_past.profile(16, 8)["past_key_values.0.encoder.key"][2] == (16, 4, 1500, 16)


def test_component_profile_raises_when_a_dynamic_axis_has_no_range(components):
    import dataclasses

    undeclared = dataclasses.replace(components[1], axis_ranges={})
    with pytest.raises(ValueError, match="`whisper_decoder` input `input_ids` axis 0 is dynamic but has no"):
        undeclared.profile(8, 4)


def test_every_model_in_the_repository_takes_its_batching_from_the_deployment_table(model_repository):
    for path in sorted(model_repository.repository.glob("*/config.pbtxt")):
        config = parse_config(path.read_text())
        if config.platform == "ensemble":
            continue
        chosen = policy(config.name, CPU)  # raises for a model the table does not list
        assert config.max_batch_size == chosen.max_batch_size, config.name
        assert config.instance_group[0].count == chosen.instances, config.name
        if chosen.max_queue_delay_us is None:
            assert not config.HasField("dynamic_batching"), config.name
        else:
            assert list(config.dynamic_batching.preferred_batch_size) == list(chosen.preferred_batch_sizes)


@pytest.mark.parametrize(("cuda", "kind"), [(False, "KIND_CPU"), (True, "KIND_GPU")])
def test_python_torch_stage_config_follows_the_converting_hosts_device_when_cuda_is_or_is_not_there(
    cuda, kind, components, monkeypatch
):
    import torch
    from tritonclient.grpc import model_config_pb2

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    config = parse_config(render_config(stage_model_spec(components[0], "python-torch")))
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert (config.platform, config.backend) == ("", "python")
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == kind
    expected = policy(components[0].model_name, GPU if cuda else CPU)
    assert (config.max_batch_size, config.instance_group[0].count) == (expected.max_batch_size, expected.instances)
    assert parameters["torch_runner"] == "s2i.stages.whisper.torch_runner:WhisperEncoderRunner"
    assert (parameters["cuda_graphs"], parameters["torch_compile"], parameters["dtype"]) == ("false", "false", "auto")
