"""Held-out evaluation of a Whisper checkpoint on both tasks: WER/CER of transcripts, chrF/BLEU of translations.

The encoder's output is computed once per clip and handed to ``generate`` for
each task (and, with a frozen encoder, for the model before and after
fine-tuning alike), so an evaluation costs one encoder pass per clip.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path

from s2i.training.common import error_rates, normalize_text
from s2i.training.translation_metrics import translation_scores
from s2i.training.whisper_data import TRANSCRIBE, TRANSLATE, SpeechSample

LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 96


@dataclasses.dataclass
class TaskEvaluation:
    """Scores of one checkpoint on held-out clips, and what it said.

    Attributes:
        metrics: ``transcribe_wer``/``transcribe_cer`` (fractions) and ``translate_chrf``/``translate_bleu`` (0–100),
            for the tasks evaluated.
        predictions: ``(task, reference, hypothesis)`` per clip and task.
    """

    metrics: dict[str, float]
    predictions: list[tuple[str, str, str]]


def generate_texts(model, tokenizer, states, *, language: str, task: str, batch_size: int, max_new_tokens: int):
    """Greedy decoding of ``task`` from precomputed encoder states (``[frames, d_model]`` tensors)."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    texts: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(states), batch_size):
            batch = torch.stack(states[start : start + batch_size])
            tokens = model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=batch),
                language=language,
                task=task,
                max_new_tokens=max_new_tokens,
                num_beams=1,
                do_sample=False,
            )
            texts.extend(text.strip() for text in tokenizer.batch_decode(tokens, skip_special_tokens=True))
    return texts


def evaluate_tasks(
    model,
    tokenizer,
    states: list,
    references: dict[str, list[str]],
    *,
    language: str = "hi",
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> TaskEvaluation:
    """Decode every task of ``references`` (``{task: one reference per state}``) and score it."""
    metrics: dict[str, float] = {}
    predictions: list[tuple[str, str, str]] = []
    for task, texts in references.items():
        if len(texts) != len(states):
            raise ValueError(f"`references[{task!r}]` has {len(texts)} texts for {len(states)} clips.")
        hypotheses = generate_texts(
            model, tokenizer, states, language=language, task=task, batch_size=batch_size, max_new_tokens=max_new_tokens
        )
        predictions += [(task, r, h) for r, h in zip(texts, hypotheses, strict=True)]
        if task == TRANSCRIBE:
            metrics.update({f"{task}_{k}": v for k, v in error_rates(texts, hypotheses).items()})
        elif task == TRANSLATE:
            metrics.update({f"{task}_{k}": v for k, v in translation_scores(texts, hypotheses).items()})
        LOGGER.info("%s: %s", task, {k: round(v, 4) for k, v in metrics.items() if k.startswith(task)})
    return TaskEvaluation(metrics, predictions)


def task_references(samples_by_task: dict[str, list[SpeechSample]]) -> tuple[list[SpeechSample], dict[str, list[str]]]:
    """The clips every task has (in the first task's order) and each task's reference text for them."""
    first = next(iter(samples_by_task.values()))
    texts = {task: {s.source: s.text for s in samples} for task, samples in samples_by_task.items()}
    clips = [s for s in first if all(s.source in by_source for by_source in texts.values())]
    return clips, {task: [by_source[s.source] for s in clips] for task, by_source in texts.items()}


def write_task_predictions(path: Path, predictions: list[tuple[str, str, str]]) -> None:
    """``eval_predictions.tsv`` with a ``task`` column (normalised text beside each transcript)."""
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(("task", "reference", "hypothesis", "reference_normalized", "hypothesis_normalized"))
        for task, reference, hypothesis in predictions:
            writer.writerow((task, reference, hypothesis, normalize_text(reference), normalize_text(hypothesis)))
