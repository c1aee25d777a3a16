"""What the trainers share: bad-data policy, text normalisation and error rates, metrics log, precision, checkpoints.

Bad data: every sample is checked before training starts. Each problem is logged
with the file it concerns (and the metadata line), written to
``<output>/data_issues.tsv`` and, by the ``skip`` policy (default), the sample is
left out; the ``error`` policy refuses the whole run instead, listing every
problem at once. A run with no usable sample is always refused. Nothing stops
half-way through training without naming the file and the reason.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path

LOGGER = logging.getLogger(__name__)

SKIP = "skip"
ERROR = "error"
BAD_DATA_POLICIES = (SKIP, ERROR)
# How many problems an error message lists before "... and N more".
MAX_LISTED_ISSUES = 20

AUTO = "auto"
NO = "no"
FP16 = "fp16"
BF16 = "bf16"
MIXED_PRECISION = (AUTO, NO, FP16, BF16)

METRICS_FILE = "metrics.csv"
DATA_ISSUES_FILE = "data_issues.tsv"
METRICS_COLUMNS = ("step", "split", "name", "value")
CHECKPOINT_PREFIX = "checkpoint-"


class DataError(ValueError):
    """Training data cannot be used; the message names the files and the reasons."""


@dataclasses.dataclass(frozen=True)
class DataIssue:
    """One unusable sample: the file (or metadata line) it concerns and why."""

    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


class DataIssues:
    """Collects the problems found while reading a data set and applies the bad-data policy.

    Args:
        policy: ``skip`` (log, record and leave the sample out) or ``error`` (refuse the run).
        what: What is being read, for messages (``"Common Voice train split"``).
    """

    def __init__(self, policy: str, what: str) -> None:
        check_choice("on_bad_data", policy, BAD_DATA_POLICIES)
        self.policy = policy
        self.what = what
        self.issues: list[DataIssue] = []

    def add(self, source: str | Path, reason: str) -> None:
        """Record that the sample from ``source`` is unusable because of ``reason``."""
        issue = DataIssue(str(source), reason)
        self.issues.append(issue)
        if self.policy == SKIP:
            LOGGER.warning("Skipping %s", issue)

    def finish(self, kept: int, report: Path | None = None) -> None:
        """Apply the policy once every sample was looked at.

        Args:
            kept: How many samples are usable.
            report: TSV file the issues are appended to (``source``, ``reason``).

        Raises:
            DataError: The policy is ``error`` and there are issues, or nothing is usable.
        """
        if report is not None and self.issues:
            write_data_issues(report, self.what, self.issues)
        if self.issues and self.policy == ERROR:
            raise DataError(
                f"{self.what}: {len(self.issues)} unusable sample(s) and `on_bad_data` is `error`:\n"
                + format_issues(self.issues)
            )
        if kept == 0:
            detail = f":\n{format_issues(self.issues)}" if self.issues else "."
            raise DataError(f"{self.what} has no usable sample{detail}")
        if self.issues:
            LOGGER.warning(
                "%s: skipped %d unusable sample(s), kept %d%s",
                self.what,
                len(self.issues),
                kept,
                f" (listed in {report})" if report else "",
            )


def format_issues(issues: list[DataIssue]) -> str:
    """One line per issue, at most :data:`MAX_LISTED_ISSUES`."""
    lines = [f"  {issue}" for issue in issues[:MAX_LISTED_ISSUES]]
    if len(issues) > MAX_LISTED_ISSUES:
        lines.append(f"  ... and {len(issues) - MAX_LISTED_ISSUES} more")
    return "\n".join(lines)


def write_data_issues(path: Path, what: str, issues: Iterable[DataIssue]) -> None:
    """Append ``issues`` to the TSV ``path`` (columns ``data``, ``source``, ``reason``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        if new:
            writer.writerow(("data", "source", "reason"))
        for issue in issues:
            writer.writerow((what, issue.source, issue.reason.replace("\n", " ")))


def read_data_issues(path: Path) -> list[dict[str, str]]:
    """The rows of a ``data_issues.tsv``."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def check_choice(field: str, value: str, choices: Iterable[str]) -> None:
    """Raise a ``ValueError`` naming ``field`` when ``value`` is not one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"`{field}` must be one of {list(choices)}, got {value!r}.")


