"""The public contract: what every public model takes and returns, for clients in any language.

Generated from the repository's configs (themselves rendered from the typed ``ModelSpec``
descriptions) plus one table of meanings, defaults and ranges whose numbers are the constants
the models validate against. ``s2i contract`` writes it as JSON or Markdown
(``docs/contract.md``, checked by a test to equal the generated page), and writes the gRPC
descriptors a non-Python client needs, taken from the installed ``tritonclient``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from s2i import audio, names
from s2i.pipeline.dag import PIPELINE
from s2i.pipeline.specs import read_tensor_specs
from s2i.stages.diffusion import sampling
from s2i.stages.whisper import decoding

CONTRACT_VERSION = 1
# The models a client calls; the others (preprocess, prompt_composer, postprocess, stage graphs)
# are internal steps and may change without notice.
PUBLIC_MODELS = (
    names.SPEECH_TO_IMAGE,
    names.SPEECH_TO_IMAGE_STREAM,
    names.WHISPER,
    names.EMOTION_CLASSIFIER,
    names.DIFFUSION,
)
DESCRIPTIONS = {
    names.SPEECH_TO_IMAGE: "The product (an ensemble): Hindi speech in; the emotion-aware image, texts, timings out. "
    "Any subset of the outputs may be requested; only the steps it needs run.",
    names.SPEECH_TO_IMAGE_STREAM: "The same, streamed (decoupled; gRPC `ModelStreamInfer` only): one `text` message "
    "once translation and emotion are known, a `preview` every `preview_every` denoising steps, then the `image` "
    "message; every message carries every output (empty where not known yet). Errors arrive as a message whose "
    "`error_message` starts with the field in backticks.",
    names.WHISPER: "Speech to English text (or the transcript), greedy Whisper decoding.",
    names.EMOTION_CLASSIFIER: "Speech to the speaker's emotion, one probability per label of the classifier's "
    "checkpoint (RAVDESS's 8 for the project's classifiers) and the label names.",
    names.DIFFUSION: "An English prompt to an RGB image (Stable Diffusion).",
}
BATCHING = (
    "One row per request: the first dimension of every tensor is the batch and must be 1. "
    "The server batches concurrent requests itself (dynamic batching); a request with more rows "
    "is refused with INVALID_ARGUMENT."
)
EMOTIONS = ", ".join(names.EMOTION_LABELS)
AUDIO_BOUNDS = (
    f"{audio.MIN_DURATION_S}-{audio.MAX_DURATION_S:g} s of mono audio, "
    f"{audio.MIN_SAMPLE_RATE_HZ}-{audio.MAX_SAMPLE_RATE_HZ} Hz"
)


@dataclasses.dataclass(frozen=True)
class TensorDoc:
    """What a tensor means, and for inputs the server's default and accepted range."""

    meaning: str
    default: str | None = None
    range: str | None = None


