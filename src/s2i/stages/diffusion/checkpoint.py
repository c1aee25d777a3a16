"""Deterministic, randomly initialised Stable Diffusion checkpoints in the diffusers layout.

They are real ``StableDiffusionPipeline`` folders (``model_index.json``, CLIP text
encoder, CLIP tokenizer with the real BPE vocabulary, ``UNet2DConditionModel``,
``AutoencoderKL`` and Stable Diffusion 1.5's scheduler config) that take exactly the
path ``runwayml/stable-diffusion-v1-5`` or ``stabilityai/stable-diffusion-2-1``
take; only the weights are random and the dimensions small.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from s2i.stages.diffusion.tokenizer_files import MODEL_MAX_LENGTH, VOCAB_SIZE, build_clip_tokenizer

LOGGER = logging.getLogger(__name__)

# Stable Diffusion 1.5's scheduler (PNDM in PLMS mode), as its scheduler_config.json has it.
SD15_SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    # PNDM ignores it, but schedulers built from this config (DDIM) read it: SD 1.5 does
    # not clip x0. With clipping, DDIM on an untrained UNet amplifies float noise.
    clip_sample=False,
)
# AutoencoderKL's latent scale of Stable Diffusion 1.x/2.x.
SD_SCALING_FACTOR = 0.18215


@dataclasses.dataclass(frozen=True)
class DiffusionSize:
    """Architecture of a generated checkpoint."""

    text_hidden: int
    text_layers: int
    text_heads: int
    unet_channels: tuple[int, ...]
    unet_layers_per_block: int
    attention_head_dim: int
    vae_channels: tuple[int, ...]
    vae_norm_groups: int
    image_size: int


# `tiny` keeps tests fast; `base` is a small but real-shaped model (SD's 4-block
# VAE, 3-level UNet) whose CPU timings say more than tiny's.
DIFFUSION_SIZES = {
    "tiny": DiffusionSize(
        text_hidden=32,
        text_layers=2,
        text_heads=4,
        unet_channels=(32, 64),
        unet_layers_per_block=1,
        attention_head_dim=8,
        vae_channels=(8, 16, 32, 32),
        vae_norm_groups=8,
        image_size=64,
    ),
    "base": DiffusionSize(
        text_hidden=512,
        text_layers=6,
        text_heads=8,
        unet_channels=(128, 256, 256),
        unet_layers_per_block=1,
        attention_head_dim=32,
        vae_channels=(32, 64, 128, 128),
        vae_norm_groups=32,
        image_size=256,
    ),
    # Stable Diffusion 1.5's architecture (860M-parameter UNet, CLIP ViT-L/14 text encoder,
    # 512x512): for GPU benchmarks; random weights, real compute.
    "sd15": DiffusionSize(
        text_hidden=768,
        text_layers=12,
        text_heads=12,
        unet_channels=(320, 640, 1280, 1280),
        unet_layers_per_block=2,
        attention_head_dim=8,
        vae_channels=(128, 256, 512, 512),
        vae_norm_groups=32,
        image_size=512,
    ),
}


def build_tiny_diffusion(output_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random ``StableDiffusionPipeline`` checkpoint into ``output_dir``.

    Args:
        output_dir: Destination folder (created).
        size: A key of :data:`DIFFUSION_SIZES`.
        seed: Seed of the weight initialisation; the same seed gives the same bytes.

    Returns:
        ``output_dir``.
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if size not in DIFFUSION_SIZES:
        raise ValueError(f"`size` must be one of {sorted(DIFFUSION_SIZES)}, got {size!r}.")
    dims = DIFFUSION_SIZES[size]
    output_dir = Path(output_dir)
    tokenizer = build_clip_tokenizer(output_dir / "_tokenizer")
    levels = len(dims.unet_channels)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=dims.image_size // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=dims.unet_channels,
        layers_per_block=dims.unet_layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=dims.text_hidden,
        attention_head_dim=dims.attention_head_dim,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=dims.vae_channels,
        layers_per_block=1,
        norm_num_groups=dims.vae_norm_groups,
        down_block_types=("DownEncoderBlock2D",) * len(dims.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(dims.vae_channels),
        sample_size=dims.image_size,
        scaling_factor=SD_SCALING_FACTOR,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=dims.text_hidden,
            intermediate_size=4 * dims.text_hidden,
            num_hidden_layers=dims.text_layers,
            num_attention_heads=dims.text_heads,
            max_position_embeddings=MODEL_MAX_LENGTH,
            projection_dim=dims.text_hidden,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    pipeline = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    for path in (output_dir / "_tokenizer").iterdir():
        path.unlink()
    (output_dir / "_tokenizer").rmdir()
    LOGGER.info("Wrote %s Stable Diffusion checkpoint to %s", size, output_dir)
    return output_dir
