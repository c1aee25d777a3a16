"""The world's text-to-image model: its base checkpoint, and faithfulness measured on held-out captions.

``s2i world build`` draws the world (:mod:`s2i.training.world`) and writes the
*base* Stable Diffusion checkpoint that ``s2i train diffusion`` then trains, in
the standard diffusers layout (``model_index.json``, ``tokenizer/``,
``text_encoder/``, ``unet/``, ``vae/``, ``scheduler/``), so conversion and serving
take the path any Stable Diffusion checkpoint takes:

* ``tokenizer``: CLIP's real BPE tokenizer (from ``open-clip-torch``);
* ``text_encoder``: a small ``CLIPTextModel``, frozen, with random word and
  position embeddings and identity layers (residual branches zeroed), so each
  output is its word's embedding at its position: distinct per word, which is
  all the UNet's cross attention needs to learn which words name which colour
  and shape;
* ``vae``: a small ``AutoencoderKL`` (2 levels: 32 px images, 16x16x4 latents)
  trained here on the world's training images as a deterministic autoencoder
  (object pixels weighted up), its ``scaling_factor`` set so latents have unit
  variance, as Stable Diffusion's was; :func:`vae_round_trip_faithfulness`
  rates how much of the caption survives its round trip (the model's ceiling);
* ``unet``: a small randomly initialised ``UNet2DConditionModel``;
* ``scheduler``: Stable Diffusion 1.5's PNDM configuration.

``s2i world evaluate`` draws one image per held-out caption with the checkpoint's
own pipeline (the in-process reference that served results are compared to),
at the served defaults (the style template's negative prompt, 7.5 guidance, 50
steps), and reads them back with :mod:`s2i.training.world_detector`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from s2i.training.world import IMAGE_SIZE, IMAGES_FOLDER, SCENES_FILE, Scene, write_dataset
from s2i.training.world_detector import MIN_OBJECT_SATURATION

LOGGER = logging.getLogger(__name__)

TEXT_HIDDEN = 64
TEXT_LAYERS = 2
TEXT_HEADS = 4
UNET_CHANNELS = (32, 64)
UNET_HEAD_DIM = 8
VAE_CHANNELS = (16, 32)
VAE_NORM_GROUPS = 16
# Object pixels weigh this much more than sky and ground in the VAE's loss (see `_object_weights`).
VAE_OBJECT_WEIGHT = 5.0
# The VAE is a deterministic autoencoder: its latent log-variance is pinned here (std e^-15).
DETERMINISTIC_LOGVAR = -30.0
VAE_LEARNING_RATE = 5e-3
VAE_STEPS = 1200
# Small batches, many steps: these flat images teach the VAE more per update than per image.
VAE_BATCH_SIZE = 16
# Held-out images the VAE's round trip is rated on (as many as `s2i world evaluate` rates by default).
ROUND_TRIP_IMAGES = 64
DATA_FOLDER = "data"
BASE_FOLDER = "base"


def _scenes(data: Path, split: str) -> list[tuple[str, Scene, int]]:
    """``(image name, scene, seed)`` of ``split`` from ``scenes.tsv``."""
    rows = Path(data, SCENES_FILE).read_text(encoding="utf-8").splitlines()[1:]
    found = []
    for row in rows:
        name, row_split, colour, shape, count, emotion, seed = row.split("\t")
        if row_split == split:
            found.append((name, Scene(colour, shape, int(count), emotion), int(seed)))
    return found


def _images(data: Path, split: str) -> np.ndarray:
    """The split's images as float32 NCHW in ``[-1, 1]``."""
    from PIL import Image

    arrays = [
        np.asarray(Image.open(Path(data, IMAGES_FOLDER, name)).convert("RGB")) for name, _, _ in _scenes(data, split)
    ]
    return np.stack(arrays).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0


