"""Triton descriptions of the emotion models: the ``emotion_classifier_graph`` stage and the BLS model."""

from __future__ import annotations

from s2i import names
from s2i.model_repository.components import OnnxComponent
from s2i.model_repository.config import ModelSpec, TensorSpec
from s2i.model_repository.deployment import CPU, policy
from s2i.stages.emotion.config import EmotionConfig
from s2i.stages.emotion.features import MAX_FRAMES, MIN_FRAMES
from s2i.stages.emotion.runtime import GRAPH_MAX_BATCH_SIZE

ONNX_FILE = "emotion_classifier.onnx"
# Probabilities must match PyTorch within 1e-4 when served; logits are checked
# tighter at export, so softmax cannot widen the gap past that.
ATOL = 1e-4
# Past ATOL, logits still pass within 1e-5 of their range (max abs diff / max abs value):
# a trained classifier's logits are larger than a random one's.
RTOL = 1e-5
# A 3 s utterance: the `opt` point of a TensorRT profile over the time axis.
TYPICAL_FRAMES = 300


def emotion_component(config: EmotionConfig) -> OnnxComponent:
    """The classifier graph: ``input_features`` ``[n_mels, frames]`` -> ``logits`` ``[labels]`` (batch axis implied)."""
    return OnnxComponent(
        model_name=names.EMOTION_CLASSIFIER_GRAPH,
        onnx_file=ONNX_FILE,
        inputs=(TensorSpec(names.INPUT_FEATURES, "FP32", (config.num_mel_bins, -1)),),
        outputs=(TensorSpec(names.LOGITS, "FP32", (config.num_labels,)),),
        atol=ATOL,
        rtol=RTOL,
        axis_ranges={names.INPUT_FEATURES: {1: (MIN_FRAMES, TYPICAL_FRAMES, MAX_FRAMES)}},
        torch_runner="s2i.stages.emotion.torch_runner:EmotionClassifierRunner",
    )


def emotion_model_spec(config: EmotionConfig, device: str = CPU) -> ModelSpec:
    """The ``emotion_classifier`` BLS model: audio (or ready features) in, label and probabilities out."""
    chosen = policy(names.EMOTION_CLASSIFIER, device)
    graph = policy(names.EMOTION_CLASSIFIER_GRAPH, device)
    return ModelSpec(
        name=names.EMOTION_CLASSIFIER,
        inputs=(
            TensorSpec(names.AUDIO_SAMPLES, "FP32", (-1,), optional=True),
            TensorSpec(names.SAMPLE_RATE_HZ, "INT32", (1,), optional=True),
            TensorSpec(names.AUDIO_BYTES, "BYTES", (1,), optional=True),
            TensorSpec(names.INPUT_FEATURES, "FP32", (config.num_mel_bins, -1), optional=True),
        ),
        outputs=(
            TensorSpec(names.EMOTION_LABEL, "BYTES", (1,)),
            TensorSpec(names.EMOTION_PROBABILITIES, "FP32", (config.num_labels,)),
            # The label set travels with the answer: a client names the probabilities without the checkpoint.
            TensorSpec(names.EMOTION_LABEL_NAMES, "BYTES", (config.num_labels,)),
            TensorSpec(names.COMPUTE_MS, "FP32", (1,)),
        ),
        max_batch_size=chosen.max_batch_size,
        dynamic_batching=chosen.dynamic_batching,
        # Features and softmax run on the CPU on every device; the graph runs where the target says.
        instance_groups=chosen.instance_groups(CPU),
        parameters={GRAPH_MAX_BATCH_SIZE: str(graph.max_batch_size)},
    )
