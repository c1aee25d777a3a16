import json
import shutil

import numpy as np
import pytest
from PIL import Image

from s2i.audio import sine
from s2i.stages.emotion.config import EMOTIONS
from s2i.training.emotion import (
    SPOKEN_SCORES_FILE,
    UNSEEN_VOICES,
    Augmentation,
    Evaluation,
    TrainingConfig,
    _batches,
    add_noise,
    apply_gain,
    augment,
    change_speed,
    check_voices_unheard,
    class_weights,
    confusion_matrix,
    f1_per_class,
    render_confusion_png,
    score_scene_phrases,
    score_spoken_sentences,
)
from s2i.training.hindi_corpus import held_out_scene_phrases


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    matrix = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_f1_and_macro_f1_match_hand_computed_values():
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 1, fp 1, fn 0 -> 2/3; class 2: tp 2, fp 0, fn 1 -> 0.8
    truth, predicted = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]
    np.testing.assert_allclose(f1_per_class(confusion_matrix(truth, predicted, 3)), [0.5, 2 / 3, 0.8])
    evaluation = Evaluation.from_predictions(truth, predicted, ["a", "b", "c"])
    assert evaluation.macro_f1 == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert evaluation.accuracy == pytest.approx(4 / 6)
    assert evaluation.per_class_f1["c"] == pytest.approx(0.8)
    assert evaluation.num_clips == 6


def test_macro_f1_averages_only_classes_present_in_the_truth():
    evaluation = Evaluation.from_predictions([0, 0, 1], [0, 0, 1], ["a", "b", "c"])
    assert evaluation.macro_f1 == 1.0


def test_class_weights_double_the_weight_of_a_class_with_half_the_clips():
    # RAVDESS: neutral has one intensity, the others two.
    labels = [0] * 4 + [1] * 8 + [2] * 8
    weights = class_weights(labels, 4)
    assert weights[0] == pytest.approx(2 * weights[1])
    assert weights[1] == pytest.approx(20 / (3 * 8))
    assert weights[3] == 0.0


def _dominant_hz(samples, rate=16_000):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[0])))
    return np.fft.rfftfreq(samples.shape[0], 1 / rate)[spectrum.argmax()]


def test_change_speed_shortens_and_raises_pitch_when_factor_is_above_one():
    tone = sine(440.0, 1.0, 16_000)
    faster = change_speed(tone, 1.1)
    assert faster.shape[0] == pytest.approx(16_000 / 1.1, abs=2)
    assert _dominant_hz(faster) == pytest.approx(484.0, abs=2.0)
    assert change_speed(tone, 1.0) is tone


def test_apply_gain_scales_by_decibels_and_clips():
    tone = sine(440.0, 0.1, 16_000, amplitude=0.25)
    np.testing.assert_allclose(apply_gain(tone, 6.0), tone * 10 ** (6 / 20), rtol=1e-6)
    assert np.abs(apply_gain(tone, 20.0)).max() == 1.0


def test_add_noise_reaches_the_requested_signal_to_noise_ratio():
    tone = sine(440.0, 2.0, 16_000)
    noisy = add_noise(tone, 20.0, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(tone**2) / np.mean((noisy - tone) ** 2))
    assert snr == pytest.approx(20.0, abs=0.2)


def test_augment_is_deterministic_for_a_seed_and_identity_without_augmentation():
    tone = sine(300.0, 0.5, 16_000)
    first = augment(tone, np.random.default_rng(7), Augmentation())
    second = augment(tone, np.random.default_rng(7), Augmentation())
    np.testing.assert_array_equal(first, second)
    none = Augmentation(speed_range=(1.0, 1.0), gain_db=0.0, noise_probability=0.0)
    np.testing.assert_array_equal(augment(tone, np.random.default_rng(7), none), tone)


def test_batches_cover_every_clip_once_with_similar_lengths_together():
    lengths = list(np.random.default_rng(0).integers(100, 400, size=100))
    batches = _batches(lengths, 16, np.random.default_rng(0))
    assert sorted(i for batch in batches for i in batch) == list(range(100))
    assert max(len(batch) for batch in batches) == 16
    spread = np.mean([np.ptp([lengths[i] for i in batch]) for batch in batches if len(batch) > 1])
    assert spread < np.ptp(lengths) / 2


def test_confusion_png_is_written_with_darker_diagonal_cells(tmp_path):
    matrix = np.diag([5, 3]) + np.array([[0, 1], [2, 0]])
    path = render_confusion_png(matrix, ["calm", "angry"], tmp_path / "cm.png", title="test")
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (90 + 2 * 56 + 20, 60 + 2 * 56 + 70)
    diagonal = image.getpixel((90 + 5, 60 + 5))
    off_diagonal = image.getpixel((90 + 56 + 5, 60 + 5))
    assert diagonal[0] < off_diagonal[0]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"epochs": 0}, r"`epochs` must be at least 1, got 0"),
        ({"learning_rate": 0.0}, r"`learning_rate` must be positive"),
        ({"val_actors": (1,)}, r"Give both `val_actors` and `test_actors`"),
    ],
)
def test_training_config_raises_when_fields_are_invalid(fields, match):
    with pytest.raises(ValueError, match=match):
        TrainingConfig(**fields)