INPUTS = {
    names.AUDIO_BYTES: TensorDoc(
        "A WAV, FLAC or OGG file (one element). Send this or `audio_samples`.",
        range=f"at most {audio.MAX_AUDIO_BYTES} bytes; {AUDIO_BOUNDS}; stereo is refused",
    ),
    names.AUDIO_SAMPLES: TensorDoc(
        "Mono float samples in [-1, 1], with `sample_rate_hz`; resampled to 16 kHz.", range=AUDIO_BOUNDS
    ),
    names.SAMPLE_RATE_HZ: TensorDoc(
        "Sample rate of `audio_samples`.", range=f"{audio.MIN_SAMPLE_RATE_HZ}-{audio.MAX_SAMPLE_RATE_HZ}"
    ),
    names.INPUT_FEATURES: TensorDoc(
        "Whisper log-mel features instead of audio (advanced; mel bins are the checkpoint's)."
    ),
    names.TASK: TensorDoc("`translate` (to English) or `transcribe`.", default=decoding.DEFAULT_TASK),
    names.LANGUAGE: TensorDoc("Spoken language, a Whisper language code.", default=decoding.DEFAULT_LANGUAGE),
    names.MAX_NEW_TOKENS: TensorDoc(
        "Most tokens to generate.",
        default=str(decoding.DEFAULT_MAX_NEW_TOKENS),
        range="1 to the checkpoint's limit (448 positions less the prompt)",
    ),
    names.RETURN_TRANSCRIPT: TensorDoc("Also decode the Hindi transcript (a second decoding).", default="false"),
    names.EMOTION_OVERRIDE: TensorDoc(
        "Use this emotion instead of the classifier's.",
        default="the classifier's",
        range=f"one of the classifier's labels (`emotion_label_names`) or {EMOTIONS}",
    ),
    names.STYLE_TEMPLATE: TensorDoc(
        "A style template of the deployment's `styles.toml` (`photo`, `painting`, ... in the shipped file).",
        default="the file's `default_template` (`photo` in the shipped file)",
    ),
    names.PROMPT: TensorDoc("The English prompt.", range=f"at most {sampling.MAX_PROMPT_CHARS} characters"),
    names.NEGATIVE_PROMPT: TensorDoc(
        "What the image should not show.", default="empty", range=f"at most {sampling.MAX_PROMPT_CHARS} characters"
    ),
    names.NUM_INFERENCE_STEPS: TensorDoc(
        "Denoising steps.",
        default=f"the checkpoint's pipeline's: {sampling.DEFAULT_NUM_INFERENCE_STEPS} "
        f"({sampling.LCM_NUM_INFERENCE_STEPS} for an LCM)",
        range=f"1-{sampling.MAX_NUM_INFERENCE_STEPS}",
    ),
    names.GUIDANCE_SCALE: TensorDoc(
        "Classifier-free guidance scale; guidance runs when it is above 1 (an LCM's UNet takes it as an embedding).",
        default=f"the checkpoint's pipeline's: {sampling.DEFAULT_GUIDANCE_SCALE} "
        f"({sampling.LCM_GUIDANCE_SCALE} for an LCM)",
        range=">= 0",
    ),
    names.HEIGHT: TensorDoc(
        "Image height in pixels.",
        default="the checkpoint's sample size",
        range=f"a multiple of 8 and of the UNet's stride, up to {sampling.MAX_IMAGE_SIZE}",
    ),
    names.WIDTH: TensorDoc(
        "Image width in pixels.",
        default="the checkpoint's sample size",
        range=f"a multiple of 8 and of the UNet's stride, up to {sampling.MAX_IMAGE_SIZE}",
    ),
    names.SEED: TensorDoc(
        "Seed of the initial noise: same inputs and seed, same image.", default="random", range=f"0-{sampling.MAX_SEED}"
    ),
    names.SCHEDULER: TensorDoc(
        "The diffusion scheduler.", default="the checkpoint's", range=", ".join(sorted(sampling.SCHEDULERS))
    ),
    names.PREVIEW_EVERY: TensorDoc("A preview every this many denoising steps; 0 for none.", default="0", range=">= 0"),
}
OUTPUTS = {
    names.PNG: TensorDoc("The image as a PNG file."),
    names.IMAGE: TensorDoc("The image as RGB pixels, height x width x 3."),
    names.IMAGE_SEED: TensorDoc("The seed the image was drawn with (the request's, or the random one)."),
    names.SEED: TensorDoc("The seed the image was drawn with (the request's, or the random one)."),
    names.TEXT: TensorDoc("The English translation (with `task` `transcribe`: the transcript)."),
    names.TOKEN_IDS: TensorDoc("The generated token ids, without the forced prompt."),
    names.TRANSCRIPT: TensorDoc("The Hindi transcript; empty unless `return_transcript` was true."),
    names.EMOTION_LABEL: TensorDoc(
        f"The classifier's emotion: one of `emotion_label_names` ({EMOTIONS} for the project's classifiers)."
    ),
    names.EMOTION_PROBABILITIES: TensorDoc(
        f"One probability per label of the classifier, in the order of `emotion_label_names` "
        f"(8, in the order {EMOTIONS}, for the project's classifiers)."
    ),
    names.EMOTION_LABEL_NAMES: TensorDoc(
        "The classifier's label names (its checkpoint's `id2label`), in the order of `emotion_probabilities`."
    ),
    names.EMOTION: TensorDoc("The emotion the prompt used: `emotion_override` if given, else `emotion_label`."),
    names.PROMPT: TensorDoc("The prompt given to Stable Diffusion."),
    names.NEGATIVE_PROMPT: TensorDoc("The negative prompt given to Stable Diffusion."),
    names.COMPUTE_MS: TensorDoc("Time the model spent on the request, in milliseconds."),
    names.EVENT: TensorDoc("The message kind: `text`, `preview` or `image`."),
    names.STEP: TensorDoc("Denoising steps done when the message was sent."),
    **{
        timing: TensorDoc(f"Time the `{model}` step spent on the request, in milliseconds.")
        for model, timing in PIPELINE.timings.items()
    },
}


def _tensor(spec, doc: TensorDoc | None, model: str, *, is_input: bool) -> dict:
    if doc is None:
        kind = "input" if is_input else "output"
        raise KeyError(f"`{model}` {kind} `{spec.name}` has no entry in s2i.contract; describe it there.")
    entry = {"name": spec.name, "datatype": spec.datatype, "shape": [1, *spec.dims]}
    if is_input:
        entry.update(optional=spec.optional, default=doc.default, range=doc.range)
    entry["meaning"] = doc.meaning
    return entry


