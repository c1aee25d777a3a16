"""Speech data for Whisper fine-tuning: Common Voice release folders and Hugging Face ``datasets`` directories.

Common Voice layout (one language of a release)::

    cv-corpus-*/hi/
        train.tsv  dev.tsv  test.tsv  validated.tsv  ...   # tab-separated, header row
        clips/common_voice_hi_*.mp3

The TSVs' ``path`` column names a file in ``clips/`` and ``sentence`` holds the
Hindi transcript. For ``translate`` the English targets come from another
column (``translation`` by default, as CoVoST 2's TSVs have it, joined on
``path``). A split ``X`` is read from ``X.tsv``; without ``train.tsv`` the
train split is ``validated.tsv`` minus the clips of ``dev.tsv`` and ``test.tsv``.

Audio is decoded with ``soundfile`` (libsndfile): WAV, FLAC, OGG/Vorbis and,
with libsndfile >= 1.1 (the ``soundfile`` wheels bundle 1.2), MP3 as Common
Voice ships it. Stereo is averaged to mono; clips are resampled to 16 kHz;
clips shorter than 0.1 s or longer than 30 s are unusable (Whisper sees one
30 s window).

A Hugging Face directory is what ``DatasetDict.save_to_disk`` writes, with an
audio column (an ``Audio`` feature, or ``{"array", "sampling_rate"}`` /
``{"bytes", "path"}`` structs, or file paths) and a text column.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from pathlib import Path

import numpy as np

from s2i.audio import MODEL_SAMPLE_RATE_HZ, prepare_audio
from s2i.errors import InvalidInputError
from s2i.training.common import DataError, DataIssues, normalize_text

LOGGER = logging.getLogger(__name__)

TRANSCRIBE = "transcribe"
TRANSLATE = "translate"
TASKS = (TRANSCRIBE, TRANSLATE)
# Both tasks at once: every clip twice, once per task prompt (multitask, as Whisper itself was trained).
BOTH = "both"
TRAINING_TASKS = (*TASKS, BOTH)
# Where each task's targets are read from unless `text_column` is given.
DEFAULT_TEXT_COLUMNS = {TRANSCRIBE: "sentence", TRANSLATE: "translation"}
DEFAULT_AUDIO_COLUMN = "audio"
CLIPS_FOLDER = "clips"
COMMON_VOICE = "common_voice"
HF_DATASETS = "hf_datasets"
# Files `save_to_disk` writes at the top of a Dataset / DatasetDict folder.
_HF_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")


class ClipError(ValueError):
    """An audio clip cannot be used (unreadable, too short or long, not finite)."""


@dataclasses.dataclass(frozen=True)
class SpeechSample:
    """One clip and its target text; exactly one of ``path``, ``data``, ``array`` holds the audio.

    Attributes:
        source: What messages call it (the clip's file name, or ``split[row]``).
        text: The target text (transcript or translation).
        path: An audio file.
        data: An encoded audio file's bytes.
        array: Decoded samples, with ``sample_rate_hz``.
    """

    source: str
    text: str
    path: Path | None = None
    data: bytes | None = None
    array: np.ndarray | None = None
    sample_rate_hz: int | None = None


def load_audio(sample: SpeechSample) -> np.ndarray:
    """Decode ``sample``'s audio to float32 mono at 16 kHz.

    Raises:
        ClipError: Unreadable, or outside what Whisper takes; the message says which.
    """
    import soundfile

    if sample.array is not None:
        samples, rate = np.asarray(sample.array, dtype=np.float32), sample.sample_rate_hz
        if rate is None:
            raise ClipError("has samples but no sampling rate")
    else:
        source = sample.path if sample.path is not None else io.BytesIO(sample.data or b"")
        try:
            samples, rate = soundfile.read(source, dtype="float32", always_2d=False)
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            raise ClipError(
                f"unreadable audio (libsndfile: {e}); libsndfile {soundfile.__libsndfile_version__} reads "
                "WAV, FLAC, OGG and MP3 (convert others with `sox in.x out.wav`)"
            ) from e
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    try:
        return prepare_audio(np.ascontiguousarray(samples, dtype=np.float32), int(rate))
    except InvalidInputError as e:
        # Drop the serving field name ("`audio_samples`: ...") from the message.
        raise ClipError(str(e).split(": ", 1)[-1]) from e


def detect_layout(root: Path) -> str:
    """:data:`COMMON_VOICE` or :data:`HF_DATASETS` for the data folder ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Data folder `{root}` does not exist.")
    if any((root / marker).is_file() for marker in _HF_MARKERS):
        return HF_DATASETS
    if any(root.glob("*.tsv")):
        return COMMON_VOICE
    raise DataError(
        f"`{root}` is neither a Common Voice folder (`train.tsv`, `test.tsv`, `clips/`) nor a "
        "Hugging Face `datasets` folder (written by `save_to_disk`)."
    )


def read_split(
    root: Path,
    split: str,
    *,
    text_column: str,
    issues: DataIssues,
    audio_column: str = DEFAULT_AUDIO_COLUMN,
    other_splits: tuple[str, ...] = (),
) -> list[SpeechSample]:
    """The samples of ``split`` in ``root`` (either layout); unusable rows go to ``issues``.

    Args:
        root: Common Voice or Hugging Face ``datasets`` folder.
        split: ``train``, ``dev``/``validation``, ``test``, ...
        text_column: Column of the target text.
        issues: Collects the rows that cannot be used.
        audio_column: Audio column of a ``datasets`` folder.
        other_splits: Common Voice splits whose clips are excluded when ``validated.tsv`` stands in for ``train``.
    """
    if detect_layout(root) == HF_DATASETS:
        return read_hf_split(root, split, text_column=text_column, audio_column=audio_column, issues=issues)
    root = Path(root)
    tsv = root / f"{split}.tsv"
    if tsv.is_file():
        return read_common_voice_tsv(tsv, text_column=text_column, issues=issues)
    validated = root / "validated.tsv"
    if split == "train" and validated.is_file():
        excluded = set()
        for other in other_splits:
            if (root / f"{other}.tsv").is_file():
                excluded |= _tsv_paths(root / f"{other}.tsv")
        LOGGER.info(
            "No train.tsv in %s: training on validated.tsv minus %d clips of %s", root, len(excluded), other_splits
        )
        return read_common_voice_tsv(validated, text_column=text_column, issues=issues, exclude=excluded)
    present = sorted(p.name for p in root.glob("*.tsv"))
    raise DataError(f"`{tsv}` not found; `{root}` holds {present}.")


def _open_tsv(tsv: Path):
    # Common Voice TSVs are unquoted: a `"` inside a sentence is a literal character.
    handle = tsv.open(encoding="utf-8", newline="")
    return handle, csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)


