"""``s2i train whisper``: Seq2SeqTrainer fine-tuning of a multilingual Whisper checkpoint on Hindi speech.

Defaults are the research run's hyperparameters (learning rate 1e-5, 4000
steps, per-device batch 4, gradient accumulation 4: 16 clips per optimizer
step, 500 warm-up steps). Evaluation decodes with ``generate`` and reports WER
and CER (jiwer) after :func:`s2i.training.common.normalize_text` on both sides.

The output folder is a complete Hugging Face checkpoint (weights, config,
``generation_config.json`` with ``lang_to_id``/``task_to_id``, tokenizer,
``preprocessor_config.json``) that ``s2i convert --whisper <output>`` takes
directly. Beside it: ``checkpoint-N/`` folders (resumable; rerunning the same
command continues from the newest), ``metrics.csv`` (``step,split,name,value``),
``data_issues.tsv`` (skipped samples) and ``eval_predictions.tsv``.

Mixed precision (``fp16``/``bf16``) needs a CUDA GPU; ``auto`` picks it there
and full precision on CPU.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import logging
from pathlib import Path

import numpy as np

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
    error_rates,
    latest_checkpoint,
    resolve_mixed_precision,
)
from s2i.training.whisper_data import (
    DEFAULT_AUDIO_COLUMN,
    DEFAULT_TEXT_COLUMNS,
    TASKS,
    TRANSCRIBE,
    WhisperCollator,
    WhisperDataset,
    prepare_split,
    read_split,
)

LOGGER = logging.getLogger(__name__)

EVAL_PREDICTIONS_FILE = "eval_predictions.tsv"
REPORT_TARGETS = ("tensorboard",)


@dataclasses.dataclass
class WhisperTrainingConfig:
    """Everything ``s2i train whisper`` takes; the defaults are the research run's.

    Attributes:
        data: Common Voice language folder or Hugging Face ``datasets`` folder.
        checkpoint: Whisper checkpoint folder (or hub id) to start from.
        output_dir: Where checkpoints, the final model and logs go.
        task: ``transcribe`` (Hindi text) or ``translate`` (English targets).
        language: Language code of the speech (``hi``).
        text_column: Column of the targets (default: ``sentence`` to transcribe, ``translation`` to translate).
        audio_column: Audio column of a ``datasets`` folder.
        train_split: Split to train on.
        eval_split: Split to evaluate on (``None``: no evaluation).
        learning_rate: Peak learning rate (AdamW, linear decay after warm-up).
        max_steps: Optimizer steps.
        per_device_train_batch_size: Clips per forward pass.
        per_device_eval_batch_size: Clips per evaluation batch.
        gradient_accumulation_steps: Forward passes per optimizer step.
        warmup_steps: Linear warm-up steps.
        weight_decay: AdamW weight decay.
        eval_steps: Evaluate every this many steps.
        save_steps: Write ``checkpoint-N`` every this many steps.
        logging_steps: Log the training loss every this many steps.
        save_total_limit: Keep at most this many checkpoints (``None``: all).
        generation_max_length: ``max_length`` of ``generate`` during evaluation.
        gradient_checkpointing: Recompute activations in the backward pass (less memory, ~30 % slower).
        mixed_precision: ``auto``, ``no``, ``fp16`` or ``bf16`` (the last two need CUDA).
        seed: Seed of initialisation-independent randomness (data order).
        on_bad_data: ``skip`` or ``error`` (see :mod:`s2i.training.common`).
        resume: Continue from the newest ``checkpoint-N`` in ``output_dir`` if there is one.
        eval_on_start: Evaluate before the first step too (a baseline WER).
        max_train_samples: Use at most this many training clips.
        max_eval_samples: Use at most this many evaluation clips.
        dataloader_num_workers: Worker processes decoding audio.
        report_to: Extra loggers besides ``metrics.csv`` (``tensorboard``).
    """

    data: Path
    checkpoint: str | Path
    output_dir: Path
    task: str = TRANSCRIBE
    language: str = "hi"
    text_column: str | None = None
    audio_column: str = DEFAULT_AUDIO_COLUMN
    train_split: str = "train"
    eval_split: str | None = "test"
    learning_rate: float = 1e-5
    max_steps: int = 4000
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 4
    warmup_steps: int = 500
    weight_decay: float = 0.0
    eval_steps: int = 1000
    save_steps: int = 1000
    logging_steps: int = 25
    save_total_limit: int | None = 3
    generation_max_length: int = 225
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"
    seed: int = 42
    on_bad_data: str = SKIP
    resume: bool = True
    eval_on_start: bool = False
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    dataloader_num_workers: int = 0
    report_to: tuple[str, ...] = ()

    @property
    def targets_column(self) -> str:
        """The column the targets are read from."""
        return self.text_column or DEFAULT_TEXT_COLUMNS[self.task]

    def validate(self) -> None:
        """Refuse inconsistent settings before any heavy work, naming the field."""
        check_choice("task", self.task, TASKS)
        check_choice("on_bad_data", self.on_bad_data, BAD_DATA_POLICIES)
        for name in ("learning_rate", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size"):
            check_positive(name, getattr(self, name))
        for name in ("gradient_accumulation_steps", "eval_steps", "save_steps", "logging_steps"):
            check_positive(name, getattr(self, name))
        for name in ("warmup_steps", "weight_decay", "dataloader_num_workers"):
            check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("save_total_limit", "max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        if not 1 <= self.generation_max_length <= 448:
            raise ValueError(f"`generation_max_length` must be between 1 and 448, got {self.generation_max_length}.")
        for target in self.report_to:
            check_choice("report_to", target, REPORT_TARGETS)
            if importlib.util.find_spec(target) is None:
                raise ValueError(f"`report_to` {target!r} needs the `{target}` package; install it or leave it out.")


@dataclasses.dataclass
class WhisperTrainingResult:
    """What :func:`train_whisper` did.

    Attributes:
        output_dir: The final, convertible checkpoint.
        global_step: Optimizer steps done in total (across resumed runs).
        resumed_from: The checkpoint this run continued from, if any.
        train_losses: ``(step, loss)`` as logged, including before a resume.
        eval_metrics: The final evaluation (``wer``, ``cer``, ``loss``, ...), empty without an eval split.
        skipped_samples: How many samples were left out as unusable.
    """

    output_dir: Path
    global_step: int
    resumed_from: Path | None
    train_losses: list[tuple[int, float]]
    eval_metrics: dict[str, float]
    skipped_samples: int


class _ErrorRateMetric:
    """``compute_metrics`` for the Trainer: WER/CER of generated text; keeps the last texts."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.last: list[tuple[str, str]] = []

    def __call__(self, prediction) -> dict[str, float]:
        pad = self.tokenizer.pad_token_id
        predicted = np.where(prediction.predictions == -100, pad, prediction.predictions)
        labels = np.where(prediction.label_ids == -100, pad, prediction.label_ids)
        hypotheses = self.tokenizer.batch_decode(predicted, skip_special_tokens=True)
        references = self.tokenizer.batch_decode(labels, skip_special_tokens=True)
        self.last = list(zip(references, hypotheses, strict=True))
        return error_rates(references, hypotheses)


