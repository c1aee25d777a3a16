"""Requests and responses of every public model, independent of the transport.

An :class:`Operation` says which model to call, with which tensors, and how to
turn the returned tensors into a typed result. The sync and asyncio clients
execute the same operations, so a model's request format lives in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from s2i import names
from s2i.client.errors import ClientError
from s2i.client.results import (
    EmotionResult,
    GeneratedImage,
    SpeechToImageResult,
    Translation,
    emotion_scores,
)

AudioInput = str | Path | bytes | np.ndarray
# Pipeline step -> the output carrying its server time.
PIPELINE_TIMINGS = {
    "preprocess": names.PREPROCESS_MS,
    "whisper": names.WHISPER_MS,
    "emotion": names.EMOTION_MS,
    "prompt_composer": names.PROMPT_MS,
    "diffusion": names.DIFFUSION_MS,
    "postprocess": names.POSTPROCESS_MS,
}


@dataclasses.dataclass
class Operation:
    """One inference call: model, named input arrays (with KServe datatypes), outputs, and a parser.

    Attributes:
        shared_memory_outputs: Outputs whose shape is known before the call (name -> (shape,
            numpy dtype)); a client with shared memory enabled receives them there.
        idempotent: Running the call twice gives the same result, so a retry is safe (it
            still costs the server the work twice).
    """

    model: str
    inputs: list[tuple[str, str, np.ndarray]]
    outputs: list[str]
    parse: Callable[[Mapping[str, np.ndarray]], object]
    shared_memory_outputs: dict[str, tuple[tuple[int, ...], type]] = dataclasses.field(default_factory=dict)
    idempotent: bool = True


def _text(name: str, value: str) -> tuple[str, str, np.ndarray]:
    return name, "BYTES", np.array([[value.encode("utf-8")]], dtype=np.object_)


def _int32(name: str, value: int) -> tuple[str, str, np.ndarray]:
    return name, "INT32", np.array([[value]], dtype=np.int32)


def _optional(inputs: list, name: str, value, make) -> None:
    if value is not None:
        inputs.append(make(name, value))


def audio_inputs(audio: AudioInput, sample_rate_hz: int | None) -> list[tuple[str, str, np.ndarray]]:
    """The request tensors for ``audio``: a file path or file bytes, or float32 mono samples."""
    if isinstance(audio, (str, Path)):
        audio = Path(audio).read_bytes()
    if isinstance(audio, bytes):
        if sample_rate_hz is not None:
            raise ValueError("`sample_rate_hz` is read from the file; pass it only with raw samples.")
        return [(names.AUDIO_BYTES, "BYTES", np.array([[audio]], dtype=np.object_))]
    samples = np.asarray(audio)
    if sample_rate_hz is None:
        raise ValueError("`sample_rate_hz` is required with raw samples.")
    if samples.ndim != 1:
        raise ValueError(f"`audio` must be mono samples of shape [samples], got shape {list(samples.shape)}.")
    if samples.dtype != np.float32:
        raise ValueError(f"`audio` must be float32 samples in [-1, 1], got {samples.dtype}.")
    return [(names.AUDIO_SAMPLES, "FP32", samples[None, :]), _int32(names.SAMPLE_RATE_HZ, sample_rate_hz)]


def _first_text(outputs: Mapping[str, np.ndarray], name: str, model: str) -> str:
    value = outputs.get(name)
    if value is None or value.size != 1:
        raise ClientError(f"`{model}` returned no `{name}`; is the server's Python environment set up?")
    return value.reshape(-1)[0].decode("utf-8")


def _label_names(outputs: Mapping[str, np.ndarray], probabilities: np.ndarray, model: str) -> tuple[str, ...]:
    """The classifier's label names the server sent (``()`` when it sent none), one per probability."""
    value = outputs.get(names.EMOTION_LABEL_NAMES)
    if value is None or value.size == 0:
        return ()
    if value.size != probabilities.size:
        raise ClientError(
            f"`{model}` returned {value.size} `{names.EMOTION_LABEL_NAMES}` for {probabilities.size} probabilities."
        )
    return tuple(item.decode("utf-8") for item in value.reshape(-1))


