"""The RAVDESS release layout, splits by actor, and a synthetic corpus in that layout made with espeak-ng.

RAVDESS names every file ``Actor_XX/MM-VV-EE-II-SS-RR-AA.wav``:

========  ==============================================================
``MM``    modality: 01 audio-video, 02 video only, 03 audio only
``VV``    vocal channel: 01 speech, 02 song
``EE``    emotion: 01 neutral … 08 surprised (:data:`~s2i.stages.emotion.modeling.EMOTIONS`)
``II``    intensity: 01 normal, 02 strong (neutral has no strong intensity)
``SS``    statement: 01 "Kids are talking by the door", 02 "Dogs are sitting by the door"
``RR``    repetition: 01 or 02
``AA``    actor: 01-24; odd actors are male, even actors female
========  ==============================================================

RAVDESS cannot be downloaded here, so :func:`synthesize_corpus` writes a stand-in
in the same layout: each actor is an espeak-ng voice variant (``m1``… male for odd
actors, ``f1``… female for even ones), statement 01 is a Hindi sentence and 02 an
English one, and each emotion is a prosody (pitch level, pitch range, rate,
volume) applied with SSML; strong intensity doubles the distance from neutral.
It is a test of the training code, not a model of human emotion.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from s2i.stages.emotion.config import EMOTIONS

LOGGER = logging.getLogger(__name__)

FILENAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})\.wav$")
ACTOR_FOLDER = re.compile(r"^Actor_(\d{2})$")
AUDIO_ONLY = 3
SPEECH = 1


@dataclasses.dataclass(frozen=True)
class RavdessName:
    """The seven fields of a RAVDESS file name."""

    modality: int
    vocal_channel: int
    emotion: int
    intensity: int
    statement: int
    repetition: int
    actor: int

    def __post_init__(self) -> None:
        checks = {
            "modality": (self.modality, 1, 3),
            "vocal_channel": (self.vocal_channel, 1, 2),
            "emotion": (self.emotion, 1, len(EMOTIONS)),
            "intensity": (self.intensity, 1, 2),
            "statement": (self.statement, 1, 2),
            "repetition": (self.repetition, 1, 2),
            "actor": (self.actor, 1, 99),
        }
        for field, (value, low, high) in checks.items():
            if not low <= value <= high:
                raise ValueError(f"`{field}` must be between {low:02d} and {high:02d}, got {value:02d}.")
        if self.emotion == 1 and self.intensity == 2:
            raise ValueError("`intensity` 02 (strong) does not exist for `emotion` 01 (neutral).")

    @classmethod
    def parse(cls, filename: str) -> RavdessName:
        """Parse ``03-01-05-02-01-01-12.wav`` (a path's name is enough)."""
        match = FILENAME.match(Path(filename).name)
        if not match:
            raise ValueError(
                f"`{Path(filename).name}` is not a RAVDESS file name (MM-VV-EE-II-SS-RR-AA.wav, e.g. "
                "03-01-05-02-01-01-12.wav)."
            )
        return cls(*(int(group) for group in match.groups()))

    @property
    def filename(self) -> str:
        """The file name, ``MM-VV-EE-II-SS-RR-AA.wav``."""
        fields = dataclasses.astuple(self)
        return "-".join(f"{value:02d}" for value in fields) + ".wav"

    @property
    def label(self) -> str:
        """The emotion's name."""
        return EMOTIONS[self.emotion - 1]

    @property
    def is_female(self) -> bool:
        """RAVDESS's even actors are female."""
        return self.actor % 2 == 0


@dataclasses.dataclass(frozen=True)
class RavdessClip:
    """A file of the corpus and its parsed name."""

    path: Path
    name: RavdessName


def scan_ravdess(data_dir: Path, *, vocal_channels: Iterable[int] = (SPEECH,)) -> list[RavdessClip]:
    """Every ``Actor_XX/*.wav`` of a RAVDESS-layout folder, sorted, for the given vocal channels.

    Raises:
        FileNotFoundError: ``data_dir`` has no ``Actor_XX`` folders with RAVDESS files.
        ValueError: A file's actor field disagrees with its folder.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"`data` {data_dir} is not a folder.")
    channels = set(vocal_channels)
    clips = []
    for folder in sorted(data_dir.iterdir()):
        folder_match = ACTOR_FOLDER.match(folder.name)
        if not folder.is_dir() or not folder_match:
            continue
        for path in sorted(folder.glob("*.wav")):
            try:
                name = RavdessName.parse(path.name)
            except ValueError as e:
                LOGGER.warning("Skipping %s: %s", path, e)
                continue
            if name.actor != int(folder_match.group(1)):
                raise ValueError(f"{path}: the file names actor {name.actor:02d} but sits in {folder.name}.")
            if name.vocal_channel in channels:
                clips.append(RavdessClip(path, name))
    if not clips:
        raise FileNotFoundError(
            f"`data` {data_dir} holds no RAVDESS files (Actor_XX/MM-VV-EE-II-SS-RR-AA.wav) for vocal channels "
            f"{sorted(channels)}."
        )
    return clips


@dataclasses.dataclass(frozen=True)
class ActorSplit:
    """Disjoint actor sets: no speaker is in two splits."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]

    def __post_init__(self) -> None:
        for field in ("train", "val", "test"):
            if not getattr(self, field):
                raise ValueError(f"`{field}` actors of the split are empty; the corpus needs at least 3 actors.")
        shared = (
            (set(self.train) & set(self.val)) | (set(self.train) & set(self.test)) | (set(self.val) & set(self.test))
        )
        if shared:
            raise ValueError(f"Actors {sorted(shared)} are in two splits; each speaker must be in one only.")

    def of(self, clips: Sequence[RavdessClip], split: str) -> list[RavdessClip]:
        """The clips of ``split`` (``train``, ``val`` or ``test``)."""
        actors = set(getattr(self, split))
        return [clip for clip in clips if clip.name.actor in actors]


def split_by_actor(
    actors: Iterable[int], *, val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0
) -> ActorSplit:
    """Split actors at random (seeded), alternating male and female so every split has both when possible.

    Each of val and test gets at least one actor.
    """
    actors = sorted(set(actors))
    if len(actors) < 3:
        raise ValueError(f"Splitting by actor needs at least 3 actors, got {actors}.")
    rng = np.random.default_rng(seed)
    male = [int(a) for a in rng.permutation([a for a in actors if a % 2])]
    female = [int(a) for a in rng.permutation([a for a in actors if not a % 2])]
    # Interleave so consecutive picks alternate gender.
    order = [a for pair in zip(female, male, strict=False) for a in pair]
    order += female[len(male) :] + male[len(female) :]
    n_test = max(1, round(len(actors) * test_fraction))
    n_val = max(1, round(len(actors) * val_fraction))
    if n_test + n_val >= len(actors):
        raise ValueError(f"{len(actors)} actors leave none for training with these fractions.")
    return ActorSplit(
        train=tuple(sorted(order[n_test + n_val :])),
        val=tuple(sorted(order[n_test : n_test + n_val])),
        test=tuple(sorted(order[:n_test])),
    )


@dataclasses.dataclass(frozen=True)
class Prosody:
    """SSML prosody relative to the voice's neutral speech (percent changes, 0 = unchanged)."""

    pitch: float
    range: float
    rate: float
    volume: float

    def scaled(self, factor: float) -> Prosody:
        """This prosody's distance from neutral times ``factor``."""
        return Prosody(*(value * factor for value in dataclasses.astuple(self)))

    def ssml(self, text: str) -> str:
        """``text`` (XML-escaped) wrapped in an SSML ``<prosody>`` element espeak-ng understands."""

        def percent(value: float) -> str:
            return f"{max(5.0, 100.0 + value):.0f}%"

        return (
            f'<speak><prosody pitch="{self.pitch:+.0f}%" range="{percent(self.range)}" '
            f'rate="{percent(self.rate)}" volume="{percent(self.volume)}">{escape(text)}</prosody></speak>'
        )


# Emotion-like prosody, after the acoustic correlates in the literature (high,
# wide and fast pitch for happy/angry/fearful/surprised; low, narrow and slow for
# sad/calm); each emotion differs from every other in at least two dimensions.
EMOTION_PROSODY = {
    "neutral": Prosody(pitch=0, range=0, rate=0, volume=0),
    "calm": Prosody(pitch=-8, range=-40, rate=-18, volume=-25),
    "happy": Prosody(pitch=20, range=60, rate=12, volume=15),
    "sad": Prosody(pitch=-18, range=-60, rate=-32, volume=-40),
    "angry": Prosody(pitch=8, range=80, rate=25, volume=60),
    "fearful": Prosody(pitch=35, range=20, rate=38, volume=-15),
    "disgust": Prosody(pitch=-15, range=40, rate=-25, volume=10),
    "surprised": Prosody(pitch=45, range=120, rate=0, volume=30),
}
STRONG_INTENSITY_FACTOR = 2.0
# Statement 01 is Hindi ("a child is playing in the park"), 02 English, as RAVDESS's 02.
STATEMENTS = {1: ("hi", "एक बच्चा पार्क में खेल रहा है"), 2: ("en-us", "Dogs are sitting by the door")}
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "linda", "Annie")


