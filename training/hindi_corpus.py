"""A Hindi speech → English text corpus made here: templated sentences spoken by espeak-ng, plus noise.

No recorded Hindi speech can be downloaded here, so the demo fine-tune trains on
speech synthesised offline. The committed source is the sentence list below
(Devanagari with English translations, composed from subjects × activities ×
places and subjects × feelings × times, each activity only in places where it
makes sense), plus the shape world's scene phrases ("दो लाल गोले" -> "two red
circles", every count × colour × shape of :mod:`s2i.training.world`, translated
with exactly the world's :attr:`Scene.text` wording so the trained picture model
understands the translation); the audio is made at build time into a cache:

    <output>/
        train.tsv  test.tsv        # Common Voice layout: path, sentence, translation, + how it was spoken
        clips/hi_<sentence>_<take>.wav   # 16 kHz mono PCM
        manifest.json              # what was built; a rebuild with the same settings is skipped

``s2i train whisper --data <output>`` reads it directly (``--task translate``
takes the ``translation`` column). The split is by sentence: a test sentence is
never spoken in the training clips. The held-out scene phrases are those of the
world's held-out (colour, shape) pairs, which the picture model never saw either.
Every clip's voice variant, speed, pitch, gain, silence, noise level and (for half
of them) emotional prosody come from a generator seeded with the corpus seed and
the clip's name, so the same settings give the same audio.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import random
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from s2i.audio import MODEL_SAMPLE_RATE_HZ, resample
from s2i.speech import synthesize
from s2i.stages.emotion.ravdess import EMOTION_PROSODY, speak_with_emotion
from s2i.training.common import check_positive, normalize_text
from s2i.training.world import COLOURS, COUNT_WORDS, EMOTIONS, HELD_OUT_PAIRS, SHAPES, Scene

LOGGER = logging.getLogger(__name__)

# Bump when the sentences or the way they are spoken change, so cached corpora are rebuilt.
CORPUS_VERSION = 2
MANIFEST_FILE = "manifest.json"
CLIPS_FOLDER = "clips"
TSV_COLUMNS = ("path", "sentence", "translation", "voice", "speed_wpm", "pitch", "snr_db", "emotion")
DEFAULT_SEED = 18
DEFAULT_TEST_SENTENCES = 60
DEFAULT_SCENE_TAKES = 1
SCENE_RESULTS_FILE = "scene_results.json"

# (Hindi, English, agreement): the agreement picks the verb endings below.
SUBJECTS = (
    ("लड़का", "The boy", "m"),
    ("लड़की", "The girl", "f"),
    ("मेरा भाई", "My brother", "m"),
    ("मेरी बहन", "My sister", "f"),
    ("मेरे पिताजी", "My father", "mh"),
    ("मेरी माँ", "My mother", "fh"),
    ("बच्चे", "The children", "mp"),
    ("हमारे शिक्षक", "Our teacher", "mh"),
)
# Present progressive ending and English "be" per agreement: honorific singulars take the plural in Hindi.
PROGRESSIVE = {"m": "रहा है", "f": "रही है", "mh": "रहे हैं", "fh": "रही हैं", "mp": "रहे हैं"}
COPULA = {"m": "है", "f": "है", "mh": "हैं", "fh": "हैं", "mp": "हैं"}
ENGLISH_BE = {"m": "is", "f": "is", "mh": "is", "fh": "is", "mp": "are"}

PLACES = {
    "home": ("घर में", "at home"),
    "garden": ("बगीचे में", "in the garden"),
    "school": ("स्कूल में", "at school"),
    "kitchen": ("रसोई में", "in the kitchen"),
    "park": ("पार्क में", "in the park"),
    "market": ("बाज़ार में", "in the market"),
    "roof": ("छत पर", "on the roof"),
    "room": ("कमरे में", "in the room"),
}
# (Hindi object + verb stem, English -ing phrase, the places where people do it).
ACTIVITIES = (
    ("खाना खा", "eating food", ("home", "kitchen", "garden", "school", "room")),
    ("चाय पी", "drinking tea", ("home", "kitchen", "garden", "roof", "market")),
    ("किताब पढ़", "reading a book", ("home", "garden", "school", "park", "roof", "room")),
    ("चिट्ठी लिख", "writing a letter", ("home", "school", "room")),
    ("गाना गा", "singing a song", ("home", "garden", "school", "park", "roof")),
    ("फुटबॉल खेल", "playing football", ("garden", "school", "park")),
    ("कपड़े धो", "washing clothes", ("home", "roof")),
    ("खाना बना", "cooking food", ("home", "kitchen")),
    ("सब्ज़ियाँ खरीद", "buying vegetables", ("market",)),
    ("पानी पी", "drinking water", ("home", "kitchen", "school", "park")),
    ("फ़ोन पर बात कर", "talking on the phone", ("home", "garden", "market", "roof", "room")),
    ("आराम कर", "resting", ("home", "garden", "park", "room")),
)
FEELINGS = (
    ("खुश", "happy"),
    ("उदास", "sad"),
    ("नाराज़", "angry"),
    ("परेशान", "worried"),
    ("हैरान", "surprised"),
)
TIMES = (("आज", "today"), ("अभी", "right now"))

# The shape world in Hindi. Every noun is masculine: गोला (a round thing, a ball; the textbook वृत्त is
# a circle's outline, rarely said of an object), वर्ग (the textbook square; चौकोर is mostly the adjective
# "square-shaped"), त्रिकोण (triangle) and हीरा (the gem, whose shape the diamond is, as in "हीरे के
# आकार का"; the geometric समचतुर्भुज "rhombus" is not everyday speech). (singular, plural direct case):
# -आ nouns take -ए in the plural, consonant-final ones do not change.
HINDI_SHAPES = {
    "circle": ("गोला", "गोले"),
    "square": ("वर्ग", "वर्ग"),
    "triangle": ("त्रिकोण", "त्रिकोण"),
    "diamond": ("हीरा", "हीरे"),
}
# Adjectives ending in -आ agree with a masculine plural noun (-ए); लाल and बैंगनी are invariant.
HINDI_COLOURS = {
    "red": ("लाल", "लाल"),
    "yellow": ("पीला", "पीले"),
    "green": ("हरा", "हरे"),
    "blue": ("नीला", "नीले"),
    "purple": ("बैंगनी", "बैंगनी"),
}
HINDI_COUNTS = {1: "एक", 2: "दो", 3: "तीन"}

# espeak-ng's Hindi voice with its voice variants (male, female, Klatt synthesiser).
VOICES = ("hi", "hi+m1", "hi+m2", "hi+m3", "hi+m4", "hi+f1", "hi+f2", "hi+f3", "hi+f4", "hi+klatt")
SPEED_WPM = (120, 190)
PITCH = (25, 75)
SNR_DB = (10.0, 30.0)
PEAK = (0.3, 0.9)
SILENCE_S = (0.0, 0.5)
# Half the clips are spoken with an emotion's prosody (pitch, range, rate, volume on top of the voice's
# own speed and pitch), as the demo speaks its input (`speak_with_emotion`), so Whisper hears those too.
EMOTION_TAKE_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class SentencePair:
    """One corpus sentence: its stable id, Hindi text, English translation and (a scene phrase's) scene."""

    sentence_id: int
    hindi: str
    english: str
    scene: Scene | None = None


@dataclasses.dataclass(frozen=True)
class Take:
    """How one clip is spoken: espeak-ng settings, then gain, silence and noise."""

    voice: str
    speed_wpm: int
    pitch: int
    peak: float
    lead_silence_s: float
    tail_silence_s: float
    snr_db: float
    emotion: str = ""  # an EMOTION_PROSODY key spoken with, or "" for the voice's plain prosody


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """What :func:`build_corpus` makes.

    Attributes:
        output_dir: The corpus folder.
        seed: Seeds the split and every clip's voice, speed, pitch and noise.
        test_sentences: Sentences held out for the test split.
        takes_per_train_sentence: Clips per training everyday sentence (each spoken differently).
        max_sentences: Use only the first this many everyday sentences of the shuffled list (``None``: all).
        scene_takes: Clips per training scene phrase (0: no scene phrases in the corpus at all).
    """

    output_dir: Path
    seed: int = DEFAULT_SEED
    test_sentences: int = DEFAULT_TEST_SENTENCES
    takes_per_train_sentence: int = 1
    max_sentences: int | None = None
    scene_takes: int = DEFAULT_SCENE_TAKES

    def validate(self) -> None:
        """Refuse settings that cannot make a corpus, naming the field."""
        check_positive("test_sentences", self.test_sentences)
        check_positive("takes_per_train_sentence", self.takes_per_train_sentence)
        check_positive("scene_takes", self.scene_takes, allow_zero=True)
        total = len(everyday_sentences()) if self.max_sentences is None else self.max_sentences
        check_positive("max_sentences", total)
        if self.test_sentences >= total:
            raise ValueError(
                f"`test_sentences` ({self.test_sentences}) must be fewer than the {total} everyday sentences used, "
                "so something is left to train on."
            )


@dataclasses.dataclass
class Corpus:
    """A built corpus: its folder and the sentence pairs of each split."""

    root: Path
    train: list[SentencePair]
    test: list[SentencePair]


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def sentences() -> list[SentencePair]:
    """Every sentence of the corpus, in a fixed order (ids are positions): the everyday ones, then the scene phrases."""
    everyday = everyday_sentences()
    return everyday + scene_phrases(first_id=len(everyday))


def everyday_sentences() -> list[SentencePair]:
    """The everyday sentences (subjects doing things in places, or feeling something), ids from 0."""
    pairs: list[tuple[str, str]] = []
    for subject, english_subject, agreement in SUBJECTS:
        for stem, doing, places in ACTIVITIES:
            for place in places:
                hindi_place, english_place = PLACES[place]
                pairs.append(
                    (
                        f"{subject} {hindi_place} {stem} {PROGRESSIVE[agreement]}।",
                        f"{english_subject} {ENGLISH_BE[agreement]} {doing} {english_place}.",
                    )
                )
        for hindi_time, english_time in TIMES:
            for feeling, english_feeling in FEELINGS:
                pairs.append(
                    (
                        f"{subject} {hindi_time} बहुत {feeling} {COPULA[agreement]}।",
                        f"{english_subject} {ENGLISH_BE[agreement]} very {english_feeling} {english_time}.",
                    )
                )
    return [SentencePair(index, _nfc(hindi), english) for index, (hindi, english) in enumerate(pairs)]


def hindi_scene(scene: Scene) -> str:
    """What a Hindi speaker says for ``scene``: count, colour, shape (``"दो पीले गोले"``), agreeing in number."""
    number = 0 if scene.count == 1 else 1
    return _nfc(
        f"{HINDI_COUNTS[scene.count]} {HINDI_COLOURS[scene.colour][number]} {HINDI_SHAPES[scene.shape][number]}"
    )


def scene_phrases(first_id: int = 0) -> list[SentencePair]:
    """Every (count, colour, shape) of the shape world as a bare noun phrase, translated as its ``Scene.text``."""
    # The emotion does not change what is said; any one gives the same text.
    scenes = [
        Scene(colour, shape, count, EMOTIONS[0]) for colour in COLOURS for shape in SHAPES for count in COUNT_WORDS
    ]
    return [SentencePair(first_id + i, hindi_scene(scene), scene.text, scene) for i, scene in enumerate(scenes)]


def is_held_out_scene(pair: SentencePair) -> bool:
    """Whether ``pair`` is a scene phrase of one of the world's held-out (colour, shape) pairs."""
    return pair.scene is not None and (pair.scene.colour, pair.scene.shape) in HELD_OUT_PAIRS


def training_sentences(count: int) -> list[str]:
    """``count`` Hindi sentences of the default split's training side, never held out: scene phrases first.

    Scene phrases come first because the demo says them; then everyday sentences. The default split
    holds out the most everyday sentences, so these are training sentences of any smaller corpus too
    (``--max-sentences`` keeps the same shuffle's first ones).
    """
    train, _ = split_sentences(sentences(), test_sentences=DEFAULT_TEST_SENTENCES, seed=DEFAULT_SEED)
    if not 1 <= count <= len(train):
        raise ValueError(f"`count` must be between 1 and {len(train)}, got {count}.")
    ordered = [pair for pair in train if pair.scene] + [pair for pair in train if not pair.scene]
    return [pair.hindi for pair in ordered[:count]]


def held_out_scene_phrases() -> list[SentencePair]:
    """The scene phrases of the world's held-out pairs: in the test split only, never trained on."""
    return [pair for pair in scene_phrases(first_id=len(everyday_sentences())) if is_held_out_scene(pair)]


def split_sentences(
    pairs: list[SentencePair], *, test_sentences: int, seed: int, max_sentences: int | None = None
) -> tuple[list[SentencePair], list[SentencePair]]:
    """Hold out ``test_sentences`` everyday sentences and the held-out scene phrases: (train, test), disjoint.

    The everyday sentences are shuffled with ``seed`` (only the first ``max_sentences`` of them are
    used); the scene phrases of the world's held-out (colour, shape) pairs are tested, never trained
    on, like the picture model. The training sentences stay shuffled, so the first N of them
    (``--max-train-samples``) are a random mix; the test ones are sorted by id.
    """
    everyday = [p for p in pairs if p.scene is None]
    random.Random(seed).shuffle(everyday)
    if max_sentences is not None:
        everyday = everyday[:max_sentences]
    scenes = [p for p in pairs if p.scene is not None]
    test = everyday[:test_sentences] + [p for p in scenes if is_held_out_scene(p)]
    train = everyday[test_sentences:] + [p for p in scenes if not is_held_out_scene(p)]
    random.Random(f"train:{seed}").shuffle(train)
    return train, sorted(test, key=lambda p: p.sentence_id)


def clip_name(pair: SentencePair, take: int) -> str:
    """The clip file name of ``take`` of ``pair``."""
    return f"hi_{pair.sentence_id:04d}_{take}.wav"


def _rng(seed: int, name: str) -> random.Random:
    # A per-clip generator (not one shared stream), so a clip does not depend on which others are built.
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def draw_take(seed: int, name: str) -> Take:
    """The speaking settings of the clip ``name`` (deterministic in ``seed`` and ``name``)."""
    rng = _rng(seed, name)
    return Take(
        voice=rng.choice(VOICES),
        speed_wpm=rng.randint(*SPEED_WPM),
        pitch=rng.randint(*PITCH),
        peak=round(rng.uniform(*PEAK), 3),
        lead_silence_s=round(rng.uniform(*SILENCE_S), 3),
        tail_silence_s=round(rng.uniform(*SILENCE_S), 3),
        snr_db=round(rng.uniform(*SNR_DB), 1),
        # Drawn last, so the settings above are what they were before emotions were added.
        emotion=rng.choice(tuple(EMOTION_PROSODY)) if rng.random() < EMOTION_TAKE_FRACTION else "",
    )


def speak(text: str, take: Take, *, seed: int, name: str, scratch: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng as ``take`` says, at 16 kHz: scaled, padded with silence, with white noise."""
    import soundfile

    if take.emotion:
        wav = speak_with_emotion(
            text, take.emotion, scratch / name, voice=take.voice, speed_wpm=take.speed_wpm, pitch=take.pitch
        )
    else:
        wav = synthesize(text, scratch / name, voice=take.voice, speed_wpm=take.speed_wpm, pitch=take.pitch)
    samples, rate = soundfile.read(wav, dtype="float32", always_2d=False)
    wav.unlink()
    if samples.size == 0 or not np.any(samples):
        raise RuntimeError(f"espeak-ng produced no audio for clip {name} (voice {take.voice!r}).")
    speech = resample(samples, int(rate), MODEL_SAMPLE_RATE_HZ)
    speech = speech * (take.peak / float(np.max(np.abs(speech))))
    lead = np.zeros(int(take.lead_silence_s * MODEL_SAMPLE_RATE_HZ), np.float32)
    tail = np.zeros(int(take.tail_silence_s * MODEL_SAMPLE_RATE_HZ), np.float32)
    clip = np.concatenate([lead, speech, tail]).astype(np.float32)
    # Noise power from the speech's own power, so the signal-to-noise ratio is what the take says.
    noise_rms = float(np.sqrt(np.mean(speech.astype(np.float64) ** 2))) / (10 ** (take.snr_db / 20))
    noise = np.random.default_rng(_rng(seed, f"noise:{name}").getrandbits(64)).normal(0.0, noise_rms, clip.shape)
    return np.clip(clip + noise.astype(np.float32), -1.0, 1.0)


def _takes(config: CorpusConfig, pair: SentencePair) -> int:
    return config.scene_takes if pair.scene is not None else config.takes_per_train_sentence


def _manifest(config: CorpusConfig, train: list[SentencePair], test: list[SentencePair]) -> dict:
    listing = "\n".join(f"{p.sentence_id}\t{p.hindi}\t{p.english}" for p in (*train, *test))
    return {
        "version": CORPUS_VERSION,
        "seed": config.seed,
        "test_sentences": config.test_sentences,
        "takes_per_train_sentence": config.takes_per_train_sentence,
        "max_sentences": config.max_sentences,
        "scene_takes": config.scene_takes,
        "sample_rate_hz": MODEL_SAMPLE_RATE_HZ,
        "train_sentences": len(train),
        "train_clips": sum(_takes(config, p) for p in train),
        "test_clips": len(test),
        "test_scene_phrases": sum(p.scene is not None for p in test),
        "sentences_sha256": hashlib.sha256(listing.encode()).hexdigest(),
    }


def _write_split(root: Path, split: str, pairs: Iterable[tuple[SentencePair, int]], seed: int, scratch: Path) -> None:
    import soundfile

    with (root / f"{split}.tsv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerow(TSV_COLUMNS)
        for pair, takes in pairs:
            for index in range(takes):
                name = clip_name(pair, index)
                take = draw_take(seed, name)
                audio = speak(pair.hindi, take, seed=seed, name=name, scratch=scratch)
                soundfile.write(root / CLIPS_FOLDER / name, audio, MODEL_SAMPLE_RATE_HZ, subtype="PCM_16")
                writer.writerow(
                    (name, pair.hindi, pair.english, take.voice, take.speed_wpm, take.pitch, take.snr_db, take.emotion)
                )


def build_corpus(config: CorpusConfig) -> Corpus:
    """Make the corpus in ``config.output_dir``, or reuse it when a previous build had the same settings.

    The folder is built under a temporary name and renamed last, so an interrupted
    build never leaves a corpus that looks complete.
    """
    config.validate()
    root = Path(config.output_dir)
    pairs = sentences() if config.scene_takes else everyday_sentences()
    train, test = split_sentences(
        pairs, test_sentences=config.test_sentences, seed=config.seed, max_sentences=config.max_sentences
    )
    manifest = _manifest(config, train, test)
    if (root / MANIFEST_FILE).is_file() and json.loads((root / MANIFEST_FILE).read_text()) == manifest:
        LOGGER.info("Corpus %s is up to date (%d train, %d test clips)", root, manifest["train_clips"], len(test))
        return Corpus(root, train, test)
    staging = root.with_name(root.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / CLIPS_FOLDER).mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="s2i-espeak-") as scratch:
        _write_split(staging, "train", [(p, _takes(config, p)) for p in train], config.seed, Path(scratch))
        _write_split(staging, "test", [(p, 1) for p in test], config.seed, Path(scratch))
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    LOGGER.info("Built corpus %s: %d train clips, %d test clips", root, manifest["train_clips"], len(test))
    return Corpus(root, train, test)


def scene_phrase_scores(predictions: Path) -> dict:
    """How many scene phrases ``predictions`` (an ``eval_predictions.tsv``) translated exactly.

    Exact up to case and punctuation (:func:`normalize_text`): "Two red circles." matches
    "two red circles", the caption the picture model understands. Every-day sentences are left out.

    Raises:
        ValueError: The file has no translated scene phrase.
    """
    texts = {pair.english for pair in scene_phrases()}
    with Path(predictions).open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["task"] == "translate" and r["reference"] in texts]
    if not rows:
        raise ValueError(f"`predictions` {predictions} has no translated scene phrase.")
    exact = sum(normalize_text(r["hypothesis"]) == normalize_text(r["reference"]) for r in rows)
    return {
        "phrases": len(rows),
        "exact": exact,
        "exact_match": exact / len(rows),
        "translations": {r["reference"]: r["hypothesis"] for r in rows},
    }


def write_scene_results(trained: Path) -> dict[str, dict]:
    """Score ``eval_predictions_before.tsv`` and ``eval_predictions.tsv`` of ``trained`` into ``scene_results.json``."""
    trained = Path(trained)
    files = {"before": "eval_predictions_before.tsv", "after": "eval_predictions.tsv"}
    results = {when: scene_phrase_scores(trained / name) for when, name in files.items() if (trained / name).is_file()}
    if not results:
        raise ValueError(f"`score`: {trained} has no eval_predictions.tsv; train with an eval split first.")
    (trained / SCENE_RESULTS_FILE).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


def add_parser(commands) -> None:
    """Add ``hindi-corpus`` to the ``s2i`` commands."""
    parser = commands.add_parser(
        "hindi-corpus",
        help="make the Hindi speech -> English corpus with espeak-ng (Common Voice layout)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--output", type=Path, required=True, help="corpus folder")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--test-sentences", type=int, default=DEFAULT_TEST_SENTENCES)
    parser.add_argument("--takes-per-train-sentence", type=int, default=1)
    parser.add_argument("--max-sentences", type=int, help="use only this many everyday sentences (a smaller corpus)")
    parser.add_argument(
        "--scene-takes", type=int, default=DEFAULT_SCENE_TAKES, help="clips per training scene phrase (0: none)"
    )
    parser.add_argument(
        "--score",
        type=Path,
        metavar="TRAINED",
        help=f"also score the scene phrases of a `s2i train whisper` output folder into TRAINED/{SCENE_RESULTS_FILE}",
    )
    parser.set_defaults(handler=run_cli)


def run_cli(args) -> int:
    """``s2i hindi-corpus``: build (or reuse) the corpus and print what it holds."""
    corpus = build_corpus(
        CorpusConfig(
            output_dir=args.output,
            seed=args.seed,
            test_sentences=args.test_sentences,
            takes_per_train_sentence=args.takes_per_train_sentence,
            max_sentences=args.max_sentences,
            scene_takes=args.scene_takes,
        )
    )
    print(f"corpus: {corpus.root} ({len(corpus.train)} train sentences, {len(corpus.test)} test sentences)")
    if args.score:
        results = write_scene_results(args.score)
        for when, scores in results.items():
            print(
                f"{when}: {scores['exact']}/{scores['phrases']} held-out scene phrases translated exactly "
                f"({scores['exact_match']:.0%}; case and punctuation ignored)"
            )
    return 0
