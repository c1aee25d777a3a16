"""The support matrix served: tiny checkpoints of each row converted, served by tritonserver, equal to the references.

Rows are served in groups, one repository and one server per group: a group holds one
Whisper and one Stable Diffusion layout, and an emotion classifier where the whole
pipeline runs. The oracles are transformers ``generate``, the PyTorch classifier and
the checkpoint's own diffusers pipeline class on the same weights
(:class:`~s2i.pipeline.reference.ReferencePipeline`). The module-scoped ``served``
fixture is parametrised indirectly, so pytest runs one group's server at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from s2i.audio import prepare_audio
from s2i.client import Client, InvalidRequestError
from s2i.conversion.convert import convert
from s2i.pipeline.steps import decode_png
from tests.conftest import BUILD_DIR, started_server
from tests.conversion import matrix

LOGGER = logging.getLogger(__name__)
ROOT = BUILD_DIR / "checkpoints-matrix"

# Ekman's six (the label set of many public speech-emotion corpora) and a sentiment set.
SIX_LABELS = ("anger", "disgust", "fear", "joy", "sadness", "surprise")
SENTIMENT_LABELS = ("negative", "neutral", "positive")
PROMPT = "a red boat on a calm lake"


@dataclasses.dataclass(frozen=True)
class Group:
    """Rows of the matrix served together, and the diffusion options their family uses."""

    name: str
    build: Callable[[Path], dict[str, Path]]
    image_size: int
    family_options: dict
    labels: tuple[str, ...] = ()


def _v3(root: Path) -> dict[str, Path]:
    return {
        "whisper": matrix.whisper_layout(root / "whisper-large-v3", matrix.WHISPER_LARGE_V3),
        "emotion": matrix.emotion_layout(
            root / "emotion-transformer-6", architecture="transformer", labels=SIX_LABELS, num_mel_bins=128
        ),
        "diffusion": matrix.sd2_layout(root / "sd21", matrix.SD21_SCHEDULER),
    }


def _turbo(root: Path) -> dict[str, Path]:
    return {
        "whisper": matrix.whisper_layout(root / "whisper-large-v3-turbo", matrix.WHISPER_LARGE_V3_TURBO),
        "emotion": matrix.emotion_layout(
            root / "emotion-bilstm-3", architecture="bilstm", labels=SENTIMENT_LABELS, num_mel_bins=128
        ),
        "diffusion": matrix.lcm_layout(root / "lcm"),
    }


def _distil(root: Path) -> dict[str, Path]:
    return {
        "whisper": matrix.whisper_layout(
            root / "distil-whisper-large-v2", matrix.DISTIL_WHISPER_LARGE_V2, matrix.V2_LANGUAGES
        ),
        "diffusion": matrix.sd2_layout(root / "sd-turbo", matrix.SD_TURBO_SCHEDULER, seed=3),
    }


def _legacy(root: Path) -> dict[str, Path]:
    from s2i.stages.whisper.checkpoint import build_tiny_whisper
    from s2i.stages.whisper.stage import TINY_INIT_STD
    from tests.stages.whisper.test_checkpoints import POSITIONS, config_only_layout

    current = root / "whisper-16-positions"
    if not (current / "model.safetensors").is_file():
        build_tiny_whisper(current, init_std=TINY_INIT_STD, max_target_positions=POSITIONS)
    return {"whisper": config_only_layout(current, root / "whisper-16-config-only-served")}


GROUPS = {
    # Whisper large-v3 (128 mels, 51866 tokens), a 6-label Transformer classifier,
    # SD 2.1 (OpenCLIP-style text encoder, v-prediction, DDIM, 96 px default).
    "v3": Group("v3", _v3, 96, dict(num_inference_steps=3, guidance_scale=7.5), SIX_LABELS),
    # Whisper large-v3-turbo (shallow decoder), a 3-label BiLSTM classifier, an LCM-distilled
    # SD 1.5 (w-embedding guidance, LCMScheduler; defaults 4 steps at 8.5).
    "turbo": Group("turbo", _turbo, 64, dict(num_inference_steps=2, guidance_scale=3.0), SENTIMENT_LABELS),
    # distil-whisper large-v2 (80 mels), SD-Turbo (trailing Euler, 1 step, no guidance); no pipeline.
    "distil": Group(
        "distil", _distil, 96, dict(num_inference_steps=1, guidance_scale=0.0, scheduler="euler_ancestral")
    ),
    # A fine-tune saved by an older transformers: settings in config.json (`forced_decoder_ids`),
    # no generation_config.json, 16 decoder positions (the default token limit is clamped to 12).
    "legacy": Group("legacy", _legacy, 0, {}),
}
# Groups whose Whisper `generate` cannot run as saved -> the same weights in the current layout.
WHISPER_REFERENCE_LAYOUT = {"legacy": lambda root: root / "whisper-16-positions"}
PIPELINE_GROUPS = [name for name, group in GROUPS.items() if group.labels]
DIFFUSION_GROUPS = [name for name, group in GROUPS.items() if group.image_size]


@dataclasses.dataclass
class Served:
    """A group's checkpoints, its server's address and its references."""

    group: Group
    checkpoints: dict[str, Path]
    grpc_url: str
    whisper: object
    diffusion: object
    pipeline: object | None


def _size(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def served(request):
    from s2i.pipeline.reference import ReferencePipeline
    from s2i.stages.diffusion.reference import DiffusionReference
    from s2i.stages.whisper.reference import WhisperReference

    group = GROUPS[request.param]
    checkpoints = group.build(ROOT)
    started = time.perf_counter()
    # Its own export cache: other tests look for the session checkpoints' exports in BUILD_DIR / "onnx".
    report = convert(checkpoints, ROOT / f"repository-{group.name}", work_dir=ROOT / "onnx")
    LOGGER.warning(
        "matrix group %s: converted in %.1f s, repository %.1f MiB",
        group.name,
        time.perf_counter() - started,
        _size(report.repository) / 2**20,
    )
    pipeline = ReferencePipeline(checkpoints) if "emotion" in checkpoints else None
    # transformers' `generate` refuses `language` on the older layouts; their weights are the current layout's.
    whisper_reference = WHISPER_REFERENCE_LAYOUT.get(group.name, lambda _root: checkpoints["whisper"])(ROOT)
    whisper = pipeline.references["whisper"] if pipeline else WhisperReference(whisper_reference)
    diffusion = None
    if "diffusion" in checkpoints:
        diffusion = pipeline.references["diffusion"] if pipeline else DiffusionReference(checkpoints["diffusion"])
    with started_server(report.repository, f"tritonserver-matrix-{group.name}") as server:
        yield Served(group, checkpoints, server.grpc_url, whisper, diffusion, pipeline)


@pytest.fixture()
def client(served):
    with Client(served.grpc_url, timeout_s=600) as client:
        yield client


def assert_same_image(served_pixels: np.ndarray, expected_pixels: np.ndarray) -> None:
    assert served_pixels.shape == expected_pixels.shape
    assert np.abs(served_pixels.astype(int) - expected_pixels.astype(int)).max() <= 1
    assert expected_pixels.std() > 1  # a real image, not a constant


def assert_same(served_result, expected):
    assert served_result.text == expected.text
    assert served_result.detected_emotion == expected.detected_emotion
    assert served_result.emotion == expected.emotion
    assert (served_result.prompt, served_result.negative_prompt) == (expected.prompt, expected.negative_prompt)
    assert list(served_result.emotion_scores) == list(expected.emotion_scores)
    for label, probability in expected.emotion_scores.items():
        assert served_result.emotion_scores[label] == pytest.approx(probability, abs=1e-4)
    assert_same_image(decode_png(served_result.png), decode_png(expected.png))


@pytest.mark.slow
@pytest.mark.parametrize("served", sorted(GROUPS), indirect=True)
def test_translate_equals_generate_when_request_sends_only_audio(served, client, hindi_clips):
    clip = hindi_clips[0]
    result = client.translate(clip.wav_bytes)  # `max_new_tokens` from the checkpoint's limits
    # `generate` stops at the checkpoint's limit; the served default (128) is clamped to it.
    limit = min(128, served.whisper.model.config.max_target_positions - 4)
    token_ids, text = served.whisper.generate(prepare_audio(clip.samples, clip.sample_rate_hz), max_new_tokens=limit)
    assert result.token_ids == token_ids
    assert result.text == text
    assert len(token_ids) <= limit


@pytest.mark.slow
@pytest.mark.parametrize("served", DIFFUSION_GROUPS, indirect=True)
def test_text_to_image_equals_pipeline_when_request_sends_only_prompt(served, client):
    result = client.text_to_image(PROMPT)  # steps, guidance, scheduler and size from the checkpoint
    assert result.image.shape == (served.group.image_size, served.group.image_size, 3)
    assert_same_image(result.image, served.diffusion.generate(PROMPT, seed=result.seed))


@pytest.mark.parametrize("served", DIFFUSION_GROUPS, indirect=True)
def test_text_to_image_equals_pipeline_when_request_uses_family_settings(served, client):
    options = served.group.family_options
    result = client.text_to_image(PROMPT, negative_prompt="fog", seed=5, **options)
    assert_same_image(result.image, served.diffusion.generate(PROMPT, negative_prompt="fog", seed=5, **options))


@pytest.mark.slow
@pytest.mark.parametrize("served", PIPELINE_GROUPS, indirect=True)
def test_served_pipeline_equals_references_when_request_sends_only_audio(served, client, hindi_clips):
    clip = hindi_clips[1]
    result = client.speech_to_image(clip.wav_bytes)  # every default from the checkpoints
    assert_same(result, served.pipeline.run(clip.wav_bytes, seed=result.seed))
    assert list(result.emotion_scores) == list(served.group.labels)


@pytest.mark.parametrize("served", PIPELINE_GROUPS, indirect=True)
def test_classify_emotion_names_checkpoint_labels_when_classifier_has_another_label_set(served, client, hindi_clips):
    clip = hindi_clips[2]
    result = client.classify_emotion(clip.wav_bytes)
    reference = served.pipeline.references["emotion"]
    samples = prepare_audio(clip.samples, clip.sample_rate_hz)
    assert result.label_names == served.group.labels
    assert list(result.scores) == list(served.group.labels)
    assert result.label == reference.label(samples)
    for label, probability in zip(served.group.labels, reference.probabilities(samples), strict=True):
        assert result.scores[label] == pytest.approx(float(probability), abs=1e-4)


@pytest.mark.parametrize("served", PIPELINE_GROUPS, indirect=True)
def test_emotion_override_takes_checkpoint_label_when_classifier_has_another_label_set(served, client, hindi_clips):
    label = served.group.labels[-1]  # `surprise` / `positive`: no RAVDESS prompt, the template's fallback
    options = dict(num_inference_steps=1, max_new_tokens=4)
    result = client.speech_to_image(hindi_clips[0].wav_bytes, seed=3, emotion_override=label, **options)
    assert result.emotion == label
    assert result.prompt == f"{result.text or 'an abstract scene'}, {label} atmosphere, photograph"
    with pytest.raises(InvalidRequestError, match=rf"`emotion_override`: must be one of \[.*'{label}'"):
        client.speech_to_image(hindi_clips[0].wav_bytes, seed=3, emotion_override="elated", **options)
    # The server stays up: the next request is answered.
    assert client.classify_emotion(hindi_clips[0].wav_bytes).label in served.group.labels


@pytest.mark.parametrize("served", PIPELINE_GROUPS, indirect=True)
def test_stream_text_message_names_checkpoint_labels_when_classifier_has_another_label_set(served, hindi_clips):
    import asyncio

    from s2i.client import AsyncClient

    async def first_event():
        async with AsyncClient(served.grpc_url, timeout_s=600) as client:
            async for event in client.stream_speech_to_image(
                hindi_clips[0].wav_bytes, seed=1, num_inference_steps=1, max_new_tokens=4
            ):
                return event

    event = asyncio.run(first_event())
    assert event.kind == "text"
    assert list(event.result.emotion_scores) == list(served.group.labels)
