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

``--task both`` trains transcription and translation together (every clip
twice, once per task prompt, as Whisper itself was trained) and evaluates each
held-out clip on both: WER/CER of the transcripts, chrF/BLEU of the
translations, before training too with ``--eval-on-start``; the figures also go
to ``eval_results.json``. ``--freeze-encoder`` trains the decoder only and
computes the encoder's output once per clip instead of in every step, which is
what makes a CPU fine-tune of a real checkpoint fit minutes rather than hours.

Mixed precision (``fp16``/``bf16``) needs a CUDA GPU; ``auto`` picks it there
and full precision on CPU.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import logging
import time
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
    BOTH,
    DEFAULT_AUDIO_COLUMN,
    DEFAULT_TEXT_COLUMNS,
    TASKS,
    TRAINING_TASKS,
    TRANSCRIBE,
    EncodedWhisperDataset,
    WhisperCollator,
    WhisperDataset,
    encode_clips,
    merge_splits,
    prepare_split,
    read_split,
)
from s2i.training.whisper_eval import TaskEvaluation, evaluate_tasks, task_references, write_task_predictions

LOGGER = logging.getLogger(__name__)

EVAL_PREDICTIONS_FILE = "eval_predictions.tsv"
EVAL_RESULTS_FILE = "eval_results.json"
REPORT_TARGETS = ("tensorboard",)


