"""Deterministic, randomly initialised emotion classifier checkpoints (config, safetensors, feature extractor).

They take exactly the path a trained checkpoint (``s2i train emotion``) takes;
only the weights are random.
"""

from __future__ import annotations

import logging
from pathlib import Path

from s2i.stages.emotion.config import EmotionConfig
from s2i.stages.emotion.modeling import EmotionClassifier

LOGGER = logging.getLogger(__name__)

# `tiny` keeps tests fast (a Transformer: its layer norms make a random model's output
# depend on the input, where a random BiLSTM's is nearly constant); `base` is what
# `s2i train emotion` trains by default, so CPU timings reflect a trained model.
EMOTION_SIZES = {
    "tiny": EmotionConfig(architecture="transformer", hidden_size=32, num_layers=1, num_heads=4, ffn_dim=64),
    "base": EmotionConfig(architecture="bilstm", hidden_size=64, num_layers=1),
}


def save_emotion_checkpoint(model: EmotionClassifier, output_dir: Path) -> Path:
    """Write ``model`` with the Whisper feature extractor of its mel bins into ``output_dir``."""
    from transformers import WhisperFeatureExtractor

    model.save_pretrained(output_dir)
    WhisperFeatureExtractor(feature_size=model.config.num_mel_bins).save_pretrained(output_dir)
    return Path(output_dir)


def build_tiny_emotion(
    output_dir: Path,
    size: str = "tiny",
    *,
    architecture: str | None = None,
    seed: int = 0,
    init_scale: float = 1.0,
) -> Path:
    """Write a random :class:`EmotionClassifier` checkpoint into ``output_dir``.

    Args:
        output_dir: Destination folder (created).
        size: A key of :data:`EMOTION_SIZES`.
        architecture: Override the preset's ``bilstm`` / ``transformer``.
        seed: Seed of the initialisation; the same seed gives the same bytes.
        init_scale: Factor on the head's weights; above 1 spreads the random model's
            probabilities, so parity tests compare distinct, non-uniform outputs.
    """
    import dataclasses

    import torch

    if size not in EMOTION_SIZES:
        raise ValueError(f"`size` must be one of {sorted(EMOTION_SIZES)}, got {size!r}.")
    config = EMOTION_SIZES[size]
    if architecture is not None:
        config = dataclasses.replace(config, architecture=architecture)
    torch.manual_seed(seed)
    model = EmotionClassifier(config).eval()
    with torch.no_grad():
        model.head.weight.mul_(init_scale)
    save_emotion_checkpoint(model, output_dir)
    LOGGER.info("Wrote %s %s emotion checkpoint to %s", size, config.architecture, output_dir)
    return Path(output_dir)
