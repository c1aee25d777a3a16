"""The in-process reference pipeline: the steps of the pipeline DAG with transformers and diffusers, no Triton.

It is the oracle of the end-to-end parity tests and the one-request-at-a-time
baseline of the benchmarks ("as the research ran it").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from s2i import names
from s2i.audio import load_request_audio
from s2i.client.operations import PIPELINE_TIMINGS
from s2i.client.results import SpeechToImageResult, emotion_scores
from s2i.pipeline.dag import PIPELINE
from s2i.pipeline.prompt import StyleTemplates, compose_prompt
from s2i.pipeline.steps import encode_png

# The served pipeline's defaults, so a request with no options means the same on both.
DEFAULT_SEED = 0
# The `diffusion` options `run` takes (the served pipeline's `diffusion` inputs of the same names).
DIFFUSION_OPTIONS = (names.NUM_INFERENCE_STEPS, names.GUIDANCE_SCALE, names.HEIGHT, names.WIDTH, names.SCHEDULER)


class ReferencePipeline:
    """Whisper (``generate``), the emotion classifier (PyTorch) and ``StableDiffusionPipeline`` in-process.

    Args:
        checkpoints: Stage name -> checkpoint folder (``whisper``, ``emotion``, ``diffusion``).
        styles: A styles file (the packaged one by default).
    """

    def __init__(self, checkpoints: Mapping[str, Path], styles: Path | None = None) -> None:
        from s2i.stages.diffusion.reference import DiffusionReference
        from s2i.stages.emotion.reference import EmotionReference
        from s2i.stages.whisper.reference import WhisperReference

        self.whisper = WhisperReference(checkpoints["whisper"])
        self.emotion = EmotionReference(checkpoints["emotion"])
        self.diffusion = DiffusionReference(checkpoints["diffusion"])
        self.templates = StyleTemplates.load(styles)

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
        request = {
            "audio": audio,
            "sample_rate_hz": sample_rate_hz,
            "seed": seed,
            names.NUM_INFERENCE_STEPS: num_inference_steps,
            names.GUIDANCE_SCALE: guidance_scale,
            names.HEIGHT: height,
            names.WIDTH: width,
            names.SCHEDULER: scheduler,
            names.EMOTION_OVERRIDE: emotion_override,
            names.STYLE_TEMPLATE: style_template,
            names.RETURN_TRANSCRIPT: return_transcript,
            names.MAX_NEW_TOKENS: max_new_tokens,
        }
        state: dict = {}
        timings: dict[str, float] = {}
        label_of = {timing: label for label, timing in PIPELINE_TIMINGS.items()}
        for step in PIPELINE.steps:
            started = time.perf_counter()
            self.steps[step.model](request, state)
            timings[label_of[step.timing]] = 1000 * (time.perf_counter() - started)
        composed = state[names.PROMPT_COMPOSER]
        return SpeechToImageResult(
            png=state[names.PNG],
            text=state[names.TEXT],
            transcript=state[names.TRANSCRIPT],
            emotion=composed.emotion,
            detected_emotion=state[names.EMOTION_LABEL],
            # Keyed as the client keys the served scores, so results compare equal.
            emotion_scores=emotion_scores(state[names.EMOTION_PROBABILITIES], state[names.EMOTION_LABEL_NAMES]),
            prompt=composed.prompt,
            negative_prompt=composed.negative_prompt,
            seed=seed,
            timings_ms=timings,
        )

    @property
    def steps(self) -> dict[str, Callable[[dict, dict], None]]:
        """Pipeline step -> its in-process version: ``step(request options, state)`` adds its outputs to state."""
        return {
            names.PREPROCESS: self._preprocess,
            names.WHISPER: self._whisper,
            names.EMOTION_CLASSIFIER: self._emotion,
            names.PROMPT_COMPOSER: self._compose,
            names.DIFFUSION: self._diffusion,
            names.POSTPROCESS: self._postprocess,
        }

    def _preprocess(self, request: dict, state: dict) -> None:
        audio = request["audio"]
        state[names.AUDIO_SAMPLES] = load_request_audio(
            None if isinstance(audio, bytes) else audio,
            request["sample_rate_hz"],
            audio if isinstance(audio, bytes) else None,
        )

    def _whisper(self, request: dict, state: dict) -> None:
        samples = state[names.AUDIO_SAMPLES]
        max_new_tokens = request[names.MAX_NEW_TOKENS]
        options = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        state[names.TEXT] = self.whisper.generate(samples, task="translate", **options)[1]
        transcribe = request[names.RETURN_TRANSCRIPT]
        state[names.TRANSCRIPT] = self.whisper.generate(samples, task="transcribe", **options)[1] if transcribe else ""

    def _emotion(self, request: dict, state: dict) -> None:
        probabilities = np.asarray(self.emotion.probabilities(state[names.AUDIO_SAMPLES]), dtype=np.float32)
        state[names.EMOTION_PROBABILITIES] = probabilities.reshape(-1)
        # The checkpoint's own labels: RAVDESS's for the classifiers this project trains.
        state[names.EMOTION_LABEL_NAMES] = tuple(self.emotion.labels)
        state[names.EMOTION_LABEL] = self.emotion.labels[int(state[names.EMOTION_PROBABILITIES].argmax())]

    def _compose(self, request: dict, state: dict) -> None:
        state[names.PROMPT_COMPOSER] = compose_prompt(
            state[names.TEXT],
            state[names.EMOTION_LABEL],
            self.templates,
            emotion_override=request[names.EMOTION_OVERRIDE],
            template_name=request[names.STYLE_TEMPLATE],
            labels=state[names.EMOTION_LABEL_NAMES],
        )

    def _diffusion(self, request: dict, state: dict) -> None:
        options = {name: request[name] for name in DIFFUSION_OPTIONS if request[name] is not None}
        composed = state[names.PROMPT_COMPOSER]
        state[names.IMAGE] = self.diffusion.generate(
            composed.prompt, negative_prompt=composed.negative_prompt, seed=request["seed"], **options
        )

    def _postprocess(self, request: dict, state: dict) -> None:
        state[names.PNG] = encode_png(state[names.IMAGE])