def translate(
    audio: AudioInput,
    sample_rate_hz: int | None = None,
    *,
    task: str = "translate",
    language: str = "hi",
    max_new_tokens: int | None = None,
) -> Operation:
    """``whisper``: speech to English text (or the transcript)."""
    inputs = [*audio_inputs(audio, sample_rate_hz), _text(names.TASK, task), _text(names.LANGUAGE, language)]
    _optional(inputs, names.MAX_NEW_TOKENS, max_new_tokens, _int32)

    def parse(outputs) -> Translation:
        token_ids = outputs.get(names.TOKEN_IDS)
        if token_ids is None:
            raise ClientError(f"`{names.WHISPER}` returned no token ids; is the server's Python environment set up?")
        return Translation(_first_text(outputs, names.TEXT, names.WHISPER), token_ids.reshape(-1).tolist())

    return Operation(names.WHISPER, inputs, [names.TEXT, names.TOKEN_IDS], parse)


def classify_emotion(audio: AudioInput, sample_rate_hz: int | None = None) -> Operation:
    """``emotion_classifier``: the speaker's emotion and one probability per label of the checkpoint."""

    def parse(outputs) -> EmotionResult:
        probabilities = outputs.get(names.EMOTION_PROBABILITIES)
        # Any label count: a classifier trained on another label set is served as well.
        if probabilities is None or probabilities.size == 0:
            raise ClientError(f"`{names.EMOTION_CLASSIFIER}` returned no probabilities.")
        return EmotionResult(
            _first_text(outputs, names.EMOTION_LABEL, names.EMOTION_CLASSIFIER),
            probabilities.reshape(-1),
            _label_names(outputs, probabilities, names.EMOTION_CLASSIFIER),
        )

    return Operation(
        names.EMOTION_CLASSIFIER,
        audio_inputs(audio, sample_rate_hz),
        [names.EMOTION_LABEL, names.EMOTION_PROBABILITIES, names.EMOTION_LABEL_NAMES],
        parse,
    )


def _diffusion_options(
    inputs: list,
    *,
    num_inference_steps: int | None,
    guidance_scale: float | None,
    height: int | None,
    width: int | None,
    seed: int | None,
    scheduler: str | None,
) -> None:
    _optional(inputs, names.NUM_INFERENCE_STEPS, num_inference_steps, _int32)
    _optional(inputs, names.HEIGHT, height, _int32)
    _optional(inputs, names.WIDTH, width, _int32)
    _optional(inputs, names.SCHEDULER, scheduler, _text)
    if guidance_scale is not None:
        inputs.append((names.GUIDANCE_SCALE, "FP32", np.array([[guidance_scale]], dtype=np.float32)))
    if seed is not None:
        inputs.append((names.SEED, "INT64", np.array([[seed]], dtype=np.int64)))


def text_to_image(
    prompt: str,
    *,
    negative_prompt: str | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    seed: int | None = None,
    scheduler: str | None = None,
) -> Operation:
    """``diffusion``: an English prompt to an RGB image; ``None`` options take the server's defaults."""
    inputs = [_text(names.PROMPT, prompt)]
    _optional(inputs, names.NEGATIVE_PROMPT, negative_prompt, _text)
    _diffusion_options(
        inputs,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        seed=seed,
        scheduler=scheduler,
    )

    def parse(outputs) -> GeneratedImage:
        image, used_seed = outputs.get(names.IMAGE), outputs.get(names.SEED)
        if image is None or used_seed is None or image.ndim != 4 or image.shape[-1] != 3:
            raise ClientError(f"`{names.DIFFUSION}` returned no image; is the server's Python environment set up?")
        return GeneratedImage(image=image[0], seed=int(used_seed.reshape(-1)[0]))

    # Without a seed the server draws one: a second run would make another image.
    return Operation(names.DIFFUSION, inputs, [names.IMAGE, names.SEED], parse, idempotent=seed is not None)


SPEECH_TO_IMAGE_OUTPUTS = [
    names.PNG,
    names.TEXT,
    names.TRANSCRIPT,
    names.EMOTION,
    names.EMOTION_LABEL,
    names.EMOTION_PROBABILITIES,
    names.EMOTION_LABEL_NAMES,
    names.PROMPT,
    names.NEGATIVE_PROMPT,
    names.IMAGE_SEED,
    *PIPELINE_TIMINGS.values(),
]


