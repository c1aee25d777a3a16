"""Triton descriptions of the pipeline's own models, its ensemble and its stream, and their repository entries.

``preprocess``, ``prompt_composer``, ``postprocess``, the ``speech_to_image``
ensemble and the streaming ``speech_to_image_stream`` model.

The ensemble is built from the configs of the models it composes, read back from
the repository they were written to, so its tensors agree with theirs by construction.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

from s2i import names
from s2i.conversion.repository import RepositoryModel
from s2i.model_repository.config import (
    EnsembleStep,
    InstanceGroup,
    ModelSpec,
    TensorSpec,
    parse_config,
)
from s2i.model_repository.deployment import CPU, policy
from s2i.pipeline.dag import PIPELINE, REQUEST, Pipeline, Step
from s2i.pipeline.prompt import STYLES_FILE
from s2i.pipeline.streaming import LEFT_OUT
from s2i.stages.emotion.config import load_config

# The pipeline's own models, described here; the other steps are stage models read from the repository.
OWN_STEPS = (names.PREPROCESS, names.PROMPT_COMPOSER, names.POSTPROCESS)


def composed(pipeline: Pipeline = PIPELINE) -> tuple[str, ...]:
    """The stage models ``pipeline`` composes; all must be in the repository for the pipeline to be written."""
    return tuple(step.model for step in pipeline.steps if step.model not in OWN_STEPS)


def _config_type_to_datatype(data_type: int) -> str:
    from tritonclient.grpc import model_config_pb2

    name = model_config_pb2.DataType.Name(data_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def read_tensor_specs(repository: Path, model: str) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec], int]:
    """Inputs, outputs and ``max_batch_size`` of a model already written to ``repository``."""
    config = parse_config((Path(repository) / model / "config.pbtxt").read_text())

    def specs(tensors, optional_allowed):
        return {
            tensor.name: TensorSpec(
                tensor.name,
                _config_type_to_datatype(tensor.data_type),
                tuple(tensor.dims),
                optional=bool(optional_allowed and tensor.optional),
            )
            for tensor in tensors
        }

    return specs(config.input, True), specs(config.output, False), config.max_batch_size


def preprocess_spec(num_mel_bins: int, device: str = CPU) -> ModelSpec:
    """Audio in, features for Whisper (30 s window) and for the emotion classifier (clip frames) out."""
    chosen = policy(names.PREPROCESS, device)
    return ModelSpec(
        name=names.PREPROCESS,
        inputs=(
            TensorSpec(names.AUDIO_SAMPLES, "FP32", (-1,), optional=True),
            TensorSpec(names.SAMPLE_RATE_HZ, "INT32", (1,), optional=True),
            TensorSpec(names.AUDIO_BYTES, "BYTES", (1,), optional=True),
        ),
        outputs=(
            TensorSpec(names.INPUT_FEATURES, "FP32", (num_mel_bins, 3000)),
            TensorSpec(names.EMOTION_FEATURES, "FP32", (num_mel_bins, -1)),
            TensorSpec(names.COMPUTE_MS, "FP32", (1,)),
        ),
        max_batch_size=chosen.max_batch_size,
        instance_groups=(InstanceGroup(chosen.instances),),
    )


def prompt_composer_spec(device: str = CPU, emotion_labels: tuple[str, ...] = names.EMOTION_LABELS) -> ModelSpec:
    """Text + emotion (+ optional override and template) in, prompt pair and final emotion out.

    ``emotion_labels`` (the classifier's label set) is a parameter the model reads at
    initialize: ``emotion_override`` may name any of them.
    """
    chosen = policy(names.PROMPT_COMPOSER, device)
    return ModelSpec(
        name=names.PROMPT_COMPOSER,
        inputs=(
            TensorSpec(names.TEXT, "BYTES", (1,)),
            TensorSpec(names.EMOTION_LABEL, "BYTES", (1,)),
            TensorSpec(names.EMOTION_OVERRIDE, "BYTES", (1,), optional=True),
            TensorSpec(names.STYLE_TEMPLATE, "BYTES", (1,), optional=True),
        ),
        outputs=(
            TensorSpec(names.PROMPT, "BYTES", (1,)),
            TensorSpec(names.NEGATIVE_PROMPT, "BYTES", (1,)),
            TensorSpec(names.EMOTION, "BYTES", (1,)),
            TensorSpec(names.COMPUTE_MS, "FP32", (1,)),
            # Copies for the ensemble (see `ensemble_spec`): the inputs it composed from, and its prompts again.
            TensorSpec(names.TEXT, "BYTES", (1,)),
            TensorSpec(names.EMOTION_LABEL, "BYTES", (1,)),
            TensorSpec(names.DIFFUSION_PROMPT, "BYTES", (1,)),
            TensorSpec(names.DIFFUSION_NEGATIVE_PROMPT, "BYTES", (1,)),
        ),
        max_batch_size=chosen.max_batch_size,
        instance_groups=(InstanceGroup(chosen.instances),),
        parameters={names.EMOTION_LABELS_PARAMETER: json.dumps(list(emotion_labels))},
    )


def postprocess_spec(device: str = CPU) -> ModelSpec:
    """The RGB image in, PNG bytes out (and the image itself, for the ensemble; see `ensemble_spec`)."""
    chosen = policy(names.POSTPROCESS, device)
    return ModelSpec(
        name=names.POSTPROCESS,
        inputs=(TensorSpec(names.IMAGE, "UINT8", (-1, -1, 3)),),
        outputs=(
            TensorSpec(names.PNG, "BYTES", (1,)),
            TensorSpec(names.COMPUTE_MS, "FP32", (1,)),
            TensorSpec(names.IMAGE, "UINT8", (-1, -1, 3)),
        ),
        max_batch_size=chosen.max_batch_size,
        instance_groups=(InstanceGroup(chosen.instances),),
    )


def internal(model: str, tensor: str) -> str:
    """The ensemble's name for ``tensor`` of ``model`` passed to a later step: never an ensemble output's name."""
    return f"{model}.{tensor}"


def ensemble_spec(repository: Path, step_specs: dict[str, ModelSpec], pipeline: Pipeline = PIPELINE) -> ModelSpec:
    """The ``speech_to_image`` ensemble of ``pipeline`` over the models in ``repository`` and ``step_specs``.

    Any subset of the outputs may be requested. Triton (2.51, and its current ensemble
    scheduler) prunes the steps a request does not need by counting, per step, the outputs
    nobody wants; it miscounts a tensor that is both an ensemble output and another step's
    input, and charges the optional inputs nobody reads to the *first* step. So here no
    tensor is both (a value a later step reads is passed under an internal name, and the
    client's copy comes from the step that read it), and the first step is the pipeline's
    last (`postprocess`), which needs every step that feeds the image. A step off that
    path (one whose outputs only the client reads, a side output) may join when every
    request input it reads is also read on the first step's path, so pruning it never
    charges the first step. :func:`check_prunable` enforces these rules.
    """
    inputs_of: dict[str, dict[str, TensorSpec]] = {}
    outputs_of: dict[str, dict[str, TensorSpec]] = {}
    for step in pipeline.steps:
        if step.model in step_specs:
            spec = step_specs[step.model]
            inputs_of[step.model] = {tensor.name: tensor for tensor in spec.inputs}
            outputs_of[step.model] = {tensor.name: tensor for tensor in spec.outputs}
        else:
            inputs_of[step.model], outputs_of[step.model], _ = read_tensor_specs(repository, step.model)
    request_inputs = _request_inputs(pipeline, inputs_of)
    inputs = tuple(
        _renamed(inputs_of[step.model][name], name, optional=True)
        for step in pipeline.steps
        for name in request_inputs[step.model]
    )
    outputs = (
        *(_renamed(outputs_of[output.step][output.source.tensor], output.name) for output in pipeline.outputs),
        *(_renamed(outputs_of[step.model][names.COMPUTE_MS], step.timing) for step in pipeline.steps),
    )
    steps = tuple(_ensemble_step(pipeline, step, request_inputs[step.model]) for step in pipeline.steps)
    # First: Triton charges unread optional inputs to step 0 (see the docstring).
    steps = (steps[-1], *steps[:-1])
    check_prunable(inputs, outputs, steps)
    # One clip per request: the models batch concurrent requests (dynamic batching), but a
    # request's rows would not be answered row by row, so the pipeline does not take client batches.
    return ModelSpec(
        name=names.SPEECH_TO_IMAGE,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=1,
        backend="",
        platform="ensemble",
        ensemble_steps=steps,
    )


def _renamed(tensor: TensorSpec, name: str, optional: bool | None = None) -> TensorSpec:
    return TensorSpec(name, tensor.datatype, tensor.dims, tensor.optional if optional is None else optional)


def _request_inputs(pipeline: Pipeline, inputs_of: dict[str, dict[str, TensorSpec]]) -> dict[str, tuple[str, ...]]:
    """Step model -> the pipeline inputs it reads: those it names, then its options in its config's order."""
    named = set(pipeline.named_request_inputs())
    chosen = {}
    for step in pipeline.steps:
        config_inputs = inputs_of[step.model]
        missing = sorted(set(step.inputs) - set(config_inputs))
        if missing:
            raise ValueError(f"Pipeline step `{step.model}` wires inputs {missing} its model does not have.")
        options = ()
        if step.request_options:
            options = tuple(name for name in config_inputs if name not in step.inputs and name not in named)
        chosen[step.model] = (*step.request_inputs(), *options)
    return chosen


def _ensemble_step(pipeline: Pipeline, step: Step, request_inputs: tuple[str, ...]) -> EnsembleStep:
    """One step of the ensemble: internal names for what later steps read, the client's names for the rest."""
    input_map = {name: name for name in request_inputs}
    input_map.update(
        {name: internal(source.step, source.tensor) for name, source in step.inputs.items() if source is not REQUEST}
    )
    output_map = {tensor: internal(step.model, tensor) for tensor in pipeline.consumed(step.model)}
    output_map.update({output.source.tensor: output.name for output in pipeline.client_outputs(step.model)})
    output_map[names.COMPUTE_MS] = step.timing
    return EnsembleStep(step.model, input_map, output_map)


def check_prunable(
    inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], steps: tuple[EnsembleStep, ...]
) -> None:
    """Raise unless Triton's ensemble pruning keeps every step a request for any output subset needs.

    Two rules (see :func:`ensemble_spec`): no ensemble output is read by a step, and every ensemble
    input a step reads is also read by the first step or a step it depends on, directly or not.
    Triton charges an ensemble input left unread by the pruned steps to the first step; with the
    second rule that happens only when the first step is not needed either.
    """
    output_names = {tensor.name for tensor in outputs}
    read = {tensor for step in steps for tensor in step.input_map.values()}
    both = sorted(output_names & read)
    if both:
        raise ValueError(f"Ensemble tensors {both} are both outputs and step inputs; pass them under internal names.")
    producer = {tensor: index for index, step in enumerate(steps) for tensor in step.output_map.values()}
    needed, frontier = {0}, [0]
    while frontier:
        for tensor in steps[frontier.pop()].input_map.values():
            if tensor in producer and producer[tensor] not in needed:
                needed.add(producer[tensor])
                frontier.append(producer[tensor])
    on_path = {tensor for index in needed for tensor in steps[index].input_map.values()}
    ensemble_inputs = {tensor.name for tensor in inputs}
    off_path = sorted(
        (steps[index].model_name, tensor)
        for index in set(range(len(steps))) - needed
        for tensor in steps[index].input_map.values()
        if tensor in ensemble_inputs and tensor not in on_path
    )
    if off_path:
        raise ValueError(
            f"Steps that the first ensemble step `{steps[0].model_name}` does not depend on read request inputs "
            f"no step on its path reads: {off_path}; Triton's pruning would charge them to `{steps[0].model_name}`."
        )


def stream_spec(ensemble: ModelSpec, device: str = CPU, pipeline: Pipeline = PIPELINE) -> ModelSpec:
    """The decoupled ``speech_to_image_stream`` model: the ensemble's inputs and outputs, plus the message kind.

    The DAG it follows travels in its config (``pipeline`` parameter), so the served stream walks
    the same steps as the ensemble it was written beside.
    """
    chosen = policy(names.SPEECH_TO_IMAGE_STREAM, device)
    return ModelSpec(
        name=names.SPEECH_TO_IMAGE_STREAM,
        inputs=(*ensemble.inputs, TensorSpec(names.PREVIEW_EVERY, "INT32", (1,), optional=True)),
        outputs=(
            *(tensor for tensor in ensemble.outputs if tensor.name not in LEFT_OUT),
            TensorSpec(names.EVENT, "BYTES", (1,)),
            TensorSpec(names.STEP, "INT32", (1,)),
        ),
        max_batch_size=chosen.max_batch_size,
        instance_groups=(InstanceGroup(chosen.instances),),
        decoupled=True,
        parameters={names.PIPELINE_PARAMETER: pipeline.to_json()},
    )


def styles_file() -> Path:
    """The packaged ``styles.toml``."""
    return Path(str(importlib.resources.files("s2i.pipeline").joinpath(STYLES_FILE)))


def has_pipeline_models(repository: Path, pipeline: Pipeline = PIPELINE) -> bool:
    """Whether ``repository`` holds every model ``pipeline`` composes."""
    return all((Path(repository) / model / "config.pbtxt").is_file() for model in composed(pipeline))


def pipeline_repository_models(
    repository: Path, device: str = CPU, styles: Path | None = None, pipeline: Pipeline = PIPELINE
):
    """The pipeline's own models, the ensemble and the stream of ``pipeline``, for a repository holding its stages."""
    if not has_pipeline_models(repository, pipeline):
        raise ValueError(
            f"The pipeline needs models {list(composed(pipeline))} in {repository}; convert every stage it composes."
        )
    # Whisper's own copy of its feature-extractor config, so both compute the same features.
    whisper_checkpoint = Path(repository) / names.WHISPER / "1" / "assets"
    num_mel_bins = json.loads((whisper_checkpoint / "preprocessor_config.json").read_text())["feature_size"]
    emotion_inputs, _, _ = read_tensor_specs(repository, names.EMOTION_CLASSIFIER)
    emotion_mel_bins = emotion_inputs[names.INPUT_FEATURES].dims[0]
    if emotion_mel_bins != num_mel_bins:
        raise ValueError(
            f"The pipeline shares Whisper's log-mel features with the emotion classifier, but Whisper has "
            f"{num_mel_bins} mel bins and the emotion classifier expects {emotion_mel_bins}; retrain or convert "
            "matching checkpoints."
        )
    # The classifier's own labels (its checkpoint's `id2label`), for `emotion_override`.
    emotion_labels = load_config(Path(repository) / names.EMOTION_CLASSIFIER / "1" / "assets").labels
    steps = {
        names.PREPROCESS: RepositoryModel(
            preprocess_spec(num_mel_bins, device),
            python_model="preprocess",
            files={"assets/preprocessor_config.json": whisper_checkpoint / "preprocessor_config.json"},
        ),
        names.PROMPT_COMPOSER: RepositoryModel(
            prompt_composer_spec(device, emotion_labels),
            python_model="prompt_composer",
            files={STYLES_FILE: styles or styles_file()},
        ),
        names.POSTPROCESS: RepositoryModel(postprocess_spec(device), python_model="postprocess"),
    }
    ensemble = ensemble_spec(repository, {name: model.spec for name, model in steps.items()}, pipeline)
    # The stream runs the denoising loop itself (for previews), from the `diffusion` model's assets.
    diffusion_assets = Path(repository) / names.DIFFUSION / "1" / "assets"
    stream_assets = {
        f"assets/{path.relative_to(diffusion_assets)}": path for path in diffusion_assets.rglob("*") if path.is_file()
    }
    stream = RepositoryModel(
        stream_spec(ensemble, device, pipeline), python_model="speech_to_image_stream", files=stream_assets
    )
    return [*steps.values(), RepositoryModel(ensemble), stream]