def _tsv_paths(tsv: Path) -> set[str]:
    handle, reader = _open_tsv(tsv)
    with handle:
        return {(row.get("path") or "").strip() for row in reader} - {""}


def read_common_voice_tsv(
    tsv: Path, *, text_column: str, issues: DataIssues, exclude: set[str] | frozenset[str] = frozenset()
) -> list[SpeechSample]:
    """Rows of a Common Voice TSV whose clip exists and whose text is not empty after normalisation.

    Raises:
        DataError: The TSV lacks the ``path`` or ``text_column`` column.
    """
    clips = tsv.parent / CLIPS_FOLDER
    samples = []
    handle, reader = _open_tsv(tsv)
    with handle:
        columns = reader.fieldnames or []
        missing = [column for column in ("path", text_column) if column not in columns]
        if missing:
            raise DataError(
                f"`{tsv}` has no {missing} column(s); its columns are {columns}. "
                "Set `text_column` to the column holding the targets."
            )
        seen = set()
        for line, row in enumerate(reader, start=2):
            name = (row.get("path") or "").strip()
            where = f"{tsv.name} line {line}"
            if not name:
                issues.add(where, "no clip file name in the `path` column")
                continue
            if name in exclude:
                continue
            if name in seen:
                issues.add(f"{CLIPS_FOLDER}/{name} ({where})", "listed twice; the first row is used")
                continue
            seen.add(name)
            text = (row.get(text_column) or "").strip()
            if not normalize_text(text):
                issues.add(f"{CLIPS_FOLDER}/{name} ({where})", f"empty `{text_column}`")
                continue
            path = clips / name
            if not path.is_file():
                issues.add(f"{CLIPS_FOLDER}/{name} ({where})", f"file not found in {clips}")
                continue
            samples.append(SpeechSample(source=f"{CLIPS_FOLDER}/{name}", text=text, path=path))
    return samples


