"""The diffusion stage as conversion and the tiny builder see it."""

from __future__ import annotations

import json
from pathlib import Path

from s2i import names
from s2i.conversion.repository import TARGETS
from s2i.model_repository.components import OnnxComponent
from s2i.model_repository.config import ModelSpec
from s2i.stages.base import Stage, StageExport, UnsupportedCheckpointError
from s2i.stages.diffusion.specs import diffusion_components, diffusion_model_spec, read_configs

SUPPORTED = (
    "Stable Diffusion 1.x/2.x layouts (`StableDiffusionPipeline`, SD-Turbo, or `LatentConsistencyModelPipeline` "
    "with an LCM-distilled UNet: one CLIP text encoder, `UNet2DConditionModel` without added conditioning, "
    "`AutoencoderKL`)"
)

# Stage model -> the pipeline folder its python-torch module loads (the VAE decoder is part of `vae/`).
TORCH_PARTS = {names.TEXT_ENCODER: "text_encoder", names.UNET: "unet", names.VAE_DECODER: "vae"}


class DiffusionStage(Stage):
    """English prompt -> RGB image (Stable Diffusion 1.x/2.x layout)."""

    name = "diffusion"
    order = 30
    # diffusers checkpoints have no root config.json; model_index.json lists their parts.
    checkpoint_marker = "model_index.json"
    bls_model = "diffusion"
    targets = TARGETS
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

    def check_checkpoint(self, checkpoint: Path) -> None:
        """Refuse SDXL (two text encoders, added conditioning), LCM UNets and inpainting UNets up front."""
        super().check_checkpoint(checkpoint)
        checkpoint = Path(checkpoint)
        index = json.loads((checkpoint / "model_index.json").read_text())
        unet = json.loads((checkpoint / "unet" / "config.json").read_text())
        vae = json.loads((checkpoint / "vae" / "config.json").read_text())
        pipeline = index.get("_class_name", "")
        if "XL" in pipeline or "text_encoder_2" in index or unet.get("addition_embed_type") is not None:
            raise UnsupportedCheckpointError(
                f"`{checkpoint}` is a Stable Diffusion XL-style checkpoint ({pipeline or 'pipeline'} with "
                f"`text_encoder_2` or UNet `addition_embed_type` {unet.get('addition_embed_type')!r}): "
                f"SDXL's second text encoder and added conditioning are not supported; supported: {SUPPORTED}."
            )
        if int(unet.get("in_channels", 4)) != int(vae.get("latent_channels", 4)):
            raise UnsupportedCheckpointError(
                f"`{checkpoint}` has a UNet with {unet.get('in_channels')} input channels for "
                f"{vae.get('latent_channels')} latent channels (an inpainting or depth model), which is not "
                f"supported; supported: {SUPPORTED}."
            )
        try:
            diffusion_components(read_configs(checkpoint))
        except (ValueError, KeyError) as error:
            raise UnsupportedCheckpointError(f"`{checkpoint}`: {error} Supported: {SUPPORTED}.") from error

    def dropped_parts(self, checkpoint: Path) -> list[str]:
        """The safety checker, when ``model_index.json`` names one (SD 1.5 does; diffusers runs it by default)."""
        index = json.loads((Path(checkpoint) / "model_index.json").read_text())
        checker = index.get("safety_checker")
        # diffusers writes `[null, null]` for a pipeline saved without one.
        if isinstance(checker, list) and any(checker):
            return [f"safety checker `safety_checker` ({'.'.join(str(part) for part in checker if part)})"]
        return []

    def build_tiny(self, output_dir: Path, size: str) -> Path:
        """A random ``StableDiffusionPipeline`` checkpoint with the real CLIP tokenizer."""
        from s2i.stages.diffusion.checkpoint import build_tiny_diffusion

        return build_tiny_diffusion(output_dir, size=size, seed=0)

    def reference(self, checkpoint: Path):
        """The checkpoint's own diffusers pipeline in-process."""
        from s2i.stages.diffusion.reference import DiffusionReference

        return DiffusionReference(checkpoint)

    def export(self, checkpoint: Path, onnx_dir: Path) -> StageExport:
        """Text encoder, UNet (per-row timesteps) and VAE decoder graphs, validated."""
        from s2i.stages.diffusion.export import export_diffusion

        return export_diffusion(checkpoint, onnx_dir)

    def describe(self, checkpoint: Path) -> list[OnnxComponent]:
        """Text encoder, UNet and VAE decoder, from the parts' configs."""
        return diffusion_components(read_configs(checkpoint))

    def torch_checkpoint(self, checkpoint: Path, component: OnnxComponent) -> Path:
        """The part of the pipeline folder the graph's module loads."""
        return Path(checkpoint) / TORCH_PARTS[component.model_name]

    def bls_spec(self, checkpoint: Path, exported: StageExport, device: str) -> ModelSpec:
        """The ``diffusion`` loop model."""
        return diffusion_model_spec(device)
