"""Tiny random checkpoints in released families' layouts: the same config keys and files, dimensions scaled down.

Each builder writes what a released checkpoint of that family carries (config
keys, tokenizer, scheduler and feature-extractor files) with its structural
ratios (deep encoder and shallow decoder, mel bins, vocabulary, per-block heads,
linear projections, prediction type, timestep spacing) and tiny widths. A
folder that already holds weights is reused: the builders are deterministic.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from s2i.stages.diffusion.tokenizer_files import MODEL_MAX_LENGTH, VOCAB_SIZE, build_clip_tokenizer
from s2i.stages.emotion.checkpoint import EMOTION_SIZES, save_emotion_checkpoint
from s2i.stages.whisper.checkpoint import WhisperSize, build_tiny_whisper
from s2i.stages.whisper.stage import TINY_INIT_STD

# openai/whisper-large-v3: 32 + 32 layers, 128 mels, 100 languages (51866 tokens).
WHISPER_LARGE_V3 = WhisperSize(
    d_model=64, encoder_layers=2, decoder_layers=2, attention_heads=4, ffn_dim=256, num_mel_bins=128
)
# openai/whisper-large-v3-turbo: large-v3's encoder (32 layers), 4 decoder layers.
WHISPER_LARGE_V3_TURBO = WhisperSize(
    d_model=64, encoder_layers=4, decoder_layers=1, attention_heads=4, ffn_dim=256, num_mel_bins=128
)
# distil-whisper/distil-large-v2: large-v2's encoder (32 layers, 80 mels, 51865 tokens), 2 decoder layers.
DISTIL_WHISPER_LARGE_V2 = WhisperSize(
    d_model=64, encoder_layers=4, decoder_layers=1, attention_heads=4, ffn_dim=256, num_mel_bins=80
)
V3_LANGUAGES = 100
V2_LANGUAGES = 99

# stabilityai/stable-diffusion-2-1's scheduler_config.json (768 px, v-prediction).
SD21_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
# stabilityai/sd-turbo's scheduler_config.json (SD 2.1's architecture, 1-4 steps, guidance 0).
SD_TURBO_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def _built(output: Path, marker: str) -> bool:
    return (output / marker).is_file()


def whisper_layout(output: Path, dims: WhisperSize, num_languages: int = V3_LANGUAGES) -> Path:
    """A random multilingual Whisper with ``dims`` (a released family's ratios) and its tokenizer."""
    if _built(output, "model.safetensors"):
        return output
    return build_tiny_whisper(output, init_std=TINY_INIT_STD, dims=dims, num_languages=num_languages)


def emotion_layout(output: Path, *, architecture: str, labels: tuple[str, ...], num_mel_bins: int) -> Path:
    """A random emotion classifier of ``architecture`` with another label set and mel count."""
    import torch

    from s2i.stages.emotion.modeling import EmotionClassifier
    from s2i.stages.emotion.stage import TINY_INIT_SCALE

    if _built(output, "model.safetensors"):
        return output
    config = dataclasses.replace(
        EMOTION_SIZES["tiny"], architecture=architecture, labels=labels, num_mel_bins=num_mel_bins
    )
    torch.manual_seed(5)
    model = EmotionClassifier(config).eval()
    with torch.no_grad():
        model.head.weight.mul_(TINY_INIT_SCALE)
    return save_emotion_checkpoint(model, output)


# SimianLuo/LCM_Dreamshaper_v7's scheduler_config.json (an LCM-distilled SD 1.5).
LCM_SCHEDULER = {
    "_class_name": "LCMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_scaling": 10.0,
    "timestep_spacing": "leading",
    "trained_betas": None,
}


def _vae(seed: int, image_size: int):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=image_size,
        scaling_factor=0.18215,
    ).eval()


def _text_encoder(seed: int, tokenizer, hidden: int, hidden_act: str, projection_dim: int):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=MODEL_MAX_LENGTH,
            projection_dim=projection_dim,
            hidden_act=hidden_act,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()


def _save(output: Path, pipeline_class, scheduler_config: dict, *, tokenizer, unet, vae, text_encoder) -> Path:
    import diffusers

    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    pipeline = pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(output, safe_serialization=True)
    return output


def _tokenizer(output: Path, pad_token: str | None = None):
    from transformers import CLIPTokenizer

    staging = output / "_tokenizer"
    build_clip_tokenizer(staging)
    tokenizer = CLIPTokenizer.from_pretrained(staging, **({"pad_token": pad_token} if pad_token else {}))
    for path in staging.iterdir():
        path.unlink()
    staging.rmdir()
    return tokenizer


def sd2_layout(output: Path, scheduler_config: dict, *, seed: int = 0) -> Path:
    """A random Stable Diffusion 2.x-layout pipeline (what SD 2.1 and SD-Turbo share).

    OpenCLIP-style text encoder (GELU, its own projection width, pad token ``!``),
    UNet with per-block head counts, linear projections and upcast attention, a
    96-pixel default (SD 2.1's 768 scaled by 8), and ``scheduler_config``.
    """
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    if _built(output, "unet/diffusion_pytorch_model.safetensors"):
        return output
    # SD 2.x's tokenizer pads with "!" (id 0), not <|endoftext|>.
    tokenizer = _tokenizer(output, pad_token="!")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=12,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=48,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        upcast_attention=True,
    )
    return _save(
        output,
        StableDiffusionPipeline,
        scheduler_config,
        tokenizer=tokenizer,
        unet=unet,
        vae=_vae(seed + 1, 96),
        text_encoder=_text_encoder(seed + 2, tokenizer, 48, "gelu", 32),
    )


def lcm_layout(output: Path, *, seed: int = 0) -> Path:
    """A random LCM-distilled SD 1.5 (``LatentConsistencyModelPipeline``, UNet ``time_cond_proj_dim``, LCMScheduler)."""
    import torch
    from diffusers import LatentConsistencyModelPipeline, UNet2DConditionModel

    if _built(output, "unet/diffusion_pytorch_model.safetensors"):
        return output
    tokenizer = _tokenizer(output)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        # LCM_Dreamshaper_v7's 256, scaled down: the w-embedding's width.
        time_cond_proj_dim=32,
    )
    return _save(
        output,
        LatentConsistencyModelPipeline,
        LCM_SCHEDULER,
        tokenizer=tokenizer,
        unet=unet,
        vae=_vae(seed + 1, 64),
        text_encoder=_text_encoder(seed + 2, tokenizer, 32, "quick_gelu", 32),
    )


def read_json(path: Path) -> dict:
    """A JSON file's content."""
    return json.loads(Path(path).read_text())