def train_vae(
    data: Path,
    *,
    steps: int,
    batch_size: int = VAE_BATCH_SIZE,
    learning_rate: float = VAE_LEARNING_RATE,
    channels: tuple[int, ...] = VAE_CHANNELS,
    seed: int = 0,
):
    """A small ``AutoencoderKL`` trained to reconstruct the world's training images; returns ``(vae, mse)``."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=channels,
        layers_per_block=1,
        norm_num_groups=VAE_NORM_GROUPS,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        sample_size=IMAGE_SIZE,
    )
    images = torch.from_numpy(_images(data, "train"))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    vae.train()
    for step in range(1, steps + 1):
        batch = images[torch.randint(0, len(images), (batch_size,), generator=generator)]
        latents = vae.encode(batch).latent_dist.mean
        squared = (vae.decode(latents).sample - batch) ** 2
        mse = squared.mean()
        loss = (squared * _object_weights(batch)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 50 == 0 or step == steps:
            LOGGER.info("VAE step %d/%d: reconstruction MSE %.5f", step, steps, float(mse))
    vae.eval()
    _make_deterministic(vae)
    with torch.no_grad():
        held_out = torch.from_numpy(_images(data, "dev")[:256])
        latents = vae.encode(images[:512]).latent_dist.mean
        # Stable Diffusion's recipe: scale latents to unit variance for the diffusion model.
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        mse = float(torch.nn.functional.mse_loss(vae.decode(vae.encode(held_out).latent_dist.mean).sample, held_out))
    return vae, mse


def _object_weights(images):
    """Per-pixel loss weights: ``VAE_OBJECT_WEIGHT`` on object pixels (saturated ones), 1 elsewhere.

    Objects cover a tenth of an image but carry all of the caption's colour and
    shape: unweighted, the VAE spends its steps on the sky and rounds the corners
    that tell a square from a circle.
    """
    high, low = images.amax(dim=1, keepdim=True), images.amin(dim=1, keepdim=True)
    # HSV saturation, (max - min) / max in [0, 1] units, of [-1, 1] pixels.
    saturation = (high - low) / (high + 1).clamp(min=1e-3)
    return 1.0 + (VAE_OBJECT_WEIGHT - 1.0) * (saturation >= MIN_OBJECT_SATURATION).float()


def _make_deterministic(vae) -> None:
    """Fix the latent distribution's log-variance at ``DETERMINISTIC_LOGVAR``, whatever the image.

    The VAE trains as a plain autoencoder on the latent means (with sampled
    latents it learned slower: 400 steps, held-out MSE 0.030 against 0.027), so
    its variance head never learned; pinned near zero variance, a
    ``latent_dist.sample()`` (what ``s2i train diffusion`` encodes with) equals
    the mean.
    """
    import torch

    latent_channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[latent_channels:] = 0.0
        vae.quant_conv.bias[latent_channels:] = DETERMINISTIC_LOGVAR


def vae_round_trip_faithfulness(vae, data: Path, *, split: str = "dev", limit: int = ROUND_TRIP_IMAGES) -> dict:
    """Faithfulness of the split's images after encoding and decoding (latent means): the model's ceiling.

    The diffusion model can draw no better than its VAE decodes, so the detector
    must still read each caption's colour and shape after the round trip.
    """
    import torch

    from s2i.training.world_detector import detect, faithfulness

    scenes = [scene for _, scene, _ in _scenes(data, split)][:limit]
    images = torch.from_numpy(_images(data, split)[:limit])
    with torch.no_grad():
        decoded = vae.decode(vae.encode(images).latent_dist.mean).sample
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return faithfulness(scenes, [detect(image) for image in pixels]).as_dict()


def _text_encoder(tokenizer, seed: int):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from s2i.stages.diffusion.tokenizer_files import MODEL_MAX_LENGTH, VOCAB_SIZE

    torch.manual_seed(seed)
    model = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=TEXT_HIDDEN,
            intermediate_size=4 * TEXT_HIDDEN,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=TEXT_HEADS,
            max_position_embeddings=MODEL_MAX_LENGTH,
            projection_dim=TEXT_HIDDEN,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    # Identity layers: with their residual branches zeroed, each output is its own word's
    # (layer-normed) embedding plus its position's. Random layers blend every word into every
    # position (the outputs for "red" and "blue" were 0.87 cosine-alike), which left the
    # UNet's cross attention almost nothing to tell colours and shapes apart by.
    with torch.no_grad():
        for layer in model.text_model.encoder.layers:
            layer.self_attn.out_proj.weight.zero_()
            layer.self_attn.out_proj.bias.zero_()
            layer.mlp.fc2.weight.zero_()
            layer.mlp.fc2.bias.zero_()
    return model


def _unet_groups(channels: tuple[int, ...]) -> int:
    """Group-norm groups of a UNet: Stable Diffusion's 32, fewer when its first level is narrower."""
    return min(32, max(1, channels[0] if channels else 1))


def _unet(seed: int, latent_size: int, channels: tuple[int, ...]):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    # Cross attention on every level but the deepest, as Stable Diffusion's UNet has it.
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (len(channels) - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(channels) - 1),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=UNET_HEAD_DIM,
        norm_num_groups=_unet_groups(channels),
    ).eval()


