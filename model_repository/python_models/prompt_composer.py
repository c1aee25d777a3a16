"""Triton Python-backend model ``prompt_composer``: English text + emotion -> prompt and negative prompt.

Templates come from ``styles.toml`` beside this file (a copy of
``s2i/pipeline/styles.toml`` a deployment can edit). Parameter ``emotion_labels``
(JSON list): the classifier's label set, which ``emotion_override`` may name.
"""

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from s2i import names
from s2i.model_repository.triton_io import optional_input, respond_each, scalar
from s2i.pipeline.prompt import StyleTemplates, compose_prompt


def _text(value: str) -> np.ndarray:
    return np.array([[value.encode("utf-8")]], dtype=np.object_)


class TritonPythonModel:
    """Pure string work: no model, no BLS."""

    def initialize(self, args):
        """Load (and check) the style templates."""
        self.templates = StyleTemplates.load(Path(args["model_repository"]) / args["model_version"] / "styles.toml")
        parameters = json.loads(args["model_config"]).get("parameters", {})
        labels = parameters.get(names.EMOTION_LABELS_PARAMETER, {}).get("string_value")
        # Repositories converted before the parameter existed: RAVDESS's labels.
        self.labels = tuple(json.loads(labels)) if labels else names.EMOTION_LABELS

    def _respond(self, request):
        started = time.perf_counter()
        text = scalar(optional_input(pb_utils, request, names.TEXT), names.TEXT, "")
        detected = scalar(optional_input(pb_utils, request, names.EMOTION_LABEL), names.EMOTION_LABEL, "neutral")
        composed = compose_prompt(
            text,
            detected,
            self.templates,
            emotion_override=scalar(optional_input(pb_utils, request, names.EMOTION_OVERRIDE), names.EMOTION_OVERRIDE),
            template_name=scalar(optional_input(pb_utils, request, names.STYLE_TEMPLATE), names.STYLE_TEMPLATE),
            labels=self.labels,
        )
        elapsed_ms = np.array([[1000 * (time.perf_counter() - started)]], dtype=np.float32)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(names.PROMPT, _text(composed.prompt)),
                pb_utils.Tensor(names.NEGATIVE_PROMPT, _text(composed.negative_prompt)),
                pb_utils.Tensor(names.EMOTION, _text(composed.emotion)),
                pb_utils.Tensor(names.COMPUTE_MS, elapsed_ms),
                # What it composed from, and the prompts again: the ensemble's copies (s2i.pipeline.models).
                pb_utils.Tensor(names.TEXT, _text(text)),
                pb_utils.Tensor(names.EMOTION_LABEL, _text(detected)),
                pb_utils.Tensor(names.DIFFUSION_PROMPT, _text(composed.prompt)),
                pb_utils.Tensor(names.DIFFUSION_NEGATIVE_PROMPT, _text(composed.negative_prompt)),
            ]
        )

    def execute(self, requests):
        """One response per request; a bad request gets its own error."""
        return respond_each(pb_utils, requests, self._respond)
