"""The Hindi speech -> English corpus: sentences, a sentence-disjoint split, deterministic 16 kHz clips."""

import csv
import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile

from s2i.audio import MODEL_SAMPLE_RATE_HZ
from s2i.stages.emotion.ravdess import EMOTION_PROSODY
from s2i.training.hindi_corpus import (
    MANIFEST_FILE,
    PEAK,
    SCENE_RESULTS_FILE,
    SNR_DB,
    SPEED_WPM,
    VOICES,
    CorpusConfig,
    build_corpus,
    draw_take,
    everyday_sentences,
    held_out_scene_phrases,
    hindi_scene,
    scene_phrase_scores,
    scene_phrases,
    sentences,
    split_sentences,
    training_sentences,
    write_scene_results,
)
from s2i.training.world import COLOURS, COUNT_WORDS, HELD_OUT_PAIRS, SHAPES, Scene

SMALL = dict(max_sentences=8, test_sentences=2, takes_per_train_sentence=2, scene_takes=0)


def _rows(root: Path, split: str) -> list[dict[str, str]]:
    with (root / f"{split}.tsv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    return build_corpus(CorpusConfig(output_dir=tmp_path_factory.mktemp("corpus") / "hi", **SMALL)).root


def test_sentences_are_unique_devanagari_with_english_when_listed():
    pairs = sentences()
    assert len(pairs) == 440 + 60
    assert len({p.hindi for p in pairs}) == len({p.english for p in pairs}) == len(pairs)
    assert [p.sentence_id for p in pairs] == list(range(len(pairs)))
    for pair in pairs:
        if pair.scene is None:
            assert pair.hindi.endswith("।") and pair.english.endswith(".")
        letters = [c for c in pair.hindi if c.isalpha()]
        assert all("DEVANAGARI" in unicodedata.name(c) for c in letters), pair.hindi
        assert pair.hindi == unicodedata.normalize("NFC", pair.hindi)
    assert pairs[0].hindi == "लड़का घर में खाना खा रहा है।"
    assert pairs[0].english == "The boy is eating food at home."
    assert pairs[:440] == everyday_sentences() and all(p.scene is None for p in pairs[:440])


def test_scene_phrases_translate_to_their_scene_text_when_listed():
    phrases = scene_phrases(first_id=440)
    assert len(phrases) == len(COLOURS) * len(SHAPES) * len(COUNT_WORDS) == 60
    assert {(p.scene.colour, p.scene.shape, p.scene.count) for p in phrases} == {
        (c, s, n) for c in COLOURS for s in SHAPES for n in COUNT_WORDS
    }
    for pair in phrases:
        assert pair.english == Scene(pair.scene.colour, pair.scene.shape, pair.scene.count, "sad").text
        assert pair.hindi == hindi_scene(pair.scene)
    assert phrases[0].sentence_id == 440 and phrases[0].english == "a red circle"


@pytest.mark.parametrize(
    ("colour", "shape", "count", "hindi", "english"),
    [
        ("red", "circle", 2, "दो लाल गोले", "two red circles"),
        ("red", "circle", 1, "एक लाल गोला", "a red circle"),
        ("yellow", "triangle", 1, "एक पीला त्रिकोण", "a yellow triangle"),
        ("yellow", "triangle", 3, "तीन पीले त्रिकोण", "three yellow triangles"),
        ("green", "diamond", 2, "दो हरे हीरे", "two green diamonds"),
        ("blue", "square", 1, "एक नीला वर्ग", "a blue square"),
        ("blue", "square", 3, "तीन नीले वर्ग", "three blue squares"),
        ("purple", "diamond", 3, "तीन बैंगनी हीरे", "three purple diamonds"),
    ],
)
def test_hindi_scene_agrees_in_number_when_counted(colour, shape, count, hindi, english):
    scene = Scene(colour, shape, count, "neutral")
    assert hindi_scene(scene) == hindi and scene.text == english


def test_split_sentences_is_disjoint_and_deterministic_when_seeded():
    train, test = split_sentences(sentences(), test_sentences=60, seed=18)
    again = split_sentences(sentences(), test_sentences=60, seed=18)
    other = split_sentences(sentences(), test_sentences=60, seed=19)
    assert (train, test) == again and test != other[1]
    assert (len(train), len(test)) == (380 + 48, 60 + 12)
    assert not {p.hindi for p in train} & {p.hindi for p in test}
    # The everyday test sentences are the ones the corpus held out before scene phrases were added.
    assert test[:60] == split_sentences(everyday_sentences(), test_sentences=60, seed=18)[1]


def test_split_sentences_holds_out_the_world_held_out_pairs_when_scene_phrases_are_split():
    train, test = split_sentences(sentences(), test_sentences=60, seed=18, max_sentences=100)
    test_scenes = [p.scene for p in test if p.scene]
    train_scenes = [p.scene for p in train if p.scene]
    assert {(s.colour, s.shape) for s in test_scenes} == set(HELD_OUT_PAIRS)
    assert len(test_scenes) == 3 * len(HELD_OUT_PAIRS) and len(train_scenes) == 60 - len(test_scenes)
    assert not {(s.colour, s.shape) for s in train_scenes} & set(HELD_OUT_PAIRS)
    # Every word of a held-out phrase is heard in training (only the combination is new).
    trained_words = {word for p in train if p.scene for word in p.hindi.split()}
    assert all(word in trained_words for p in test if p.scene for word in p.hindi.split())
    # Training mixes scene phrases and everyday sentences (a `--max-train-samples` prefix has both).
    assert any(p.scene for p in train[:20]) and not all(p.scene for p in train[:20])


def test_draw_take_is_deterministic_and_in_range_when_named():
    takes = [draw_take(18, f"hi_{i:04d}_0.wav") for i in range(50)]
    assert takes == [draw_take(18, f"hi_{i:04d}_0.wav") for i in range(50)]
    assert takes != [draw_take(19, f"hi_{i:04d}_0.wav") for i in range(50)]
    assert all(t.voice in VOICES for t in takes) and len({t.voice for t in takes}) > 3
    assert all(SPEED_WPM[0] <= t.speed_wpm <= SPEED_WPM[1] for t in takes)
    assert all(SNR_DB[0] <= t.snr_db <= SNR_DB[1] and PEAK[0] <= t.peak <= PEAK[1] for t in takes)
    # About half the takes are spoken with an emotion's prosody, the demo's input among them.
    emotions = [t.emotion for t in takes]
    assert 10 < emotions.count("") < 40 and set(emotions) - {""} <= set(EMOTION_PROSODY)
    assert len(set(emotions)) > 4


def test_build_corpus_writes_sentence_disjoint_splits_of_16khz_clips_when_built(small_corpus):
    train, test = _rows(small_corpus, "train"), _rows(small_corpus, "test")
    assert (len(train), len(test)) == (6 * 2, 2)
    assert not {r["sentence"] for r in train} & {r["sentence"] for r in test}
    by_id = {p.sentence_id: p for p in sentences()}
    for row in train + test:
        pair = by_id[int(row["path"].split("_")[1])]
        assert (row["sentence"], row["translation"]) == (pair.hindi, pair.english)
        assert row["emotion"] in ("", *EMOTION_PROSODY)
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
        (dict(scene_takes=-1), r"`scene_takes` must be >= 0"),
        (
            dict(max_sentences=5, test_sentences=5),
            r"`test_sentences` \(5\) must be fewer than the 5 everyday sentences",
        ),
    ],
)
def test_corpus_config_names_the_field_when_a_setting_is_invalid(settings, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        build_corpus(CorpusConfig(output_dir=tmp_path / "hi", **settings))
    assert not (tmp_path / "hi").exists()


def test_cli_hindi_corpus_builds_and_reports_the_split_when_run(tmp_path, capsys):
    from s2i.cli import main

    args = ["hindi-corpus", "--output", str(tmp_path / "hi"), "--max-sentences", "4", "--test-sentences", "1"]
    code = main([*args, "--scene-takes", "0"])
    assert code == 0
    assert "(3 train sentences, 1 test sentences)" in capsys.readouterr().out
    assert len(_rows(tmp_path / "hi", "train")) == 3


def _write_predictions(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(("task", "reference", "hypothesis", "reference_normalized", "hypothesis_normalized"))
        writer.writerows((task, ref, hyp, "", "") for task, ref, hyp in rows)


def test_scene_phrase_scores_count_exact_translations_of_scene_phrases_when_scored(tmp_path):
    _write_predictions(
        tmp_path / "eval_predictions.tsv",
        [
            ("translate", "two red circles", "Two red circles."),
            ("translate", "a blue diamond", "a blue square"),
            ("translate", "three purple squares", "three purple squares"),
            ("translate", "The boy is resting at home.", "The boy is resting at home."),
            ("transcribe", "two red circles", "two red circles"),
        ],
    )
    scores = scene_phrase_scores(tmp_path / "eval_predictions.tsv")
    assert (scores["phrases"], scores["exact"]) == (3, 2)
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert scores["translations"]["a blue diamond"] == "a blue square"


def test_write_scene_results_scores_before_and_after_when_both_predictions_exist(tmp_path, capsys):
    _write_predictions(tmp_path / "eval_predictions_before.tsv", [("translate", "a red circle", "A red ball.")])
    _write_predictions(tmp_path / "eval_predictions.tsv", [("translate", "a red circle", "A red circle")])
    results = write_scene_results(tmp_path)
    assert {when: r["exact"] for when, r in results.items()} == {"before": 0, "after": 1}
    assert json.loads((tmp_path / SCENE_RESULTS_FILE).read_text(encoding="utf-8")) == results


def test_scene_phrase_scores_names_the_file_when_it_has_no_scene_phrase(tmp_path):
    _write_predictions(tmp_path / "p.tsv", [("translate", "The boy is resting at home.", "x")])
    with pytest.raises(ValueError, match=r"`predictions` .*p.tsv has no translated scene phrase"):
        scene_phrase_scores(tmp_path / "p.tsv")
    with pytest.raises(ValueError, match=r"`score`: .* has no eval_predictions.tsv"):
        write_scene_results(tmp_path / "empty")


def test_training_sentences_are_never_held_out_when_drawn_for_other_corpora():
    drawn = training_sentences(60)
    assert len(drawn) == len(set(drawn)) == 60
    held_out = {p.hindi for p in held_out_scene_phrases()}
    for settings in (dict(test_sentences=60), dict(test_sentences=16, max_sentences=96)):
        _, test = split_sentences(sentences(), seed=18, **settings)
        assert not set(drawn) & {p.hindi for p in test}
    assert not set(drawn) & held_out and len(held_out) == 12
    scenes = [p.hindi for p in sentences() if p.scene and p.hindi not in held_out]
    assert sorted(drawn[:48]) == sorted(scenes) and not any(p.scene for p in sentences() if p.hindi in drawn[48:])
    with pytest.raises(ValueError, match=r"`count` must be between 1 and 428, got 0"):
        training_sentences(0)
