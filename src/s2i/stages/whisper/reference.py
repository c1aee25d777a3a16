"""The reference: Whisper run in-process with transformers, no Triton, no ONNX.

Parity tests compare the served model with :meth:`WhisperReference.generate`,
and benchmarks use it as the one-request-at-a-time baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from s2i import names


class WhisperReference:
    """``WhisperForConditionalGeneration.generate`` (greedy) on a checkpoint folder."""

    def __init__(self, checkpoint_dir: Path) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor
        from transformers.utils import logging as transformers_logging

        # generate() warns on every call about defaults the checkpoint sets on purpose.
        transformers_logging.set_verbosity_error()
        self.processor = WhisperProcessor.from_pretrained(checkpoint_dir)
        self.model = WhisperForConditionalGeneration.from_pretrained(checkpoint_dir).eval()

    def generate(
        self,
        samples_16khz: np.ndarray,
        *,
        task: str = "translate",
        language: str = "hi",
        max_new_tokens: int | None = 128,
    ) -> tuple[list[int], str]:
        """Token ids (without the forced prompt) and text for one 16 kHz mono clip.

        ``max_new_tokens=None`` leaves the limit to ``generate`` (the checkpoint's ``max_length``).
        """
        import torch

        features = self.processor.feature_extractor(
            samples_16khz, sampling_rate=16_000, return_tensors="pt"
        ).input_features
        with torch.no_grad():
            limit = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
            generated = self.model.generate(features, language=language, task=task, **limit)
        token_ids = generated[0].tolist()
        return token_ids, self.processor.tokenizer.decode(token_ids, skip_special_tokens=True).strip()

    def step(self, inputs: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
        """The ``whisper`` step of the reference pipeline: the clip's translation, and its transcript on request."""
        samples = request[names.AUDIO_SAMPLES]
        max_new_tokens = inputs.get(names.MAX_NEW_TOKENS)
        options = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        text = self.generate(samples, task="translate", **options)[1]
        transcript = (
            self.generate(samples, task="transcribe", **options)[1] if inputs.get(names.RETURN_TRANSCRIPT) else ""
        )
        return {names.TEXT: text, names.TRANSCRIPT: transcript}
