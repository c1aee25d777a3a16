"""The Hindi speech -> English corpus: sentences, a sentence-disjoint split, deterministic 16 kHz clips."""

import csv
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile

from s2i.audio import MODEL_SAMPLE_RATE_HZ
from s2i.training.hindi_corpus import (
    MANIFEST_FILE,
    PEAK,
    SNR_DB,
    SPEED_WPM,
    VOICES,
    CorpusConfig,
    build_corpus,
    draw_take,
    sentences,
    split_sentences,
)

SMALL = dict(max_sentences=8, test_sentences=2, takes_per_train_sentence=2)


def _rows(root: Path, split: str) -> list[dict[str, str]]:
    with (root / f"{split}.tsv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    return build_corpus(CorpusConfig(output_dir=tmp_path_factory.mktemp("corpus") / "hi", **SMALL)).root


def test_sentences_are_unique_devanagari_with_english_when_listed():
    pairs = sentences()
    assert len(pairs) == 440
    assert len({p.hindi for p in pairs}) == len({p.english for p in pairs}) == len(pairs)
    assert [p.sentence_id for p in pairs] == list(range(len(pairs)))
    for pair in pairs:
        assert pair.hindi.endswith("।") and pair.english.endswith(".")
        letters = [c for c in pair.hindi if c.isalpha()]
        assert all("DEVANAGARI" in unicodedata.name(c) for c in letters), pair.hindi
        assert pair.hindi == unicodedata.normalize("NFC", pair.hindi)
    assert pairs[0].hindi == "लड़का घर में खाना खा रहा है।"
    assert pairs[0].english == "The boy is eating food at home."


def test_split_sentences_is_disjoint_and_deterministic_when_seeded():
    train, test = split_sentences(sentences(), test_sentences=60, seed=18)
    again = split_sentences(sentences(), test_sentences=60, seed=18)
    other = split_sentences(sentences(), test_sentences=60, seed=19)
    assert (train, test) == again and test != other[1]
    assert (len(train), len(test)) == (380, 60)
    assert not {p.hindi for p in train} & {p.hindi for p in test}


def test_draw_take_is_deterministic_and_in_range_when_named():
    takes = [draw_take(18, f"hi_{i:04d}_0.wav") for i in range(50)]
    assert takes == [draw_take(18, f"hi_{i:04d}_0.wav") for i in range(50)]
    assert takes != [draw_take(19, f"hi_{i:04d}_0.wav") for i in range(50)]
    assert all(t.voice in VOICES for t in takes) and len({t.voice for t in takes}) > 3
    assert all(SPEED_WPM[0] <= t.speed_wpm <= SPEED_WPM[1] for t in takes)
    assert all(SNR_DB[0] <= t.snr_db <= SNR_DB[1] and PEAK[0] <= t.peak <= PEAK[1] for t in takes)


def test_build_corpus_writes_sentence_disjoint_splits_of_16khz_clips_when_built(small_corpus):
    train, test = _rows(small_corpus, "train"), _rows(small_corpus, "test")
    assert (len(train), len(test)) == (6 * 2, 2)
    assert not {r["sentence"] for r in train} & {r["sentence"] for r in test}
    by_id = {p.sentence_id: p for p in sentences()}
    for row in train + test:
        pair = by_id[int(row["path"].split("_")[1])]
        assert (row["sentence"], row["translation"]) == (pair.hindi, pair.english)
        info = soundfile.info(small_corpus / "clips" / row["path"])
        assert (info.samplerate, info.channels) == (MODEL_SAMPLE_RATE_HZ, 1)
        audio, _ = soundfile.read(small_corpus / "clips" / row["path"], dtype="float32")
        assert 0.5 < audio.size / MODEL_SAMPLE_RATE_HZ < 30.0
        assert np.isfinite(audio).all() and 0.2 < np.abs(audio).max() <= 1.0
    # Two takes of one sentence are spoken differently.
    assert train[0]["sentence"] == train[1]["sentence"]
    first, second = (soundfile.read(small_corpus / "clips" / r["path"])[0] for r in train[:2])
    assert first.shape != second.shape or not np.array_equal(first, second)


def test_build_corpus_makes_identical_audio_when_rebuilt_elsewhere(small_corpus, tmp_path):
    again = build_corpus(CorpusConfig(output_dir=tmp_path / "hi", **SMALL)).root
    assert (again / "train.tsv").read_bytes() == (small_corpus / "train.tsv").read_bytes()
    for name in sorted(p.name for p in (small_corpus / "clips").iterdir()):
        assert (again / "clips" / name).read_bytes() == (small_corpus / "clips" / name).read_bytes(), name


def test_build_corpus_reuses_the_folder_when_settings_are_unchanged(small_corpus):
    stamp = (small_corpus / MANIFEST_FILE).stat().st_mtime_ns
    corpus = build_corpus(CorpusConfig(output_dir=small_corpus, **SMALL))
    assert (small_corpus / MANIFEST_FILE).stat().st_mtime_ns == stamp
    assert len(corpus.test) == 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(test_sentences=0), r"`test_sentences` must be > 0"),
        (dict(takes_per_train_sentence=0), r"`takes_per_train_sentence` must be > 0"),
        (dict(max_sentences=5, test_sentences=5), r"`test_sentences` \(5\) must be fewer than the 5 sentences"),
    ],
)
def test_corpus_config_names_the_field_when_a_setting_is_invalid(settings, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        build_corpus(CorpusConfig(output_dir=tmp_path / "hi", **settings))
    assert not (tmp_path / "hi").exists()


def test_cli_hindi_corpus_builds_and_reports_the_split_when_run(tmp_path, capsys):
    from s2i.cli import main

    code = main(["hindi-corpus", "--output", str(tmp_path / "hi"), "--max-sentences", "4", "--test-sentences", "1"])
    assert code == 0
    assert "(3 train sentences, 1 test sentences)" in capsys.readouterr().out
    assert len(_rows(tmp_path / "hi", "train")) == 3
