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
from s2i.model_repository.deployment import CPU, ModelPolicy, policy
from s2i.pipeline.prompt import STYLES_FILE
from s2i.stages.emotion.config import load_config

# The composed models; all must be in the repository for the pipeline to be written.
COMPOSED = (names.WHISPER, names.EMOTION_CLASSIFIER, names.DIFFUSION)

# Pipeline tensor name -> (composed model, its tensor name): timings per step.
TIMINGS = {
    "preprocess_ms": names.PREPROCESS,
    "whisper_ms": names.WHISPER,
    "emotion_ms": names.EMOTION_CLASSIFIER,
    "prompt_ms": names.PROMPT_COMPOSER,
    "diffusion_ms": names.DIFFUSION,
    "postprocess_ms": names.POSTPROCESS,
}


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


def _step_policy(name: str, device: str) -> ModelPolicy:
    return policy(name, device)


def preprocess_spec(num_mel_bins: int, device: str = CPU) -> ModelSpec:
    """Audio in, features for Whisper (30 s window) and for the emotion classifier (clip frames) out."""
    chosen = _step_policy(names.PREPROCESS, device)
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
    chosen = _step_policy(names.PROMPT_COMPOSER, device)
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
    chosen = _step_policy(names.POSTPROCESS, device)
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


def ensemble_spec(repository: Path, step_specs: dict[str, ModelSpec]) -> ModelSpec:
    """The ``speech_to_image`` ensemble over the models in ``repository`` and the pipeline steps.

    Any subset of the outputs may be requested. Triton (2.51, and its current ensemble
    scheduler) prunes the steps a request does not need by counting, per step, the outputs
    nobody wants; it miscounts a tensor that is both an ensemble output and another step's
    input, and charges the optional inputs nobody reads to the *first* step. So here no
    tensor is both (a value a later step reads is passed under an internal name, and the
    client's copy comes from the step that read it), and the first step is `postprocess`,
    which needs every other step anyway. :func:`check_prunable` enforces both.
    """
    composed = {model: read_tensor_specs(repository, model) for model in COMPOSED}
    inputs_of = {model: specs[0] for model, specs in composed.items()}
    outputs_of = {model: specs[1] for model, specs in composed.items()}
    for name, spec in step_specs.items():
        inputs_of[name] = {tensor.name: tensor for tensor in spec.inputs}
        outputs_of[name] = {tensor.name: tensor for tensor in spec.outputs}

    def renamed(tensor: TensorSpec, name: str, optional: bool | None = None) -> TensorSpec:
        return TensorSpec(name, tensor.datatype, tensor.dims, tensor.optional if optional is None else optional)

    preprocess_in = inputs_of[names.PREPROCESS]
    whisper_in = inputs_of[names.WHISPER]
    composer_in = inputs_of[names.PROMPT_COMPOSER]
    diffusion_in = inputs_of[names.DIFFUSION]
    diffusion_options = [name for name in diffusion_in if name not in (names.PROMPT, names.NEGATIVE_PROMPT)]
    inputs = (
        *preprocess_in.values(),
        whisper_in[names.RETURN_TRANSCRIPT],
        whisper_in[names.MAX_NEW_TOKENS],
        composer_in[names.EMOTION_OVERRIDE],
        composer_in[names.STYLE_TEMPLATE],
        *(renamed(diffusion_in[name], name, optional=True) for name in diffusion_options),
    )
    out = outputs_of
    outputs = (
        out[names.POSTPROCESS][names.PNG],
        out[names.POSTPROCESS][names.IMAGE],
        renamed(out[names.DIFFUSION][names.SEED], names.IMAGE_SEED),
        out[names.PROMPT_COMPOSER][names.TEXT],
        out[names.WHISPER][names.TRANSCRIPT],
        out[names.PROMPT_COMPOSER][names.EMOTION_LABEL],
        out[names.EMOTION_CLASSIFIER][names.EMOTION_PROBABILITIES],
        out[names.EMOTION_CLASSIFIER][names.EMOTION_LABEL_NAMES],
        out[names.PROMPT_COMPOSER][names.EMOTION],
        out[names.PROMPT_COMPOSER][names.PROMPT],
        out[names.PROMPT_COMPOSER][names.NEGATIVE_PROMPT],
        *(renamed(out[model][names.COMPUTE_MS], timing) for timing, model in TIMINGS.items()),
    )

    def identity(*tensor_names: str) -> dict[str, str]:
        return {name: name for name in tensor_names}

    features = internal(names.PREPROCESS, names.INPUT_FEATURES)
    emotion_features = internal(names.PREPROCESS, names.EMOTION_FEATURES)
    text, label = internal(names.WHISPER, names.TEXT), internal(names.EMOTION_CLASSIFIER, names.EMOTION_LABEL)
    prompt = internal(names.PROMPT_COMPOSER, names.DIFFUSION_PROMPT)
    negative_prompt = internal(names.PROMPT_COMPOSER, names.DIFFUSION_NEGATIVE_PROMPT)
    image = internal(names.DIFFUSION, names.IMAGE)
    steps = (
        # First: Triton charges unread optional inputs to step 0 (see the docstring).
        EnsembleStep(
            names.POSTPROCESS,
            {names.IMAGE: image},
            {names.PNG: names.PNG, names.COMPUTE_MS: "postprocess_ms", names.IMAGE: names.IMAGE},
        ),
        EnsembleStep(
            names.PREPROCESS,
            identity(*preprocess_in),
            {
                names.INPUT_FEATURES: features,
                names.EMOTION_FEATURES: emotion_features,
                names.COMPUTE_MS: "preprocess_ms",
            },
        ),
        # Whisper and the emotion classifier both wait only on `preprocess`: they run in parallel.
        EnsembleStep(
            names.WHISPER,
            {names.INPUT_FEATURES: features, **identity(names.RETURN_TRANSCRIPT, names.MAX_NEW_TOKENS)},
            {names.TEXT: text, names.TRANSCRIPT: names.TRANSCRIPT, names.COMPUTE_MS: "whisper_ms"},
        ),
        EnsembleStep(
            names.EMOTION_CLASSIFIER,
            {names.INPUT_FEATURES: emotion_features},
            {
                names.EMOTION_LABEL: label,
                names.EMOTION_PROBABILITIES: names.EMOTION_PROBABILITIES,
                names.EMOTION_LABEL_NAMES: names.EMOTION_LABEL_NAMES,
                names.COMPUTE_MS: "emotion_ms",
            },
        ),
        EnsembleStep(
            names.PROMPT_COMPOSER,
            {
                names.TEXT: text,
                names.EMOTION_LABEL: label,
                **identity(names.EMOTION_OVERRIDE, names.STYLE_TEMPLATE),
            },
            {
                **identity(names.PROMPT, names.NEGATIVE_PROMPT, names.EMOTION, names.TEXT, names.EMOTION_LABEL),
                names.COMPUTE_MS: "prompt_ms",
                names.DIFFUSION_PROMPT: prompt,
                names.DIFFUSION_NEGATIVE_PROMPT: negative_prompt,
            },
        ),
        EnsembleStep(
            names.DIFFUSION,
            {names.PROMPT: prompt, names.NEGATIVE_PROMPT: negative_prompt, **identity(*diffusion_options)},
            {names.IMAGE: image, names.SEED: names.IMAGE_SEED, names.COMPUTE_MS: "diffusion_ms"},
        ),
    )
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


