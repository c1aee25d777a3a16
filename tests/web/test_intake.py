"""The audio front door: formats browsers send, bounds checked before conversion, clear refusals."""

from __future__ import annotations

import asyncio
import io
import subprocess

import numpy as np
import pytest
import soundfile

from s2i.audio import sine
from s2i.web.intake import (
    OUTPUT_SAMPLE_RATE_HZ,
    AudioLimits,
    RejectedAudioError,
    convert_upload,
    ffmpeg_command,
    sniff_container,
)

LIMITS = AudioLimits(max_bytes=4 * 1024 * 1024, max_duration_s=10.0, min_duration_s=0.3, timeout_s=20.0)
# ffmpeg output options per browser/upload format (encoders in Debian's ffmpeg).
FORMATS = {
    "webm": ["-c:a", "libopus", "-f", "webm"],
    "ogg": ["-c:a", "libopus", "-f", "ogg"],
    "mp3": ["-c:a", "libmp3lame", "-f", "mp3"],
    "flac": ["-c:a", "flac", "-f", "flac"],
    "mp4": ["-c:a", "aac", "-movflags", "+frag_keyframe+empty_moov", "-f", "mp4"],
    "wav": ["-c:a", "pcm_f32le", "-f", "wav"],
}


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def encode(wav: bytes, options: list[str]) -> bytes:
    """Encode with ffmpeg; written to a pipe the container states no duration, as MediaRecorder's WebM."""
    command = ["ffmpeg", "-loglevel", "error", "-f", "wav", "-i", "pipe:0", "-ac", "1", *options, "pipe:1"]
    return subprocess.run(command, input=wav, capture_output=True, check=True).stdout


def convert(data: bytes, limits: AudioLimits = LIMITS):
    return asyncio.run(convert_upload(data, limits))


@pytest.mark.parametrize("container", sorted(FORMATS))
def test_convert_upload_gives_16khz_mono_wav_of_the_same_length_when_format_is_a_browser_format(container, hindi_clips):
    clip = hindi_clips[0]
    data = encode(clip.wav_bytes, FORMATS[container])
    received = convert(data)
    assert received.container == container
    samples, rate = soundfile.read(io.BytesIO(received.wav), dtype="float32")
    assert rate == OUTPUT_SAMPLE_RATE_HZ and samples.ndim == 1
    expected_s = clip.samples.shape[0] / clip.sample_rate_hz
    # Codec padding (Opus pre-skip, MP3/AAC frames) adds at most a few tens of ms.
    assert abs(received.duration_s - expected_s) < 0.1
    assert np.max(np.abs(samples)) > 0.05


def test_convert_upload_keeps_the_speech_when_format_is_wav(hindi_clips):
    clip = hindi_clips[0]
    received = convert(clip.wav_bytes)
    samples, _ = soundfile.read(io.BytesIO(received.wav), dtype="float32")
    from s2i.audio import resample

    expected = resample(clip.samples, clip.sample_rate_hz, OUTPUT_SAMPLE_RATE_HZ)
    # ffmpeg's resampler is not scipy's; the waveform agrees to within 16-bit noise and filter ripple.
    n = min(len(samples), len(expected))
    assert np.corrcoef(samples[:n], expected[:n])[0, 1] > 0.99


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"", 400, "empty"),
        (b"%PDF-1.4 hello" * 20, 415, "not_audio"),
        (b"#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n", 415, "not_audio"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40, 422, "undecodable"),
        (b"OggS" + bytes(200), 422, "undecodable"),
        (b"\x1a\x45\xdf\xa3" + bytes(200), 422, "undecodable"),
    ],
    ids=["empty", "pdf", "playlist", "broken-wav", "broken-ogg", "broken-webm"],
)
def test_convert_upload_refuses_with_a_clear_message_when_bytes_are_not_audio(data, status, reason):
    with pytest.raises(RejectedAudioError) as refused:
        convert(data)
    assert (refused.value.status, refused.value.reason) == (status, reason)
    assert len(str(refused.value)) < 200


def test_convert_upload_refuses_before_decoding_when_the_header_states_a_long_clip():
    long_wav = wav_bytes(sine(220, 12.0, 8_000), 8_000)
    with pytest.raises(RejectedAudioError, match=r"12\.0 s long; the limit is 10 s") as refused:
        convert(long_wav)
    assert refused.value.status == 413 and refused.value.reason == "too_long"


def test_convert_upload_measures_and_refuses_a_long_clip_when_the_container_states_no_duration():
    webm = encode(wav_bytes(sine(220, 12.0, 16_000), 16_000), FORMATS["webm"])
    with pytest.raises(RejectedAudioError, match="the limit is 10 s") as refused:
        convert(webm)
    assert refused.value.reason == "too_long"


def test_convert_upload_refuses_when_the_file_is_over_the_byte_limit():
    small = AudioLimits(max_bytes=1000, max_duration_s=10.0, min_duration_s=0.3, timeout_s=20.0)
    with pytest.raises(RejectedAudioError, match="the limit is 0.0 MB") as refused:
        convert(wav_bytes(sine(220, 1.0, 16_000), 16_000), small)
    assert refused.value.status == 413


@pytest.mark.parametrize(
    ("samples", "reason"),
    [(np.zeros(16_000, np.float32), "silent"), (sine(220, 0.1, 16_000), "too_short")],
    ids=["silent", "short"],
)
def test_convert_upload_refuses_when_there_is_no_usable_speech(samples, reason):
    with pytest.raises(RejectedAudioError) as refused:
        convert(wav_bytes(samples, 16_000))
    assert refused.value.reason == reason


def test_sniff_container_names_the_format_from_magic_bytes_when_extension_is_absent(hindi_clips):
    assert sniff_container(hindi_clips[0].wav_bytes) == "wav"
    assert sniff_container(encode(hindi_clips[0].wav_bytes, FORMATS["mp3"])) == "mp3"
    assert sniff_container(encode(hindi_clips[0].wav_bytes, FORMATS["mp4"])) == "mp4"


def test_ffmpeg_command_reads_local_files_with_one_named_demuxer_and_bounds_the_output(tmp_path):
    command = ffmpeg_command(tmp_path / "in", "matroska", tmp_path / "out.wav", LIMITS)
    joined = " ".join(command)
    assert "-protocol_whitelist file" in joined and "-f matroska -i" in joined
    assert "-t 10.500" in joined and "-fs " in joined and "-threads 1" in joined
    assert command.count("-i") == 1