def test_augmentation_raises_when_speed_range_is_reversed():
    with pytest.raises(ValueError, match=r"`speed_range` must lie within"):
        Augmentation(speed_range=(1.1, 0.9))


def test_cli_train_emotion_refuses_only_one_of_val_and_test_actors(tmp_path, capsys):
    from s2i.cli import main

    assert main(["train", "emotion", "--data", str(tmp_path), "--val-actors", "1"]) == 2
    assert "give both --val-actors and --test-actors" in capsys.readouterr().err


def test_cli_train_emotion_reports_a_folder_without_ravdess_files(tmp_path, capsys):
    from s2i.cli import main

    assert main(["train", "emotion", "--data", str(tmp_path)]) == 2
    assert "holds no RAVDESS files" in capsys.readouterr().err


def test_check_voices_unheard_accepts_the_actors_that_do_not_speak_with_the_scoring_voices():
    check_voices_unheard(range(1, 13))
    check_voices_unheard([1, 2, 3], voices=("hi+m4", "hi+f2"))


@pytest.mark.parametrize(
    ("actors", "clashing", "most"),
    [(range(1, 14), r"\[13\].*hi\+m7", 12), (range(1, 15), r"\[13, 14\].*hi\+Annie, hi\+m7", 12)],
)
def test_check_voices_unheard_names_the_actors_that_speak_with_a_scoring_voice(actors, clashing, most):
    with pytest.raises(ValueError, match=clashing + f".*at most {most} actors"):
        check_voices_unheard(actors)
    with pytest.raises(ValueError, match=r"actors \[2\].*hi\+f1.*at most 1 actors"):
        check_voices_unheard([1, 2, 3], voices=("hi+f1",))


def test_cli_train_emotion_refuses_to_score_on_voices_its_corpus_would_train_on(tmp_path, capsys):
    from s2i.cli import main

    data = tmp_path / "ravdess"
    assert main(["train", "emotion", "--data", str(data), "--synthesize", "14", "--score-scenes", "1"]) == 2
    assert "at most 12 actors" in capsys.readouterr().err
    assert not data.exists()  # refused before synthesizing anything


needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


@pytest.fixture(scope="module")
def tiny_emotion(tmp_path_factory):
    from s2i.stages.emotion.checkpoint import build_tiny_emotion

    return build_tiny_emotion(tmp_path_factory.mktemp("emotion") / "tiny", init_scale=30.0)


@needs_espeak
def test_score_spoken_sentences_classifies_every_text_in_every_emotion_when_scored(tiny_emotion, tmp_path):
    from s2i.stages.emotion.reference import EmotionReference

    texts = ["दो लाल गोले", "एक नीला वर्ग"]
    scores = score_spoken_sentences(tiny_emotion, texts, tmp_path, voices=("hi", "hi+f2", "hi+m7"))
    assert len(scores.predictions) == len(texts) * len(EMOTIONS)
    assert [p[:3] for p in scores.predictions[:3]] == [
        (texts[0], "hi", "neutral"),
        (texts[0], "hi+f2", "calm"),
        (texts[0], "hi+m7", "happy"),
    ]
    assert scores.predictions[len(EMOTIONS)][1] == "hi+f2"  # the second text starts one voice later
    labels = EmotionReference(tiny_emotion).labels
    assert all(p[3] in labels for p in scores.predictions)
    for emotion in EMOTIONS:
        clips = [p for p in scores.predictions if p[2] == emotion]
        assert scores.per_emotion[emotion] == pytest.approx(np.mean([p[3] == emotion for p in clips]))
    assert scores.accuracy == pytest.approx(np.mean(list(scores.per_emotion.values())))
    # The same clip gives the same label (a plain function of the audio).
    again = score_spoken_sentences(tiny_emotion, texts, tmp_path / "again", voices=("hi", "hi+f2", "hi+m7"))
    assert again.predictions == scores.predictions


@needs_espeak
def test_score_scene_phrases_writes_the_report_when_scored(tiny_emotion):
    scores = score_scene_phrases(tiny_emotion, 1)
    report = json.loads((tiny_emotion / SPOKEN_SCORES_FILE).read_text(encoding="utf-8"))
    assert report["texts"] == [held_out_scene_phrases()[0].hindi] and report["voices"] == list(UNSEEN_VOICES)
    assert set(scores) == {"normal", "strong"}
    for intensity, result in scores.items():
        assert report[intensity]["per_emotion"] == result.per_emotion
        assert len(report[intensity]["predictions"]) == len(EMOTIONS)


@pytest.mark.parametrize("count", [0, 13])
def test_score_scene_phrases_names_the_field_when_the_count_is_out_of_range(count, tmp_path):
    with pytest.raises(ValueError, match=rf"`count` must be between 1 and 12 .*got {count}"):
        score_scene_phrases(tmp_path, count)
