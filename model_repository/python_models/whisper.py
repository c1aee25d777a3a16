"""Triton Python-backend (BLS) model ``whisper``: audio in, English translation or Hindi transcript out.

Features and decoding are in :mod:`s2i.stages.whisper.decoding`; the encoder and
decoder graphs are separate stage models reached through BLS, so Triton batches
their calls across concurrent requests. Checkpoint assets (tokenizer, feature
extractor and generation configs) sit in ``assets/`` beside this file.
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from s2i import names
from s2i.audio import InvalidInputError, load_request_audio
from s2i.model_repository.triton_io import error_response, make_stage_runner, optional_input, scalar
from s2i.stages.whisper.decoding import (
    DEFAULT_LANGUAGE,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TASK,
    TranscriptionRequest,
    WhisperRunner,
)


class TritonPythonModel:
    """Validates each request on its own, then runs all valid ones as one batch."""

    def initialize(self, args):
        """Load tokenizer, feature extractor and decoding rules."""
        assets = Path(args["model_repository"]) / args["model_version"] / "assets"
        self.runner = WhisperRunner(assets, make_stage_runner(pb_utils))

    def _parse(self, request):
        audio_bytes = scalar(optional_input(pb_utils, request, names.AUDIO_BYTES), names.AUDIO_BYTES, text=False)
        samples = optional_input(pb_utils, request, names.AUDIO_SAMPLES)
        if samples is not None and samples.shape[0] != 1:
            raise InvalidInputError(
                names.AUDIO_SAMPLES,
                f"must hold one mono clip per request, got shape {list(samples.shape)} "
                "(for stereo audio, downmix to one channel first).",
            )
        sample_rate_hz = scalar(optional_input(pb_utils, request, names.SAMPLE_RATE_HZ), names.SAMPLE_RATE_HZ)
        parsed = TranscriptionRequest(
            samples=load_request_audio(None if samples is None else samples[0], sample_rate_hz, audio_bytes),
            task=scalar(optional_input(pb_utils, request, names.TASK), names.TASK, DEFAULT_TASK),
            language=scalar(optional_input(pb_utils, request, names.LANGUAGE), names.LANGUAGE, DEFAULT_LANGUAGE),
            max_new_tokens=int(
                scalar(
                    optional_input(pb_utils, request, names.MAX_NEW_TOKENS),
                    names.MAX_NEW_TOKENS,
                    DEFAULT_MAX_NEW_TOKENS,
                )
            ),
        )
        self.runner.check(parsed)
        return parsed

    def execute(self, requests):
        """Answer every request; a bad one gets its own error and never fails its neighbours."""
        responses = [None] * len(requests)
        valid = {}
        for index, request in enumerate(requests):
            try:
                valid[index] = self._parse(request)
            except Exception as error:  # noqa: BLE001 - becomes this request's error response
                responses[index] = error_response(pb_utils, error)
        if valid:
            try:
                results = self.runner.transcribe(list(valid.values()))
            except Exception as error:  # noqa: BLE001
                results = [error] * len(valid)
            for index, result in zip(valid, results, strict=False):
                if isinstance(result, Exception):
                    responses[index] = error_response(pb_utils, result)
                    continue
                responses[index] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(names.TEXT, np.array([[result.text.encode("utf-8")]], dtype=np.object_)),
                        pb_utils.Tensor(names.TOKEN_IDS, np.asarray([result.token_ids], dtype=np.int64)),
                    ]
                )
        return responses
