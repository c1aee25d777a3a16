"""``s2i convert --target python-torch`` through a real tritonserver: the stage graphs run by PyTorch.

One repository and one server for every test of the target (CPU here: float32, so the
tolerances are the ONNX targets' own): parity with the in-process reference, stage
models refusing bad input and serving the next request.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from s2i import names
from s2i.audio import prepare_audio
from s2i.client import Client
from s2i.conversion.convert import convert
from s2i.conversion.repository import PYTHON_TORCH, TORCH_CHECKPOINT_DIR
from s2i.model_repository.config import parse_config
from s2i.pipeline.reference import ReferencePipeline
from s2i.pipeline.steps import decode_png
from s2i.stages.diffusion.torch_runner import UNetRunner
from s2i.stages.whisper.reference import WhisperReference
from tests.conftest import BUILD_DIR, MAX_NEW_TOKENS, started_server

STAGE_MODELS = (
    names.WHISPER_ENCODER,
    names.WHISPER_DECODER,
    names.WHISPER_DECODER_WITH_PAST,
    names.EMOTION_CLASSIFIER_GRAPH,
    names.TEXT_ENCODER,
    names.UNET,
    names.VAE_DECODER,
)
# Few steps and tokens: the models are tiny and random; what is tested is the runners and parity.
OPTIONS = dict(num_inference_steps=3, max_new_tokens=MAX_NEW_TOKENS // 3)


@pytest.fixture(scope="module")
def torch_repository(checkpoints):
    return convert(checkpoints, BUILD_DIR / "model_repository-python-torch", target=PYTHON_TORCH)


@pytest.fixture(scope="module")
def torch_server(torch_repository):
    with started_server(torch_repository.repository, "tritonserver-python-torch") as server:
        yield server


@pytest.fixture()
def torch_client(torch_server):
    with Client(torch_server.grpc_url, timeout_s=120) as client:
        yield client


@pytest.fixture(scope="module")
def reference(checkpoints):
    return ReferencePipeline(checkpoints)


def config_of(repository, model: str):
    return parse_config((repository / model / "config.pbtxt").read_text())


def test_python_torch_repository_serves_checkpoint_modules_without_onnx_when_converted(torch_repository, checkpoints):
    repository = torch_repository.repository
    for model in STAGE_MODELS:
        config = config_of(repository, model)
        parameters = {key: value.string_value for key, value in config.parameters.items()}
        version = repository / model / "1"
        assert config.backend == "python"
        assert parameters[names.TORCH_RUNNER_PARAMETER].startswith("s2i.stages.")
        assert parameters[names.TORCH_CUDA_GRAPHS_PARAMETER] == "false"
        assert parameters[names.TORCH_COMPILE_PARAMETER] == "false"
        # Cross-request batching stays Triton's, as on every target; no GPU here, so CPU instances.
        assert config.dynamic_batching.max_queue_delay_microseconds > 0 and config.max_batch_size >= 8
        assert [group.kind for group in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
        assert not list(version.rglob("*.onnx"))
        assert list((version / TORCH_CHECKPOINT_DIR).glob("*.safetensors"))
    # The UNet's part of the diffusers folder, not the whole pipeline.
    unet_files = {path.name for path in (repository / names.UNET / "1" / TORCH_CHECKPOINT_DIR).iterdir()}
    assert unet_files == {path.name for path in (checkpoints["diffusion"] / "unet").iterdir()}
    assert torch_repository.max_abs_diff == {}


def test_python_torch_pipeline_matches_reference_when_sent_wav_bytes(torch_client, reference, hindi_clips):
    clip = hindi_clips[0]
    served = torch_client.speech_to_image(clip.wav_bytes, seed=11, return_transcript=True, **OPTIONS)
    expected = reference.run(clip.wav_bytes, seed=11, return_transcript=True, **OPTIONS)
    assert (served.text, served.transcript, served.emotion, served.prompt) == (
        expected.text,
        expected.transcript,
        expected.emotion,
        expected.prompt,
    )
    assert served.text and served.transcript
    for label, probability in expected.emotion_scores.items():
        assert served.emotion_scores[label] == pytest.approx(probability, abs=1e-4)
    served_pixels, expected_pixels = decode_png(served.png).astype(int), decode_png(expected.png).astype(int)
    assert served_pixels.shape == expected_pixels.shape == (64, 64, 3)
    assert np.abs(served_pixels - expected_pixels).max() <= 1
    emotion_error = max(abs(served.emotion_scores[k] - p) for k, p in expected.emotion_scores.items())
    pixel_error = int(np.abs(served_pixels - expected_pixels).max())
    # The figures benchmarks/README.md states for this target.
    print(f"python-torch served vs reference: emotion {emotion_error:.1e}, pixels {pixel_error}, text equal")
    assert served_pixels.std() > 10


def test_python_torch_whisper_tokens_equal_transformers_generate_when_sent_each_clip(
    torch_client, checkpoints, hindi_clips
):
    whisper = WhisperReference(checkpoints["whisper"])
    for clip in hindi_clips:
        token_ids, text = whisper.generate(
            prepare_audio(clip.samples, clip.sample_rate_hz), max_new_tokens=MAX_NEW_TOKENS
        )
        served = torch_client.translate(clip.wav_bytes, max_new_tokens=MAX_NEW_TOKENS)
        assert served.token_ids == token_ids and len(token_ids) > 0
        assert served.text == text


def unet_inputs(height: int, width: int, rows: int = 2) -> list:
    rng = np.random.default_rng(3)
    values = {
        names.SAMPLE: rng.standard_normal((rows, 4, height, width)).astype(np.float32),
        names.TIMESTEP: np.array([[981.0], [1.0]][:rows], dtype=np.float32),
        names.ENCODER_HIDDEN_STATES: rng.standard_normal((rows, 77, 32)).astype(np.float32),
    }
    tensors = []
    for name, value in values.items():
        tensor = grpcclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    return values, tensors


def test_python_torch_stage_refuses_bad_input_naming_the_field_and_serves_the_next_request(
    torch_server, torch_repository
):
    unet_dir = torch_repository.repository / names.UNET / "1" / TORCH_CHECKPOINT_DIR
    hidden = json.loads((unet_dir / "config.json").read_text())["cross_attention_dim"]
    assert hidden == 32, "unet_inputs assumes the tiny checkpoint's text width"
    with grpcclient.InferenceServerClient(torch_server.grpc_url) as triton:
        # A latent the UNet cannot halve at every level: refused before any compute.
        _, bad = unet_inputs(5, 6)
        with pytest.raises(InferenceServerException, match=r"`sample`: latent height and width must be multiples"):
            triton.infer(names.UNET, bad)
        # Token ids past the vocabulary (an out-of-range embedding lookup is fatal on CUDA).
        ids = grpcclient.InferInput(names.INPUT_IDS, [1, 77], "INT64")
        ids.set_data_from_numpy(np.full((1, 77), 10**9, dtype=np.int64))
        with pytest.raises(InferenceServerException, match=r"`input_ids`: holds ids from"):
            triton.infer(names.TEXT_ENCODER, [ids])
        values, good = unet_inputs(8, 12)
        served = triton.infer(names.UNET, good).as_numpy(names.OUT_SAMPLE)
    expected = UNetRunner(unet_dir).run(values)[names.OUT_SAMPLE]
    assert served.shape == (2, 4, 8, 12)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert np.abs(served).max() > 0


def test_python_torch_whisper_loop_decodes_in_its_own_process_when_served(
    torch_repository, torch_server, torch_client, hindi_clips
):
    loop = config_of(torch_repository.repository, names.WHISPER)
    parameters = {key: value.string_value for key, value in loop.parameters.items()}
    assert parameters["decoder_torch_checkpoint"] == "decoder_checkpoint" and parameters["decoder_device"] == "cpu"
    assert list((torch_repository.repository / names.WHISPER / "1" / "decoder_checkpoint").glob("*.safetensors"))
    raw = grpcclient.InferenceServerClient(torch_server.grpc_url)
    try:

        def inferences(model: str) -> int:
            stats = raw.get_inference_statistics(model, headers=torch_server.admin_headers)
            return stats.model_stats[0].inference_stats.success.count

        before = {model: inferences(model) for model in (names.WHISPER_ENCODER, names.WHISPER_DECODER_WITH_PAST)}
        served = torch_client.translate(hindi_clips[1].wav_bytes, max_new_tokens=MAX_NEW_TOKENS)
        assert len(served.token_ids) > 1
        # The encoder is still a stage model reached through BLS; no decoding step crossed Triton.
        assert inferences(names.WHISPER_ENCODER) > before[names.WHISPER_ENCODER]
        assert inferences(names.WHISPER_DECODER_WITH_PAST) == before[names.WHISPER_DECODER_WITH_PAST]
    finally:
        raw.close()
