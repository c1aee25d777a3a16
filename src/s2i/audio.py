"""Audio input: decoding bytes, checking samples and resampling to the models' rate.

Everything a request can carry is checked here, with limits, before any model
runs; a failed check raises :class:`InvalidInputError` naming the field, which
the server turns into an ``INVALID_ARGUMENT`` error for that request alone.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction

import numpy as np

# Re-exported: the errors lived here first, and callers of the audio checks catch them.
from s2i.errors import (  # noqa: F401
    MAX_ECHO_CHARS,
    MAX_MESSAGE_CHARS,
    InvalidInputError,
    RequestCancelledError,
    bounded_message,
    check_finite,
    shown,
)

MODEL_SAMPLE_RATE_HZ = 16_000
# Whisper sees 30 s windows; longer audio is refused rather than cut silently.
MAX_DURATION_S = 30.0
MIN_SAMPLE_RATE_HZ = 4_000
MAX_SAMPLE_RATE_HZ = 192_000
# 30 s of 192 kHz stereo float32 is 46 MB; encoded files are far smaller.
MAX_AUDIO_BYTES = 48 * 1024 * 1024
# Shorter audio than this carries no speech the models could use.
MIN_DURATION_S = 0.1


def decode_audio_bytes(data: bytes, field: str = "audio_bytes") -> tuple[np.ndarray, int]:
    """Decode a WAV/FLAC/OGG file held in memory, after checking its header.

    Channels, sample rate and duration come from the header before a single frame is
    decoded (a 181 KB FLAC of silence holds an hour of audio), and decoding stops at
    the duration limit even when the header understates the length.

    Returns:
        Samples (float32, shape ``[samples]``) and the sample rate in Hz.
    """
    import soundfile

    if not data:
        raise InvalidInputError(field, "is empty; send the bytes of a WAV, FLAC or OGG file.")
    if len(data) > MAX_AUDIO_BYTES:
        raise InvalidInputError(field, f"is {len(data)} bytes; the limit is {MAX_AUDIO_BYTES} bytes.")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            _check_header(sound.channels, sound.samplerate, sound.frames, field)
            # One frame past the limit is enough to tell the header lied.
            max_frames = math.ceil(MAX_DURATION_S * sound.samplerate) + 1
            samples = sound.read(frames=max_frames, dtype="float32", always_2d=False)
            sample_rate_hz = sound.samplerate
    except InvalidInputError:
        raise
    except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError) as e:
        raise InvalidInputError(
            field, f"could not be decoded as WAV, FLAC or OGG audio ({len(data)} bytes): {e}"
        ) from e
    return samples, int(sample_rate_hz)


def _check_header(channels: int, sample_rate_hz: int, frames: int, field: str) -> None:
    """Refuse what the header alone shows to be out of bounds."""
    if channels != 1:
        raise InvalidInputError(field, f"has {channels} channels; send mono audio (e.g. `sox in.wav -c 1 out.wav`).")
    if not MIN_SAMPLE_RATE_HZ <= sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise InvalidInputError(
            field,
            f"has a sample rate of {sample_rate_hz} Hz; it must be between {MIN_SAMPLE_RATE_HZ} and "
            f"{MAX_SAMPLE_RATE_HZ} Hz.",
        )
    header_duration_s = frames / sample_rate_hz
    if header_duration_s > MAX_DURATION_S:
        raise InvalidInputError(
            field,
            f"is {header_duration_s:.1f} s long (from its header); the limit is {MAX_DURATION_S:.0f} s. "
            "Split the audio and send each part.",
        )


def prepare_audio(samples: np.ndarray, sample_rate_hz: int, field: str = "audio_samples") -> np.ndarray:
    """Check mono float samples and resample them to :data:`MODEL_SAMPLE_RATE_HZ`.

    Args:
        samples: Mono samples in ``[-1, 1]``, shape ``[samples]``.
        sample_rate_hz: Their sample rate.
        field: Input name used in error messages.

    Returns:
        float32 samples at 16 kHz.
    """
    if not MIN_SAMPLE_RATE_HZ <= sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise InvalidInputError(
            "sample_rate_hz", f"must be between {MIN_SAMPLE_RATE_HZ} and {MAX_SAMPLE_RATE_HZ} Hz, got {sample_rate_hz}."
        )
    if samples.ndim != 1:
        raise InvalidInputError(
            field,
            f"must be mono (one channel), got shape {list(samples.shape)}; downmix first "
            "(e.g. `sox in.wav -c 1 out.wav`).",
        )
    if samples.dtype != np.float32:
        raise InvalidInputError(field, f"must be float32, got {samples.dtype}.")
    duration_s = samples.shape[0] / sample_rate_hz
    if duration_s < MIN_DURATION_S:
        raise InvalidInputError(
            field, f"holds {samples.shape[0]} samples ({duration_s:.3f} s); at least {MIN_DURATION_S} s is needed."
        )
    if duration_s > MAX_DURATION_S:
        raise InvalidInputError(
            field,
            f"is {duration_s:.1f} s long; the limit is {MAX_DURATION_S:.0f} s. Split the audio and send each part.",
        )
    check_finite(samples, field)
    return resample(samples, sample_rate_hz, MODEL_SAMPLE_RATE_HZ)


def resample(samples: np.ndarray, from_rate_hz: int, to_rate_hz: int) -> np.ndarray:
    """Band-limited polyphase resampling (``scipy.signal.resample_poly``)."""
    if from_rate_hz == to_rate_hz:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    ratio = Fraction(to_rate_hz, from_rate_hz)
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)


def load_request_audio(samples: np.ndarray | None, sample_rate_hz: int | None, audio_bytes: bytes | None) -> np.ndarray:
    """Turn whichever audio a request carries into checked 16 kHz mono samples."""
    if (samples is None) == (audio_bytes is None):
        raise InvalidInputError(
            "audio_samples", "send exactly one of `audio_samples` (with `sample_rate_hz`) or `audio_bytes`."
        )
    if audio_bytes is not None:
        decoded, rate = decode_audio_bytes(audio_bytes)
        if decoded.ndim != 1:
            raise InvalidInputError(
                "audio_bytes",
                f"has {decoded.shape[1]} channels; send mono audio (e.g. `sox in.wav -c 1 out.wav`).",
            )
        return prepare_audio(decoded, rate, field="audio_bytes")
    if sample_rate_hz is None:
        raise InvalidInputError("sample_rate_hz", "is required with `audio_samples`.")
    return prepare_audio(samples, sample_rate_hz)


def duration_s(samples: np.ndarray, sample_rate_hz: int = MODEL_SAMPLE_RATE_HZ) -> float:
    """Duration of ``samples`` in seconds."""
    return samples.shape[0] / sample_rate_hz


def sine(frequency_hz: float, duration_s: float, sample_rate_hz: int, amplitude: float = 0.5) -> np.ndarray:
    """A float32 sine tone; handy for checks of resampling and features."""
    t = np.arange(math.ceil(duration_s * sample_rate_hz)) / sample_rate_hz
    return (amplitude * np.sin(2 * np.pi * frequency_hz * t)).astype(np.float32)
