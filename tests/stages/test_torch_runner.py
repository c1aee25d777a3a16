"""The ``python-torch`` runners: the same outputs as the exported ONNX graphs, batching, options, imports."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from s2i import names
from s2i.conversion.validation import graph_error
from s2i.errors import InvalidInputError
from s2i.model_repository.onnx_stage import OnnxStage
from s2i.stages.torch_runner import TorchOptions, TorchStage, instance_device, load_stage, runner_class
from s2i.stages.whisper.decoding import past_names
from tests.conftest import ROOT

RNG_SEED = 7


def whisper_inputs(checkpoints, repository) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of the three Whisper graphs; the decoder steps get a real encoder output and cache."""
    config = json.loads((checkpoints["whisper"] / "config.json").read_text())
    rng = np.random.default_rng(RNG_SEED)
    features = (rng.standard_normal((2, config["num_mel_bins"], 3000)) * 0.5).astype(np.float32)
    hidden = OnnxStage(repository / names.WHISPER_ENCODER / "1" / "model.onnx").run({names.INPUT_FEATURES: features})
    prompt = np.array([[50258, 50276, 50358, 50363], [50258, 50276, 50359, 50363]], dtype=np.int64)
    first = {names.INPUT_IDS: prompt, names.ENCODER_HIDDEN_STATES: hidden[names.LAST_HIDDEN_STATE]}
    cache = OnnxStage(repository / names.WHISPER_DECODER / "1" / "model.onnx").run(first)
    layers = int(config["decoder_layers"])
    past = {
        name.replace("present", "past_key_values"): cache[name]
        for name in past_names(layers, prefix="present", include_encoder=True)
    }
    return {
        names.WHISPER_ENCODER: {names.INPUT_FEATURES: features},
        names.WHISPER_DECODER: first,
        names.WHISPER_DECODER_WITH_PAST: {names.INPUT_IDS: np.array([[440], [1000]], dtype=np.int64), **past},
    }


def diffusion_inputs(checkpoints) -> dict[str, dict[str, np.ndarray]]:
    unet = json.loads((checkpoints["diffusion"] / "unet" / "config.json").read_text())
    rng = np.random.default_rng(RNG_SEED)
    levels = 2 ** (len(unet["block_out_channels"]) - 1)
    height, width = 2 * levels, 3 * levels
    hidden = rng.standard_normal((2, 77, unet["cross_attention_dim"])).astype(np.float32)
    return {
        names.TEXT_ENCODER: {names.INPUT_IDS: rng.integers(0, 1000, (2, 77)).astype(np.int64)},
        names.UNET: {
            names.SAMPLE: rng.standard_normal((2, unet["in_channels"], height, width)).astype(np.float32),
            names.TIMESTEP: np.array([[981.0], [1.0]], dtype=np.float32),
            names.ENCODER_HIDDEN_STATES: hidden,
        },
        names.VAE_DECODER: {names.LATENT_SAMPLE: rng.standard_normal((2, 4, height, width)).astype(np.float32)},
    }


@pytest.fixture(scope="module")
def stage_inputs(checkpoints, model_repository) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(RNG_SEED)
    return {
        **whisper_inputs(checkpoints, model_repository.repository),
        **diffusion_inputs(checkpoints),
        # Odd length, batch of three: the shapes a batch of equal-length clips has.
        names.EMOTION_CLASSIFIER_GRAPH: {
            names.INPUT_FEATURES: (rng.standard_normal((3, 80, 77)) * 0.5).astype(np.float32)
        },
    }


def component_of(stage_name: str, model_name: str, checkpoint):
    from s2i.stages.registry import STAGES

    (component,) = [c for c in STAGES[stage_name].describe(checkpoint) if c.model_name == model_name]
    return component


def torch_stage(stage_name: str, model_name: str, checkpoints, options: TorchOptions | None = None) -> TorchStage:
    from s2i.stages.registry import STAGES

    stage = STAGES[stage_name]
    component = component_of(stage_name, model_name, checkpoints[stage_name])
    return load_stage(component.torch_runner, stage.torch_checkpoint(checkpoints[stage_name], component), options)


GRAPHS = [
    ("whisper", names.WHISPER_ENCODER),
    ("whisper", names.WHISPER_DECODER),
    ("whisper", names.WHISPER_DECODER_WITH_PAST),
    ("emotion", names.EMOTION_CLASSIFIER_GRAPH),
    ("diffusion", names.TEXT_ENCODER),
    ("diffusion", names.UNET),
    ("diffusion", names.VAE_DECODER),
]


@pytest.mark.parametrize(("stage_name", "model_name"), GRAPHS, ids=[model for _, model in GRAPHS])
def test_torch_runner_matches_onnx_graph_within_its_tolerance_when_inputs_are_equal(
    stage_name, model_name, checkpoints, model_repository, stage_inputs
):
    component = component_of(stage_name, model_name, checkpoints[stage_name])
    graph = OnnxStage(model_repository.repository / model_name / "1" / "model.onnx")
    runner = torch_stage(stage_name, model_name, checkpoints)
    inputs = stage_inputs[model_name]
    expected = graph.run(inputs)
    actual = runner.run(inputs)
    assert set(actual) == set(expected) == {tensor.name for tensor in component.outputs}
    errors = {name: graph_error(expected[name], actual[name]) for name in expected}
    print(f"{model_name}: max abs diff to ONNX {max(error.max_abs_diff for error in errors.values()):.2e}")
    for name, error in errors.items():
        assert actual[name].shape == expected[name].shape and actual[name].dtype == np.float32, name
        # The export's own bound against PyTorch: the ONNX targets' CPU tolerance.
        assert error.max_abs_diff <= component.atol or error.normalised <= component.rtol, (name, error)
        assert np.abs(actual[name]).max() > 0, name


