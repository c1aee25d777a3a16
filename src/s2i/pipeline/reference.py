"""The in-process reference pipeline: the same stages with transformers and diffusers, no Triton, no ONNX.

It is the oracle of the end-to-end parity tests and the one-request-at-a-time
baseline of the benchmarks ("as the research ran it").
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from s2i.audio import load_request_audio
from s2i.client.results import SpeechToImageResult, emotion_scores
from s2i.pipeline.prompt import StyleTemplates, compose_prompt
from s2i.pipeline.steps import encode_png

# The served pipeline's defaults, so a request with no options means the same on both.
DEFAULT_SEED = 0


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
        """Run every stage on one clip (WAV/FLAC/OGG bytes, or float32 samples with their rate)."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        samples = load_request_audio(
            None if isinstance(audio, bytes) else audio, sample_rate_hz, audio if isinstance(audio, bytes) else None
        )
        timings["preprocess"] = 1000 * (time.perf_counter() - started)

        started = time.perf_counter()
        whisper_options = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        _, text = self.whisper.generate(samples, task="translate", **whisper_options)
        transcript = (
            self.whisper.generate(samples, task="transcribe", **whisper_options)[1] if return_transcript else ""
        )
        timings["whisper"] = 1000 * (time.perf_counter() - started)

        started = time.perf_counter()
        probabilities = np.asarray(self.emotion.probabilities(samples), dtype=np.float32).reshape(-1)
        # The checkpoint's own labels: RAVDESS's for the classifiers this project trains.
        detected = self.emotion.labels[int(probabilities.argmax())]
        timings["emotion"] = 1000 * (time.perf_counter() - started)

        composed = compose_prompt(
            text,
            detected,
            self.templates,
            emotion_override=emotion_override,
            template_name=style_template,
            labels=tuple(self.emotion.labels),
        )
        started = time.perf_counter()
        options = {
            key: value
            for key, value in dict(
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                scheduler=scheduler,
            ).items()
            if value is not None
        }
        image = self.diffusion.generate(composed.prompt, negative_prompt=composed.negative_prompt, seed=seed, **options)
        timings["diffusion"] = 1000 * (time.perf_counter() - started)
        started = time.perf_counter()
        png = encode_png(image)
        timings["postprocess"] = 1000 * (time.perf_counter() - started)
        return SpeechToImageResult(
            png=png,
            text=text,
            transcript=transcript,
            emotion=composed.emotion,
            detected_emotion=detected,
            # Keyed as the client keys the served scores, so results compare equal.
            emotion_scores=emotion_scores(probabilities, tuple(self.emotion.labels)),
            prompt=composed.prompt,
            negative_prompt=composed.negative_prompt,
            seed=seed,
            timings_ms=timings,
        )