def read_hf_split(
    root: Path, split: str, *, text_column: str, audio_column: str, issues: DataIssues
) -> list[SpeechSample]:
    """Rows of split ``split`` of a ``DatasetDict`` saved with ``save_to_disk``.

    Audio is not decoded by ``datasets`` (whose decoder needs ``torchcodec``);
    the stored bytes or paths are read with ``soundfile`` like Common Voice clips.
    """
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            f"`{root}` is a Hugging Face `datasets` folder but `datasets` is not installed "
            "(`pip install 'speech2image-triton[datasets]'`)."
        ) from e
    loaded = datasets.load_from_disk(str(root))
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(
            f"`{root}` holds a single Dataset; save a DatasetDict with the splits to use (`{split}`, ...) "
            "so training and evaluation data stay apart."
        )
    if split not in loaded:
        raise DataError(f"`{root}` has the splits {sorted(loaded)}, not `{split}`.")
    dataset = loaded[split]
    missing = [column for column in (audio_column, text_column) if column not in dataset.column_names]
    if missing:
        raise DataError(
            f"Split `{split}` of `{root}` has no {missing} column(s); its columns are {dataset.column_names}."
        )
    if isinstance(dataset.features[audio_column], datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    samples = []
    for index, row in enumerate(dataset):
        audio, text = row[audio_column], (row[text_column] or "").strip()
        where = f"{split}[{index}]"
        sample = _hf_sample(root, where, audio, text)
        if isinstance(sample, str):
            issues.add(where, sample)
        elif not normalize_text(text):
            issues.add(sample.source, f"empty `{text_column}`")
        else:
            samples.append(sample)
    return samples


def _hf_sample(root: Path, where: str, audio, text: str) -> SpeechSample | str:
    """A sample from one ``datasets`` audio value, or the reason it has no audio."""
    if isinstance(audio, str):
        audio = {"path": audio}
    if not isinstance(audio, dict):
        return f"audio value of type {type(audio).__name__}; expected a path, bytes or an array"
    path = audio.get("path")
    source = f"{path} ({where})" if path else where
    if audio.get("array") is not None:
        return SpeechSample(source, text, array=np.asarray(audio["array"]), sample_rate_hz=audio.get("sampling_rate"))
    if audio.get("bytes"):
        return SpeechSample(source, text, data=audio["bytes"])
    if path:
        file = Path(path) if Path(path).is_absolute() else Path(root) / path
        return SpeechSample(source, text, path=file) if file.is_file() else f"audio file {path} not found"
    return "no audio (neither bytes, array nor path)"


@dataclasses.dataclass
class PreparedSplit:
    """Samples that decode and tokenize, with their label token ids."""

    samples: list[SpeechSample]
    labels: list[list[int]]


def prepare_split(
    samples: list[SpeechSample], tokenizer, *, max_label_tokens: int, issues: DataIssues
) -> PreparedSplit:
    """Decode every clip once and tokenize every target; unusable samples go to ``issues``.

    Args:
        samples: What :func:`read_split` returned.
        tokenizer: A Whisper tokenizer with its prefix tokens (language, task) set.
        max_label_tokens: The decoder's positions (``max_target_positions``).
        issues: Collects the unusable samples.
    """
    prepared = PreparedSplit([], [])
    for sample in samples:
        try:
            load_audio(sample)
        except ClipError as e:
            issues.add(sample.source, str(e))
            continue
        labels = tokenizer(sample.text).input_ids
        if len(labels) > max_label_tokens:
            issues.add(
                sample.source, f"target is {len(labels)} tokens with the prompt; the decoder takes {max_label_tokens}"
            )
            continue
        prepared.samples.append(sample)
        prepared.labels.append(labels)
    return prepared


class WhisperDataset:
    """A map-style dataset: log-mel ``input_features`` and ``labels`` per clip, decoded on access."""

    def __init__(self, prepared: PreparedSplit, feature_extractor) -> None:
        self.prepared = prepared
        self.feature_extractor = feature_extractor

    def __len__(self) -> int:
        return len(self.prepared.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.prepared.samples[index]
        try:
            audio = load_audio(sample)
        except ClipError as e:
            raise DataError(f"{sample.source}: {e} (it was readable when the data was checked; did it change?)") from e
        features = self.feature_extractor(audio, sampling_rate=MODEL_SAMPLE_RATE_HZ, return_tensors="np")
        return {"input_features": features.input_features[0], "labels": self.prepared.labels[index]}


class EncodedWhisperDataset:
    """Like :class:`WhisperDataset`, with the frozen encoder's output computed once per clip instead of features.

    With the encoder frozen its output never changes, so encoding each clip once
    (instead of in every epoch's forward pass) leaves only the decoder's work per
    step: on a CPU the encoder's 30 s window is most of the cost.
    """

    def __init__(self, prepared: PreparedSplit, feature_extractor, encoder, *, batch_size: int = 8) -> None:
        self.labels = prepared.labels
        self.states = encode_clips(prepared.samples, feature_extractor, encoder, batch_size=batch_size)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"encoder_outputs": self.states[index], "labels": self.labels[index]}


def encode_clips(samples: list[SpeechSample], feature_extractor, encoder, *, batch_size: int = 8) -> list:
    """The encoder's last hidden state (``[frames, d_model]`` tensors) of every clip; a clip twice is encoded once."""
    import torch

    unique: dict[str, int] = {}
    for sample in samples:
        unique.setdefault(sample.source, len(unique))
    by_source = {sample.source: sample for sample in samples}
    sources = list(unique)
    states: list = []
    with torch.inference_mode():
        for start in range(0, len(sources), batch_size):
            audio = [load_audio(by_source[source]) for source in sources[start : start + batch_size]]
            features = feature_extractor(audio, sampling_rate=MODEL_SAMPLE_RATE_HZ, return_tensors="pt")
            states.extend(encoder(features.input_features).last_hidden_state.clone())
            LOGGER.info("Encoded %d/%d clips", len(states), len(sources))
    return [states[unique[sample.source]] for sample in samples]


def merge_splits(splits: list[PreparedSplit]) -> PreparedSplit:
    """One split holding every sample and label of ``splits`` (e.g. the same clips with each task's targets)."""
    merged = PreparedSplit([], [])
    for split in splits:
        merged.samples.extend(split.samples)
        merged.labels.extend(split.labels)
    return merged


class WhisperCollator:
    """Stacks features (or precomputed encoder outputs) and pads labels with -100 (ignored by the loss).

    The tokenizer's labels start with ``<|startoftranscript|>``; the model
    prepends ``decoder_start_token_id`` itself when it shifts labels right, so
    that first token is dropped here.
    """

    def __init__(self, decoder_start_token_id: int) -> None:
        self.decoder_start_token_id = decoder_start_token_id

    def __call__(self, features: list[dict]) -> dict:
        """Batch a list of :class:`WhisperDataset` items."""
        import torch

        labels = [list(f["labels"]) for f in features]
        if all(label and label[0] == self.decoder_start_token_id for label in labels):
            labels = [label[1:] for label in labels]
        width = max(len(label) for label in labels)
        padded = torch.full((len(labels), width), -100, dtype=torch.long)
        for row, label in enumerate(labels):
            padded[row, : len(label)] = torch.tensor(label, dtype=torch.long)
        if "encoder_outputs" in features[0]:
            # A tuple, as the model's forward takes precomputed encoder outputs.
            return {"encoder_outputs": (torch.stack([f["encoder_outputs"] for f in features]),), "labels": padded}
        input_features = torch.from_numpy(np.stack([f["input_features"] for f in features]))
        return {"input_features": input_features, "labels": padded}
