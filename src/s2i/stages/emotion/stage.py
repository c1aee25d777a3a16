"""The emotion stage as conversion and the tiny builder see it."""

from __future__ import annotations

from pathlib import Path

from s2i.conversion.repository import TARGETS
from s2i.model_repository.components import OnnxComponent
from s2i.model_repository.config import ModelSpec
from s2i.stages.base import Stage, StageExport, UnsupportedCheckpointError
from s2i.stages.emotion.config import ARCHITECTURES, MODEL_TYPE, load_config
from s2i.stages.emotion.specs import emotion_component, emotion_model_spec

# Spreads the random head's logits, so a random classifier gives distinct,
# non-uniform probabilities per clip and parity tests compare real numbers.
TINY_INIT_SCALE = 3.0


class EmotionStage(Stage):
    """Speech -> one of RAVDESS's 8 emotions, from Whisper's log-mel features."""

    name = "emotion"
    order = 20
    bls_model = "emotion_classifier"
    targets = TARGETS
    # Labels and architecture (config), and the feature extractor.
    required_assets = ("config.json", "preprocessor_config.json")

    def check_checkpoint(self, checkpoint: Path) -> None:
        """A classifier of this project's ``model_type`` and one of its architectures, any label set."""
        super().check_checkpoint(checkpoint)
        try:
            load_config(checkpoint)
        except (ValueError, KeyError, TypeError) as error:
            raise UnsupportedCheckpointError(
                f"Emotion checkpoint `{checkpoint}` refused: {error} Supported: `model_type` {MODEL_TYPE!r} "
                f"with `architecture` one of {list(ARCHITECTURES)} (as `s2i train emotion` saves), any labels."
            ) from error

    def build_tiny(self, output_dir: Path, size: str) -> Path:
        """A random classifier (Transformer for `tiny`) with Whisper's feature extractor."""
        from s2i.stages.emotion.checkpoint import build_tiny_emotion

        return build_tiny_emotion(output_dir, size=size, seed=0, init_scale=TINY_INIT_SCALE)

    def reference(self, checkpoint: Path):
        """The classifier in PyTorch on the feature extractor's own features."""
        from s2i.stages.emotion.reference import EmotionReference

        return EmotionReference(checkpoint)

    def export(self, checkpoint: Path, onnx_dir: Path) -> StageExport:
        """The classifier graph, validated against PyTorch."""
        from s2i.stages.emotion.export import export_emotion

        return export_emotion(checkpoint, onnx_dir)

    def describe(self, checkpoint: Path) -> list[OnnxComponent]:
        """The classifier graph, from ``config.json``."""
        return [emotion_component(load_config(checkpoint))]

    def bls_spec(self, checkpoint: Path, exported: StageExport, device: str) -> ModelSpec:
        """The ``emotion_classifier`` model, for the checkpoint's mel bins and labels."""
        return emotion_model_spec(load_config(checkpoint), device)
