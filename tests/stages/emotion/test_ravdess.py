import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from s2i.stages.emotion.ravdess import (
    EMOTION_PROSODY,
    ActorSplit,
    RavdessName,
    actor_variant,
    scan_ravdess,
    speak_with_emotion,
    split_by_actor,
    synthesize_corpus,
)

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def test_parse_reads_the_seven_fields_when_given_a_ravdess_name():
    name = RavdessName.parse("Actor_12/03-01-05-02-01-01-12.wav")
    assert name == RavdessName(3, 1, 5, 2, 1, 1, 12)
    assert name.label == "angry"
    assert name.is_female
    assert name.filename == "03-01-05-02-01-01-12.wav"


@pytest.mark.parametrize(
    ("filename", "match"),
    [
        ("03-01-05-02-01-01.wav", r"is not a RAVDESS file name"),
        ("03-01-09-01-01-01-01.wav", r"`emotion` must be between 01 and 08, got 09"),
        ("03-01-01-02-01-01-01.wav", r"`intensity` 02 \(strong\) does not exist for `emotion` 01"),
        ("04-01-01-01-01-01-01.wav", r"`modality` must be between 01 and 03"),
    ],
)
def test_parse_raises_naming_the_field_when_the_name_is_invalid(filename, match):
    with pytest.raises(ValueError, match=match):
        RavdessName.parse(filename)


def _touch(root, actor, *names):
    folder = root / f"Actor_{actor:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_scan_keeps_speech_of_every_actor_and_skips_songs_and_stray_files(tmp_path):
    _touch(tmp_path, 1, "03-01-01-01-01-01-01.wav", "03-02-03-01-01-01-01.wav", "notes.wav")
    _touch(tmp_path, 2, "03-01-08-02-02-02-02.wav")
    clips = scan_ravdess(tmp_path)
    assert [(c.name.actor, c.name.label) for c in clips] == [(1, "neutral"), (2, "surprised")]


def test_scan_raises_when_a_file_sits_in_another_actors_folder(tmp_path):
    _touch(tmp_path, 1, "03-01-01-01-01-01-02.wav")
    with pytest.raises(ValueError, match=r"names actor 02 but sits in Actor_01"):
        scan_ravdess(tmp_path)


def test_scan_raises_when_the_folder_has_no_ravdess_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds no RAVDESS files"):
        scan_ravdess(tmp_path)


def test_split_by_actor_puts_every_actor_in_exactly_one_split_with_both_genders_held_out():
    split = split_by_actor(range(1, 25), seed=0)
    everyone = split.train + split.val + split.test
    assert sorted(everyone) == list(range(1, 25))
    assert len(split.test) == 5 and len(split.val) == 4
    assert {a % 2 for a in split.test} == {0, 1}
    assert split_by_actor(range(1, 25), seed=0) == split
    assert split_by_actor(range(1, 25), seed=1) != split


def test_actor_split_raises_when_an_actor_is_in_two_splits():
    with pytest.raises(ValueError, match=r"Actors \[3\] are in two splits"):
        ActorSplit(train=(1, 3), val=(2,), test=(3,))


def test_prosody_ssml_scales_the_distance_from_neutral_when_intensity_is_strong():
    strong = EMOTION_PROSODY["sad"].scaled(2.0)
    assert strong.rate == 2 * EMOTION_PROSODY["sad"].rate
    assert 'rate="36%"' in strong.ssml("x")
    assert actor_variant(1) == "m1" and actor_variant(2) == "f1"


@needs_espeak
def test_synthesize_corpus_writes_sixty_ravdess_files_per_actor(tmp_path):
    paths = synthesize_corpus(tmp_path, actors=(3,))
    assert len(paths) == 60
    clips = scan_ravdess(tmp_path)
    assert len(clips) == 60
    assert {c.name.statement for c in clips} == {1, 2}
    samples, rate = soundfile.read(clips[0].path)
    assert rate == 22_050 and samples.ndim == 1 and len(samples) > rate // 2


def test_prosody_ssml_escapes_the_text_when_it_holds_markup():
    ssml = EMOTION_PROSODY["happy"].ssml('a <b> & "c"')
    assert "a &lt;b&gt; &amp; " in ssml and "<b>" not in ssml
    assert ssml.startswith('<speak><prosody pitch="+20%"') and ssml.endswith("</prosody></speak>")


def _frames_and_loudness(path) -> tuple[int, float]:
    """The clip's length in frames (espeak-ng's output, not a timing) and its RMS."""
    samples, _ = soundfile.read(path, dtype="float32")
    return samples.size, float(np.sqrt(np.mean(samples**2)))


@needs_espeak
def test_speak_with_emotion_writes_the_emotion_prosody_when_spoken(tmp_path):
    text = "दो लाल गोले"
    sad = speak_with_emotion(text, "sad", tmp_path / "sad.wav")
    angry = speak_with_emotion(text, "angry", tmp_path / "deeper" / "angry.wav", voice="hi+f2")
    neutral = speak_with_emotion(text, "neutral", tmp_path / "neutral.wav")
    info = soundfile.info(sad)
    assert (info.samplerate, info.channels) == (22_050, 1)
    (sad_frames, sad_rms), (angry_frames, angry_rms), (neutral_frames, _) = map(
        _frames_and_loudness, (sad, angry, neutral)
    )
    # Sad is slower (rate -32 %) and quieter than angry (rate +25 %, volume +60 %).
    assert sad_frames > neutral_frames > angry_frames > 0.3 * info.samplerate
    assert angry_rms > 2 * sad_rms
    strong = speak_with_emotion(text, "sad", tmp_path / "strong.wav", strong=True)
    assert _frames_and_loudness(strong)[0] > sad_frames


@pytest.mark.parametrize(
    ("text", "emotion", "message"),
    [("दो लाल गोले", "bored", r"`emotion` must be one of \['neutral'.*got 'bored'"), ("  ", "sad", r"`text` is empty")],
)
def test_speak_with_emotion_names_the_field_when_an_argument_is_invalid(text, emotion, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        speak_with_emotion(text, emotion, tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()


@needs_espeak
def test_synthesize_corpus_draws_statement_one_from_hindi_statements_when_given(tmp_path, monkeypatch):
    from s2i.stages.emotion import ravdess

    spoken = []

    def recording(binary, voice, ssml, output, settings=()):
        spoken.append((RavdessName.parse(Path(output).name), voice, ssml))
        original(binary, voice, ssml, output, settings)

    original = ravdess._speak_ssml
    monkeypatch.setattr(ravdess, "_speak_ssml", recording)
    texts = ("दो लाल गोले", "एक नीला वर्ग", "तीन हरे हीरे")
    paths = synthesize_corpus(tmp_path, actors=(2,), hindi_statements=texts)
    assert len(paths) == len(spoken) == 60 and all(p.is_file() for p in paths)
    hindi = [(name, voice, ssml) for name, voice, ssml in spoken if name.statement == 1]
    assert len(hindi) == 30 and all(voice == "hi+f1" for _, voice, _ in hindi)
    said = [next(t for t in texts if f">{t}<" in ssml) for _, _, ssml in hindi]
    assert all(said.count(t) >= 3 for t in texts)
    # No sentence stands for one emotion: each is said in several of them.
    by_text = {t: {name.emotion for (name, _, _), s in zip(hindi, said, strict=True) if s == t} for t in texts}
    assert all(len(emotions) >= 3 for emotions in by_text.values()), by_text
    english = [ssml for name, _, ssml in spoken if name.statement == 2]
    assert all(">Dogs are sitting by the door<" in ssml for ssml in english)
