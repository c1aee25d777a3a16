"""The in-process reference pipeline: the steps of the pipeline DAG with transformers and diffusers, no Triton.

It is the oracle of the end-to-end parity tests and the one-request-at-a-time
baseline of the benchmarks ("as the research ran it"). It follows the DAG: a
stage's step is its :meth:`~s2i.stages.base.Stage.reference` (found in the stage
registry by the model the step calls), the pipeline's own models (``preprocess``,
``prompt_composer``, ``postprocess``) have their in-process versions here, and each
step's inputs are wired as the DAG wires the ensemble's. A stage that joins the
DAG joins this pipeline with no edit here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from s2i import names
from s2i.audio import MODEL_SAMPLE_RATE_HZ, load_request_audio
from s2i.client.operations import PIPELINE_TIMINGS
from s2i.client.results import SpeechToImageResult, emotion_scores
from s2i.pipeline.dag import PIPELINE, REQUEST, Output, Pipeline
from s2i.pipeline.prompt import StyleTemplates, compose_prompt
from s2i.pipeline.steps import encode_png, preprocess
from s2i.stages import registry
from s2i.stages.emotion.config import load_config

# The served pipeline's defaults, so a request with no options means the same on both.
DEFAULT_SEED = 0

# ``step(inputs, request) -> outputs``: see :meth:`s2i.stages.base.Reference.step`.
ReferenceStep = Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]


class ReferencePipeline:
    """Every step of ``pipeline`` in-process: the stages' references and the pipeline's own steps.

    Args:
        checkpoints: Stage name -> checkpoint folder, for every stage with a step in ``pipeline``
            (``whisper``, ``emotion``, ``diffusion``); ``preprocess`` reads Whisper's feature extractor.
        styles: A styles file (the packaged one by default).
        pipeline: The DAG to follow (:data:`~s2i.pipeline.dag.PIPELINE` by default).

    Attributes:
        references: Stage name -> its reference (``WhisperReference``, …), for direct parity checks.
        steps: Step model -> its in-process version, in the DAG's order.
    """

    def __init__(
        self, checkpoints: Mapping[str, Path], styles: Path | None = None, pipeline: Pipeline = PIPELINE
    ) -> None:
        self.pipeline = pipeline
        self.checkpoints = {name: Path(path) for name, path in checkpoints.items()}
        self.styles = styles
        self.references: dict[str, Any] = {}
        self.steps: dict[str, ReferenceStep] = {step.model: self._step(step.model) for step in pipeline.steps}

    def _step(self, model: str) -> ReferenceStep:
        """The in-process version of step ``model``: the pipeline's own, or its stage's reference."""
        own = {
            names.PREPROCESS: self._preprocess_step,
            names.PROMPT_COMPOSER: self._compose_step,
            names.POSTPROCESS: self._postprocess_step,
        }
        if model in own:
            return own[model]()
        stages = {stage.pipeline_model: stage for stage in registry.STAGES.values()}
        if model not in stages:
            raise ValueError(f"Pipeline step `{model}` is neither a pipeline model nor a registered stage's model.")
        stage = stages[model]
        if stage.name not in self.checkpoints:
            raise ValueError(f"`checkpoints` must name a `{stage.name}` checkpoint for pipeline step `{model}`.")
        self.references[stage.name] = stage.reference(self.checkpoints[stage.name])
        return self.references[stage.name].step

    def outputs(self, audio: bytes | np.ndarray, sample_rate_hz: int | None = None, **options) -> dict[str, Any]:
        """Every pipeline output for one clip, by the ensemble's output names (timings in ms included).

        ``options`` are the request's other pipeline inputs by name (``seed``, ``style_template``, …;
        ``None`` means left out).
        """
        started = time.perf_counter()
        # Decoding is part of `preprocess` when served; its time is counted there.
        clip = load_request_audio(
            None if isinstance(audio, bytes) else audio,
            sample_rate_hz,
            audio if isinstance(audio, bytes) else None,
        )
        request = {**options, names.AUDIO_SAMPLES: clip, names.SAMPLE_RATE_HZ: MODEL_SAMPLE_RATE_HZ}
        named = set(self.pipeline.named_request_inputs())
        produced: dict[Output, Any] = {}
        outputs: dict[str, Any] = {}
        for step in self.pipeline.steps:
            inputs = {
                name: request.get(name) if source is REQUEST else produced[source]
                for name, source in step.inputs.items()
            }
            if step.request_options:
                inputs.update({name: value for name, value in options.items() if name not in named})
            step_outputs = self.steps[step.model](inputs, request)
            produced.update({Output(step.model, tensor): value for tensor, value in step_outputs.items()})
            outputs[step.timing] = 1000 * (time.perf_counter() - started)
            started = time.perf_counter()
        for output in self.pipeline.outputs:
            outputs[output.name] = produced[output.source]
        return outputs

    def run(
        self,
        audio: bytes | np.ndarray,
        sample_rate_hz: int | None = None,
        *,
        seed: int = DEFAULT_SEED,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        scheduler: str | None = None,
        emotion_override: str | None = None,
        style_template: str | None = None,
        return_transcript: bool = False,
        max_new_tokens: int | None = None,
    ) -> SpeechToImageResult:
        """Run every step of the pipeline on one clip (WAV/FLAC/OGG bytes, or float32 samples with their rate)."""
        outputs = self.outputs(
            audio,
            sample_rate_hz,
            **{
                names.SEED: seed,
                names.NUM_INFERENCE_STEPS: num_inference_steps,
                names.GUIDANCE_SCALE: guidance_scale,
                names.HEIGHT: height,
                names.WIDTH: width,
                names.SCHEDULER: scheduler,
                names.EMOTION_OVERRIDE: emotion_override,
                names.STYLE_TEMPLATE: style_template,
                names.RETURN_TRANSCRIPT: return_transcript,
                names.MAX_NEW_TOKENS: max_new_tokens,
            },
        )
        label_of = {timing: label for label, timing in PIPELINE_TIMINGS.items()}
        return SpeechToImageResult(
            png=outputs[names.PNG],
            text=outputs[names.TEXT],
            transcript=outputs[names.TRANSCRIPT],
            emotion=outputs[names.EMOTION],
            detected_emotion=outputs[names.EMOTION_LABEL],
            # Keyed as the client keys the served scores, so results compare equal.
            emotion_scores=emotion_scores(outputs[names.EMOTION_PROBABILITIES], outputs[names.EMOTION_LABEL_NAMES]),
            prompt=outputs[names.PROMPT],
            negative_prompt=outputs[names.NEGATIVE_PROMPT],
            seed=int(outputs[names.IMAGE_SEED]),
            timings_ms={label_of.get(step.timing, step.model): outputs[step.timing] for step in self.pipeline.steps},
        )

    def _preprocess_step(self) -> ReferenceStep:
        """Log-mel features once, as served (with Whisper's feature extractor); the references read the clip."""
        from transformers import WhisperFeatureExtractor

        if names.WHISPER not in self.checkpoints:
            raise ValueError(f"`checkpoints` must name a `{names.WHISPER}` checkpoint: `preprocess` uses its features.")
        extractor = WhisperFeatureExtractor.from_pretrained(self.checkpoints[names.WHISPER])

        def step(inputs: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
            input_features, emotion_features = preprocess(request[names.AUDIO_SAMPLES], extractor)
            return {names.INPUT_FEATURES: input_features, names.EMOTION_FEATURES: emotion_features}

        return step

    def _compose_step(self) -> ReferenceStep:
        """The prompt from the translation and the emotion (or the override), in the classifier's labels."""
        templates = StyleTemplates.load(self.styles)
        # The classifier's own labels, as the served composer reads them from its config (`pipeline_repository_models`).
        emotion = self.checkpoints.get("emotion")
        labels = load_config(emotion).labels if emotion else names.EMOTION_LABELS

        def step(inputs: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
            composed = compose_prompt(
                inputs[names.TEXT],
                inputs[names.EMOTION_LABEL],
                templates,
                emotion_override=inputs.get(names.EMOTION_OVERRIDE),
                template_name=inputs.get(names.STYLE_TEMPLATE),
                labels=labels,
            )
            return {
                names.PROMPT: composed.prompt,
                names.NEGATIVE_PROMPT: composed.negative_prompt,
                names.EMOTION: composed.emotion,
                # The served composer's copies (see `s2i.pipeline.specs.ensemble_spec`).
                names.TEXT: inputs[names.TEXT],
                names.EMOTION_LABEL: inputs[names.EMOTION_LABEL],
                names.DIFFUSION_PROMPT: composed.prompt,
                names.DIFFUSION_NEGATIVE_PROMPT: composed.negative_prompt,
            }

        return step

    def _postprocess_step(self) -> ReferenceStep:
        def step(inputs: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
            return {names.PNG: encode_png(inputs[names.IMAGE]), names.IMAGE: inputs[names.IMAGE]}

        return step
