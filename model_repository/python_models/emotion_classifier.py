"""Triton Python-backend (BLS) model ``emotion_classifier``: speech (or its log-mel features) in, emotion out.

Inputs are those of ``whisper`` (``audio_samples`` + ``sample_rate_hz``, or
``audio_bytes``), or ``input_features`` already computed (the pipeline's Whisper
features cut to the clip). Features, batching and softmax are in
:mod:`s2i.stages.emotion.runtime`; the graph is the ``emotion_classifier_graph``
stage model, reached through BLS. ``assets/`` holds the checkpoint's
``config.json`` (labels) and ``preprocessor_config.json`` (feature extractor).
Parameter ``graph_max_batch_size``: the graph model's ``max_batch_size``.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from s2i import names
from s2i.model_repository.observability import RequestObserver
from s2i.model_repository.triton_io import answer_batch, make_stage_runner
from s2i.stages.emotion.runtime import GRAPH_MAX_BATCH_SIZE, EmotionRunner, parse_request_inputs


class TritonPythonModel:
    """Validates each request on its own, then classifies all valid ones together."""

    def initialize(self, args):
        """Load labels and the feature extractor."""
        assets = Path(args["model_repository"]) / args["model_version"] / "assets"
        parameters = json.loads(args["model_config"]).get("parameters", {})
        graph_max_batch_size = int(parameters[GRAPH_MAX_BATCH_SIZE]["string_value"])
        self.run_stage = make_stage_runner(pb_utils)
        self.runner = EmotionRunner(assets, self.run_stage, graph_max_batch_size)
        self.observer = RequestObserver(pb_utils, args["model_name"], self.run_stage)
        # The checkpoint's `id2label`, sent with every answer (one row per request).
        self.label_names = np.array([[label.encode("utf-8") for label in self.runner.labels]], dtype=np.object_)

    def _parse(self, inputs):
        return parse_request_inputs(inputs, self.runner)

    def execute(self, requests):
        """Answer every request; a bad one gets its own error and never fails its neighbours."""
        started = self.observer.start()
        with self.run_stage.parent(requests[0]):
            responses = answer_batch(
                pb_utils,
                requests,
                self._parse,
                self.runner.classify_features,
                lambda result, compute_ms: {
                    names.EMOTION_LABEL: np.array([[result.label.encode("utf-8")]], dtype=np.object_),
                    names.EMOTION_PROBABILITIES: result.probabilities[None, :].astype(np.float32),
                    names.EMOTION_LABEL_NAMES: self.label_names,
                    names.COMPUTE_MS: compute_ms,
                },
            )
        self.observer.finish_responses(requests, responses, started)
        return responses