def _metrics_callback(log: MetricsLog):
    from transformers import TrainerCallback

    class MetricsLogCallback(TrainerCallback):
        """Writes every Trainer log event to ``metrics.csv`` (``eval_*`` keys under split ``eval``)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            log.write(state.global_step, "train", {k: v for k, v in logs.items() if not k.startswith("eval_")})
            log.write(state.global_step, "eval", {k[5:]: v for k, v in logs.items() if k.startswith("eval_")})

    return MetricsLogCallback()


def _read_data(config: WhisperTrainingConfig, tokenizer, max_label_tokens: int):
    """Train and eval splits, checked; issues recorded in ``data_issues.tsv`` and the policy applied."""
    splits = {"train": config.train_split}
    if config.eval_split:
        splits["eval"] = config.eval_split
    prepared, skipped = {}, 0
    # The file describes this run's data; a resumed run rewrites it.
    (Path(config.output_dir) / DATA_ISSUES_FILE).unlink(missing_ok=True)
    for role, split in splits.items():
        issues = DataIssues(config.on_bad_data, f"{config.data} split `{split}`")
        others = tuple(s for s in (config.eval_split, "dev", "test") if s and s != split)
        samples = read_split(
            config.data,
            split,
            text_column=config.targets_column,
            audio_column=config.audio_column,
            issues=issues,
            other_splits=others,
        )
        limit = config.max_train_samples if role == "train" else config.max_eval_samples
        samples = samples[:limit] if limit else samples
        prepared[role] = prepare_split(samples, tokenizer, max_label_tokens=max_label_tokens, issues=issues)
        issues.finish(len(prepared[role].samples), Path(config.output_dir) / DATA_ISSUES_FILE)
        skipped += len(issues.issues)
        LOGGER.info("%s split `%s`: %d clips", role, split, len(prepared[role].samples))
    return prepared, skipped


def _training_arguments(config: WhisperTrainingConfig, precision: str, has_eval: bool):
    import torch
    from transformers import Seq2SeqTrainingArguments

    cuda = torch.cuda.is_available()
    return Seq2SeqTrainingArguments(
        output_dir=str(config.output_dir),
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        max_steps=config.max_steps,
        gradient_checkpointing=config.gradient_checkpointing,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        use_cpu=not cuda,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.eval_steps,
        eval_on_start=config.eval_on_start and has_eval,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        predict_with_generate=True,
        generation_max_length=config.generation_max_length,
        report_to=list(config.report_to),
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=config.dataloader_num_workers,
        dataloader_pin_memory=cuda,
        remove_unused_columns=False,
        label_names=["labels"],
        disable_tqdm=False,
    )


def _write_predictions(path: Path, pairs: list[tuple[str, str]]) -> None:
    from s2i.training.common import normalize_text

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(("reference", "hypothesis", "reference_normalized", "hypothesis_normalized"))
        for reference, hypothesis in pairs:
            writer.writerow((reference, hypothesis, normalize_text(reference), normalize_text(hypothesis)))


def train_whisper(config: WhisperTrainingConfig) -> WhisperTrainingResult:
    """Fine-tune ``config.checkpoint`` on ``config.data`` and write a convertible checkpoint to ``output_dir``.

    Raises:
        ValueError: A setting is invalid (checked before anything heavy runs).
        DataError: The data is unusable under the bad-data policy; the message lists the files.
    """
    from transformers import Seq2SeqTrainer, WhisperForConditionalGeneration, WhisperProcessor

    from s2i.conversion.convert import resolve_checkpoint

    config.validate()
    precision = resolve_mixed_precision(config.mixed_precision)
    output_dir = Path(config.output_dir)
    checkpoint = resolve_checkpoint(config.checkpoint)
    processor = WhisperProcessor.from_pretrained(checkpoint)
    model = WhisperForConditionalGeneration.from_pretrained(checkpoint)
    generation = model.generation_config
    language_token = f"<|{config.language}|>"
    if language_token not in (getattr(generation, "lang_to_id", None) or {}):
        raise ValueError(f"`language` {config.language!r} is not a language of `{checkpoint}` (no {language_token}).")
    processor.tokenizer.set_prefix_tokens(language=config.language, task=config.task, predict_timestamps=False)
    output_dir.mkdir(parents=True, exist_ok=True)
    data, skipped = _read_data(config, processor.tokenizer, model.config.max_target_positions)

    # Evaluation (and anyone loading the output without arguments) decodes this language and task.
    generation.language, generation.task, generation.forced_decoder_ids = config.language, config.task, None
    model.config.forced_decoder_ids = None
    model.config.use_cache = not config.gradient_checkpointing

    log = MetricsLog(output_dir / METRICS_FILE)
    resume_from = latest_checkpoint(output_dir) if config.resume else None
    if resume_from is not None:
        LOGGER.info("Resuming from %s", resume_from)
        # Rows logged after that checkpoint by an interrupted run are logged again.
        log.truncate_after(checkpoint_step(resume_from))
    metric = _ErrorRateMetric(processor.tokenizer)
    eval_data = data.get("eval")
    trainer = Seq2SeqTrainer(
        model=model,
        args=_training_arguments(config, precision, has_eval=eval_data is not None),
        train_dataset=WhisperDataset(data["train"], processor.feature_extractor),
        eval_dataset=WhisperDataset(eval_data, processor.feature_extractor) if eval_data else None,
        data_collator=WhisperCollator(model.config.decoder_start_token_id),
        processing_class=processor,
        compute_metrics=metric if eval_data else None,
        callbacks=[_metrics_callback(log)],
    )
    train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    eval_metrics = {}
    if eval_data:
        eval_metrics = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}
        _write_predictions(output_dir / EVAL_PREDICTIONS_FILE, metric.last)
        LOGGER.info("Final evaluation: WER %.4f, CER %.4f", eval_metrics["wer"], eval_metrics["cer"])
    model.config.use_cache = True
    trainer.save_model(str(output_dir))
    trainer.save_state()
    losses = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    return WhisperTrainingResult(
        output_dir=output_dir,
        global_step=train_output.global_step,
        resumed_from=resume_from,
        train_losses=losses,
        eval_metrics=eval_metrics,
        skipped_samples=skipped,
    )


def _default(name: str):
    return WhisperTrainingConfig.__dataclass_fields__[name].default


def add_train_parser(train_commands) -> None:
    """Add ``whisper`` to the ``s2i train`` subcommands."""
    from s2i.training.common import MIXED_PRECISION

    parser = train_commands.add_parser(
        "whisper",
        help="fine-tune Whisper on Hindi speech (Common Voice or `datasets` folder)",
        description=__doc__.split("\n\n")[0],
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, required=True, help="Common Voice language folder or `datasets` folder")
    data.add_argument("--task", choices=TASKS, default=_default("task"))
    data.add_argument("--language", default=_default("language"), help="language code of the speech")
    data.add_argument("--text-column", help="targets column (default: `sentence`; `translation` to translate)")
    data.add_argument("--audio-column", default=_default("audio_column"), help="audio column of a `datasets` folder")
    data.add_argument("--train-split", default=_default("train_split"))
    data.add_argument("--eval-split", default=_default("eval_split"), help="`none` to skip evaluation")
    data.add_argument("--max-train-samples", type=int)
    data.add_argument("--max-eval-samples", type=int)
    data.add_argument("--on-bad-data", choices=BAD_DATA_POLICIES, default=_default("on_bad_data"))
    model = parser.add_argument_group("model and output")
    model.add_argument("--checkpoint", required=True, help="Whisper checkpoint folder or hub id (openai/whisper-small)")
    model.add_argument("--output", dest="output_dir", type=Path, required=True, help="output folder")
    model.add_argument("--no-resume", dest="resume", action="store_false", help="ignore checkpoint-N in --output")
    optim = parser.add_argument_group("optimisation")
    for name, kind in (
        ("learning_rate", float),
        ("max_steps", int),
        ("per_device_train_batch_size", int),
        ("per_device_eval_batch_size", int),
        ("gradient_accumulation_steps", int),
        ("warmup_steps", int),
        ("weight_decay", float),
        ("seed", int),
    ):
        optim.add_argument(f"--{name.replace('_', '-')}", type=kind, default=_default(name))
    optim.add_argument("--gradient-checkpointing", action="store_true", help="less activation memory, slower")
    optim.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=_default("mixed_precision"))
    optim.add_argument("--dataloader-num-workers", type=int, default=_default("dataloader_num_workers"))
    logs = parser.add_argument_group("evaluation, checkpoints, logs")
    for name in ("eval_steps", "save_steps", "logging_steps", "save_total_limit", "generation_max_length"):
        logs.add_argument(f"--{name.replace('_', '-')}", type=int, default=_default(name))
    logs.add_argument("--eval-on-start", action="store_true", help="also evaluate before training (baseline WER)")
    logs.add_argument("--report-to", nargs="*", choices=REPORT_TARGETS, default=[], help="besides metrics.csv")
    parser.set_defaults(handler=run_cli)


def run_cli(args) -> int:
    """``s2i train whisper``: train, then print the figures and how to convert."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(WhisperTrainingConfig) if hasattr(args, f.name)}
    if str(values.get("eval_split")).lower() == "none":
        values["eval_split"] = None
    values["report_to"] = tuple(values.get("report_to") or ())
    result = train_whisper(WhisperTrainingConfig(**values))
    if result.eval_metrics:
        print(
            f"step {result.global_step}: WER {result.eval_metrics['wer']:.2%}, CER {result.eval_metrics['cer']:.2%}, "
            f"eval loss {result.eval_metrics['loss']:.4f}"
        )
    if result.skipped_samples:
        print(f"skipped {result.skipped_samples} unusable sample(s): {result.output_dir / DATA_ISSUES_FILE}")
    print(f"checkpoint: {result.output_dir} (convert with `s2i convert --whisper {result.output_dir}`)")
    return 0
