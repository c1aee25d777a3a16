import dataclasses
import json

import onnx
import pytest

from s2i.conversion.validation import ValidationError
from s2i.model_repository.components import GraphMismatchError
from s2i.model_repository.config import TensorSpec, parse_config
from s2i.stages.diffusion.export import validate_diffusion_export
from s2i.stages.diffusion.specs import diffusion_components, read_configs

STAGE_MODELS = ("text_encoder", "unet", "vae_decoder")


@pytest.fixture(scope="module")
def onnx_dir(model_repository):
    return next((model_repository.repository.parent / "onnx").glob("diffusion-*"))


def test_export_validation_reports_small_differences_for_every_graph(model_repository):
    diffs = {name: model_repository.max_abs_diff[name] for name in STAGE_MODELS}
    assert all(0 <= diff < 1e-4 for diff in diffs.values()), diffs


def test_export_validation_raises_when_tolerance_is_exceeded(diffusion_dir, onnx_dir):
    strict = [dataclasses.replace(c, atol=1e-12, rtol=1e-12) for c in diffusion_components(read_configs(diffusion_dir))]
    with pytest.raises(ValidationError, match=r"`text_encoder` differs from PyTorch by .* of its output range"):
        validate_diffusion_export(diffusion_dir, onnx_dir, strict)


def test_unet_graph_takes_one_timestep_per_row_when_exported(model_repository):
    graph = onnx.load(str(model_repository.repository / "unet" / "1" / "model.onnx"), load_external_data=False).graph
    (timestep,) = [node for node in graph.input if node.name == "timestep"]
    dims = timestep.type.tensor_type.shape.dim
    assert [dim.dim_param or dim.dim_value for dim in dims] == ["batch_size", 1]


def test_unet_config_batches_concurrent_steps_when_rendered(model_repository):
    config = parse_config((model_repository.repository / "unet" / "config.pbtxt").read_text())
    assert config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    # CPU: Triton merges 16 rows, ONNX Runtime computes them 4 at a time (memory, deployment table).
    assert config.parameters["max_rows_per_call"].string_value == "4"
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert [(tensor.name, list(tensor.dims)) for tensor in config.input] == [
        ("sample", [4, -1, -1]),
        ("timestep", [1]),
        ("encoder_hidden_states", [77, 32]),
    ]


def test_diffusion_config_declares_the_request_options_when_rendered(model_repository):
    config = parse_config((model_repository.repository / "diffusion" / "config.pbtxt").read_text())
    optional = {tensor.name: tensor.optional for tensor in config.input}
    assert optional == {
        "prompt": False,
        "negative_prompt": True,
        "num_inference_steps": True,
        "guidance_scale": True,
        "height": True,
        "width": True,
        "seed": True,
        "scheduler": True,
    }
    assert [(tensor.name, list(tensor.dims)) for tensor in config.output] == [
        ("image", [-1, -1, 3]),
        ("seed", [1]),
        ("compute_ms", [1]),
    ]
    assert (model_repository.repository / "diffusion" / "1" / "assets" / "tokenizer" / "vocab.json").is_file()


def test_component_check_graph_raises_when_declared_dims_differ(diffusion_dir, model_repository):
    unet = diffusion_components(read_configs(diffusion_dir))[1]
    wrong = dataclasses.replace(unet, outputs=(TensorSpec("out_sample", "FP32", (8, -1, -1)),))
    with pytest.raises(GraphMismatchError, match=r"declared \[8, -1, -1\] but the graph has \[4, -1, -1\]"):
        wrong.check_graph(model_repository.repository / "unet" / "1" / "model.onnx")


def test_tiny_checkpoint_has_stable_diffusion_15s_scheduler_config(diffusion_dir):
    config = json.loads((diffusion_dir / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "PNDMScheduler"
    expected = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    assert {key: config[key] for key in expected} == expected
    assert (config["skip_prk_steps"], config["set_alpha_to_one"], config["clip_sample"]) == (True, False, False)