def contract(repository: Path) -> dict:
    """The contract of the public models in ``repository`` (those it holds), as plain JSON data."""
    from importlib.metadata import version

    tritonclient_version = version("tritonclient")
    models = {}
    for model in PUBLIC_MODELS:
        if not (Path(repository) / model / "config.pbtxt").is_file():
            continue
        inputs, outputs, _ = read_tensor_specs(repository, model)
        models[model] = {
            "description": DESCRIPTIONS[model],
            "decoupled": model == names.SPEECH_TO_IMAGE_STREAM,
            "batching": BATCHING,
            "inputs": [_tensor(spec, INPUTS.get(name), model, is_input=True) for name, spec in inputs.items()],
            "outputs": [_tensor(spec, OUTPUTS.get(name), model, is_input=False) for name, spec in outputs.items()],
        }
    return {
        "contract_version": CONTRACT_VERSION,
        "protocol": "KServe v2 inference protocol: gRPC `inference.GRPCInferenceService` (port 8001), HTTP `/v2` "
        "(port 8000); streaming through Triton's `ModelStreamInfer` extension.",
        "protos": {
            "source": "tritonclient's generated modules `tritonclient.grpc.service_pb2` and `model_config_pb2`, "
            "built from triton-inference-server/common (protobuf/grpc_service.proto, model_config.proto; BSD-3-Clause)",
            "tritonclient": tritonclient_version,
            "descriptor_set": "s2i contract --descriptor-set FILE",
        },
        "bytes_encoding": "BYTES elements are raw bytes (UTF-8 text where the meaning says text); in gRPC "
        "`raw_output_contents` and the HTTP binary extension each element is a 4-byte little-endian length, then "
        "the bytes.",
        "errors": "A bad input gets INVALID_ARGUMENT (HTTP 400) with a message that starts with the field in "
        "backticks: `` `field`: what is wrong ``.",
        "models": models,
    }


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    return str(value).replace("|", "\\|")


def render_markdown(data: dict) -> str:
    """The contract as the Markdown page ``docs/contract.md``."""
    protos = data["protos"]
    lines = [
        "# Client contract",
        "",
        "<!-- Generated by `s2i contract --format markdown` from the model descriptions; do not edit. -->",
        "",
        f"Contract version {data['contract_version']}. {data['protocol']}",
        "",
        f"- **Protos**: {protos['source']}, as shipped in `tritonclient` {protos['tritonclient']}. "
        f"`{protos['descriptor_set']}` writes them as one serialized `FileDescriptorSet` (load it with "
        "`@grpc/proto-loader`'s `loadFileDescriptorSetFromBuffer`, or any protobuf runtime); "
        "[client/examples/node](../client/examples/node) is a tested example.",
        f"- **Bytes**: {data['bytes_encoding']}",
        f"- **Errors**: {data['errors']}",
        f"- **Batching**: {BATCHING}",
        "- **Shapes**: `-1` is a variable axis; the first axis is the batch (always 1).",
        "",
    ]
    for model, entry in data["models"].items():
        lines += [f"## `{model}`", "", entry["description"], "", "Inputs:", ""]
        lines += ["| name | datatype | shape | optional | default | range | meaning |", "|---|---|---|---|---|---|---|"]
        for tensor in entry["inputs"]:
            cells = [f"`{tensor['name']}`", tensor["datatype"], str(tensor["shape"]), tensor["optional"]]
            cells += [tensor["default"], tensor["range"], tensor["meaning"]]
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        lines += ["", "Outputs:", "", "| name | datatype | shape | meaning |", "|---|---|---|---|"]
        for tensor in entry["outputs"]:
            cells = [f"`{tensor['name']}`", tensor["datatype"], str(tensor["shape"]), tensor["meaning"]]
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def render_json(data: dict) -> str:
    """The contract as indented JSON."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def descriptor_set() -> bytes:
    """Triton's gRPC service and model-config descriptors, serialized as one ``FileDescriptorSet``.

    Taken from the installed ``tritonclient`` (no ``.proto`` files are copied into this
    repository), with their imports first, as protobuf loaders expect.
    """
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import service_pb2

    ordered: list = []

    def add(file_descriptor) -> None:
        if any(existing.name == file_descriptor.name for existing in ordered):
            return
        for dependency in file_descriptor.dependencies:
            add(dependency)
        ordered.append(file_descriptor)

    add(service_pb2.DESCRIPTOR)
    files = descriptor_pb2.FileDescriptorSet()
    for file_descriptor in ordered:
        file_descriptor.CopyToProto(files.file.add())
    return files.SerializeToString()