@dataclasses.dataclass
class WhisperTrainingConfig:
    """Everything ``s2i train whisper`` takes; the defaults are the research run's.

    Attributes:
        data: Common Voice language folder or Hugging Face ``datasets`` folder.
        checkpoint: Whisper checkpoint folder (or hub id) to start from.
        output_dir: Where checkpoints, the final model and logs go.
        task: ``transcribe`` (Hindi text), ``translate`` (English targets) or ``both``.
        language: Language code of the speech (``hi``).
        text_column: Column of the targets (default: ``sentence`` to transcribe, ``translation`` to translate).
        audio_column: Audio column of a ``datasets`` folder.
        train_split: Split to train on.
        eval_split: Split to evaluate on (``None``: no evaluation).
        learning_rate: Peak learning rate (AdamW, linear decay after warm-up).
        max_steps: Optimizer steps.
        max_train_minutes: Stop after the optimizer step that passes this much training time (``None``: no limit);
            bounds a build on an unknown CPU, so the step count then depends on the machine.
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
        freeze_encoder: Train the decoder only, on encoder outputs computed once per clip.
        freeze_embeddings_and_cross_kv: Also keep the decoder's token and position embeddings (the token
            embedding is the tied output layer over the whole vocabulary) and its cross-attention key/value
            projections (which read all 1500 encoder frames) as they are: on a CPU they are most of a
            decoder step's gradient work, and with a frozen encoder they only re-project unchanging inputs.
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
    max_train_minutes: float | None = None
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
    freeze_encoder: bool = False
    freeze_embeddings_and_cross_kv: bool = False
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
    def tasks(self) -> tuple[str, ...]:
        """The tasks trained (two for ``both``)."""
        return TASKS if self.task == BOTH else (self.task,)

    def targets_column(self, task: str) -> str:
        """The column ``task``'s targets are read from."""
        return self.text_column or DEFAULT_TEXT_COLUMNS[task]

    def validate(self) -> None:
        """Refuse inconsistent settings before any heavy work, naming the field."""
        check_choice("task", self.task, TRAINING_TASKS)
        if self.task == BOTH and self.text_column:
            raise ValueError(
                "`text_column` cannot be set with `task` 'both': transcripts come from `sentence` and "
                "translations from `translation`."
            )
        check_choice("on_bad_data", self.on_bad_data, BAD_DATA_POLICIES)
        for name in ("learning_rate", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size"):
            check_positive(name, getattr(self, name))
        for name in ("gradient_accumulation_steps", "eval_steps", "save_steps", "logging_steps"):
            check_positive(name, getattr(self, name))
        for name in ("warmup_steps", "weight_decay", "dataloader_num_workers"):
            check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("save_total_limit", "max_train_samples", "max_eval_samples", "max_train_minutes"):
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
        eval_metrics: The final evaluation (``wer``, ``cer``, ``loss``, ...; with ``both``: ``transcribe_wer``,
            ``translate_chrf``, ...), empty without an eval split.
        baseline_metrics: The evaluation before training (``both`` with ``eval_on_start``), else empty.
        train_seconds: Wall-clock time of the training loop.
        skipped_samples: How many samples were left out as unusable.
    """

    output_dir: Path
    global_step: int
    resumed_from: Path | None
    train_losses: list[tuple[int, float]]
    eval_metrics: dict[str, float]
    skipped_samples: int
    baseline_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    train_seconds: float = 0.0


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


class _OwnEvaluation:
    """Evaluation of ``both`` tasks on the eval split: encoder outputs once, then each task's decoding."""

    def __init__(self, config: WhisperTrainingConfig, model, processor, eval_data: dict) -> None:
        self.config, self.model, self.processor = config, model, processor
        self.clips, self.references = task_references({task: split.samples for task, split in eval_data.items()})
        self.log = MetricsLog(Path(config.output_dir) / METRICS_FILE)
        self._states = None

    def states(self) -> list:
        """Encoder outputs of the eval clips (kept while the encoder is frozen: they cannot change)."""
        if self._states is None or not self.config.freeze_encoder:
            self._states = encode_clips(self.clips, self.processor.feature_extractor, self.model.model.encoder)
        return self._states

    def run(self, step: int, when: str) -> TaskEvaluation:
        """Evaluate now; log the metrics at ``step`` and write ``eval_predictions[_before].tsv``."""
        was_training = self.model.training
        self.model.eval()
        result = evaluate_tasks(
            self.model,
            self.processor.tokenizer,
            self.states(),
            self.references,
            language=self.config.language,
            batch_size=self.config.per_device_eval_batch_size,
            max_new_tokens=self.config.generation_max_length,
        )
        self.model.train(was_training)
        self.log.write(step, "eval", result.metrics)
        name = EVAL_PREDICTIONS_FILE if when == "after" else EVAL_PREDICTIONS_FILE.replace(".tsv", f"_{when}.tsv")
        write_task_predictions(Path(self.config.output_dir) / name, result.predictions)
        LOGGER.info("Evaluation %s training (step %d): %s", when, step, result.metrics)
        return result

    def write_results(self, baseline: TaskEvaluation | None, after: dict, steps: int, seconds: float) -> None:
        """``eval_results.json``: before/after metrics, steps, clips and training time."""
        results = {
            "checkpoint": str(self.config.checkpoint),
            "eval_clips": len(self.clips),
            "steps": steps,
            "train_seconds": round(seconds, 1),
            "freeze_encoder": self.config.freeze_encoder,
            "freeze_embeddings_and_cross_kv": self.config.freeze_embeddings_and_cross_kv,
            "before": baseline.metrics if baseline else None,
            "after": after,
        }
        path = Path(self.config.output_dir) / EVAL_RESULTS_FILE
        path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def freeze_embeddings_and_cross_kv(model) -> None:
    """Stop training ``model``'s decoder embeddings (tied output layer included) and cross-attention keys/values."""
    decoder = model.model.decoder
    decoder.embed_tokens.requires_grad_(False)
    decoder.embed_positions.requires_grad_(False)
    for layer in decoder.layers:
        layer.encoder_attn.k_proj.requires_grad_(False)
        layer.encoder_attn.v_proj.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    LOGGER.info("Training %d parameters (embeddings and cross-attention keys/values frozen)", trainable)


def _time_budget_callback(minutes: float):
    from transformers import TrainerCallback

    class TimeBudgetCallback(TrainerCallback):
        """Ends training (with a final save) after the step that passes the time budget."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.started >= minutes * 60:
                LOGGER.info("Time budget of %.1f min reached at step %d; stopping", minutes, state.global_step)
                control.should_training_stop = True
                control.should_save = True
            return control

    return TimeBudgetCallback()


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
    """Train and eval splits per task (``{role: {task: PreparedSplit}}``), checked, with the bad-data policy applied."""
    splits = {"train": config.train_split}
    if config.eval_split:
        splits["eval"] = config.eval_split
    prepared, skipped = {}, 0
    # The file describes this run's data; a resumed run rewrites it.
    (Path(config.output_dir) / DATA_ISSUES_FILE).unlink(missing_ok=True)
    for role, split in splits.items():
        prepared[role] = {}
        for task in config.tasks:
            what = f"{config.data} split `{split}`" + (f" ({task})" if config.task == BOTH else "")
            issues = DataIssues(config.on_bad_data, what)
            others = tuple(s for s in (config.eval_split, "dev", "test") if s and s != split)
            samples = read_split(
                config.data,
                split,
                text_column=config.targets_column(task),
                audio_column=config.audio_column,
                issues=issues,
                other_splits=others,
            )
            limit = config.max_train_samples if role == "train" else config.max_eval_samples
            samples = samples[:limit] if limit else samples
            # The labels start with this task's prompt.
            tokenizer.set_prefix_tokens(language=config.language, task=task, predict_timestamps=False)
            split_data = prepare_split(samples, tokenizer, max_label_tokens=max_label_tokens, issues=issues)
            prepared[role][task] = split_data
            issues.finish(len(split_data.samples), Path(config.output_dir) / DATA_ISSUES_FILE)
            skipped += len(issues.issues)
            LOGGER.info("%s split `%s` (%s): %d clips", role, split, task, len(split_data.samples))
    tokenizer.set_prefix_tokens(language=config.language, task=config.tasks[0], predict_timestamps=False)
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
    output_dir.mkdir(parents=True, exist_ok=True)
    data, skipped = _read_data(config, processor.tokenizer, model.config.max_target_positions)

    # Evaluation (and anyone loading the output without arguments) decodes this language and task
    # (the last one of `both`: translation, what the speech-to-image pipeline asks for).
    generation.language, generation.task, generation.forced_decoder_ids = config.language, config.tasks[-1], None
    model.config.forced_decoder_ids = None
    model.config.use_cache = not config.gradient_checkpointing
    if config.freeze_encoder:
        model.model.encoder.requires_grad_(False)
    if config.freeze_embeddings_and_cross_kv:
        freeze_embeddings_and_cross_kv(model)
    # `both` is evaluated on each task here rather than by the Trainer (whose `generate` knows one task).
    own_eval = None
    if config.task == BOTH and "eval" in data:
        own_eval = _OwnEvaluation(config, model, processor, data["eval"])
    baseline = own_eval.run(0, "before") if own_eval and config.eval_on_start else None

    log = MetricsLog(output_dir / METRICS_FILE)
    resume_from = latest_checkpoint(output_dir) if config.resume else None
    if resume_from is not None:
        LOGGER.info("Resuming from %s", resume_from)
        # Rows logged after that checkpoint by an interrupted run are logged again.
        log.truncate_after(checkpoint_step(resume_from))
    metric = _ErrorRateMetric(processor.tokenizer)
    eval_data = data["eval"][config.task] if "eval" in data and own_eval is None else None
    train_data = merge_splits(list(data["train"].values()))
    if config.freeze_encoder:
        train_dataset = EncodedWhisperDataset(train_data, processor.feature_extractor, model.model.encoder)
    else:
        train_dataset = WhisperDataset(train_data, processor.feature_extractor)
    trainer = Seq2SeqTrainer(
        model=model,
        args=_training_arguments(config, precision, has_eval=eval_data is not None),
        train_dataset=train_dataset,
        eval_dataset=WhisperDataset(eval_data, processor.feature_extractor) if eval_data else None,
        data_collator=WhisperCollator(model.config.decoder_start_token_id),
        processing_class=processor,
        compute_metrics=metric if eval_data else None,
        callbacks=[_metrics_callback(log)]
        + ([_time_budget_callback(config.max_train_minutes)] if config.max_train_minutes else []),
    )
    started = time.monotonic()
    train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.monotonic() - started
    eval_metrics = {}
    if own_eval:
        eval_metrics = own_eval.run(train_output.global_step, "after").metrics
        own_eval.write_results(baseline, eval_metrics, train_output.global_step, train_seconds)
    elif eval_data:
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
        baseline_metrics=baseline.metrics if baseline else {},
        train_seconds=train_seconds,
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
    data.add_argument("--task", choices=TRAINING_TASKS, default=_default("task"))
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
    optim.add_argument("--max-train-minutes", type=float, help="stop after the step that passes this training time")
    optim.add_argument("--gradient-checkpointing", action="store_true", help="less activation memory, slower")
    optim.add_argument(
        "--freeze-encoder", action="store_true", help="train the decoder only, encoding each clip once (CPU budgets)"
    )
    optim.add_argument(
        "--freeze-embeddings-and-cross-kv",
        action="store_true",
        help="also keep the decoder's embeddings (tied output layer) and cross-attention keys/values (CPU budgets)",
    )
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
    if result.eval_metrics and values.get("task") == BOTH:
        for label, metrics in (("before", result.baseline_metrics), ("after", result.eval_metrics)):
            if metrics:
                print(
                    f"{label}: WER {metrics['transcribe_wer']:.2%}, CER {metrics['transcribe_cer']:.2%}, "
                    f"chrF {metrics['translate_chrf']:.1f}, BLEU {metrics['translate_bleu']:.1f}"
                )
        print(f"{result.global_step} steps in {result.train_seconds / 60:.1f} min")
    elif result.eval_metrics:
        print(
            f"step {result.global_step}: WER {result.eval_metrics['wer']:.2%}, CER {result.eval_metrics['cer']:.2%}, "
            f"eval loss {result.eval_metrics['loss']:.4f}"
        )
    if result.skipped_samples:
        print(f"skipped {result.skipped_samples} unusable sample(s): {result.output_dir / DATA_ISSUES_FILE}")
    print(f"checkpoint: {result.output_dir} (convert with `s2i convert --whisper {result.output_dir}`)")
    return 0
