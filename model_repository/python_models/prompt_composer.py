"""Triton Python-backend model ``prompt_composer``: English text + emotion -> prompt and negative prompt.

Templates come from ``styles.toml`` beside this file (a copy of
``s2i/pipeline/styles.toml`` a deployment can edit). Parameter ``emotion_labels``
(JSON list): the classifier's label set, which ``emotion_override`` may name.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from s2i import names
from s2i.model_repository.triton_io import answer_batch, scalar
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

    def _compose(self, inputs):
        text = scalar(inputs.get(names.TEXT), names.TEXT, "")
        detected = scalar(inputs.get(names.EMOTION_LABEL), names.EMOTION_LABEL, "neutral")
        composed = compose_prompt(
            text,
            detected,
            self.templates,
            emotion_override=scalar(inputs.get(names.EMOTION_OVERRIDE), names.EMOTION_OVERRIDE),
            template_name=scalar(inputs.get(names.STYLE_TEMPLATE), names.STYLE_TEMPLATE),
            labels=self.labels,
        )
        return text, detected, composed

    def execute(self, requests):
        """One response per request; a bad request gets its own error."""
        return answer_batch(pb_utils, requests, self._compose, lambda items: items, _outputs)


def _outputs(composed, compute_ms):
    text, detected, composed = composed
    return {
        names.PROMPT: _text(composed.prompt),
        names.NEGATIVE_PROMPT: _text(composed.negative_prompt),
        names.EMOTION: _text(composed.emotion),
        names.COMPUTE_MS: compute_ms,
        # What it composed from, and the prompts again: the ensemble's copies (s2i.pipeline.specs).
        names.TEXT: _text(text),
        names.EMOTION_LABEL: _text(detected),
        names.DIFFUSION_PROMPT: _text(composed.prompt),
        names.DIFFUSION_NEGATIVE_PROMPT: _text(composed.negative_prompt),
    }
