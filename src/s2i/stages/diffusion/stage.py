"""The diffusion stage as conversion and the tiny builder see it."""

from __future__ import annotations

from pathlib import Path

from s2i.stages.base import StageExport


class DiffusionStage:
    """English prompt -> RGB image (Stable Diffusion 1.x/2.x layout)."""

    name = "diffusion"
    # diffusers checkpoints have no root config.json; model_index.json lists their parts.
    checkpoint_marker = "model_index.json"

    def build_tiny(self, output_dir: Path, size: str) -> Path:
        """A random ``StableDiffusionPipeline`` checkpoint with the real CLIP tokenizer."""
        from s2i.stages.diffusion.checkpoint import build_tiny_diffusion

        return build_tiny_diffusion(output_dir, size=size, seed=0)

    def export(self, checkpoint: Path, onnx_dir: Path) -> StageExport:
        """Text encoder, UNet (per-row timesteps) and VAE decoder graphs, validated."""
        from s2i.stages.diffusion.export import export_diffusion

        return export_diffusion(checkpoint, onnx_dir)

    def repository_models(self, checkpoint: Path, exported: StageExport, target: str):
        """The three stage graphs and the ``diffusion`` BLS model."""
        from s2i.stages.diffusion.models import diffusion_repository_models

        return diffusion_repository_models(checkpoint, exported.onnx_dir, exported.components, target)
