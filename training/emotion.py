"""Train the speech emotion classifier on a RAVDESS-layout corpus (``s2i train emotion --data DIR``).

* Data: ``Actor_XX/MM-VV-EE-II-SS-RR-AA.wav`` (see :mod:`s2i.stages.emotion.ravdess`),
  split by actor so no speaker is in two splits; audio is resampled to 16 kHz once.
* Features: Whisper's log-mel front end, cut to the clip (what serving computes).
* Augmentation (training split only, drawn anew each epoch): speed (resampling, so
  pitch and tempo move together, as Kaldi's speed perturbation), gain, white noise.
* Batches: clips of similar length are batched together and cut to the shortest
  clip of the batch at a random offset (the graph has no padding mask, and a
  random crop is one more augmentation). Validation and test see whole clips.
* Loss: cross-entropy weighted by inverse class frequency (neutral has half the
  clips of the other emotions in RAVDESS).
* Early stopping on validation macro F1; the best epoch's weights are kept.
* Output folder: the checkpoint (``config.json``, ``model.safetensors``,
  ``preprocessor_config.json``, ready for ``s2i convert --emotion``),
  ``metrics.json`` (macro F1, accuracy, per-class F1, confusion matrix per split)
  and ``confusion_matrix.png`` (test split).

Everything is seeded; on the same machine and thread count a run is repeatable.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from s2i.audio import MODEL_SAMPLE_RATE_HZ, resample
from s2i.stages.emotion.config import EMOTIONS, EmotionConfig
from s2i.stages.emotion.features import log_mel_features
from s2i.stages.emotion.modeling import EmotionClassifier
from s2i.stages.emotion.ravdess import ActorSplit, RavdessClip, scan_ravdess, split_by_actor

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Waveform augmentation of the training split.

    Attributes:
        speed_range: Speed factors are drawn uniformly from this range (1.0 = unchanged).
        gain_db: Gains are drawn uniformly from ``[-gain_db, gain_db]``.
        noise_probability: Chance of adding white noise to a clip.
        snr_db_range: Signal-to-noise ratio of the added noise.
    """

    speed_range: tuple[float, float] = (0.92, 1.08)
    gain_db: float = 6.0
    noise_probability: float = 0.5
    snr_db_range: tuple[float, float] = (15.0, 35.0)

    def __post_init__(self) -> None:
        low, high = self.speed_range
        if not 0.5 <= low <= high <= 2.0:
            raise ValueError(f"`speed_range` must lie within [0.5, 2.0] with low <= high, got {self.speed_range}.")
        if self.gain_db < 0 or not 0 <= self.noise_probability <= 1:
            raise ValueError(
                f"`gain_db` must be >= 0 and `noise_probability` in [0, 1], got {self.gain_db}, "
                f"{self.noise_probability}."
            )


def change_speed(samples: np.ndarray, factor: float) -> np.ndarray:
    """Play ``samples`` ``factor`` times faster (shorter and higher for ``factor > 1``)."""
    if abs(factor - 1.0) < 1e-3:
        return samples
    # Resampling from rate*factor to rate: in steps of 1 % so the polyphase ratio stays small.
    percent = round(factor * 100)
    return resample(samples, percent * 160, 100 * 160)


