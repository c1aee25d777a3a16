"""The streamed pipeline: the steps of the pipeline DAG, with messages as soon as each part is known."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Mapping

import numpy as np

from s2i import names
from s2i.errors import InvalidInputError, RequestCancelledError
from s2i.model_repository.triton_io import scalar
from s2i.pipeline.dag import PIPELINE, REQUEST, Output, Pipeline, Step
from s2i.pipeline.steps import encode_png
from s2i.stages.diffusion.sampling import MAX_NUM_INFERENCE_STEPS, image_request_from
from s2i.stages.runner import StageRunner

# Previews are a quarter of the image's side: enough to watch, cheap to send.
PREVIEW_DOWNSCALE = 4
# Pipeline outputs the stream does not send: the pixels travel as PNG.
LEFT_OUT = (names.IMAGE,)
# The steps the stream runs in its own process (the others through its stage runner): the
# denoising loop, for previews, and the PNG encoding; the `text` message goes before the first.
LOCAL_STEPS = (names.DIFFUSION, names.POSTPROCESS)

Send = Callable[[dict[str, np.ndarray]], None]


@dataclasses.dataclass(frozen=True)
class StreamRequest:
    """A streaming request as received: the pipeline inputs it holds and the stream's own option."""

    inputs: Mapping[str, np.ndarray]
    preview_every: int = 0


def _text(value: str) -> np.ndarray:
    return np.array([[value.encode("utf-8")]], dtype=np.object_)


def _ms(seconds: float) -> np.ndarray:
    return np.array([[1000 * seconds]], dtype=np.float32)


def image_request(inputs: Mapping[str, np.ndarray]):
    """The diffusion request for the ``diffusion`` step's inputs (prompts and options)."""
    return image_request_from(lambda name: scalar(inputs.get(name), name))


def preview_png(image: np.ndarray) -> bytes:
    """A quarter-size PNG of an RGB image."""
    from PIL import Image

    picture = Image.fromarray(image)
    size = (max(1, image.shape[1] // PREVIEW_DOWNSCALE), max(1, image.shape[0] // PREVIEW_DOWNSCALE))
    buffer = io.BytesIO()
    picture.resize(size, Image.Resampling.BILINEAR).save(buffer, format="PNG")
    return buffer.getvalue()


def step_inputs(step: Step, request: StreamRequest, produced: Mapping[Output, np.ndarray], pipeline: Pipeline):
    """The inputs of ``step``: the request's tensors it reads (options included) and earlier steps' outputs."""
    wanted = set(step.request_inputs())
    if step.request_options:
        wanted |= set(request.inputs) - set(pipeline.named_request_inputs())
    inputs = {name: value for name, value in request.inputs.items() if name in wanted}
    inputs.update({name: produced[source] for name, source in step.inputs.items() if source is not REQUEST})
    return inputs


def run_stream(
    request: StreamRequest,
    run_stage: StageRunner,
    diffusion,
    send: Send,
    clock: Callable[[], float],
    cancelled: Callable[[], bool] | None = None,
    pipeline: Pipeline = PIPELINE,
):
    """Run ``pipeline`` for one request, calling ``send`` with each message's output tensors.

    Messages: ``text`` (every output known before the local steps), ``preview`` every
    ``preview_every`` denoising steps, then ``image`` (every output). ``cancelled`` (the
    stream's ``request.is_cancelled``) is asked between steps and before every denoising step:
    a dropped stream stops there with :class:`RequestCancelledError`.
    """
    if not 0 <= request.preview_every <= MAX_NUM_INFERENCE_STEPS:
        raise InvalidInputError(
            names.PREVIEW_EVERY,
            f"must be 0 (no previews) or between 1 and {MAX_NUM_INFERENCE_STEPS}, got {request.preview_every}.",
        )
    is_cancelled = cancelled or (lambda: False)
    started = clock()
    produced: dict[Output, np.ndarray] = {}
    known: dict[str, np.ndarray] = {}  # what every message carries: the client's outputs so far
    local = _LocalSteps(request, diffusion, send, known, clock, lambda _index: is_cancelled())
    text_sent = False
    for step in pipeline.steps:
        if is_cancelled():
            raise RequestCancelledError("stream")
        if step.model in LOCAL_STEPS and not text_sent:
            send({**known, names.EVENT: _text("text"), names.STEP: np.array([[0]], dtype=np.int32)})
            text_sent = True
        inputs = step_inputs(step, request, produced, pipeline)
        run = local.run if step.model in LOCAL_STEPS else run_stage
        outputs = run(step.model, inputs, pipeline.requested(step.model))
        produced.update({Output(step.model, tensor): value for tensor, value in outputs.items()})
        known.update(
            {
                output.name: outputs[output.source.tensor]
                for output in pipeline.client_outputs(step.model)
                if output.name not in LEFT_OUT
            }
        )
        known[step.timing] = outputs[names.COMPUTE_MS]
    send({**known, names.EVENT: _text("image"), names.STEP: np.array([[local.steps_done]], dtype=np.int32)})
    return clock() - started


class _LocalSteps:
    """The steps the stream runs itself, as a stage runner: the denoising loop with previews, PNG encoding."""

    def __init__(self, request: StreamRequest, diffusion, send: Send, known: dict, clock, cancelled) -> None:
        self.request, self.diffusion, self.send, self.known = request, diffusion, send, known
        self.clock, self.cancelled = clock, cancelled
        self.steps_done = 0

    def run(self, model_name: str, inputs: Mapping[str, np.ndarray], output_names) -> dict[str, np.ndarray]:
        started = self.clock()
        if model_name == names.DIFFUSION:
            outputs = self._diffusion(inputs)
        elif model_name == names.POSTPROCESS:
            outputs = {names.PNG: np.array([[encode_png(inputs[names.IMAGE][0])]], dtype=np.object_)}
            outputs[names.IMAGE] = inputs[names.IMAGE]
        else:
            raise ValueError(f"The stream cannot run step `{model_name}` in its process.")
        outputs[names.COMPUTE_MS] = _ms(self.clock() - started)
        return {name: outputs[name] for name in output_names}

    def _diffusion(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        preview_every = self.request.preview_every
        image_options = image_request(inputs)
        self.steps_done = self.diffusion.check(image_options).num_inference_steps

        def on_step(_index: int, step: int, total: int, latents: np.ndarray) -> None:
            if preview_every and step % preview_every == 0 and step < total:
                preview = self.diffusion.decode(latents)[0]
                self.send(
                    {
                        **self.known,
                        names.PNG: np.array([[preview_png(preview)]], dtype=np.object_),
                        names.EVENT: _text("preview"),
                        names.STEP: np.array([[step]], dtype=np.int32),
                    }
                )

        (generated,) = self.diffusion.generate([image_options], on_step=on_step, cancelled=self.cancelled)
        if isinstance(generated, RequestCancelledError):
            raise generated
        return {names.IMAGE: generated.image[None], names.SEED: np.array([[generated.seed]], dtype=np.int64)}
