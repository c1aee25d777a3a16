"""Triton Python-backend (BLS) model ``whisper``: audio in, English translation or Hindi transcript out.

Features and decoding are in :mod:`s2i.stages.whisper.decoding`; the encoder graph
is a stage model reached through BLS, so Triton batches its calls across
concurrent requests. The decoder graphs run in this process when the config names
a ``decoder_onnx_dir`` (the ``python-onnxruntime`` target: the KV cache stays bound
in ONNX Runtime, :mod:`s2i.stages.whisper.runtime`) or a ``decoder_torch_checkpoint``
(``python-torch``: the cache stays torch tensors on the device), otherwise through BLS too.
Checkpoint assets (tokenizer, feature extractor and generation configs) sit in
``assets/`` beside this file.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from s2i import names
from s2i.audio import InvalidInputError
from s2i.model_repository.observability import RequestObserver
from s2i.model_repository.triton_io import answer_batch, make_stage_runner, request_audio, scalar
from s2i.stages.whisper.decoding import (
    DEFAULT_LANGUAGE,
    DEFAULT_TASK,
    TranscriptionRequest,
    WhisperRunner,
)
from s2i.stages.whisper.runtime import (
    DECODER_DIR_PARAMETER,
    DECODER_THREADS_PARAMETER,
    TORCH_DECODER_DEVICE_PARAMETER,
    TORCH_DECODER_PARAMETER,
    InProcessDecoder,
    routed_stage_runner,
)


class TritonPythonModel:
    """Validates each request on its own, then runs all valid ones as one batch."""

    def initialize(self, args):
        """Load tokenizer, feature extractor and decoding rules."""
        version_dir = Path(args["model_repository"]) / args["model_version"]
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        # Calls through BLS join the request's trace and are counted for its log line.
        self.bls = make_stage_runner(pb_utils)
        run_stage = self.bls
        if parameters.get(DECODER_DIR_PARAMETER):
            # 0 = every core this process may use, not divided among the loop's instances: a loop
            # alternates decoder calls with Python work and BLS waits, so two instances seldom
            # compute at the same moment, and a lone request's step gets the whole CPU.
            self.decoder = InProcessDecoder(
                version_dir / parameters[DECODER_DIR_PARAMETER],
                int(parameters.get(DECODER_THREADS_PARAMETER, "0")),
                instances=1,
            )
            # Counted like BLS calls, so the request's log line shows the decoder's steps and time.
            run_stage = routed_stage_runner(self.bls.counted(self.decoder.run_stage), run_stage)
        elif parameters.get(TORCH_DECODER_PARAMETER):
            # python-torch: the same, the cache kept as device tensors. Imported here because only this
            # target's repositories need torch in the loop's process.
            from s2i.stages.torch_runner import TorchOptions
            from s2i.stages.whisper.torch_runner import InProcessTorchDecoder

            device = "cuda" if parameters.get(TORCH_DECODER_DEVICE_PARAMETER) == "gpu" else "cpu"
            self.decoder = InProcessTorchDecoder(
                version_dir / parameters[TORCH_DECODER_PARAMETER], TorchOptions.from_parameters(parameters, device)
            )
            run_stage = routed_stage_runner(self.bls.counted(self.decoder.run_stage), run_stage)
        self.runner = WhisperRunner(version_dir / "assets", run_stage)
        self.observer = RequestObserver(pb_utils, args["model_name"], self.bls, counters=("tokens_generated",))

    def _parse(self, inputs):
        """The request's clip and options, checked; plus whether a transcript was asked for."""
        features = inputs.get(names.INPUT_FEATURES)
        if features is not None and features.shape[0] != 1:
            raise InvalidInputError(
                names.INPUT_FEATURES, f"must hold one clip's features per request, got shape {list(features.shape)}."
            )
        samples = request_audio(inputs) if features is None else None
        # Absent: the checkpoint's default, clamped to its decoder positions.
        max_new_tokens = scalar(inputs.get(names.MAX_NEW_TOKENS), names.MAX_NEW_TOKENS)
        parsed = TranscriptionRequest(
            samples=samples,
            features=None if features is None else features[0],
            task=scalar(inputs.get(names.TASK), names.TASK, DEFAULT_TASK),
            language=scalar(inputs.get(names.LANGUAGE), names.LANGUAGE, DEFAULT_LANGUAGE),
            max_new_tokens=None if max_new_tokens is None else int(max_new_tokens),
        )
        self.runner.check(parsed)
        return parsed, bool(scalar(inputs.get(names.RETURN_TRANSCRIPT), names.RETURN_TRANSCRIPT, False))

    def execute(self, requests):
        """Answer every request; a bad one gets its own error and never fails its neighbours."""
        started = self.observer.start()
        with self.bls.parent(requests[0]):
            responses = answer_batch(
                pb_utils, requests, self._parse, self._transcribe, _outputs, cancellable=True, fan_out=_jobs
            )
        self.observer.finish_responses(requests, responses, started)
        return responses

    def _transcribe(self, jobs, cancelled):
        """The batch's texts; counts the tokens generated for the request's log line."""
        # A request whose client left (deadline, cancel) stops within one decoding step.
        results = self.runner.transcribe(jobs, cancelled=cancelled)
        self.observer.count(
            "tokens_generated",
            sum(len(result.token_ids) for result in results if not isinstance(result, Exception)),
        )
        return results


def _jobs(parsed):
    """The clip's translation, and its transcript when asked for: same features, same decoder batch."""
    request, return_transcript = parsed
    return (request, dataclasses.replace(request, task="transcribe")) if return_transcript else (request,)


def _outputs(results, compute_ms):
    main, *transcript = results
    return {
        names.TEXT: np.array([[main.text.encode("utf-8")]], dtype=np.object_),
        names.TOKEN_IDS: np.asarray([main.token_ids], dtype=np.int64),
        names.TRANSCRIPT: np.array([[(transcript[0].text if transcript else "").encode("utf-8")]], dtype=np.object_),
        names.COMPUTE_MS: compute_ms,
    }