def _espeak_binary() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("`espeak-ng` is not installed; run `make setup` (or `apt-get install espeak-ng`).")
    return binary


def _speak_ssml(binary: str, voice: str, ssml: str, output: Path, settings: Sequence[str] = ()) -> None:
    command = [binary, "-m", "-v", voice, *settings, "-w", str(output), ssml]
    subprocess.run(command, check=True, capture_output=True)


def speak_with_emotion(
    text: str,
    emotion: str,
    output: Path,
    *,
    voice: str = "hi",
    strong: bool = False,
    speed_wpm: int | None = None,
    pitch: int | None = None,
) -> Path:
    """Speak ``text`` into the WAV file ``output`` (22.05 kHz mono) with ``emotion``'s prosody, as the corpus does.

    Args:
        text: What to say (plain text; it is escaped into the SSML).
        emotion: One of :data:`EMOTION_PROSODY` (``"happy"``, ``"sad"``, ...).
        output: WAV file to write (its folder is made).
        voice: espeak-ng voice, ``hi`` or with a variant (``hi+f2``).
        strong: RAVDESS's strong intensity: twice the distance from neutral.
        speed_wpm: The voice's own speed (espeak-ng ``-s``) the emotion's rate is relative to; default 175.
        pitch: The voice's own pitch, 0-99 (``-p``) the emotion's pitch is relative to; default 50.

    Raises:
        ValueError: ``emotion`` is unknown or ``text`` is empty.
        RuntimeError: espeak-ng is not installed.
    """
    if emotion not in EMOTION_PROSODY:
        raise ValueError(f"`emotion` must be one of {list(EMOTION_PROSODY)}, got {emotion!r}.")
    if not text.strip():
        raise ValueError("`text` is empty; there is nothing to say.")
    prosody = EMOTION_PROSODY[emotion].scaled(STRONG_INTENSITY_FACTOR if strong else 1.0)
    settings = [*(("-s", str(speed_wpm)) if speed_wpm else ()), *(("-p", str(pitch)) if pitch is not None else ())]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _speak_ssml(_espeak_binary(), voice, prosody.ssml(text), output, settings)
    return output