@dataclasses.dataclass(frozen=True)
class BaseSettings:
    """How the base checkpoint's VAE is trained and how large its models are."""

    vae_steps: int = VAE_STEPS
    vae_learning_rate: float = VAE_LEARNING_RATE
    vae_channels: tuple[int, ...] = VAE_CHANNELS
    unet_channels: tuple[int, ...] = UNET_CHANNELS
    seed: int = 0

    def validate(self) -> None:
        """Refuse settings that cannot build a checkpoint, naming the field."""
        if self.vae_steps <= 0:
            raise ValueError(f"`vae_steps` must be positive, got {self.vae_steps}.")
        if self.vae_learning_rate <= 0:
            raise ValueError(f"`vae_learning_rate` must be positive, got {self.vae_learning_rate}.")
        for name, groups in (("vae_channels", VAE_NORM_GROUPS), ("unet_channels", _unet_groups(self.unet_channels))):
            channels = getattr(self, name)
            if len(channels) < 2 or any(c <= 0 or c % groups for c in channels):
                raise ValueError(f"`{name}` must be two or more multiples of {groups}, got {list(channels)}.")
        if IMAGE_SIZE % 2 ** (len(self.vae_channels) + len(self.unet_channels) - 2):
            raise ValueError(
                f"`vae_channels` and `unet_channels` halve {IMAGE_SIZE} px more often than it divides, "
                f"got {list(self.vae_channels)} and {list(self.unet_channels)}."
            )


