"""The main job (``s2i demo``) on given checkpoints, and the speech it speaks."""

import io

import numpy as np
import pytest
import soundfile
from PIL import Image

from s2i.demo import run_demo
from s2i.names import EMOTION_LABELS
from s2i.speech import speak
from tests.conftest import BUILD_DIR


def _audio_frames(path) -> int:
    """How long the spoken clip is, in frames (22.05 kHz); espeak-ng's output, not a timing."""
    samples, rate = soundfile.read(path, dtype="float32")
    assert np.max(np.abs(samples)) > 0.05 and rate == 22_050
    return samples.shape[0]


def test_speak_changes_rate_with_the_emotion_when_one_is_given(tmp_path):
    text = "दो लाल गोले"
    plain = _audio_frames(speak(text, tmp_path / "plain.wav"))
    sad = _audio_frames(speak(text, tmp_path / "sad.wav", emotion="sad"))
    fearful = _audio_frames(speak(text, tmp_path / "fearful.wav", emotion="fearful"))
    # EMOTION_PROSODY: sad speaks 32% slower than neutral, fearful 38% faster.
    assert sad > 1.15 * fearful
    assert plain > 0.3 * 22_050


def test_speak_refuses_an_unknown_emotion_or_strength_without_one_when_asked(tmp_path):
    with pytest.raises(ValueError, match="`emotion` must be one of"):
        speak("नमस्ते", tmp_path / "x.wav", emotion="ecstatic")
    with pytest.raises(ValueError, match="`strong` needs an `emotion`"):
        speak("नमस्ते", tmp_path / "x.wav", strong=True)
    assert not (tmp_path / "x.wav").exists()


def test_speak_slows_down_further_when_the_emotion_is_strong(tmp_path):
    sad_frames = _audio_frames(speak("दो लाल गोले", tmp_path / "sad.wav", emotion="sad"))
    strong_frames = _audio_frames(speak("दो लाल गोले", tmp_path / "strong.wav", emotion="sad", strong=True))
    assert strong_frames > 1.15 * sad_frames


def test_speak_reads_markup_characters_as_text_when_speaking_with_emotion(tmp_path):
    # Unescaped, `<` would start an SSML tag and espeak-ng would drop the rest of the sentence.
    short = _audio_frames(speak("नमस्ते", tmp_path / "short.wav", emotion="happy"))
    longer = _audio_frames(speak("नमस्ते < नमस्ते & नमस्ते", tmp_path / "long.wav", emotion="happy"))
    assert longer > 1.8 * short


@pytest.mark.parametrize(
    ("checkpoints", "error", "match"),
    [
        ({"vocoder": "x"}, ValueError, "unknown stages"),
        ({"whisper": "/no/such/folder"}, FileNotFoundError, "not found"),
    ],
)
def test_run_demo_refuses_checkpoints_before_building_when_they_are_wrong(tmp_path, checkpoints, error, match):
    with pytest.raises(error, match=match):
        run_demo(tmp_path, None, tmp_path / "image.png", steps=1, seed=0, max_new_tokens=1, checkpoints=checkpoints)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_run_demo_serves_the_given_checkpoints_and_writes_the_image_when_they_are_folders(
    checkpoints, model_repository, tmp_path, capsys
):
    # The session repository's exports are reused (same checkpoints, same cache): only the server starts.
    build_dir = BUILD_DIR / "demo-given"
    output = tmp_path / "image.png"
    given = {name: checkpoints[name] for name in ("whisper", "emotion", "diffusion")}
    assert (
        run_demo(
            build_dir,
            "दो लाल गोले",
            output,
            steps=2,
            seed=3,
            max_new_tokens=4,
            checkpoints=given,
            voice_emotion="sad",
            voice_strong=True,
            work_dir=BUILD_DIR / "onnx",
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "given ['diffusion', 'emotion', 'whisper']" in printed and "tiny none" in printed
    assert "(दो लाल गोले, spoken strongly sad)" in printed
    emotion_line = next(line for line in printed.splitlines() if line.startswith("emotion: "))
    assert emotion_line.split()[1] in EMOTION_LABELS
    image = np.asarray(Image.open(io.BytesIO(output.read_bytes())).convert("RGB"))
    assert image.ndim == 3 and image.shape[0] > 0 and image.std() > 0