# float16 against float32, as max abs difference / max abs value: what the CUDA path's dtype costs.
# Measured on this CPU (float16 kernels, tiny random weights): 6e-4 (emotion) to 4.6e-3 (encoder, VAE).
FLOAT16_NORMALISED_TOLERANCE = 2e-2


@pytest.mark.parametrize(("stage_name", "model_name"), GRAPHS, ids=[model for _, model in GRAPHS])
def test_torch_runner_stays_within_fp16_tolerance_of_fp32_when_run_in_float16(
    stage_name, model_name, checkpoints, stage_inputs
):
    inputs = stage_inputs[model_name]
    expected = torch_stage(stage_name, model_name, checkpoints).run(inputs)
    half = torch_stage(stage_name, model_name, checkpoints, TorchOptions(dtype="float16"))
    actual = half.run(inputs)
    assert str(half.dtype) == "torch.float16"
    for name, value in expected.items():
        # The graph's contract stays float32 whatever the module computes in.
        assert actual[name].dtype == np.float32 and np.isfinite(actual[name]).all(), name
        error = graph_error(value, actual[name]).normalised
        print(f"{model_name} `{name}`: float16 normalised error {error:.1e}")
        assert error <= FLOAT16_NORMALISED_TOLERANCE, (name, error)


def test_torch_runner_batches_requests_and_refuses_only_the_bad_one_when_a_batch_mixes_them(checkpoints):
    runner = torch_stage("diffusion", names.TEXT_ENCODER, checkpoints)
    rng = np.random.default_rng(1)
    first, second = ({names.INPUT_IDS: rng.integers(0, 1000, (rows, 77)).astype(np.int64)} for rows in (1, 2))
    bad = {names.INPUT_IDS: np.full((1, 77), -1, dtype=np.int64)}
    results = runner.run_requests([first, bad, second])
    assert isinstance(results[1], InvalidInputError) and results[1].field == names.INPUT_IDS
    for request, result in ((first, results[0]), (second, results[2])):
        alone = runner.run(request)
        assert set(result) == {names.LAST_HIDDEN_STATE, names.POOLER_OUTPUT}
        assert result[names.LAST_HIDDEN_STATE].shape == (len(request[names.INPUT_IDS]), 77, 32)
        np.testing.assert_allclose(result[names.POOLER_OUTPUT], alone[names.POOLER_OUTPUT], atol=1e-5)


def test_torch_runner_cuda_options_are_no_ops_when_run_on_the_cpu(checkpoints, stage_inputs):
    plain = torch_stage("diffusion", names.UNET, checkpoints)
    tuned = torch_stage("diffusion", names.UNET, checkpoints, TorchOptions(cuda_graphs=True, compile=True))
    inputs = stage_inputs[names.UNET]
    for _ in range(3):  # a CUDA graph would be captured at the second sighting of a shape
        np.testing.assert_array_equal(tuned.run(inputs)[names.OUT_SAMPLE], plain.run(inputs)[names.OUT_SAMPLE])
    assert tuned.graphs_captured == 0
    assert tuned.dtype == plain.dtype and str(tuned.dtype) == "torch.float32"


def test_torch_options_parse_config_parameters_strictly_when_given_strings():
    options = TorchOptions.from_parameters({"cuda_graphs": "true", "torch_compile": "false"}, "cuda:1")
    assert (options.cuda_graphs, options.compile, options.device, str(options.torch_dtype)) == (
        True,
        False,
        "cuda:1",
        "torch.float16",
    )
    assert str(TorchOptions.from_parameters({}, "cpu").torch_dtype) == "torch.float32"
    with pytest.raises(ValueError, match="`cuda_graphs` must be 'true' or 'false'"):
        TorchOptions.from_parameters({"cuda_graphs": "yes please"}, "cpu")
    with pytest.raises(ValueError, match="`dtype` must be 'auto' or one of"):
        TorchOptions.from_parameters({"dtype": "int8"}, "cpu")
    assert instance_device("GPU", "1") == "cuda:1" and instance_device("CPU", "0") == "cpu"


def test_runner_class_refuses_modules_outside_the_stage_packages_when_named_in_a_config():
    with pytest.raises(ValueError, match="must name a runner"):
        runner_class("os:system")
    with pytest.raises(ValueError, match="does not name a TorchStage"):
        runner_class("s2i.stages.torch_runner:InvalidInputError")


def test_torch_runners_import_without_onnx_triton_or_conversion_when_loaded_from_a_bare_checkout():
    script = (
        "import sys; sys.path.insert(0, 'src');"
        "import s2i.stages.whisper.torch_runner, s2i.stages.emotion.torch_runner, s2i.stages.diffusion.torch_runner;"
        "heavy = ('onnx', 'onnxruntime', 'optimum', 'tritonclient', 's2i.model_repository', 's2i.conversion');"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)))"
    )
    # Run from the checkout with no install of the project on the path: what a GPU check host has.
    done = subprocess.run(
        [sys.executable, "-s", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"
