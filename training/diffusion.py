"""``s2i train diffusion``: UNet fine-tuning of a Stable Diffusion checkpoint on Flickr8K captions.

The loss is the standard noise-prediction MSE (``epsilon``, or ``v`` for
v-prediction schedulers) on VAE latents; the text encoder and the VAE are
frozen. Memory: the research run went out of GPU memory at batch size 4 without
these; the defaults are the diffusers text-to-image recipe that fits a 24 GB
GPU at 512 px for SD 1.5 (not measured here, no GPU):

* ``train_batch_size`` 1 and ``gradient_accumulation_steps`` 4 (the same
  effective batch of 4, a quarter of the activations);
* gradient checkpointing on (activations recomputed in the backward pass);
* mixed precision ``auto``: ``bf16``/``fp16`` autocast on CUDA with fp32 master
  weights, the frozen VAE and text encoder held in half precision; full
  precision on CPU (``fp16``/``bf16`` are refused without CUDA);
* the EMA copy of the UNet can live on the CPU (``ema_on_cpu``).

An out-of-memory error is caught and reported with these knobs and the last
checkpoint to resume from.

Written into ``output_dir``: the fine-tuned pipeline in the diffusers layout
(``model_index.json``, ``unet/`` with the EMA weights when EMA is on, the other
components copied from the input checkpoint) that ``s2i convert --diffusion``
takes; ``checkpoint-N/`` (resumable: rerunning continues from the newest),
``metrics.csv`` (``step,split,name,value``: train ``loss``, eval ``mse``),
``validation/step-N/prompt{i}-seed{s}.png`` for fixed prompts and seeds, and
``data_issues.tsv``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
from pathlib import Path

from s2i.training.common import (
    BAD_DATA_POLICIES,
    DATA_ISSUES_FILE,
    METRICS_FILE,
    SKIP,
    DataIssues,
    MetricsLog,
    check_choice,
    check_positive,
    checkpoint_step,
    latest_checkpoint,
    prune_checkpoints,
    resolve_mixed_precision,
)
from s2i.training.diffusion_data import (
    DEFAULT_EMOTION_TEMPLATE,
    CaptionDataset,
    EpochBatches,
    collate,
    read_emotion_tags,
    read_flickr8k,
)

LOGGER = logging.getLogger(__name__)

VALIDATION_FOLDER = "validation"
EMA_STATE_FILE = "ema_unet.pt"
PROGRESS_FILE = "progress.json"
DEFAULT_VALIDATION_PROMPTS = (
    "a dog runs across the green grass",
    "two children play on the beach at sunset",
)
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
REPORT_TARGETS = ("tensorboard",)


def _check_fraction(name: str, value: float, *, allow_zero: bool) -> None:
    """Refuse ``value`` outside ``(0, 1)`` (``[0, 1)`` with ``allow_zero``), naming the field."""
    if not (0 <= value < 1 if allow_zero else 0 < value < 1):
        bounds = "0 (inclusive) and 1 (exclusive)" if allow_zero else "0 and 1 (exclusive)"
        raise ValueError(f"`{name}` must be between {bounds}, got {value}.")


@dataclasses.dataclass
class DiffusionTrainingConfig:
    """Everything ``s2i train diffusion`` takes; defaults follow diffusers' text-to-image recipe.

    Attributes:
        data: Flickr8K folder (``Flickr8k.token.txt`` + images).
        checkpoint: Stable Diffusion checkpoint folder (diffusers layout) or hub id.
        output_dir: Where checkpoints, the final pipeline, validation images and logs go.
        images_dir: Image folder, if not one of the standard names under ``data``.
        train_split: Split trained on (``Flickr_8k.<split>Images.txt``).
        eval_split: Split the eval MSE is measured on (``None``: no evaluation).
        emotion_tags: TSV ``image<TAB>emotion`` whose emotions are written into captions.
        emotion_template: How a caption and its emotion are combined.
        resolution: Square training (and validation) size in pixels; a multiple of 8.
        center_crop: Centre crops (else random crops).
        random_flip: Random horizontal flips.
        caption_dropout: Share of training pairs whose caption is replaced by the empty prompt
            (learns the unconditional prediction classifier-free guidance uses; 0 keeps the captions).
        unconditional_prompt: What a dropped caption becomes: ``""`` as Stable Diffusion trained, or
            the negative prompt every served request sends, so guidance pushes away from a learned prediction.
        learning_rate: AdamW learning rate.
        lr_scheduler: ``constant``, ``constant_with_warmup``, ``linear`` or ``cosine``.
        warmup_steps: Learning-rate warm-up steps.
        max_steps: Optimizer steps.
        train_batch_size: Pairs per forward pass (memory scales with it).
        gradient_accumulation_steps: Forward passes per optimizer step.
        max_grad_norm: Gradient clipping norm.
        adam_weight_decay: AdamW weight decay.
        gradient_checkpointing: Recompute UNet activations in the backward pass.
        mixed_precision: ``auto``, ``no``, ``fp16`` or ``bf16`` (the last two need CUDA).
        use_ema: Keep an exponential moving average of the UNet weights, which is what is saved.
        ema_decay: Maximum EMA decay (it warms up as ``(1 + step) / (10 + step)``).
        ema_on_cpu: Hold the EMA copy in CPU memory (saves a UNet's worth of GPU memory).
        eval_steps: Measure the eval MSE every this many steps.
        max_eval_samples: Eval pairs used for the MSE.
        eval_on_start: Also measure it before the first step.
        validation_prompts: Prompts drawn at every ``validation_steps``.
        validation_seeds: One image per prompt and seed.
        validation_steps: Draw validation images every this many steps (and at the end).
        validation_inference_steps: Denoising steps of the validation images.
        validation_guidance_scale: Classifier-free guidance of the validation images.
        checkpointing_steps: Write ``checkpoint-N`` every this many steps (and at the end).
        checkpoints_total_limit: Keep at most this many checkpoints (``None``: all).
        logging_steps: Write the training loss every this many steps.
        seed: Seed of the data order, noise and timesteps.
        on_bad_data: ``skip`` or ``error`` (see :mod:`s2i.training.common`).
        resume: Continue from the newest ``checkpoint-N`` in ``output_dir`` if there is one.
        dataloader_num_workers: Worker processes decoding images.
        max_train_samples: Use at most this many training pairs.
        report_to: Extra loggers besides ``metrics.csv`` (``tensorboard``).
    """

    data: Path
    checkpoint: str | Path
    output_dir: Path
    images_dir: Path | None = None
    train_split: str = "train"
    eval_split: str | None = "dev"
    emotion_tags: Path | None = None
    emotion_template: str = DEFAULT_EMOTION_TEMPLATE
    resolution: int = 512
    center_crop: bool = True
    random_flip: bool = True
    caption_dropout: float = 0.0
    unconditional_prompt: str = ""
    learning_rate: float = 1e-5
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    max_steps: int = 15000
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 4
    max_grad_norm: float = 1.0
    adam_weight_decay: float = 1e-2
    gradient_checkpointing: bool = True
    mixed_precision: str = "auto"
    use_ema: bool = True
    ema_decay: float = 0.9999
    ema_on_cpu: bool = False
    eval_steps: int = 500
    max_eval_samples: int = 64
    eval_on_start: bool = False
    validation_prompts: tuple[str, ...] = DEFAULT_VALIDATION_PROMPTS
    validation_seeds: tuple[int, ...] = (0,)
    validation_steps: int = 500
    validation_inference_steps: int = 25
    validation_guidance_scale: float = 7.5
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    logging_steps: int = 10
    seed: int = 42
    on_bad_data: str = SKIP
    resume: bool = True
    dataloader_num_workers: int = 0
    max_train_samples: int | None = None
    report_to: tuple[str, ...] = ()

    def validate(self) -> None:
        """Refuse inconsistent settings before any heavy work, naming the field."""
        check_choice("on_bad_data", self.on_bad_data, BAD_DATA_POLICIES)
        check_choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        if self.resolution <= 0 or self.resolution % 8:
            raise ValueError(f"`resolution` must be a positive multiple of 8, got {self.resolution}.")
        for name in ("learning_rate", "max_steps", "train_batch_size", "gradient_accumulation_steps", "max_grad_norm"):
            check_positive(name, getattr(self, name))
        for name in ("eval_steps", "max_eval_samples", "validation_steps", "validation_inference_steps"):
            check_positive(name, getattr(self, name))
        for name in ("checkpointing_steps", "logging_steps"):
            check_positive(name, getattr(self, name))
        for name in ("warmup_steps", "adam_weight_decay", "dataloader_num_workers", "validation_guidance_scale"):
            check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("checkpoints_total_limit", "max_train_samples"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        _check_fraction("caption_dropout", self.caption_dropout, allow_zero=True)
        _check_fraction("ema_decay", self.ema_decay, allow_zero=False)
        if "{caption}" not in self.emotion_template or "{emotion}" not in self.emotion_template:
            raise ValueError(
                f"`emotion_template` must contain `{{caption}}` and `{{emotion}}`, got {self.emotion_template!r}."
            )
        for target in self.report_to:
            check_choice("report_to", target, REPORT_TARGETS)
            if importlib.util.find_spec(target) is None:
                raise ValueError(f"`report_to` {target!r} needs the `{target}` package; install it or leave it out.")


@dataclasses.dataclass
class DiffusionTrainingResult:
    """What :func:`train_diffusion` did.

    Attributes:
        output_dir: The fine-tuned pipeline (diffusers layout).
        global_step: Optimizer steps done in total (across resumed runs).
        resumed_from: The checkpoint this run continued from, if any.
        train_losses: ``(step, loss)`` of every step this run made.
        eval_mse: ``(step, mse)`` of every evaluation this run made.
        validation_images: PNG files written by this run.
        skipped_samples: How many pairs or lines were left out as unusable.
    """

    output_dir: Path
    global_step: int
    resumed_from: Path | None
    train_losses: list[tuple[int, float]]
    eval_mse: list[tuple[int, float]]
    validation_images: list[Path]
    skipped_samples: int


@dataclasses.dataclass
class _Models:
    """The pipeline parts the loop uses."""

    tokenizer: object
    text_encoder: object
    vae: object
    unet: object
    noise_scheduler: object
    weight_dtype: object
    device: object


def _read_data(config: DiffusionTrainingConfig, tokenizer):
    report = Path(config.output_dir) / DATA_ISSUES_FILE
    # The file describes this run's data; a resumed run rewrites it.
    report.unlink(missing_ok=True)
    tags = None
    if config.emotion_tags:
        tag_issues = DataIssues(config.on_bad_data, f"emotion tags {config.emotion_tags}")
        tags = read_emotion_tags(config.emotion_tags, tag_issues)
        tag_issues.finish(len(tags), report)
    splits = {"train": config.train_split, "eval": config.eval_split}
    datasets, skipped = {}, 0
    for role, split in splits.items():
        if not split:
            continue
        issues = DataIssues(config.on_bad_data, f"{config.data} split `{split}`")
        pairs = read_flickr8k(
            config.data,
            split,
            issues=issues,
            images_dir=config.images_dir,
            emotion_tags=tags,
            emotion_template=config.emotion_template,
            report_unattributed=role == "train",
        )
        limit = config.max_train_samples if role == "train" else config.max_eval_samples
        pairs = pairs[:limit] if limit else pairs
        issues.finish(len(pairs), report)
        skipped += len(issues.issues)
        LOGGER.info("%s split `%s`: %d image-caption pairs", role, split, len(pairs))
        datasets[role] = CaptionDataset(
            pairs,
            tokenizer,
            config.resolution,
            center_crop=config.center_crop or role == "eval",
            random_flip=config.random_flip and role == "train",
            seed=config.seed,
            caption_dropout=config.caption_dropout if role == "train" else 0.0,
            unconditional_prompt=config.unconditional_prompt,
        )
    return datasets, skipped


def _load_models(checkpoint: Path, config: DiffusionTrainingConfig, precision: str, device) -> _Models:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    vae = AutoencoderKL.from_pretrained(checkpoint, subfolder="vae").requires_grad_(False).eval()
    text_encoder = CLIPTextModel.from_pretrained(checkpoint, subfolder="text_encoder").requires_grad_(False).eval()
    unet = UNet2DConditionModel.from_pretrained(checkpoint, subfolder="unet")
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    if weight_dtype != torch.float32:
        # Frozen parts only run forward: half precision halves their memory.
        vae, text_encoder = vae.to(dtype=weight_dtype), text_encoder.to(dtype=weight_dtype)
    return _Models(
        tokenizer=CLIPTokenizer.from_pretrained(checkpoint, subfolder="tokenizer"),
        text_encoder=text_encoder.to(device),
        vae=vae.to(device),
        unet=unet,
        noise_scheduler=DDPMScheduler.from_pretrained(checkpoint, subfolder="scheduler"),
        weight_dtype=weight_dtype,
        device=device,
    )


def noise_prediction_loss(models: _Models, unet, batch: dict, *, generator=None, deterministic_latents: bool = False):
    """Mean squared error of the UNet's noise (or ``v``) prediction on one batch.

    Args:
        models: The frozen parts, the noise scheduler, dtype and device.
        unet: The UNet being trained (possibly wrapped by accelerate).
        batch: ``pixel_values`` in ``[-1, 1]`` and CLIP ``input_ids``.
        generator: Draws noise and timesteps (the global RNG when ``None``).
        deterministic_latents: Use the latent distribution's mean instead of a sample (evaluation).
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    pixels = batch["pixel_values"].to(models.device, dtype=models.weight_dtype)
    with torch.no_grad():
        distribution = models.vae.encode(pixels).latent_dist
        latents = distribution.mean if deterministic_latents else distribution.sample()
        latents = latents * models.vae.config.scaling_factor
        hidden = models.text_encoder(batch["input_ids"].to(models.device), return_dict=False)[0]
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    steps = models.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator, device=latents.device).long()
    noisy = models.noise_scheduler.add_noise(latents, noise, timesteps)
    prediction_type = models.noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = models.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"Scheduler `prediction_type` {prediction_type!r} is not supported (epsilon, v_prediction).")
    predicted = unet(noisy, timesteps, hidden, return_dict=False)[0]
    return F.mse_loss(predicted.float(), target.float(), reduction="mean")