def actor_variant(actor: int) -> str:
    """The espeak-ng voice variant that plays ``actor`` (odd: male, even: female)."""
    variants = MALE_VARIANTS if actor % 2 else FEMALE_VARIANTS
    index = (actor - 1) // 2
    if index >= len(variants):
        raise ValueError(f"The synthetic corpus has voices for actors 1-{2 * len(variants)}, got {actor}.")
    return variants[index]


def synthesize_corpus(
    output_dir: Path,
    actors: Sequence[int] = tuple(range(1, 13)),
    *,
    seed: int = 0,
    hindi_statements: Sequence[str] = (),
) -> list[Path]:
    """Write a RAVDESS-layout corpus of espeak-ng speech (22.05 kHz mono WAV) into ``output_dir``.

    Every actor speaks both statements twice (repetitions jitter the prosody by a few
    percent) in every emotion and intensity: 60 files per actor. Existing files are kept.
    With ``hindi_statements``, statement 01 is one of these sentences drawn at random (seeded)
    for every file instead of always the same one, so a classifier learns the emotions'
    prosody rather than how one sentence sounds in each (drawn, not cycled: a cycle as long as
    an actor's files would pair each sentence with one emotion).

    Returns:
        The files, sorted.
    """
    binary = _espeak_binary()
    output_dir = Path(output_dir)
    rng = np.random.default_rng(seed)
    hindi = tuple(hindi_statements) or (STATEMENTS[1][1],)
    # Its own generator, so the prosody jitter is the same with or without `hindi_statements`.
    draw = np.random.default_rng([seed, 1])
    paths = []
    for actor in actors:
        variant = actor_variant(actor)
        folder = output_dir / f"Actor_{actor:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for emotion_index, emotion in enumerate(EMOTIONS, start=1):
            for intensity in (1,) if emotion == "neutral" else (1, 2):
                for statement, (language, text) in STATEMENTS.items():
                    for repetition in (1, 2):
                        name = RavdessName(AUDIO_ONLY, SPEECH, emotion_index, intensity, statement, repetition, actor)
                        factor = STRONG_INTENSITY_FACTOR if intensity == 2 else 1.0
                        jitter = rng.uniform(-4, 4, size=4)
                        prosody = Prosody(
                            *(np.asarray(dataclasses.astuple(EMOTION_PROSODY[emotion])) * factor + jitter)
                        )
                        if statement == 1:
                            text = hindi[int(draw.integers(len(hindi)))]
                        path = folder / name.filename
                        paths.append(path)
                        if path.is_file():
                            continue
                        _speak_ssml(binary, f"{language}+{variant}", prosody.ssml(text), path)
    LOGGER.info("Synthetic RAVDESS-layout corpus: %d files in %s", len(paths), output_dir)
    return sorted(paths)