def build_base_checkpoint(data: Path, output: Path, settings: BaseSettings = BaseSettings()) -> dict[str, float]:
    """Write the base pipeline (trained VAE, random text encoder and UNet) into ``output``; return VAE figures."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from s2i.stages.diffusion.checkpoint import SD15_SCHEDULER_CONFIG
    from s2i.stages.diffusion.tokenizer_files import build_clip_tokenizer

    settings.validate()
    started = time.monotonic()
    seed = settings.seed
    vae, vae_mse = train_vae(
        data,
        steps=settings.vae_steps,
        learning_rate=settings.vae_learning_rate,
        channels=settings.vae_channels,
        seed=seed,
    )
    vae_minutes = (time.monotonic() - started) / 60
    round_trip = vae_round_trip_faithfulness(vae, data)
    output = Path(output)
    tokenizer = build_clip_tokenizer(output / "_tokenizer")
    latent_size = IMAGE_SIZE // 2 ** (len(settings.vae_channels) - 1)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=_text_encoder(tokenizer, seed + 1),
        tokenizer=tokenizer,
        unet=_unet(seed + 2, latent_size, settings.unet_channels),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(output, safe_serialization=True)
    for path in (output / "_tokenizer").iterdir():
        path.unlink()
    (output / "_tokenizer").rmdir()
    figures = {
        "vae_heldout_mse": vae_mse,
        "vae_steps": settings.vae_steps,
        "vae_learning_rate": settings.vae_learning_rate,
        "vae_channels": list(settings.vae_channels),
        "unet_channels": list(settings.unet_channels),
        "vae_minutes": vae_minutes,
        "vae_round_trip": round_trip,
    }
    LOGGER.info(
        "Base checkpoint in %s (VAE held-out reconstruction MSE %.5f, round trip faithful %.1f%%)",
        output,
        vae_mse,
        100 * round_trip["faithful"],
    )
    return figures


def generate(checkpoint: Path, scenes: list[Scene], *, seed: int = 0, **options) -> list[np.ndarray]:
    """One image per scene's caption from the checkpoint's own pipeline, with the served prompts."""
    from s2i.pipeline.prompt import StyleTemplates, compose_prompt
    from s2i.stages.diffusion.reference import DiffusionReference

    reference = DiffusionReference(Path(checkpoint))
    templates = StyleTemplates.load()
    images = []
    for index, scene in enumerate(scenes):
        composed = compose_prompt(scene.text, scene.emotion, templates)
        images.append(
            reference.generate(composed.prompt, negative_prompt=composed.negative_prompt, seed=seed + index, **options)
        )
    return images


def evaluate(checkpoint: Path, data: Path, *, split: str = "dev", limit: int = 64, **options) -> dict[str, float]:
    """Faithfulness of ``checkpoint`` on (the first ``limit``) captions of ``split``."""
    from s2i.training.world_detector import detect, faithfulness

    scenes = [scene for _, scene, _ in _scenes(data, split)][:limit]
    images = generate(checkpoint, scenes, **options)
    return faithfulness(scenes, [detect(image) for image in images]).as_dict()


def save_grid(images: list[np.ndarray], path: Path, *, columns: int = 8, scale: int = 4) -> Path:
    """Images side by side (enlarged ``scale`` times, nearest neighbour) in one PNG."""
    from PIL import Image

    rows = -(-len(images) // columns)
    size = IMAGE_SIZE * scale
    grid = Image.new("RGB", (columns * size, rows * size), (255, 255, 255))
    for index, image in enumerate(images):
        tile = Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST)
        grid.paste(tile, ((index % columns) * size, (index // columns) * size))
    grid.save(path)
    return path


def write_report(path: Path, report: dict) -> None:
    """``report`` as indented JSON."""
    Path(path).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def add_world_parser(commands) -> None:
    """Add ``s2i world build`` and ``s2i world evaluate``."""
    world = commands.add_parser("world", help="the captioned shape world: data, base checkpoint, faithfulness")
    world_commands = world.add_subparsers(dest="world_command", required=True)
    build = world_commands.add_parser("build", help="draw the world and write the base Stable Diffusion checkpoint")
    build.add_argument("--output", type=Path, required=True, help=f"folder: {DATA_FOLDER}/ and {BASE_FOLDER}/ go here")
    build.add_argument("--train-images", type=int, default=4000)
    build.add_argument("--eval-images", type=int, default=192, help="images of held-out captions")
    build.add_argument("--vae-steps", type=int, default=VAE_STEPS)
    build.add_argument("--vae-learning-rate", type=float, default=VAE_LEARNING_RATE)
    build.add_argument(
        "--vae-channels", type=int, nargs="+", default=list(VAE_CHANNELS), help="one width per level (each halves)"
    )
    build.add_argument(
        "--unet-channels", type=int, nargs="+", default=list(UNET_CHANNELS), help="one width per UNet level"
    )
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(handler=run_build)
    evaluate_parser = world_commands.add_parser("evaluate", help="faithfulness of a checkpoint on held-out captions")
    evaluate_parser.add_argument("--checkpoint", type=Path, required=True, help="Stable Diffusion folder")
    evaluate_parser.add_argument("--data", type=Path, required=True, help=f"the world's {DATA_FOLDER}/ folder")
    evaluate_parser.add_argument("--split", choices=("dev", "train"), default="dev", help="dev: held-out captions")
    evaluate_parser.add_argument("--limit", type=int, default=64, help="captions evaluated")
    evaluate_parser.add_argument("--steps", type=int, help="denoising steps (default: the pipeline's 50)")
    evaluate_parser.add_argument("--guidance-scale", type=float, help="default: the pipeline's 7.5")
    evaluate_parser.add_argument("--report", type=Path, help="write the rates as JSON here")
    evaluate_parser.add_argument("--grid", type=Path, help="write the first 32 images as one PNG here")
    evaluate_parser.set_defaults(handler=run_evaluate)


def run_build(args) -> int:
    """``s2i world build``."""
    settings = BaseSettings(
        vae_steps=args.vae_steps,
        vae_learning_rate=args.vae_learning_rate,
        vae_channels=tuple(args.vae_channels),
        unet_channels=tuple(args.unet_channels),
        seed=args.seed,
    )
    settings.validate()
    started = time.monotonic()
    counts = write_dataset(
        args.output / DATA_FOLDER, train_images=args.train_images, eval_images=args.eval_images, seed=args.seed
    )
    figures = build_base_checkpoint(args.output / DATA_FOLDER, args.output / BASE_FOLDER, settings)
    figures |= {
        "train_images": counts["train"],
        "eval_images": counts["dev"],
        "minutes": (time.monotonic() - started) / 60,
    }
    write_report(args.output / "build.json", figures)
    print(f"world: {args.output / DATA_FOLDER} ({counts['train']} training, {counts['dev']} held-out images)")
    print(f"base checkpoint: {args.output / BASE_FOLDER} (VAE held-out MSE {figures['vae_heldout_mse']:.5f})")
    return 0


def run_evaluate(args) -> int:
    """``s2i world evaluate``."""
    from s2i.training.world_detector import detect, faithfulness

    if args.limit <= 0:
        raise ValueError(f"`limit` must be positive, got {args.limit}.")
    started = time.monotonic()
    scenes = [scene for _, scene, _ in _scenes(args.data, args.split)][: args.limit]
    options = {"num_inference_steps": args.steps, "guidance_scale": args.guidance_scale}
    images = generate(args.checkpoint, scenes, **{k: v for k, v in options.items() if v is not None})
    rates = faithfulness(scenes, [detect(image) for image in images]).as_dict()
    report = {
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        **rates,
        "minutes": (time.monotonic() - started) / 60,
    }
    if args.report:
        write_report(args.report, report)
    if args.grid:
        save_grid(images[:32], args.grid)
    print(
        f"{args.checkpoint} on {rates['n']} {args.split} captions: faithful {rates['faithful']:.1%} "
        f"(colour {rates['colour']:.1%}, shape {rates['shape']:.1%}, count {rates['count']:.1%}, "
        f"emotion {rates['emotion']:.1%})"
    )
    return 0
