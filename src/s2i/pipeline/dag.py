"""The speech-to-image pipeline, described once: its steps, what feeds each input, what the client gets.

Three things follow this description and nothing else: the ``speech_to_image`` ensemble
(:func:`s2i.pipeline.specs.ensemble_spec`), the decoupled ``speech_to_image_stream``
(:func:`s2i.pipeline.streaming.run_stream`) and the in-process reference
(:class:`s2i.pipeline.reference.ReferencePipeline`). A step added here reaches all three.

A step's input comes either from the request (under the same name) or from an earlier
step's output; a step marked ``request_options`` also takes every pipeline input no other
step claims (``diffusion``'s options: a new one reaches the ensemble and the stream alike).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from s2i import names


@dataclasses.dataclass(frozen=True)
class Output:
    """Output ``tensor`` of pipeline step ``step`` (a Triton model name)."""

    step: str
    tensor: str


# The source of an input the client sends: the pipeline input of the same name.
REQUEST = None


@dataclasses.dataclass(frozen=True)
class Step:
    """One model of the pipeline.

    Attributes:
        model: The Triton model the step calls.
        timing: The pipeline output carrying the step's ``compute_ms``.
        inputs: The model's input -> :data:`REQUEST` or the :class:`Output` that feeds it.
        request_options: Whether the step also takes every pipeline input no step names.
    """

    model: str
    timing: str
    inputs: Mapping[str, Output | None]
    request_options: bool = False

    def request_inputs(self) -> tuple[str, ...]:
        """The inputs this step names that come from the request."""
        return tuple(name for name, source in self.inputs.items() if source is REQUEST)


@dataclasses.dataclass(frozen=True)
class PipelineOutput:
    """A pipeline output ``name``: output ``tensor`` of step ``step`` (``name`` itself by default)."""

    name: str
    step: str
    tensor: str = ""

    @property
    def source(self) -> Output:
        """The step output the client's tensor is."""
        return Output(self.step, self.tensor or self.name)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """Steps in an order where every source comes earlier, and the outputs a client may request.

    The timings of the steps (``*_ms``) are outputs too, after ``outputs``, in step order.
    """

    steps: tuple[Step, ...]
    outputs: tuple[PipelineOutput, ...]

    def __post_init__(self) -> None:
        check(self)

    def step(self, model: str) -> Step:
        """The step that calls ``model``."""
        for step in self.steps:
            if step.model == model:
                return step
        raise KeyError(f"The pipeline has no step `{model}`.")

    @property
    def timings(self) -> dict[str, str]:
        """Step model -> its timing output."""
        return {step.model: step.timing for step in self.steps}

    def consumed(self, model: str) -> tuple[str, ...]:
        """Outputs of step ``model`` that later steps read, in first-read order."""
        read = [
            source.tensor
            for step in self.steps
            for source in step.inputs.values()
            if source is not REQUEST and source.step == model
        ]
        return tuple(dict.fromkeys(read))

    def client_outputs(self, model: str) -> tuple[PipelineOutput, ...]:
        """The pipeline outputs that step ``model`` produces."""
        return tuple(output for output in self.outputs if output.step == model)

    def requested(self, model: str) -> tuple[str, ...]:
        """What to ask step ``model`` for: what later steps read, what the client gets, its time."""
        wanted = (*self.consumed(model), *(output.source.tensor for output in self.client_outputs(model)))
        return (*dict.fromkeys(wanted), names.COMPUTE_MS)

    def named_request_inputs(self) -> tuple[str, ...]:
        """The pipeline inputs the steps name (the rest go to the ``request_options`` step)."""
        return tuple(dict.fromkeys(name for step in self.steps for name in step.request_inputs()))

    def to_json(self) -> str:
        """The DAG as JSON (the stream model's config carries it): :meth:`from_json` reads it back."""
        steps = [
            {
                "model": step.model,
                "timing": step.timing,
                "inputs": {
                    name: None if source is REQUEST else [source.step, source.tensor]
                    for name, source in step.inputs.items()
                },
                "request_options": step.request_options,
            }
            for step in self.steps
        ]
        outputs = [[output.name, output.step, output.tensor] for output in self.outputs]
        return json.dumps({"steps": steps, "outputs": outputs}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Pipeline:
        """The DAG :meth:`to_json` wrote, checked again."""
        data = json.loads(text)
        steps = tuple(
            Step(
                step["model"],
                step["timing"],
                {name: REQUEST if source is None else Output(*source) for name, source in step["inputs"].items()},
                bool(step["request_options"]),
            )
            for step in data["steps"]
        )
        return cls(steps, tuple(PipelineOutput(*output) for output in data["outputs"]))


def check(pipeline: Pipeline) -> None:
    """Raise ``ValueError`` unless every source is an earlier step and the outputs can be wired.

    A client's tensor is never one a later step reads (Triton's ensemble pruning miscounts those;
    see :func:`s2i.pipeline.specs.ensemble_spec`): a step passes such a value on as a copy.
    """
    seen: set[str] = set()
    for step in pipeline.steps:
        for name, source in step.inputs.items():
            if source is not REQUEST and source.step not in seen:
                raise ValueError(
                    f"Step `{step.model}` input `{name}` reads `{source.step}`, which does not run before it."
                )
        if step.model in seen:
            raise ValueError(f"Step `{step.model}` appears twice.")
        seen.add(step.model)
    if sum(step.request_options for step in pipeline.steps) > 1:
        raise ValueError("Only one step may take the request's remaining options.")
    names_seen = [output.name for output in pipeline.outputs] + [step.timing for step in pipeline.steps]
    if len(set(names_seen)) != len(names_seen):
        raise ValueError(f"Pipeline output names repeat: {sorted(names_seen)}.")
    for output in pipeline.outputs:
        if output.step not in seen:
            raise ValueError(f"Output `{output.name}` comes from `{output.step}`, which is not a step.")
        if output.source.tensor in pipeline.consumed(output.step):
            raise ValueError(
                f"Output `{output.name}` is `{output.step}`'s `{output.source.tensor}`, which a later step reads; "
                "take the client's copy from the step that reads it."
            )


PIPELINE = Pipeline(
    steps=(
        Step(
            names.PREPROCESS,
            names.PREPROCESS_MS,
            {names.AUDIO_SAMPLES: REQUEST, names.SAMPLE_RATE_HZ: REQUEST, names.AUDIO_BYTES: REQUEST},
        ),
        # Whisper and the emotion classifier both read only `preprocess`: they run in parallel.
        Step(
            names.WHISPER,
            names.WHISPER_MS,
            {
                names.INPUT_FEATURES: Output(names.PREPROCESS, names.INPUT_FEATURES),
                names.RETURN_TRANSCRIPT: REQUEST,
                names.MAX_NEW_TOKENS: REQUEST,
            },
        ),
        Step(
            names.EMOTION_CLASSIFIER,
            names.EMOTION_MS,
            {names.INPUT_FEATURES: Output(names.PREPROCESS, names.EMOTION_FEATURES)},
        ),
        Step(
            names.PROMPT_COMPOSER,
            names.PROMPT_MS,
            {
                names.TEXT: Output(names.WHISPER, names.TEXT),
                names.EMOTION_LABEL: Output(names.EMOTION_CLASSIFIER, names.EMOTION_LABEL),
                names.EMOTION_OVERRIDE: REQUEST,
                names.STYLE_TEMPLATE: REQUEST,
            },
        ),
        Step(
            names.DIFFUSION,
            names.DIFFUSION_MS,
            {
                names.PROMPT: Output(names.PROMPT_COMPOSER, names.DIFFUSION_PROMPT),
                names.NEGATIVE_PROMPT: Output(names.PROMPT_COMPOSER, names.DIFFUSION_NEGATIVE_PROMPT),
            },
            request_options=True,
        ),
        Step(names.POSTPROCESS, names.POSTPROCESS_MS, {names.IMAGE: Output(names.DIFFUSION, names.IMAGE)}),
    ),
    outputs=(
        PipelineOutput(names.PNG, names.POSTPROCESS),
        PipelineOutput(names.IMAGE, names.POSTPROCESS),
        PipelineOutput(names.IMAGE_SEED, names.DIFFUSION, names.SEED),
        # The composer's copies of what it composed from (Whisper's text, the classifier's label).
        PipelineOutput(names.TEXT, names.PROMPT_COMPOSER),
        PipelineOutput(names.TRANSCRIPT, names.WHISPER),
        PipelineOutput(names.EMOTION_LABEL, names.PROMPT_COMPOSER),
        PipelineOutput(names.EMOTION_PROBABILITIES, names.EMOTION_CLASSIFIER),
        # The checkpoint's label set, which the probabilities are in the order of.
        PipelineOutput(names.EMOTION_LABEL_NAMES, names.EMOTION_CLASSIFIER),
        PipelineOutput(names.EMOTION, names.PROMPT_COMPOSER),
        PipelineOutput(names.PROMPT, names.PROMPT_COMPOSER),
        PipelineOutput(names.NEGATIVE_PROMPT, names.PROMPT_COMPOSER),
    ),
)