# What a result's own fields hold, and a stream message's kind: the rest goes to `SpeechToImageResult.outputs`.
_RESULT_FIELDS = frozenset((*SPEECH_TO_IMAGE_OUTPUTS, names.IMAGE, names.EVENT, names.STEP))


def parse_speech_to_image(outputs: Mapping[str, np.ndarray], model: str = names.SPEECH_TO_IMAGE) -> SpeechToImageResult:
    """The typed result of ``speech_to_image`` (and of the stream's messages, where fields may be empty)."""
    probabilities = outputs.get(names.EMOTION_PROBABILITIES)
    if probabilities is None or probabilities.size == 0:
        raise ClientError(f"`{model}` returned no emotion probabilities; is the server's Python environment set up?")
    png = outputs.get(names.PNG)
    seed = outputs.get(names.IMAGE_SEED)
    timings = {step: float(outputs[name].reshape(-1)[0]) for step, name in PIPELINE_TIMINGS.items() if name in outputs}
    return SpeechToImageResult(
        png=png.reshape(-1)[0] if png is not None and png.size else b"",
        text=_first_text(outputs, names.TEXT, model),
        transcript=_first_text(outputs, names.TRANSCRIPT, model) if names.TRANSCRIPT in outputs else "",
        emotion=_first_text(outputs, names.EMOTION, model),
        detected_emotion=_first_text(outputs, names.EMOTION_LABEL, model),
        emotion_scores=emotion_scores(probabilities, _label_names(outputs, probabilities, model)),
        prompt=_first_text(outputs, names.PROMPT, model),
        negative_prompt=_first_text(outputs, names.NEGATIVE_PROMPT, model),
        seed=int(seed.reshape(-1)[0]) if seed is not None and seed.size else -1,
        timings_ms=timings,
        image_pixels=outputs[names.IMAGE][0] if outputs.get(names.IMAGE) is not None else None,
        outputs={name: value for name, value in outputs.items() if name not in _RESULT_FIELDS},
    )


def speech_to_image(
    audio: AudioInput,
    sample_rate_hz: int | None = None,
    *,
    seed: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    scheduler: str | None = None,
    emotion_override: str | None = None,
    style_template: str | None = None,
    return_transcript: bool = False,
    max_new_tokens: int | None = None,
    model: str = names.SPEECH_TO_IMAGE,
    pixels_via_shared_memory: bool = False,
    extra_outputs: Sequence[str] = (),
) -> Operation:
    """``speech_to_image``: Hindi speech to an emotion-aware image, with the texts and timings.

    With ``pixels_via_shared_memory`` and both ``height`` and ``width`` given, the raw ``image``
    is also requested, sized in advance so it can come back through shared memory.
    ``extra_outputs`` names more pipeline outputs to request (a stage added to the pipeline
    brings its own); they come back in the result's ``outputs``.
    """
    inputs = audio_inputs(audio, sample_rate_hz)
    _diffusion_options(
        inputs,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        seed=seed,
        scheduler=scheduler,
    )
    _optional(inputs, names.EMOTION_OVERRIDE, emotion_override, _text)
    _optional(inputs, names.STYLE_TEMPLATE, style_template, _text)
    _optional(inputs, names.MAX_NEW_TOKENS, max_new_tokens, _int32)
    if return_transcript:
        inputs.append((names.RETURN_TRANSCRIPT, "BOOL", np.array([[True]])))
    operation = Operation(
        model,
        inputs,
        [*SPEECH_TO_IMAGE_OUTPUTS, *(name for name in extra_outputs if name not in SPEECH_TO_IMAGE_OUTPUTS)],
        lambda outputs: parse_speech_to_image(outputs, model),
        idempotent=seed is not None,  # without a seed the server draws one
    )
    if pixels_via_shared_memory and height is not None and width is not None:
        operation.outputs.append(names.IMAGE)
        operation.shared_memory_outputs[names.IMAGE] = ((1, height, width, 3), np.uint8)
    return operation
