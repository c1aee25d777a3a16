"""Triton descriptions of the Whisper models: the three stage graphs and the ``whisper`` BLS model."""

from __future__ import annotations

from collections.abc import Mapping

from s2i import names
from s2i.conversion.components import OnnxComponent
from s2i.model_repository.config import DynamicBatching, InstanceGroup, ModelSpec, TensorSpec
from s2i.stages.whisper.decoding import past_names

# Whisper's encoder sees 30 s: 3000 mel frames in, 1500 positions out.
MEL_FRAMES = 3000
# Optimum validates Whisper exports at 1e-3; the same bound is used here.
ATOL = 1e-3
MAX_BATCH_SIZE = 8
# Decoding steps of concurrent requests are a few ms apart; waiting 2 ms lets
# them share one decoder call.
STAGE_BATCHING = DynamicBatching(preferred_batch_sizes=(4, 8), max_queue_delay_us=2000)


def whisper_components(config: Mapping) -> list[OnnxComponent]:
    """Descriptions of the encoder, decoder and decoder-with-past graphs for a checkpoint's ``config.json``."""
    d_model = int(config["d_model"])
    heads = int(config["decoder_attention_heads"])
    head_dim = d_model // heads
    layers = int(config["decoder_layers"])
    frames = int(config["max_source_positions"])
    vocab = int(config["vocab_size"])

    def kv(name: str) -> TensorSpec:
        sequence = frames if ".encoder." in name else -1
        return TensorSpec(name, "FP32", (heads, sequence, head_dim))

    logits = TensorSpec(names.LOGITS, "FP32", (-1, vocab))
    input_ids = TensorSpec(names.INPUT_IDS, "INT64", (-1,))
    return [
        OnnxComponent(
            model_name=names.WHISPER_ENCODER,
            onnx_file="encoder_model.onnx",
            inputs=(TensorSpec(names.INPUT_FEATURES, "FP32", (int(config["num_mel_bins"]), MEL_FRAMES)),),
            outputs=(TensorSpec(names.LAST_HIDDEN_STATE, "FP32", (frames, d_model)),),
            max_batch_size=MAX_BATCH_SIZE,
            dynamic_batching=STAGE_BATCHING,
            atol=ATOL,
        ),
        OnnxComponent(
            model_name=names.WHISPER_DECODER,
            onnx_file="decoder_model.onnx",
            inputs=(input_ids, TensorSpec(names.ENCODER_HIDDEN_STATES, "FP32", (frames, d_model))),
            outputs=(logits, *[kv(n) for n in past_names(layers, prefix="present", include_encoder=True)]),
            max_batch_size=MAX_BATCH_SIZE,
            dynamic_batching=STAGE_BATCHING,
            atol=ATOL,
        ),
        OnnxComponent(
            model_name=names.WHISPER_DECODER_WITH_PAST,
            onnx_file="decoder_with_past_model.onnx",
            inputs=(input_ids, *[kv(n) for n in past_names(layers, prefix="past_key_values", include_encoder=True)]),
            outputs=(logits, *[kv(n) for n in past_names(layers, prefix="present", include_encoder=False)]),
            max_batch_size=MAX_BATCH_SIZE,
            dynamic_batching=STAGE_BATCHING,
            atol=ATOL,
        ),
    ]


def whisper_model_spec(instances: int = 1) -> ModelSpec:
    """The ``whisper`` BLS model: audio in, text and token ids out."""
    return ModelSpec(
        name=names.WHISPER,
        inputs=(
            TensorSpec(names.AUDIO_SAMPLES, "FP32", (-1,), optional=True),
            TensorSpec(names.SAMPLE_RATE_HZ, "INT32", (1,), optional=True),
            TensorSpec(names.AUDIO_BYTES, "BYTES", (1,), optional=True),
            TensorSpec(names.TASK, "BYTES", (1,), optional=True),
            TensorSpec(names.LANGUAGE, "BYTES", (1,), optional=True),
            TensorSpec(names.MAX_NEW_TOKENS, "INT32", (1,), optional=True),
        ),
        outputs=(TensorSpec(names.TEXT, "BYTES", (1,)), TensorSpec(names.TOKEN_IDS, "INT64", (-1,))),
        max_batch_size=MAX_BATCH_SIZE,
        dynamic_batching=DynamicBatching(preferred_batch_sizes=(4, 8), max_queue_delay_us=5000),
        instance_groups=(InstanceGroup(count=instances),),
    )


def whisper_repository_models(checkpoint, onnx_dir, components, target: str):
    """Every model the Whisper stage adds to a repository: three stage graphs and the BLS model."""
    from pathlib import Path

    from s2i.conversion.repository import RepositoryModel, stage_repository_model
    from s2i.stages.whisper.export import ASSET_FILES

    checkpoint = Path(checkpoint)
    assets = {f"assets/{name}": checkpoint / name for name in ASSET_FILES if (checkpoint / name).is_file()}
    return [
        *(stage_repository_model(component, onnx_dir, target) for component in components),
        RepositoryModel(whisper_model_spec(), python_model="whisper", files=assets),
    ]
