"""Triton descriptions of the Whisper models: the three stage graphs and the ``whisper`` BLS model."""

from __future__ import annotations

from collections.abc import Mapping

from s2i import names
from s2i.model_repository.components import OnnxComponent
from s2i.model_repository.config import ModelSpec, TensorSpec
from s2i.model_repository.deployment import CPU, policy
from s2i.stages.whisper.decoding import past_names

# Whisper's encoder sees 30 s: 3000 mel frames in, 1500 positions out.
MEL_FRAMES = 3000
# Optimum validates Whisper exports at 1e-3; the same bound is used here.
ATOL = 1e-3
# Past ATOL, a graph still passes within 1e-4 of its output range (max abs diff / max abs
# value): float32 rounding grows with depth and activation size (a real whisper-base encoder
# differs by 6e-4 already), while a wrong graph is off by a large part of the range.
RTOL = 1e-4
# The python-torch runners of the three graphs.
TORCH_RUNNERS = "s2i.stages.whisper.torch_runner"
# Typical decoded length, the `opt` point of TensorRT profiles over the KV-cache axis.
TYPICAL_DECODED_TOKENS = 64


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

    positions = int(config["max_target_positions"])
    # The profile needs min <= opt <= max: a decoder with few positions caps the typical length.
    typical = max(1, min(TYPICAL_DECODED_TOKENS, positions - 1))
    past_ranges = {
        name: {1: (1, typical, positions - 1)}
        for name in past_names(layers, prefix="past_key_values", include_encoder=False)
    }
    logits = TensorSpec(names.LOGITS, "FP32", (-1, vocab))
    input_ids = TensorSpec(names.INPUT_IDS, "INT64", (-1,))
    return [
        OnnxComponent(
            model_name=names.WHISPER_ENCODER,
            onnx_file="encoder_model.onnx",
            inputs=(TensorSpec(names.INPUT_FEATURES, "FP32", (int(config["num_mel_bins"]), MEL_FRAMES)),),
            outputs=(TensorSpec(names.LAST_HIDDEN_STATE, "FP32", (frames, d_model)),),
            atol=ATOL,
            rtol=RTOL,
            torch_runner=f"{TORCH_RUNNERS}:WhisperEncoderRunner",
        ),
        OnnxComponent(
            model_name=names.WHISPER_DECODER,
            onnx_file="decoder_model.onnx",
            inputs=(input_ids, TensorSpec(names.ENCODER_HIDDEN_STATES, "FP32", (frames, d_model))),
            outputs=(logits, *[kv(n) for n in past_names(layers, prefix="present", include_encoder=True)]),
            atol=ATOL,
            rtol=RTOL,
            axis_ranges={names.INPUT_IDS: {0: (1, min(4, positions), positions)}},
            torch_runner=f"{TORCH_RUNNERS}:WhisperDecoderRunner",
        ),
        OnnxComponent(
            model_name=names.WHISPER_DECODER_WITH_PAST,
            onnx_file="decoder_with_past_model.onnx",
            inputs=(input_ids, *[kv(n) for n in past_names(layers, prefix="past_key_values", include_encoder=True)]),
            outputs=(logits, *[kv(n) for n in past_names(layers, prefix="present", include_encoder=False)]),
            atol=ATOL,
            rtol=RTOL,
            # One new token per step; the cache grows to the decoder's positions.
            axis_ranges={names.INPUT_IDS: {0: (1, 1, 1)}, **past_ranges},
            torch_runner=f"{TORCH_RUNNERS}:WhisperDecoderWithPastRunner",
        ),
    ]


def whisper_model_spec(num_mel_bins: int = 80, device: str = CPU) -> ModelSpec:
    """The ``whisper`` BLS model: audio (or log-mel features) in, text and token ids out."""
    chosen = policy(names.WHISPER, device)
    return ModelSpec(
        name=names.WHISPER,
        inputs=(
            # Clips differ in length; ragged, they still meet in one batch of the loop (issue #20).
            TensorSpec(names.AUDIO_SAMPLES, "FP32", (-1,), optional=True, ragged=True),
            TensorSpec(names.SAMPLE_RATE_HZ, "INT32", (1,), optional=True),
            TensorSpec(names.AUDIO_BYTES, "BYTES", (1,), optional=True),
            TensorSpec(names.TASK, "BYTES", (1,), optional=True),
            TensorSpec(names.LANGUAGE, "BYTES", (1,), optional=True),
            TensorSpec(names.MAX_NEW_TOKENS, "INT32", (1,), optional=True),
            # The pipeline computes features once (``preprocess``) and sends them instead of audio.
            TensorSpec(names.INPUT_FEATURES, "FP32", (num_mel_bins, MEL_FRAMES), optional=True),
            TensorSpec(names.RETURN_TRANSCRIPT, "BOOL", (1,), optional=True),
        ),
        outputs=(
            TensorSpec(names.TEXT, "BYTES", (1,)),
            TensorSpec(names.TOKEN_IDS, "INT64", (-1,)),
            TensorSpec(names.TRANSCRIPT, "BYTES", (1,)),
            TensorSpec(names.COMPUTE_MS, "FP32", (1,)),
        ),
        max_batch_size=chosen.max_batch_size,
        dynamic_batching=chosen.dynamic_batching,
        # The loop itself runs on the CPU on every device; its graphs run where the target says.
        instance_groups=chosen.instance_groups(CPU),
    )
