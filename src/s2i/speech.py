"""Hindi speech made with Debian's ``espeak-ng``: the offline stand-in for recorded users."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# "Hello, the weather is very nice today." / "A child is playing in the park."
HINDI_SENTENCES = (
    "नमस्ते, आज मौसम बहुत अच्छा है",
    "एक बच्चा पार्क में खेल रहा है",
    "पहाड़ों के ऊपर सूरज निकल रहा है",
    "मेरा कुत्ता समुद्र तट पर दौड़ रहा है",
)


def synthesize(
    text: str,
    output: Path,
    *,
    voice: str = "hi",
    speed_wpm: int = 160,
    pitch: int = 50,
    amplitude: int = 100,
) -> Path:
    """Speak ``text`` into the WAV file ``output`` (22.05 kHz mono) with espeak-ng.

    Args:
        text: What to say.
        output: WAV file to write.
        voice: espeak-ng voice (``hi`` is Hindi).
        speed_wpm: Words per minute (espeak-ng ``-s``).
        pitch: 0–99 (``-p``).
        amplitude: 0–200 (``-a``).
    """
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("`espeak-ng` is not installed; run `make setup` (or `apt-get install espeak-ng`).")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [binary, "-v", voice, "-s", str(speed_wpm), "-p", str(pitch), "-a", str(amplitude), "-w", str(output), text],
        check=True,
        capture_output=True,
    )
    return output


def speak(text: str, output: Path, *, emotion: str | None = None, strong: bool = False, voice: str = "hi") -> Path:
    """Speak ``text`` into ``output``, with ``emotion``'s prosody when one is given.

    The prosody is the one the synthetic emotion corpus is spoken with
    (:func:`~s2i.stages.emotion.ravdess.speak_with_emotion`), so a classifier trained on
    that corpus hears the emotion the demo asks for; ``strong`` is RAVDESS's strong intensity.
    """
    if emotion is None:
        if strong:
            raise ValueError("`strong` needs an `emotion` to speak strongly.")
        return synthesize(text, output, voice=voice)
    from s2i.stages.emotion.ravdess import speak_with_emotion

    return speak_with_emotion(text, emotion, output, voice=voice, strong=strong)
