"""The emotion stage as conversion and the tiny builder see it."""

from __future__ import annotations

from pathlib import Path

from s2i.stages.base import StageExport

# Spreads the random head's logits, so a random classifier gives distinct,
# non-uniform probabilities per clip and parity tests compare real numbers.
TINY_INIT_SCALE = 3.0


class EmotionStage:
    """Speech -> one of RAVDESS's 8 emotions, from Whisper's log-mel features."""

    name = "emotion"

    def build_tiny(self, output_dir: Path, size: str) -> Path:
        """A random classifier (Transformer for `tiny`) with Whisper's feature extractor."""
        from s2i.stages.emotion.checkpoint import build_tiny_emotion

        return build_tiny_emotion(output_dir, size=size, seed=0, init_scale=TINY_INIT_SCALE)

    def export(self, checkpoint: Path, onnx_dir: Path) -> StageExport:
        """The classifier graph, validated against PyTorch."""
        from s2i.stages.emotion.export import export_emotion

        return export_emotion(checkpoint, onnx_dir)

    def repository_models(self, checkpoint: Path, exported: StageExport, target: str):
        """The ``emotion_classifier_graph`` stage and the ``emotion_classifier`` BLS model."""
        from s2i.stages.emotion.models import emotion_repository_models

        return emotion_repository_models(checkpoint, exported.onnx_dir, exported.components, target)