def check_positive(field: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise a ``ValueError`` naming ``field`` unless ``value`` is > 0 (or >= 0)."""
    if not (value >= 0 if allow_zero else value > 0) or (isinstance(value, float) and math.isnan(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{field}` must be {bound}, got {value!r}.")


# --- Text normalisation and error rates -------------------------------------------------------

_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """The normalisation both sides of WER/CER go through.

    Unicode NFC, case folding, punctuation (Unicode categories ``P*``, which
    include the danda ``।``) and symbols (``S*``) replaced by spaces, format
    characters (``Cf``: zero-width joiner/non-joiner) removed, whitespace
    collapsed. Combining marks (``M*``: Devanagari matras, virama, nukta,
    anusvara) are **kept**: Whisper's ``BasicTextNormalizer`` replaces them by
    spaces, which splits Hindi words apart and makes WER meaningless.
    """
    out = []
    for char in unicodedata.normalize("NFC", text).casefold():
        category = unicodedata.category(char)
        if category == "Cf":
            continue
        out.append(" " if category[0] in "PS" else char)
    return _SPACES.sub(" ", "".join(out)).strip()


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus word and character error rates (jiwer) after :func:`normalize_text`.

    Pairs whose normalised reference is empty are left out (they cannot be scored).

    Returns:
        ``{"wer": ..., "cer": ...}`` as fractions (0.32 is 32 %).
    """
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses.")
    pairs = [(normalize_text(r), normalize_text(h)) for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        raise ValueError("No reference with text left after normalisation; cannot compute WER/CER.")
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


# --- Metrics log --------------------------------------------------------------------------------


class MetricsLog:
    """Long-format CSV log of metrics (``step,split,name,value``), appended to across resumed runs."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        """Append one row per numeric metric."""
        rows = [
            (step, split, name, repr(float(value)))
            for name, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        ]
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file()
        with self.path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            if new:
                writer.writerow(METRICS_COLUMNS)
            writer.writerows(rows)

    def truncate_after(self, step: int) -> None:
        """Drop the rows logged after ``step`` (an interrupted run's, before it is resumed from ``step``)."""
        if not self.path.is_file():
            return
        with self.path.open(newline="", encoding="utf-8") as f:
            rows = [row for row in csv.DictReader(f) if int(row["step"]) <= step]
        with self.path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


def read_metrics(path: Path, split: str | None = None, name: str | None = None) -> list[tuple[int, str, str, float]]:
    """Rows ``(step, split, name, value)`` of a metrics CSV, optionally filtered."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        rows = [(int(r["step"]), r["split"], r["name"], float(r["value"])) for r in csv.DictReader(f)]
    return [r for r in rows if (split is None or r[1] == split) and (name is None or r[2] == name)]


# --- Devices, precision, checkpoints --------------------------------------------------------------


def resolve_mixed_precision(requested: str) -> str:
    """``no``, ``fp16`` or ``bf16`` for the device present; checked before any heavy work.

    ``auto`` picks ``bf16`` on a CUDA GPU that supports it, ``fp16`` on other
    CUDA GPUs and ``no`` on CPU. ``fp16``/``bf16`` without a CUDA GPU are
    refused: CPU autocast would be slow and is not what these options mean.
    """
    import torch

    check_choice("mixed_precision", requested, MIXED_PRECISION)
    cuda = torch.cuda.is_available()
    if requested == AUTO:
        if not cuda:
            return NO
        return BF16 if torch.cuda.is_bf16_supported() else FP16
    if requested in (FP16, BF16) and not cuda:
        raise ValueError(
            f"`mixed_precision` {requested!r} needs a CUDA GPU and none is available; use `no` (or `auto`) on CPU."
        )
    if requested == BF16 and not torch.cuda.is_bf16_supported():
        raise ValueError("`mixed_precision` 'bf16' is not supported by this GPU; use `fp16`.")
    return requested


def checkpoint_step(path: Path) -> int | None:
    """N for a folder named ``checkpoint-N``, else ``None``."""
    suffix = Path(path).name.removeprefix(CHECKPOINT_PREFIX)
    return int(suffix) if Path(path).name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The ``checkpoint-N`` folder of ``output_dir`` with the largest N, if any."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = [(checkpoint_step(p), p) for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return max(found)[1] if found else None


def prune_checkpoints(output_dir: Path, keep: int | None) -> None:
    """Delete all but the ``keep`` newest ``checkpoint-N`` folders (``None`` keeps all)."""
    import shutil

    if keep is None:
        return
    found = sorted(
        (checkpoint_step(p), p) for p in Path(output_dir).iterdir() if p.is_dir() and checkpoint_step(p) is not None
    )
    for _, path in found[: max(0, len(found) - keep)]:
        LOGGER.info("Deleting old checkpoint %s", path)
        shutil.rmtree(path)
