"""The Whisper stage as conversion and the tiny builder see it."""

from __future__ import annotations

from pathlib import Path

from s2i.model_repository.config import ModelSpec
from s2i.stages.base import Stage, StageExport
from s2i.stages.whisper.models import whisper_model_spec

# A larger init spread than transformers' 0.02 makes a random decoder's argmax
# vary from step to step, so parity tests compare varied token sequences
# instead of one repeated token.
TINY_INIT_STD = 0.3


class WhisperStage(Stage):
    """Hindi speech -> English text."""

    name = "whisper"
    order = 10
    bls_model = "whisper"
    # Model shape, features; the tokenizer comes as tokenizer.json or as vocab/merges files.
    required_assets = ("config.json", "preprocessor_config.json")
    optional_assets = (
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "normalizer.json",
    )

    def build_tiny(self, output_dir: Path, size: str) -> Path:
        """A random multilingual Whisper checkpoint with the real tokenizer."""
        from s2i.stages.whisper.checkpoint import build_tiny_whisper

        # Real-size presets keep transformers' own init: a wide spread in 512-wide layers
        # drives activations far past what a trained model produces (and past fp32 export tolerance).
        init_std = TINY_INIT_STD if size == "tiny" else 0.02
        return build_tiny_whisper(output_dir, size=size, seed=0, init_std=init_std)

    def export(self, checkpoint: Path, onnx_dir: Path) -> StageExport:
        """Encoder, decoder and decoder-with-past graphs, validated."""
        from s2i.stages.whisper.export import export_whisper

        return export_whisper(checkpoint, onnx_dir)

    def bls_spec(self, checkpoint: Path, exported: StageExport, device: str) -> ModelSpec:
        """The ``whisper`` loop model, for the encoder's mel-bin count."""
        return whisper_model_spec(exported.components[0].inputs[0].dims[0], device)
