"""The streamed pipeline: the same steps as the ensemble, with messages as soon as each part is known."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Mapping

import numpy as np

from s2i import names
from s2i.audio import InvalidInputError, RequestCancelledError
from s2i.model_repository.triton_io import scalar
from s2i.pipeline.steps import encode_png
from s2i.stages.diffusion.sampling import image_request_from
from s2i.stages.runner import StageRunner

# Previews are a quarter of the image's side: enough to watch, cheap to send.
PREVIEW_DOWNSCALE = 4
# Outputs of the text message that the image messages repeat, so every message stands alone.
_TEXT_OUTPUTS = (
    names.TEXT,
    names.TRANSCRIPT,
    names.EMOTION_LABEL,
    names.EMOTION_PROBABILITIES,
    names.EMOTION_LABEL_NAMES,
    names.EMOTION,
    names.PROMPT,
    names.NEGATIVE_PROMPT,
)

Send = Callable[[dict[str, np.ndarray]], None]


@dataclasses.dataclass(frozen=True)
class StreamRequest:
    """A streaming request as received: audio tensors, option tensors and the pipeline's own options."""

    audio: Mapping[str, np.ndarray]
    options: Mapping[str, np.ndarray]
    emotion_override: str | None = None
    style_template: str | None = None
    preview_every: int = 0


def _text(value: str) -> np.ndarray:
    return np.array([[value.encode("utf-8")]], dtype=np.object_)


def image_request(prompt: np.ndarray, negative_prompt: np.ndarray, options: Mapping[str, np.ndarray]):
    """The diffusion request for the composed prompts and the stream's options."""
    values = {**options, names.PROMPT: prompt, names.NEGATIVE_PROMPT: negative_prompt}
    return image_request_from(lambda name: scalar(values.get(name), name))


def preview_png(image: np.ndarray) -> bytes:
    """A quarter-size PNG of an RGB image."""
    from PIL import Image

    picture = Image.fromarray(image)
    size = (max(1, image.shape[1] // PREVIEW_DOWNSCALE), max(1, image.shape[0] // PREVIEW_DOWNSCALE))
    buffer = io.BytesIO()
    picture.resize(size, Image.Resampling.BILINEAR).save(buffer, format="PNG")
    return buffer.getvalue()


def run_stream(
    request: StreamRequest,
    run_stage: StageRunner,
    diffusion,
    send: Send,
    clock: Callable[[], float],
    cancelled: Callable[[], bool] | None = None,
):
    """Run the pipeline for one request, calling ``send`` with each message's output tensors.

    ``cancelled`` (the stream's ``request.is_cancelled``) is asked between stages and before
    every denoising step: a dropped stream stops there with :class:`RequestCancelledError`.
    """
    from s2i.stages.diffusion.sampling import MAX_NUM_INFERENCE_STEPS

    if not 0 <= request.preview_every <= MAX_NUM_INFERENCE_STEPS:
        raise InvalidInputError(
            names.PREVIEW_EVERY,
            f"must be 0 (no previews) or between 1 and {MAX_NUM_INFERENCE_STEPS}, got {request.preview_every}.",
        )
    is_cancelled = cancelled or (lambda: False)
    started = clock()

    def checked_stage(*args):
        if is_cancelled():
            raise RequestCancelledError("stream")
        return run_stage(*args)

    features = checked_stage(
        names.PREPROCESS, request.audio, [names.INPUT_FEATURES, names.EMOTION_FEATURES, names.COMPUTE_MS]
    )
    whisper_options = {
        name: request.options[name]
        for name in (names.RETURN_TRANSCRIPT, names.MAX_NEW_TOKENS)
        if name in request.options
    }
    whisper = checked_stage(
        names.WHISPER,
        {names.INPUT_FEATURES: features[names.INPUT_FEATURES], **whisper_options},
        [names.TEXT, names.TRANSCRIPT, names.COMPUTE_MS],
    )
    emotion = checked_stage(
        names.EMOTION_CLASSIFIER,
        {names.INPUT_FEATURES: features[names.EMOTION_FEATURES]},
        [names.EMOTION_LABEL, names.EMOTION_PROBABILITIES, names.EMOTION_LABEL_NAMES, names.COMPUTE_MS],
    )
    composer_inputs = {names.TEXT: whisper[names.TEXT], names.EMOTION_LABEL: emotion[names.EMOTION_LABEL]}
    if request.emotion_override:
        composer_inputs[names.EMOTION_OVERRIDE] = _text(request.emotion_override)
    if request.style_template:
        composer_inputs[names.STYLE_TEMPLATE] = _text(request.style_template)
    composed = checked_stage(
        names.PROMPT_COMPOSER,
        composer_inputs,
        [names.PROMPT, names.NEGATIVE_PROMPT, names.EMOTION, names.COMPUTE_MS],
    )
    known = {**whisper, **emotion, **composed}
    common = {name: known[name] for name in _TEXT_OUTPUTS}
    common["preprocess_ms"] = features[names.COMPUTE_MS]
    common["whisper_ms"] = whisper[names.COMPUTE_MS]
    common["emotion_ms"] = emotion[names.COMPUTE_MS]
    common["prompt_ms"] = composed[names.COMPUTE_MS]
    send({**common, names.EVENT: _text("text"), names.STEP: np.array([[0]], dtype=np.int32)})

    image_options = image_request(composed[names.PROMPT], composed[names.NEGATIVE_PROMPT], request.options)

    def on_step(_index: int, step: int, total: int, latents: np.ndarray) -> None:
        if request.preview_every and step % request.preview_every == 0 and step < total:
            preview = diffusion.decode(latents)[0]
            send(
                {
                    **common,
                    names.PNG: np.array([[preview_png(preview)]], dtype=np.object_),
                    names.EVENT: _text("preview"),
                    names.STEP: np.array([[step]], dtype=np.int32),
                }
            )

    diffusion_started = clock()
    (generated,) = diffusion.generate([image_options], on_step=on_step, cancelled=lambda _index: is_cancelled())
    if isinstance(generated, RequestCancelledError):
        raise generated
    common["diffusion_ms"] = np.array([[1000 * (clock() - diffusion_started)]], dtype=np.float32)
    encode_started = clock()
    png = encode_png(generated.image)
    send(
        {
            **common,
            names.PNG: np.array([[png]], dtype=np.object_),
            names.IMAGE_SEED: np.array([[generated.seed]], dtype=np.int64),
            "postprocess_ms": np.array([[1000 * (clock() - encode_started)]], dtype=np.float32),
            names.EVENT: _text("image"),
            names.STEP: np.array([[diffusion.check(image_options).num_inference_steps]], dtype=np.int32),
        }
    )
    return clock() - started
