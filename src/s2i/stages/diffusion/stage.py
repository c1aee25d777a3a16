"""The diffusion stage as conversion and the tiny builder see it."""

from __future__ import annotations

from pathlib import Path

from s2i.model_repository.config import ModelSpec
from s2i.stages.base import Stage, StageExport
from s2i.stages.diffusion.models import diffusion_model_spec


class DiffusionStage(Stage):
    """English prompt -> RGB image (Stable Diffusion 1.x/2.x layout)."""

    name = "diffusion"
    order = 30
    # diffusers checkpoints have no root config.json; model_index.json lists their parts.
    checkpoint_marker = "model_index.json"
    bls_model = "diffusion"
    # The scheduler, the latent geometry and the tokenizer, relative to the checkpoint root.
    required_assets = (
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "unet/config.json",
        "vae/config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
    )
    optional_assets = (
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
        "tokenizer/added_tokens.json",
    )

    def build_tiny(self, output_dir: Path, size: str) -> Path:
        """A random ``StableDiffusionPipeline`` checkpoint with the real CLIP tokenizer."""
        from s2i.stages.diffusion.checkpoint import build_tiny_diffusion

        return build_tiny_diffusion(output_dir, size=size, seed=0)

    def export(self, checkpoint: Path, onnx_dir: Path) -> StageExport:
        """Text encoder, UNet (per-row timesteps) and VAE decoder graphs, validated."""
        from s2i.stages.diffusion.export import export_diffusion

        return export_diffusion(checkpoint, onnx_dir)

    def bls_spec(self, checkpoint: Path, exported: StageExport, device: str) -> ModelSpec:
        """The ``diffusion`` loop model."""
        return diffusion_model_spec(device)
