"""Triton descriptions of the diffusion models: three stage graphs and the ``diffusion`` BLS model.

Batching of the ``unet`` stage: each BLS call carries one request's rows for one
denoising step (2 rows with classifier-free guidance: unconditional and
conditional, 1 row without), with its own ``timestep`` per row. Guidance is applied
in the BLS model, so requests with different guidance scales, step counts or
schedulers batch together; only the latent shape (``height``/``width``) must agree,
which Triton's batcher enforces for variable dims. ``max_batch_size`` 16 lets eight
guided requests share one call (on CPU computed 4 rows at a time: ``max_rows_per_call``
in the deployment table).
"""

from __future__ import annotations

import json
from pathlib import Path

from s2i import names
from s2i.model_repository.components import OnnxComponent
from s2i.model_repository.config import ModelSpec, TensorSpec
from s2i.model_repository.deployment import CPU, policy
from s2i.stages.diffusion.sampling import MAX_IMAGE_SIZE

# Largest absolute difference to PyTorch accepted at export. The text encoder and
# UNet outputs are O(1); the VAE decoder output is in [-1, 1] before clamping.
ATOL = 1e-3
# Past ATOL, a graph still passes within 1e-4 of its output range (max abs diff / max abs
# value): the deeper UNets of released checkpoints accumulate more float32 rounding.
RTOL = 1e-4
# The python-torch runners of the three graphs.
TORCH_RUNNERS = "s2i.stages.diffusion.torch_runner"


def read_configs(checkpoint: Path) -> dict[str, dict]:
    """``config.json`` of the text encoder, UNet and VAE, and the tokenizer's config."""
    checkpoint = Path(checkpoint)
    return {
        part: json.loads((checkpoint / part / file).read_text())
        for part, file in (
            ("text_encoder", "config.json"),
            ("unet", "config.json"),
            ("vae", "config.json"),
            ("tokenizer", "tokenizer_config.json"),
        )
    }


def unet_guidance_inputs(unet: dict) -> tuple[TensorSpec, ...]:
    """The LCM UNet's guidance embedding input (``timestep_cond``); none for other UNets."""
    dim = unet.get("time_cond_proj_dim")
    return () if dim is None else (TensorSpec(names.TIMESTEP_COND, "FP32", (int(dim),)),)


def diffusion_components(configs: dict[str, dict]) -> list[OnnxComponent]:
    """Descriptions of the text encoder, UNet and VAE decoder graphs for a checkpoint's configs."""
    text, unet, vae = configs["text_encoder"], configs["unet"], configs["vae"]
    sequence = int(configs["tokenizer"].get("model_max_length", text["max_position_embeddings"]))
    hidden = int(text["hidden_size"])
    cross = unet["cross_attention_dim"]
    if isinstance(cross, list | tuple):
        raise ValueError(f"`cross_attention_dim` per block ({cross}) is not supported; SD 1.x/2.x use one value.")
    if int(cross) != hidden:
        raise ValueError(f"The UNet's `cross_attention_dim` {cross} differs from the text encoder's width {hidden}.")
    latent_channels = int(vae["latent_channels"])
    # TensorRT profiles over the latent height/width: from the smallest size the
    # UNet divides evenly to the largest the BLS model accepts, optimised for the
    # checkpoint's own size.
    vae_scale = 2 ** (len(vae["block_out_channels"]) - 1)
    smallest = 2 ** (len(unet["block_out_channels"]) - 1)
    latent_range = (smallest, int(unet["sample_size"]), MAX_IMAGE_SIZE // vae_scale)
    spatial = {1: latent_range, 2: latent_range}
    return [
        OnnxComponent(
            model_name=names.TEXT_ENCODER,
            onnx_file="text_encoder/model.onnx",
            inputs=(TensorSpec(names.INPUT_IDS, "INT64", (sequence,)),),
            outputs=(
                TensorSpec(names.LAST_HIDDEN_STATE, "FP32", (sequence, hidden)),
                TensorSpec(names.POOLER_OUTPUT, "FP32", (hidden,)),
            ),
            atol=ATOL,
            rtol=RTOL,
            torch_runner=f"{TORCH_RUNNERS}:TextEncoderRunner",
        ),
        OnnxComponent(
            model_name=names.UNET,
            onnx_file="unet/model.onnx",
            inputs=(
                TensorSpec(names.SAMPLE, "FP32", (int(unet["in_channels"]), -1, -1)),
                TensorSpec(names.TIMESTEP, "FP32", (1,)),
                TensorSpec(names.ENCODER_HIDDEN_STATES, "FP32", (sequence, hidden)),
                *unet_guidance_inputs(unet),
            ),
            outputs=(TensorSpec(names.OUT_SAMPLE, "FP32", (int(unet["out_channels"]), -1, -1)),),
            atol=ATOL,
            rtol=RTOL,
            axis_ranges={names.SAMPLE: spatial},
            torch_runner=f"{TORCH_RUNNERS}:UNetRunner",
        ),
        OnnxComponent(
            model_name=names.VAE_DECODER,
            onnx_file="vae_decoder/model.onnx",
            inputs=(TensorSpec(names.LATENT_SAMPLE, "FP32", (latent_channels, -1, -1)),),
            outputs=(TensorSpec(names.SAMPLE, "FP32", (int(vae["out_channels"]), -1, -1)),),
            atol=ATOL,
            rtol=RTOL,
            axis_ranges={names.LATENT_SAMPLE: spatial},
            torch_runner=f"{TORCH_RUNNERS}:VaeDecoderRunner",
        ),
    ]


def diffusion_model_spec(device: str = CPU) -> ModelSpec:
    """The ``diffusion`` BLS model: a prompt and options in, an RGB image out.

    Several instances, so a batch that arrives while another is denoising starts at
    once, and the ``unet`` batcher merges the loops' steps (counts in the deployment table).
    """
    chosen = policy(names.DIFFUSION, device)
    return ModelSpec(
        name=names.DIFFUSION,
        inputs=(
            TensorSpec(names.PROMPT, "BYTES", (1,)),
            TensorSpec(names.NEGATIVE_PROMPT, "BYTES", (1,), optional=True),
            TensorSpec(names.NUM_INFERENCE_STEPS, "INT32", (1,), optional=True),
            TensorSpec(names.GUIDANCE_SCALE, "FP32", (1,), optional=True),
            TensorSpec(names.HEIGHT, "INT32", (1,), optional=True),
            TensorSpec(names.WIDTH, "INT32", (1,), optional=True),
            TensorSpec(names.SEED, "INT64", (1,), optional=True),
            TensorSpec(names.SCHEDULER, "BYTES", (1,), optional=True),
        ),
        outputs=(
            TensorSpec(names.IMAGE, "UINT8", (-1, -1, 3)),
            TensorSpec(names.SEED, "INT64", (1,)),
            TensorSpec(names.COMPUTE_MS, "FP32", (1,)),
        ),
        max_batch_size=chosen.max_batch_size,
        dynamic_batching=chosen.dynamic_batching,
        # The loop runs on the CPU on every device; its graphs run where the target says.
        instance_groups=chosen.instance_groups(CPU),
    )
