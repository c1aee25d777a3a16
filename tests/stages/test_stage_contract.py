"""The contract every registered stage meets, the toy fourth stage included.

Export validates against PyTorch, every graph matches its description, every rendered config
parses back to itself, and the BLS model gets the checkpoint files it reads. The toy stage is
then converted with `s2i.conversion.convert` (no edits outside its package and the registry)
and served by a real tritonserver: its answer equals PyTorch, bad input is refused, and the
next request still succeeds. Last, with one DAG step (its own `with_loudness`), it joins the
pipeline: converted with the three stages, served in the `speech_to_image` ensemble and the
stream by a real tritonserver, its number equal to the reference pipeline's.
"""

import asyncio

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from s2i import names
from s2i.client import AsyncClient, Client
from s2i.conversion.convert import convert
from s2i.conversion.repository import PYTHON_ONNXRUNTIME, PYTHON_TORCH
from s2i.model_repository.config import parse_config, render_config, to_model_config
from s2i.pipeline.dag import PIPELINE
from s2i.pipeline.reference import ReferencePipeline
from s2i.pipeline.steps import decode_png
from s2i.stages import registry
from tests.conftest import BUILD_DIR, MAX_NEW_TOKENS, started_server
from tests.pipeline.test_ensemble_outputs import needed_steps, triton_pruned_steps
from tests.stages.toy.stage import BLS, LOUDNESS, TIMING, LoudnessNet, LoudnessStage, with_loudness

BUILT_IN = list(registry.STAGES)


@pytest.fixture(scope="module")
def toy_stage(checkpoints):
    # The session's checkpoints first: built while the toy is registered, they would include it.
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


def _loudness(client, features):
    tensor = grpcclient.InferInput("features", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features)
    return client.infer(BLS, [tensor]).as_numpy(LOUDNESS)


def test_toy_stage_serves_pytorch_values_and_refuses_bad_input(toy_server, stage_checkpoints):
    model = LoudnessNet.from_checkpoint(stage_checkpoints["loudness"])
    features = np.random.default_rng(1).standard_normal((1, 80, 200), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(features)).numpy()
    client = grpcclient.InferenceServerClient(toy_server.grpc_url)
    try:
        np.testing.assert_allclose(_loudness(client, features), expected, rtol=1e-5)
        with pytest.raises(InferenceServerException, match="`features`: must be finite"):
            _loudness(client, np.full((1, 80, 10), np.nan, np.float32))
        np.testing.assert_allclose(_loudness(client, features), expected, rtol=1e-5)
    finally:
        client.close()


# The toy step joins the pipeline: the DAG edit (its package's `with_loudness`) and nothing else.
TOY_PIPELINE = with_loudness(PIPELINE)
# Few steps and tokens: what is tested is the wiring and parity, not the (random) models.
OPTIONS = {names.SEED: 3, names.NUM_INFERENCE_STEPS: 2, names.MAX_NEW_TOKENS: MAX_NEW_TOKENS // 3}
DATATYPES = {names.SEED: ("INT64", np.int64), names.NUM_INFERENCE_STEPS: ("INT32", np.int32)}


@pytest.fixture(scope="module")
def toy_pipeline_server(toy_stage, stage_checkpoints):
    # The session's export cache: only the toy's graph is exported here.
    report = convert(
        stage_checkpoints, BUILD_DIR / "toy-pipeline-repository", work_dir=BUILD_DIR / "onnx", pipeline=TOY_PIPELINE
    )
    assert {BLS, "loudness_graph", names.SPEECH_TO_IMAGE, names.SPEECH_TO_IMAGE_STREAM} <= set(report.models)
    with started_server(report.repository, "toy-pipeline") as server:
        yield server, report.repository


def _pipeline_inputs(wav: bytes) -> list:
    inputs = [grpcclient.InferInput(names.AUDIO_BYTES, [1, 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[wav]], dtype=np.object_))
    for name, value in OPTIONS.items():
        datatype, dtype = DATATYPES.get(name, ("INT32", np.int32))
        inputs.append(grpcclient.InferInput(name, [1, 1], datatype))
        inputs[-1].set_data_from_numpy(np.array([[value]], dtype=dtype))
    return inputs


def _infer(url: str, wav: bytes, outputs: list[str]) -> dict[str, np.ndarray]:
    with grpcclient.InferenceServerClient(url) as client:
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
        result = client.infer(names.SPEECH_TO_IMAGE, _pipeline_inputs(wav), outputs=requested, timeout=600)
        return {output.name: result.as_numpy(output.name) for output in result.get_response().outputs}


async def _last_stream_event(url: str, wav: bytes, options: dict):
    async with AsyncClient(url) as client:
        return [event async for event in client.stream_speech_to_image(wav, **options)][-1]


def test_toy_stage_joins_the_ensemble_and_stream_when_the_dag_names_it(
    toy_pipeline_server, stage_checkpoints, hindi_clips
):
    server, repository = toy_pipeline_server
    config = parse_config((repository / names.SPEECH_TO_IMAGE / "config.pbtxt").read_text())
    assert BLS in [step.model_name for step in config.ensemble_scheduling.step]
    outputs = [tensor.name for tensor in config.output]
    assert {LOUDNESS, TIMING} <= set(outputs)
    # Triton's pruning keeps every step each request needs, for single outputs, pairs and all-but-one.
    subsets = [{name} for name in outputs] + [{a, b} for a in outputs for b in outputs if a < b]
    subsets += [set(outputs) - {name} for name in outputs]
    for requested in subsets:
        assert not needed_steps(config, requested) & triton_pruned_steps(config, requested), requested
    steps = [step.model_name for step in config.ensemble_scheduling.step]
    assert BLS in {steps[index] for index in triton_pruned_steps(config, {names.PNG})}

    wav = hindi_clips[0].wav_bytes
    reference = ReferencePipeline(stage_checkpoints, pipeline=TOY_PIPELINE)
    expected = reference.outputs(wav, **OPTIONS)
    # The project's client asks for the new output by name; it is the reference's number.
    with Client(server.grpc_url, timeout_s=600) as client:
        served = client.speech_to_image(wav, extra_outputs=[LOUDNESS, TIMING], **OPTIONS)
    loudness = served.outputs[LOUDNESS]
    np.testing.assert_allclose(loudness.reshape(-1), expected[LOUDNESS].reshape(-1), rtol=1e-4, atol=1e-4)
    assert served.outputs[TIMING].reshape(-1)[0] > 0
    # The other outputs are unchanged by the side step: the same text and image as the reference.
    assert served.text == expected[names.TEXT]
    served_pixels, expected_pixels = decode_png(served.png), decode_png(expected[names.PNG])
    assert np.abs(served_pixels.astype(int) - expected_pixels.astype(int)).max() <= 1
    # Only the side output (preprocess and the toy step run), or only the image (the toy step is pruned).
    np.testing.assert_array_equal(_infer(server.grpc_url, wav, [LOUDNESS])[LOUDNESS], loudness)
    assert _infer(server.grpc_url, wav, [names.PNG])[names.PNG].reshape(-1)[0] == served.png

    # The stream reads the DAG from its config: its last message carries the toy's number too.
    final = asyncio.run(_last_stream_event(server.grpc_url, wav, {**OPTIONS, "extra_outputs": [LOUDNESS]}))
    assert final.kind == "image" and final.result.png == served.png
    np.testing.assert_array_equal(final.result.outputs[LOUDNESS], loudness)