class _Trainer:
    """The training loop's state: models, optimizer, EMA, logs; one method per periodic action."""

    def __init__(self, config: DiffusionTrainingConfig, checkpoint: Path, precision: str) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from diffusers import UNet2DConditionModel
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        self.config, self.checkpoint = config, checkpoint
        self.output_dir = Path(config.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=precision,
            cpu=not torch.cuda.is_available(),
            log_with=list(config.report_to) or None,
            project_dir=str(self.output_dir),
        )
        set_seed(config.seed)
        self.models = _load_models(checkpoint, config, precision, self.accelerator.device)
        self.datasets, self.skipped = _read_data(config, self.models.tokenizer)
        unet = self.models.unet
        self.ema = None
        if config.use_ema:
            self.ema = EMAModel(
                unet.parameters(), decay=config.ema_decay, model_cls=UNet2DConditionModel, model_config=unet.config
            )
            self.ema.to("cpu" if config.ema_on_cpu else self.accelerator.device)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, weight_decay=config.adam_weight_decay)
        lr_scheduler = get_scheduler(
            config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps
        )
        self.unet, self.optimizer, self.lr_scheduler = self.accelerator.prepare(unet, optimizer, lr_scheduler)
        self.log = MetricsLog(self.output_dir / METRICS_FILE)
        self.global_step = 0
        self.resumed_from = None
        self.losses: list[tuple[int, float]] = []
        self.eval_mse: list[tuple[int, float]] = []
        self.images: list[Path] = []
        if config.report_to:
            self.accelerator.init_trackers("diffusion", config={"learning_rate": config.learning_rate})

    # --- checkpoints -------------------------------------------------------------------------

    def resume(self) -> None:
        """Load the newest ``checkpoint-N`` (weights, optimizer, scheduler, RNG, EMA) if there is one."""
        import torch

        found = latest_checkpoint(self.output_dir) if self.config.resume else None
        if found is None:
            return
        LOGGER.info("Resuming from %s", found)
        self.accelerator.load_state(str(found))
        if self.ema is not None:
            if not (found / EMA_STATE_FILE).is_file():
                raise ValueError(f"`{found}` has no {EMA_STATE_FILE}; it was trained without EMA (set `use_ema` off).")
            self.ema.load_state_dict(torch.load(found / EMA_STATE_FILE, map_location="cpu", weights_only=False))
            self.ema.to("cpu" if self.config.ema_on_cpu else self.accelerator.device)
        self.global_step = checkpoint_step(found)
        self.resumed_from = found
        # Rows logged after that checkpoint by an interrupted run are logged again.
        self.log.truncate_after(self.global_step)

    def save_checkpoint(self) -> None:
        """Write ``checkpoint-N`` and prune old ones."""
        import torch

        folder = self.output_dir / f"checkpoint-{self.global_step}"
        self.accelerator.save_state(str(folder))
        if self.ema is not None:
            torch.save(self.ema.state_dict(), folder / EMA_STATE_FILE)
        (folder / PROGRESS_FILE).write_text(json.dumps({"global_step": self.global_step}) + "\n")
        prune_checkpoints(self.output_dir, self.config.checkpoints_total_limit)

    # --- evaluation and validation -----------------------------------------------------------

    def _export_weights(self):
        """A context that swaps the EMA weights (what gets saved) into the UNet."""
        import contextlib

        trainer = self

        @contextlib.contextmanager
        def swap():
            if trainer.ema is None:
                yield
                return
            parameters = list(trainer.accelerator.unwrap_model(trainer.unet).parameters())
            trainer.ema.store(parameters)
            trainer.ema.copy_to(parameters)
            try:
                yield
            finally:
                trainer.ema.restore(parameters)

        return swap()

    def evaluate(self) -> float:
        """Noise-prediction MSE on the eval pairs with fixed noise and timesteps (comparable across steps)."""
        import torch

        dataset = self.datasets["eval"]
        generator = torch.Generator(device=self.models.device).manual_seed(self.config.seed)
        total, count = 0.0, 0
        self.unet.eval()
        with self._export_weights(), torch.no_grad(), self.accelerator.autocast():
            for start in range(0, len(dataset), self.config.train_batch_size):
                indices = range(start, min(start + self.config.train_batch_size, len(dataset)))
                batch = collate([dataset[i] for i in indices])
                loss = noise_prediction_loss(
                    self.models, self.unet, batch, generator=generator, deterministic_latents=True
                )
                total += float(loss) * len(indices)
                count += len(indices)
        self.unet.train()
        mse = total / count
        self.eval_mse.append((self.global_step, mse))
        self.log.write(self.global_step, "eval", {"mse": mse})
        self.accelerator.log({"eval_mse": mse}, step=self.global_step)
        LOGGER.info("step %d: eval noise-prediction MSE %.5f", self.global_step, mse)
        return mse

    def _pipeline(self, unet):
        import diffusers

        scheduler_config = json.loads((self.checkpoint / "scheduler" / "scheduler_config.json").read_text())
        scheduler_class = getattr(diffusers, scheduler_config["_class_name"])
        pipeline = diffusers.StableDiffusionPipeline(
            vae=self.models.vae,
            text_encoder=self.models.text_encoder,
            tokenizer=self.models.tokenizer,
            unet=unet,
            scheduler=scheduler_class.from_config(scheduler_config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def validation_images(self) -> list[Path]:
        """One PNG per validation prompt and seed, drawn with the weights that would be saved."""
        import torch

        folder = self.output_dir / VALIDATION_FOLDER / f"step-{self.global_step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        self.unet.eval()
        with self._export_weights(), torch.no_grad(), self.accelerator.autocast():
            pipeline = self._pipeline(self.accelerator.unwrap_model(self.unet))
            for index, prompt in enumerate(self.config.validation_prompts):
                for seed in self.config.validation_seeds:
                    image = pipeline(
                        prompt,
                        height=self.config.resolution,
                        width=self.config.resolution,
                        num_inference_steps=self.config.validation_inference_steps,
                        guidance_scale=self.config.validation_guidance_scale,
                        generator=torch.Generator(device="cpu").manual_seed(seed),
                    ).images[0]
                    path = folder / f"prompt{index}-seed{seed}.png"
                    image.save(path)
                    written.append(path)
        (folder / "prompts.txt").write_text("\n".join(self.config.validation_prompts) + "\n", encoding="utf-8")
        self.unet.train()
        del pipeline
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.images += written
        return written

    # --- the loop ----------------------------------------------------------------------------

    def _loader(self, batches: EpochBatches):
        from torch.utils.data import DataLoader

        accumulation = self.config.gradient_accumulation_steps
        sampler = batches.sampler(self.global_step * accumulation, self.config.max_steps * accumulation)
        return DataLoader(
            self.datasets["train"],
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.config.dataloader_num_workers,
            pin_memory=self.models.device.type == "cuda",
        )

    def step(self, micro_batches) -> float:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches; the mean loss."""
        accumulation = self.config.gradient_accumulation_steps
        losses = []
        for _ in range(accumulation):
            batch = next(micro_batches)
            with self.accelerator.autocast():
                loss = noise_prediction_loss(self.models, self.unet, batch)
            self.accelerator.backward(loss / accumulation)
            losses.append(float(loss.detach()))
        grad_norm = self.accelerator.clip_grad_norm_(self.unet.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.accelerator.unwrap_model(self.unet).parameters())
        self.global_step += 1
        loss = sum(losses) / len(losses)
        if not math.isfinite(loss):
            raise RuntimeError(
                f"The training loss is {loss} at step {self.global_step}; lower `learning_rate` "
                "or use `bf16` instead of `fp16`."
            )
        self.losses.append((self.global_step, loss))
        if self.global_step % self.config.logging_steps == 0 or self.global_step == self.config.max_steps:
            metrics = {"loss": loss, "learning_rate": self.lr_scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
            self.log.write(self.global_step, "train", metrics)
            self.accelerator.log({f"train_{k}": v for k, v in metrics.items()}, step=self.global_step)
        return loss

    def _due(self, every: int) -> bool:
        return self.global_step % every == 0 or self.global_step == self.config.max_steps

    def train(self) -> None:
        """Run from ``global_step`` to ``max_steps`` with periodic evaluation, validation and checkpoints."""
        from tqdm.auto import tqdm

        config = self.config
        has_eval = "eval" in self.datasets
        if has_eval and config.eval_on_start and self.global_step == 0:
            self.evaluate()
        batches = EpochBatches(len(self.datasets["train"]), config.train_batch_size, config.seed)
        micro_batches = iter(self._loader(batches))
        progress = tqdm(
            total=config.max_steps,
            initial=self.global_step,
            desc="diffusion",
            disable=not self.accelerator.is_local_main_process,
        )
        while self.global_step < config.max_steps:
            loss = self.step(micro_batches)
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}")
            if has_eval and self._due(config.eval_steps):
                progress.set_postfix(loss=f"{loss:.4f}", eval_mse=f"{self.evaluate():.4f}")
            if config.validation_prompts and self._due(config.validation_steps):
                self.validation_images()
            if self._due(config.checkpointing_steps):
                self.save_checkpoint()
        progress.close()

    def save_pipeline(self) -> None:
        """The input checkpoint with the trained (EMA) UNet, in the diffusers layout, into ``output_dir``."""
        from diffusers import StableDiffusionPipeline

        self.accelerator.wait_for_everyone()
        unet = self.accelerator.unwrap_model(self.unet)
        with self._export_weights():
            # Reloading the frozen parts keeps them in their saved precision even when training held them in fp16.
            pipeline = StableDiffusionPipeline.from_pretrained(self.checkpoint, unet=unet)
            pipeline.save_pretrained(self.output_dir, safe_serialization=True)
        self.accelerator.end_training()


def _out_of_memory_message(config: DiffusionTrainingConfig, step: int, last: Path | None) -> str:
    return (
        f"CUDA ran out of memory at step {step} (batch {config.train_batch_size}, {config.resolution} px, "
        f"gradient checkpointing {'on' if config.gradient_checkpointing else 'off'}, "
        f"mixed precision {config.mixed_precision}). Lower `train_batch_size` and raise "
        "`gradient_accumulation_steps` to keep the effective batch, turn on `gradient_checkpointing`, use "
        "`fp16`/`bf16`, set `ema_on_cpu`, or lower `resolution`. "
        + (f"Rerun to resume from {last}." if last else "No checkpoint was written yet.")
    )


def train_diffusion(config: DiffusionTrainingConfig) -> DiffusionTrainingResult:
    """Fine-tune the UNet of ``config.checkpoint`` on ``config.data``; write a convertible pipeline.

    Raises:
        ValueError: A setting is invalid (checked before anything heavy runs).
        DataError: The data is unusable under the bad-data policy; the message lists the files.
        RuntimeError: Out of GPU memory or a non-finite loss, with what to change.
    """
    import torch

    from s2i.conversion.convert import resolve_checkpoint

    config.validate()
    precision = resolve_mixed_precision(config.mixed_precision)
    checkpoint = resolve_checkpoint(config.checkpoint, required_file="model_index.json")
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    trainer = _Trainer(config, checkpoint, precision)
    trainer.resume()
    try:
        trainer.train()
    except torch.cuda.OutOfMemoryError as e:
        last = latest_checkpoint(config.output_dir)
        raise RuntimeError(_out_of_memory_message(config, trainer.global_step + 1, last)) from e
    trainer.save_pipeline()
    return DiffusionTrainingResult(
        output_dir=Path(config.output_dir),
        global_step=trainer.global_step,
        resumed_from=trainer.resumed_from,
        train_losses=trainer.losses,
        eval_mse=trainer.eval_mse,
        validation_images=trainer.images,
        skipped_samples=trainer.skipped,
    )


def _default(name: str):
    field = DiffusionTrainingConfig.__dataclass_fields__[name]
    return field.default


def add_train_parser(train_commands) -> None:
    """Add ``diffusion`` to the ``s2i train`` subcommands."""
    from s2i.training.common import MIXED_PRECISION

    parser = train_commands.add_parser(
        "diffusion",
        help="fine-tune the Stable Diffusion UNet on Flickr8K-layout captions",
        description=__doc__.split("\n\n")[0],
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, required=True, help="Flickr8K folder (Flickr8k.token.txt + images)")
    data.add_argument("--images-dir", type=Path, help="image folder if not Flicker8k_Dataset/, Images/, ...")
    data.add_argument("--train-split", default=_default("train_split"))
    data.add_argument("--eval-split", default=_default("eval_split"), help="`none` to skip the eval MSE")
    data.add_argument("--emotion-tags", type=Path, help="TSV image<TAB>emotion written into the captions")
    data.add_argument("--emotion-template", default=_default("emotion_template"))
    data.add_argument("--resolution", type=int, default=_default("resolution"))
    data.add_argument("--random-crop", dest="center_crop", action="store_false", help="random instead of centre crops")
    data.add_argument("--no-flip", dest="random_flip", action="store_false", help="no random horizontal flips")
    data.add_argument(
        "--caption-dropout", type=float, default=_default("caption_dropout"), help="share of empty captions (for CFG)"
    )
    data.add_argument(
        "--unconditional-prompt",
        default=_default("unconditional_prompt"),
        help="what a dropped caption becomes (default empty; the served negative prompt teaches guidance's other side)",
    )
    data.add_argument("--max-train-samples", type=int)
    data.add_argument("--on-bad-data", choices=BAD_DATA_POLICIES, default=_default("on_bad_data"))
    model = parser.add_argument_group("model and output")
    model.add_argument("--checkpoint", required=True, help="Stable Diffusion folder (diffusers layout) or hub id")
    model.add_argument("--output", dest="output_dir", type=Path, required=True, help="output folder")
    model.add_argument("--no-resume", dest="resume", action="store_false", help="ignore checkpoint-N in --output")
    memory = parser.add_argument_group("optimisation and memory")
    for name, kind in (
        ("learning_rate", float),
        ("warmup_steps", int),
        ("max_steps", int),
        ("train_batch_size", int),
        ("gradient_accumulation_steps", int),
        ("max_grad_norm", float),
        ("adam_weight_decay", float),
        ("ema_decay", float),
        ("seed", int),
        ("dataloader_num_workers", int),
    ):
        memory.add_argument(f"--{name.replace('_', '-')}", type=kind, default=_default(name))
    memory.add_argument("--lr-scheduler", choices=LR_SCHEDULERS, default=_default("lr_scheduler"))
    memory.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    memory.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=_default("mixed_precision"))
    memory.add_argument("--no-ema", dest="use_ema", action="store_false", help="save the raw instead of EMA weights")
    memory.add_argument("--ema-on-cpu", action="store_true", help="hold the EMA copy in CPU memory")
    logs = parser.add_argument_group("evaluation, validation, checkpoints, logs")
    for name in ("eval_steps", "max_eval_samples", "validation_steps", "validation_inference_steps"):
        logs.add_argument(f"--{name.replace('_', '-')}", type=int, default=_default(name))
    for name in ("checkpointing_steps", "checkpoints_total_limit", "logging_steps"):
        logs.add_argument(f"--{name.replace('_', '-')}", type=int, default=_default(name))
    logs.add_argument("--validation-guidance-scale", type=float, default=_default("validation_guidance_scale"))
    logs.add_argument("--validation-prompts", nargs="*", default=list(DEFAULT_VALIDATION_PROMPTS))
    logs.add_argument("--validation-seeds", nargs="+", type=int, default=[0])
    logs.add_argument("--eval-on-start", action="store_true", help="also measure the eval MSE before training")
    logs.add_argument("--report-to", nargs="*", choices=REPORT_TARGETS, default=[], help="besides metrics.csv")
    parser.set_defaults(handler=run_cli)


def run_cli(args) -> int:
    """``s2i train diffusion``: train, then print the figures and how to convert."""
    fields = dataclasses.fields(DiffusionTrainingConfig)
    values = {f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)}
    if str(values.get("eval_split")).lower() == "none":
        values["eval_split"] = None
    for name in ("validation_prompts", "validation_seeds", "report_to"):
        values[name] = tuple(values.get(name) or ())
    result = train_diffusion(DiffusionTrainingConfig(**values))
    if result.eval_mse:
        first, last = result.eval_mse[0], result.eval_mse[-1]
        print(f"eval noise-prediction MSE: {first[1]:.4f} at step {first[0]} -> {last[1]:.4f} at step {last[0]}")
    if result.validation_images:
        print(f"validation images: {result.validation_images[-1].parent}")
    if result.skipped_samples:
        print(f"skipped {result.skipped_samples} unusable line(s) or image(s): {result.output_dir / DATA_ISSUES_FILE}")
    print(f"pipeline: {result.output_dir} (convert with `s2i convert --diffusion {result.output_dir}`)")
    return 0
