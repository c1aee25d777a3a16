import numpy as np
import pytest

from s2i.audio import (
    MAX_DURATION_S,
    InvalidInputError,
    decode_audio_bytes,
    load_request_audio,
    prepare_audio,
    resample,
    sine,
)


def dominant_frequency_hz(samples: np.ndarray, sample_rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / sample_rate_hz)[spectrum.argmax()])


@pytest.mark.parametrize("rate_hz", [8_000, 22_050, 44_100, 48_000])
def test_resample_matches_a_tone_made_at_16khz_when_rate_differs(rate_hz):
    tone = sine(440.0, 1.0, rate_hz)
    resampled = resample(tone, rate_hz, 16_000)
    expected = sine(440.0, 1.0, 16_000)
    assert resampled.dtype == np.float32
    assert abs(len(resampled) - len(expected)) <= 1
    assert dominant_frequency_hz(resampled, 16_000) == pytest.approx(440.0, abs=1.0)
    # Away from the edges the band-limited resampler reproduces the tone closely.
    middle = slice(800, 15_200)
    assert np.max(np.abs(resampled[middle] - expected[middle])) < 0.01


def test_prepare_audio_returns_input_unchanged_when_already_16khz():
    tone = sine(300.0, 0.5, 16_000)
    np.testing.assert_array_equal(prepare_audio(tone, 16_000), tone)


@pytest.mark.parametrize(
    ("samples", "rate", "match"),
    [
        (np.zeros(0, np.float32), 16_000, "at least 0.1 s"),
        (np.full(16_000, np.nan, np.float32), 16_000, "16000 NaN or infinite"),
        (np.r_[np.zeros(16_000, np.float32), np.float32(np.inf)], 16_000, "1 NaN or infinite"),
        (np.zeros((16_000, 2), np.float32), 16_000, "must be mono"),
        (np.zeros(16_000, np.int16), 16_000, "must be float32"),
        (np.zeros(int(16_000 * (MAX_DURATION_S + 1)), np.float32), 16_000, "31.0 s long; the limit is 30 s"),
        (np.zeros(16_000, np.float32), 1_000, "between 4000 and 192000 Hz, got 1000"),
    ],
    ids=["empty", "nan", "inf", "stereo", "int16", "too-long", "bad-rate"],
)
def test_prepare_audio_raises_when_input_is_out_of_limits(samples, rate, match):
    with pytest.raises(InvalidInputError, match=match):
        prepare_audio(samples, rate)


def test_decode_audio_bytes_raises_naming_the_field_when_bytes_are_garbage():
    with pytest.raises(InvalidInputError, match=r"`audio_bytes`: could not be decoded as WAV, FLAC or OGG"):
        decode_audio_bytes(b"this is not audio" * 10)


def test_decode_audio_bytes_raises_when_empty():
    with pytest.raises(InvalidInputError, match="is empty"):
        decode_audio_bytes(b"")


def test_load_request_audio_raises_when_both_or_neither_audio_input_given():
    with pytest.raises(InvalidInputError, match="exactly one of"):
        load_request_audio(None, None, None)
    with pytest.raises(InvalidInputError, match="exactly one of"):
        load_request_audio(np.zeros(16_000, np.float32), 16_000, b"RIFF")


def test_load_request_audio_decodes_wav_bytes_to_the_same_samples_as_raw_input(hindi_clips):
    clip = hindi_clips[0]
    from_bytes = load_request_audio(None, None, clip.wav_bytes)
    from_samples = load_request_audio(clip.samples, clip.sample_rate_hz, None)
    np.testing.assert_array_equal(from_bytes, from_samples)
    assert len(from_bytes) == pytest.approx(len(clip.samples) * 16_000 / clip.sample_rate_hz, abs=1)


def _silent_flac(path, seconds: float, rate_hz: int = 16_000, channels: int = 1) -> bytes:
    """A FLAC file of silence, written in blocks (an hour compresses to a few hundred KB)."""
    import soundfile

    block = np.zeros((rate_hz * 60, channels), dtype=np.int16)
    with soundfile.SoundFile(path, "w", samplerate=rate_hz, channels=channels, format="FLAC") as sound:
        remaining = int(seconds * rate_hz)
        while remaining > 0:
            sound.write(block[: min(remaining, len(block))])
            remaining -= len(block)
    return path.read_bytes()


@pytest.fixture(scope="module")
def hour_of_silence(tmp_path_factory) -> bytes:
    return _silent_flac(tmp_path_factory.mktemp("flac") / "hour.flac", 3600)


def test_decode_audio_bytes_refuses_an_hour_long_flac_from_its_header_before_decoding(hour_of_silence):
    import tracemalloc

    assert len(hour_of_silence) < 2 * 1024 * 1024  # a small file that would decode to 230 MB of float32
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInputError, match=r"`audio_bytes`: is 3600.0 s long \(from its header\); the limit"):
            decode_audio_bytes(hour_of_silence)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 1024 * 1024
    # The next (good) request decodes normally.
    samples, rate = decode_audio_bytes(_silent_flac_bytes(2.0))
    assert (samples.shape, rate, float(np.abs(samples).max())) == ((32_000,), 16_000, 0.0)


def _silent_flac_bytes(seconds: float, channels: int = 1) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        return _silent_flac(Path(folder) / "clip.flac", seconds, channels=channels)


def test_decode_audio_bytes_refuses_stereo_from_the_header_when_channels_are_two():
    with pytest.raises(InvalidInputError, match=r"`audio_bytes`: has 2 channels; send mono audio"):
        decode_audio_bytes(_silent_flac_bytes(1.0, channels=2))


def test_decode_audio_bytes_stops_at_the_limit_when_the_header_understates_the_length(monkeypatch):
    import s2i.audio as audio

    # A header that says 1 s over a 40 s stream: decoding reads one frame past 30 s, then refuses.
    data = _silent_flac_bytes(40.0)
    monkeypatch.setattr(audio, "_check_header", lambda *args: None)
    with pytest.raises(InvalidInputError, match=r"`audio_bytes`: is 30.0 s long; the limit is 30 s"):
        audio.load_request_audio(None, None, data)


def test_invalid_input_error_bounds_its_message_when_the_text_is_huge():
    from s2i.errors import MAX_MESSAGE_CHARS

    error = InvalidInputError("prompt", "y" * 1_000_000)
    assert len(str(error)) < MAX_MESSAGE_CHARS + 64
    assert str(error).startswith("`prompt`: yyy")
    assert str(error).endswith("(message cut, 1000010 characters)")