def check_prunable(
    inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], steps: tuple[EnsembleStep, ...]
) -> None:
    """Raise unless Triton's ensemble pruning keeps every step a request for any output subset needs.

    Two rules (see :func:`ensemble_spec`): no ensemble output is read by a step, and the first
    step depends, directly or not, on every other step (so it is never needed while another is not).
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
    if len(needed) != len(steps):
        missing = sorted(steps[index].model_name for index in set(range(len(steps))) - needed)
        raise ValueError(f"The first ensemble step `{steps[0].model_name}` does not depend on steps {missing}.")


def stream_spec(ensemble: ModelSpec, device: str = CPU) -> ModelSpec:
    """The decoupled ``speech_to_image_stream`` model: the ensemble's inputs and outputs, plus the message kind."""
    chosen = _step_policy(names.SPEECH_TO_IMAGE_STREAM, device)
    return ModelSpec(
        name=names.SPEECH_TO_IMAGE_STREAM,
        inputs=(*ensemble.inputs, TensorSpec(names.PREVIEW_EVERY, "INT32", (1,), optional=True)),
        outputs=(
            *(tensor for tensor in ensemble.outputs if tensor.name != names.IMAGE),
            TensorSpec(names.EVENT, "BYTES", (1,)),
            TensorSpec(names.STEP, "INT32", (1,)),
        ),
        max_batch_size=chosen.max_batch_size,
        instance_groups=(InstanceGroup(chosen.instances),),
        decoupled=True,
    )


def styles_file() -> Path:
    """The packaged ``styles.toml``."""
    return Path(str(importlib.resources.files("s2i.pipeline").joinpath(STYLES_FILE)))


def has_pipeline_models(repository: Path) -> bool:
    """Whether ``repository`` holds every model the pipeline composes."""
    return all((Path(repository) / model / "config.pbtxt").is_file() for model in COMPOSED)


def pipeline_repository_models(repository: Path, device: str = CPU, styles: Path | None = None):
    """The pipeline's own models and the ensemble, for a repository holding whisper, emotion and diffusion."""
    if not has_pipeline_models(repository):
        raise ValueError(f"The pipeline needs models {list(COMPOSED)} in {repository}; convert all three stages.")
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
    ensemble = ensemble_spec(repository, {name: model.spec for name, model in steps.items()})
    # The stream runs the denoising loop itself (for previews), from the `diffusion` model's assets.
    diffusion_assets = Path(repository) / names.DIFFUSION / "1" / "assets"
    stream_assets = {
        f"assets/{path.relative_to(diffusion_assets)}": path for path in diffusion_assets.rglob("*") if path.is_file()
    }
    stream = RepositoryModel(stream_spec(ensemble, device), python_model="speech_to_image_stream", files=stream_assets)
    return [*steps.values(), RepositoryModel(ensemble), stream]