def apply_gain(samples: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale by ``gain_db`` decibels, clipping to ``[-1, 1]``."""
    return np.clip(samples * np.float32(10 ** (gain_db / 20)), -1.0, 1.0).astype(np.float32)


def add_noise(samples: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white noise at ``snr_db`` below the clip's mean power."""
    power = float(np.mean(samples.astype(np.float64) ** 2)) or 1e-10
    noise = rng.standard_normal(samples.shape[0]) * np.sqrt(power / 10 ** (snr_db / 10))
    return (samples + noise).astype(np.float32)


def augment(samples: np.ndarray, rng: np.random.Generator, config: Augmentation) -> np.ndarray:
    """Speed, then gain, then (sometimes) noise."""
    samples = change_speed(samples, float(rng.uniform(*config.speed_range)))
    samples = apply_gain(samples, float(rng.uniform(-config.gain_db, config.gain_db)))
    if rng.random() < config.noise_probability:
        samples = add_noise(samples, float(rng.uniform(*config.snr_db_range)), rng)
    return samples


def class_weights(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Inverse-frequency weights ``N / (C * n_c)``; a class absent from ``labels`` gets weight 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


# Metrics ------------------------------------------------------------------------------------------------------------


def confusion_matrix(truth: Sequence[int], predicted: Sequence[int], num_classes: int) -> np.ndarray:
    """``[true class, predicted class]`` counts."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def f1_per_class(matrix: np.ndarray) -> np.ndarray:
    """F1 of each class from a confusion matrix (0 where a class is never true nor predicted)."""
    true_positive = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)
    return np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Scores of one split."""

    macro_f1: float
    accuracy: float
    per_class_f1: dict[str, float]
    confusion: list[list[int]]
    num_clips: int

    @classmethod
    def from_predictions(cls, truth: Sequence[int], predicted: Sequence[int], labels: Sequence[str]) -> Evaluation:
        """Scores of ``predicted`` against ``truth`` (class indices)."""
        matrix = confusion_matrix(truth, predicted, len(labels))
        # Macro F1 over the classes present in the split's truth (sklearn's default averages
        # over every label seen in truth or predictions; RAVDESS splits hold all 8).
        present = matrix.sum(axis=1) > 0
        f1 = f1_per_class(matrix)
        return cls(
            macro_f1=float(f1[present].mean()) if present.any() else 0.0,
            accuracy=float(np.trace(matrix) / max(1, matrix.sum())),
            per_class_f1={label: float(value) for label, value in zip(labels, f1, strict=True)},
            confusion=matrix.tolist(),
            num_clips=int(matrix.sum()),
        )


def chance_macro_f1(num_classes: int = len(EMOTIONS)) -> float:
    """Expected macro F1 of uniform random guessing on balanced classes: ``1 / num_classes``."""
    return 1.0 / num_classes


def render_confusion_png(matrix: np.ndarray, labels: Sequence[str], path: Path, title: str = "") -> Path:
    """Draw a row-normalised confusion matrix with counts as a PNG (Pillow; no matplotlib needed)."""
    from PIL import Image, ImageDraw, ImageFont

    matrix = np.asarray(matrix)
    cell, left, top = 56, 90, 60
    size = len(labels)
    image = Image.new("RGB", (left + cell * size + 20, top + cell * size + 70), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64), where=rows > 0)
    for i in range(size):
        for j in range(size):
            shade = int(255 - 200 * share[i, j])
            x, y = left + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, 255), outline="gray")
            draw.text((x + cell // 2, y + cell // 2), str(int(matrix[i, j])), fill="black", font=font, anchor="mm")
        draw.text((left - 6, top + i * cell + cell // 2), labels[i], fill="black", font=font, anchor="rm")
        draw.text(
            (left + i * cell + cell // 2, top + size * cell + 8), labels[i][:7], fill="black", font=font, anchor="mt"
        )
    draw.text((left, 10), title or "confusion matrix", fill="black", font=font)
    draw.text((left, 30), "rows: true emotion, columns: predicted", fill="black", font=font)
    draw.text((left, top + size * cell + 30), "predicted ->", fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# Training -----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Everything a run depends on.

    Attributes:
        model: The classifier's architecture.
        epochs: Most epochs.
        patience: Stop after this many epochs without a better validation macro F1.
        batch_size: Clips per step.
        learning_rate: AdamW's learning rate.
        weight_decay: AdamW's weight decay.
        augmentation: Augmentation of the training split.
        seed: Seeds the split, augmentation, batching and initialisation.
        val_actors: Validation actors; with ``test_actors``, replaces the seeded split.
        test_actors: Held-out test actors.
        threads: torch's intra-op threads (results depend on it in the last bits).
    """

    model: EmotionConfig = EmotionConfig(architecture="bilstm", hidden_size=64, num_layers=1)
    epochs: int = 40
    patience: int = 8
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-2
    augmentation: Augmentation = Augmentation()
    seed: int = 0
    val_actors: tuple[int, ...] = ()
    test_actors: tuple[int, ...] = ()
    threads: int = 1

    def __post_init__(self) -> None:
        for field in ("epochs", "patience", "batch_size", "threads"):
            if getattr(self, field) < 1:
                raise ValueError(f"`{field}` must be at least 1, got {getattr(self, field)}.")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be positive, got {self.learning_rate}.")
        if bool(self.val_actors) != bool(self.test_actors):
            raise ValueError("Give both `val_actors` and `test_actors`, or neither (a seeded split is used then).")


@dataclasses.dataclass
class TrainingResult:
    """What :func:`train_emotion` produced."""

    checkpoint: Path
    split: ActorSplit
    best_epoch: int
    epochs_run: int
    train_seconds: float
    val: Evaluation
    test: Evaluation
    history: list[dict]
    confusion_png: Path


@dataclasses.dataclass
class _Split:
    clips: list[np.ndarray]  # 16 kHz samples
    labels: list[int]


def load_split(clips: Sequence[RavdessClip], labels: Sequence[str]) -> _Split:
    """Read, downmix and resample clips to 16 kHz; labels as indices into ``labels``."""
    import soundfile

    index = {label: i for i, label in enumerate(labels)}
    samples, targets = [], []
    for clip in clips:
        audio, rate = soundfile.read(clip.path, dtype="float32", always_2d=True)
        samples.append(resample(audio.mean(axis=1).astype(np.float32), int(rate), MODEL_SAMPLE_RATE_HZ))
        targets.append(index[clip.name.label])
    return _Split(samples, targets)


def _batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffled batches of similar length: shuffle, sort within pools of 8 batches, cut, shuffle batches."""
    order = rng.permutation(len(lengths))
    pool = batch_size * 8
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _crop_stack(features: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    frames = min(f.shape[-1] for f in features)
    crops = []
    for f in features:
        offset = int(rng.integers(0, f.shape[-1] - frames + 1))
        crops.append(f[:, :, offset : offset + frames])
    return np.concatenate(crops)


def predict(model: EmotionClassifier, features: Sequence[np.ndarray]) -> np.ndarray:
    """Class indices for whole clips (equal lengths batched, as served)."""
    import torch

    from s2i.stages.emotion.runtime import group_by_frames

    predicted = np.zeros(len(features), dtype=np.int64)
    model.eval()
    with torch.no_grad():
        for indices in group_by_frames(features, max_batch_size=64):
            logits = model(torch.from_numpy(np.concatenate([features[i] for i in indices])))
            predicted[indices] = logits.argmax(dim=-1).numpy()
    return predicted


def evaluate(model: EmotionClassifier, features: Sequence[np.ndarray], labels: Sequence[int]) -> Evaluation:
    """Macro F1, accuracy and confusion matrix of ``model`` on whole clips."""
    return Evaluation.from_predictions(labels, predict(model, features), model.config.labels)


def _resolve_split(clips: Sequence[RavdessClip], config: TrainingConfig) -> ActorSplit:
    actors = sorted({clip.name.actor for clip in clips})
    if config.test_actors:
        split = ActorSplit(
            train=tuple(a for a in actors if a not in set(config.val_actors) | set(config.test_actors)),
            val=tuple(config.val_actors),
            test=tuple(config.test_actors),
        )
        missing = sorted((set(split.val) | set(split.test)) - set(actors))
        if missing:
            raise ValueError(f"Actors {missing} of `val_actors`/`test_actors` are not in the corpus ({actors}).")
        return split
    return split_by_actor(actors, seed=config.seed)


def train_emotion(data_dir: Path, output_dir: Path, config: TrainingConfig = TrainingConfig()) -> TrainingResult:
    """Train on the RAVDESS-layout corpus in ``data_dir``; write checkpoint, metrics and PNG to ``output_dir``."""
    import torch
    from transformers import WhisperFeatureExtractor

    from s2i.stages.emotion.checkpoint import save_emotion_checkpoint

    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    clips = scan_ravdess(data_dir)
    split = _resolve_split(clips, config)
    labels = config.model.labels
    LOGGER.info("%d clips; actors train %s, val %s, test %s", len(clips), split.train, split.val, split.test)
    data = {name: load_split(split.of(clips, name), labels) for name in ("train", "val", "test")}
    extractor = WhisperFeatureExtractor(feature_size=config.model.num_mel_bins)
    fixed = {name: [log_mel_features(samples, extractor) for samples in data[name].clips] for name in ("val", "test")}
    model = EmotionClassifier(config.model)
    weights = torch.from_numpy(class_weights(data["train"].labels, config.model.num_labels))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    rng = np.random.default_rng(config.seed)
    targets = np.asarray(data["train"].labels)
    best_f1, best_epoch, best_state, stale = -1.0, 0, None, 0
    history = []
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        features = [log_mel_features(augment(s, rng, config.augmentation), extractor) for s in data["train"].clips]
        model.train()
        total = 0.0
        for batch in _batches([f.shape[-1] for f in features], config.batch_size, rng):
            inputs = torch.from_numpy(_crop_stack([features[i] for i in batch], rng))
            loss = loss_fn(model(inputs), torch.from_numpy(targets[batch]))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        scheduler.step()
        val = evaluate(model, fixed["val"], data["val"].labels)
        history.append({"epoch": epoch, "train_loss": total / len(features), "val_macro_f1": val.macro_f1})
        LOGGER.info("epoch %d: loss %.3f, val macro F1 %.3f", epoch, total / len(features), val.macro_f1)
        if val.macro_f1 > best_f1:
            best_f1, best_epoch, stale = val.macro_f1, epoch, 0
            best_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                LOGGER.info("Early stop after epoch %d (best %d)", epoch, best_epoch)
                break
    train_seconds = time.perf_counter() - started
    model.load_state_dict(best_state)
    model.eval()
    val = evaluate(model, fixed["val"], data["val"].labels)
    test = evaluate(model, fixed["test"], data["test"].labels)
    output_dir = Path(output_dir)
    save_emotion_checkpoint(model, output_dir)
    png = render_confusion_png(
        np.asarray(test.confusion),
        labels,
        output_dir / "confusion_matrix.png",
        title=f"held-out actors {list(split.test)}: macro F1 {test.macro_f1:.3f}, accuracy {test.accuracy:.3f}",
    )
    result = TrainingResult(output_dir, split, best_epoch, len(history), train_seconds, val, test, history, png)
    (output_dir / "metrics.json").write_text(json.dumps(_metrics(result, config), indent=2) + "\n")
    return result


def _metrics(result: TrainingResult, config: TrainingConfig) -> dict:
    return {
        "labels": list(config.model.labels),
        "split": dataclasses.asdict(result.split),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.train_seconds, 2),
        "chance_macro_f1": chance_macro_f1(config.model.num_labels),
        "val": dataclasses.asdict(result.val),
        "test": dataclasses.asdict(result.test),
        "history": result.history,
        "config": dataclasses.asdict(config),
    }


# Voices the synthetic corpus's 12 actors do not use: espeak-ng's default Hindi voice (what the demo
# speaks with) and the variants past the sixth male and female actor.
UNSEEN_VOICES = ("hi", "hi+m7", "hi+Annie")
SPOKEN_SCORES_FILE = "spoken_scenes.json"
INTENSITIES = ("normal", "strong")


def check_voices_unheard(actors: Sequence[int], voices: Sequence[str] = UNSEEN_VOICES) -> None:
    """Refuse to score with ``voices`` that the synthetic corpus's ``actors`` speak with.

    Raises:
        ValueError: An actor's voice is one of ``voices`` (the message names the actor count that avoids them).
    """
    from s2i.stages.emotion.ravdess import actor_variant

    heard = {f"hi+{actor_variant(actor)}": actor for actor in actors}
    clashes = sorted(voice for voice in voices if voice in heard)
    if clashes:
        clashing = sorted(heard[voice] for voice in clashes)
        raise ValueError(
            f"Scoring speaks with voices the classifier must never have heard ({', '.join(voices)}), but actors "
            f"{clashing} of the synthetic corpus speak with {', '.join(clashes)}: synthesize at most "
            f"{clashing[0] - 1} actors to score on unheard voices."
        )


@dataclasses.dataclass
class SpokenScores:
    """How often a classifier names the emotion sentences were spoken with.

    Attributes:
        per_emotion: Accuracy (0-1) of each emotion's clips.
        accuracy: Over all clips.
        predictions: ``(text, voice, emotion spoken, emotion predicted)`` per clip.
    """

    per_emotion: dict[str, float]
    accuracy: float
    predictions: list[tuple[str, str, str, str]]


def score_spoken_sentences(
    checkpoint: Path,
    texts: Sequence[str],
    scratch: Path,
    *,
    emotions: Sequence[str] = EMOTIONS,
    voices: Sequence[str] = UNSEEN_VOICES,
    strong: bool = False,
) -> SpokenScores:
    """Speak every text with every emotion's prosody (voices in turn) and classify each clip with ``checkpoint``.

    The demo makes its input the same way (:func:`~s2i.stages.emotion.ravdess.speak_with_emotion`,
    ``strong`` as there), so this says how plausible the served emotion is on sentences the
    classifier never heard.
    """
    import soundfile

    from s2i.stages.emotion.ravdess import speak_with_emotion
    from s2i.stages.emotion.reference import EmotionReference

    if not texts or not voices:
        raise ValueError("`texts` and `voices` must not be empty.")
    reference = EmotionReference(checkpoint)
    predictions = []
    for i, text in enumerate(texts):
        for j, emotion in enumerate(emotions):
            voice = voices[(i + j) % len(voices)]
            wav = speak_with_emotion(
                text, emotion, Path(scratch) / f"{i:02d}-{emotion}.wav", voice=voice, strong=strong
            )
            samples, rate = soundfile.read(wav, dtype="float32", always_2d=True)
            audio = resample(samples.mean(axis=1).astype(np.float32), int(rate), MODEL_SAMPLE_RATE_HZ)
            predictions.append((text, voice, emotion, reference.label(audio)))
    per_emotion = {
        emotion: float(np.mean([p[3] == emotion for p in predictions if p[2] == emotion])) for emotion in emotions
    }
    accuracy = float(np.mean([p[2] == p[3] for p in predictions]))
    return SpokenScores(per_emotion, accuracy, predictions)


def score_scene_phrases(checkpoint: Path, count: int) -> dict[str, SpokenScores]:
    """:func:`score_spoken_sentences` on ``count`` held-out Hindi scene phrases at both RAVDESS intensities.

    ``{"normal": ..., "strong": ...}``, also written to ``spoken_scenes.json``. The phrases are the
    Hindi corpus's held-out ones (``एक लाल त्रिकोण`` ...), never in the emotion corpus.
    """
    import tempfile

    from s2i.training.hindi_corpus import held_out_scene_phrases

    phrases = held_out_scene_phrases()
    if not 1 <= count <= len(phrases):
        raise ValueError(f"`count` must be between 1 and {len(phrases)} (the held-out scene phrases), got {count}.")
    texts = [pair.hindi for pair in phrases[:count]]
    scores = {}
    for intensity in INTENSITIES:
        with tempfile.TemporaryDirectory(prefix="s2i-emotion-") as scratch:
            scores[intensity] = score_spoken_sentences(checkpoint, texts, Path(scratch), strong=intensity == "strong")
    report = {
        "texts": texts,
        "voices": list(UNSEEN_VOICES),
        **{intensity: dataclasses.asdict(result) for intensity, result in scores.items()},
    }
    (Path(checkpoint) / SPOKEN_SCORES_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return scores
