"""The contract every registered stage meets, the toy fourth stage included.

Export validates against PyTorch, every graph matches its description, every rendered config
parses back to itself, and the BLS model gets the checkpoint files it reads. The toy stage is
then converted with `s2i.conversion.convert` (no edits outside its package and the registry)
and served by a real tritonserver: its answer equals PyTorch, bad input is refused, and the
next request still succeeds.
"""

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from s2i.conversion.convert import convert
from s2i.conversion.repository import PYTHON_ONNXRUNTIME, PYTHON_TORCH
from s2i.model_repository.config import parse_config, render_config, to_model_config
from s2i.stages import registry
from tests.conftest import BUILD_DIR, started_server
from tests.stages.toy.stage import BLS, LoudnessNet, LoudnessStage

BUILT_IN = list(registry.STAGES)


@pytest.fixture(scope="module")
def toy_stage():
    stage = LoudnessStage()
    registry.register(stage)
    yield stage
    registry.unregister(stage.name)


@pytest.fixture(scope="module")
def stage_checkpoints(checkpoints, toy_stage):
    return {**checkpoints, toy_stage.name: toy_stage.build_tiny(BUILD_DIR / "checkpoints" / "toy" / "loudness", "tiny")}


def test_registry_discovers_the_built_in_stages_in_pipeline_order():
    assert BUILT_IN == ["whisper", "emotion", "diffusion"]


def test_register_places_a_new_stage_by_its_order(toy_stage):
    assert list(registry.STAGES) == [*BUILT_IN, "loudness"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(LoudnessStage())


@pytest.mark.parametrize("stage_name", [*BUILT_IN, "loudness"])
def test_stage_meets_the_contract_when_exported_and_described(stage_name, stage_checkpoints, tmp_path):
    stage = registry.STAGES[stage_name]
    checkpoint = stage_checkpoints[stage_name]
    # The session's conversion cached these exports; the toy stage exports here.
    exported = stage.export(checkpoint, BUILD_DIR / "contract-onnx" / stage_name)
    assert {component.model_name for component in exported.components} == set(exported.max_abs_diff)
    for component in exported.components:
        component.check_graph(exported.onnx_dir / component.onnx_file)
        assert exported.max_abs_diff[component.model_name] <= component.atol
    models = stage.repository_models(checkpoint, exported, PYTHON_ONNXRUNTIME)
    assert [model.spec.name for model in models][: len(exported.components)] == [
        component.model_name for component in exported.components
    ]
    for model in models:
        assert parse_config(render_config(model.spec)) == to_model_config(model.spec)
    bls = models[-1]
    assert bls.python_model == stage.bls_model
    assert set(stage.required_assets) <= {name.removeprefix("assets/") for name in bls.files}
    if PYTHON_TORCH in stage.targets:
        # python-torch serves without exporting: the descriptions must be the export's, each with a runner.
        assert stage.describe(checkpoint) == exported.components
        assert all(component.torch_runner for component in exported.components)


def test_built_in_stages_support_python_torch_and_the_toy_stage_only_the_onnx_targets(toy_stage):
    assert all(PYTHON_TORCH in registry.STAGES[name].targets for name in BUILT_IN)
    assert PYTHON_TORCH not in toy_stage.targets


def test_stage_refuses_a_checkpoint_without_its_required_files(stage_checkpoints, tmp_path):
    stage = registry.STAGES["emotion"]
    exported = stage.export(stage_checkpoints["emotion"], BUILD_DIR / "contract-onnx" / "emotion")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"lacks \['preprocessor_config.json'\]"):
        stage.repository_models(tmp_path, exported, PYTHON_ONNXRUNTIME)


@pytest.fixture(scope="module")
def toy_server(toy_stage, stage_checkpoints):
    report = convert(
        {toy_stage.name: stage_checkpoints[toy_stage.name]},
        BUILD_DIR / "toy-repository",
        work_dir=BUILD_DIR / "contract-onnx",
    )
    assert sorted(report.models) == ["loudness", "loudness_graph"]
    with started_server(report.repository, "toy-stage") as server:
        yield server


def _loudness(client, samples):
    tensor = grpcclient.InferInput("audio_samples", list(samples.shape), "FP32")
    tensor.set_data_from_numpy(samples)
    return client.infer(BLS, [tensor]).as_numpy("loudness")


def test_toy_stage_serves_pytorch_values_and_refuses_bad_input(toy_server, stage_checkpoints):
    model = LoudnessNet.from_checkpoint(stage_checkpoints["loudness"])
    clip = np.random.default_rng(1).standard_normal((1, 20_000), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(clip)).numpy()
    client = grpcclient.InferenceServerClient(toy_server.grpc_url)
    try:
        np.testing.assert_allclose(_loudness(client, clip), expected, rtol=1e-5)
        with pytest.raises(InferenceServerException, match="`audio_samples`: must be finite"):
            _loudness(client, np.full((1, 100), np.nan, np.float32))
        np.testing.assert_allclose(_loudness(client, clip), expected, rtol=1e-5)
    finally:
        client.close()
