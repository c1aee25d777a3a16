"""Triton descriptions of the emotion models: the ``emotion_classifier_graph`` stage and the BLS model."""

from __future__ import annotations

from pathlib import Path

from s2i import names
from s2i.conversion.components import OnnxComponent
from s2i.model_repository.config import ModelSpec, TensorSpec
from s2i.model_repository.deployment import CPU, ModelPolicy, policy
from s2i.stages.emotion.features import MAX_FRAMES, MIN_FRAMES
from s2i.stages.emotion.modeling import EmotionConfig

ONNX_FILE = "emotion_classifier.onnx"
# Probabilities must match PyTorch within 1e-4 when served; logits are checked
# tighter at export, so softmax cannot widen the gap past that.
ATOL = 1e-4
MAX_BATCH_SIZE = 8
# Defaults where `s2i.model_repository.deployment.POLICIES` lists no emotion models.
# The graph batches requests of equal length only (no padding mask), so a short
# wait is enough: a longer one rarely finds a partner with the same frame count.
GRAPH_POLICY = ModelPolicy(max_batch_size=MAX_BATCH_SIZE, preferred_batch_sizes=(4, 8), max_queue_delay_us=1000)
# The BLS model computes features and makes one graph call per length: no loop holds
# an instance for long, so one instance that batches concurrent requests is enough.
BLS_POLICY = ModelPolicy(max_batch_size=MAX_BATCH_SIZE, preferred_batch_sizes=(4, 8), max_queue_delay_us=2000)
# A 3 s utterance: the `opt` point of a TensorRT profile over the time axis.
TYPICAL_FRAMES = 300
# Checkpoint files the BLS model reads: labels (config) and the feature extractor.
ASSET_FILES = ("config.json", "preprocessor_config.json")


def emotion_component(config: EmotionConfig) -> OnnxComponent:
    """The classifier graph: ``input_features`` ``[n_mels, frames]`` -> ``logits`` ``[labels]`` (batch axis implied)."""
    return OnnxComponent(
        model_name=names.EMOTION_CLASSIFIER_GRAPH,
        onnx_file=ONNX_FILE,
        inputs=(TensorSpec(names.INPUT_FEATURES, "FP32", (config.num_mel_bins, -1)),),
        outputs=(TensorSpec(names.LOGITS, "FP32", (config.num_labels,)),),
        max_batch_size=GRAPH_POLICY.max_batch_size,
        dynamic_batching=GRAPH_POLICY.dynamic_batching,
        atol=ATOL,
        axis_ranges={names.INPUT_FEATURES: {1: (MIN_FRAMES, TYPICAL_FRAMES, MAX_FRAMES)}},
    )


def emotion_model_spec(config: EmotionConfig, device: str = CPU) -> ModelSpec:
    """The ``emotion_classifier`` BLS model: audio (or ready features) in, label and probabilities out."""
    chosen = policy(names.EMOTION_CLASSIFIER, device, default=BLS_POLICY)
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
            TensorSpec(names.COMPUTE_MS, "FP32", (1,)),
        ),
        max_batch_size=chosen.max_batch_size,
        dynamic_batching=chosen.dynamic_batching,
        # Features and softmax run on the CPU on every device; the graph runs where the target says.
        instance_groups=chosen.instance_groups(CPU),
    )


def emotion_repository_models(checkpoint: Path, onnx_dir: Path, components: list[OnnxComponent], target: str):
    """Every model the emotion stage adds to a repository: the graph and the BLS model."""
    from s2i.conversion.repository import RepositoryModel, device_of, stage_repository_model
    from s2i.stages.emotion.modeling import load_config

    checkpoint = Path(checkpoint)
    assets = {f"assets/{name}": checkpoint / name for name in ASSET_FILES}
    missing = [str(path) for path in assets.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"The emotion checkpoint lacks {missing}.")
    return [
        *(stage_repository_model(component, onnx_dir, target) for component in components),
        RepositoryModel(
            emotion_model_spec(load_config(checkpoint), device_of(target)),
            python_model="emotion_classifier",
            files=assets,
        ),
    ]
