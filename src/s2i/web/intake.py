"""The audio front door: what a browser uploads is checked and converted here, before Triton sees it.

Browsers record WebM/Opus (Chromium, Firefox), Ogg/Opus or MP4/AAC (Safari); people
upload WAV, FLAC, MP3 and the rest. Everything becomes one 16 kHz mono 16-bit WAV,
which the server reads without a codec of its own. In order, each step bounded:

1. the byte size (the app also refuses a ``Content-Length`` over the limit before reading);
2. the container, sniffed from its magic bytes: only the formats above, each passed to
   ffmpeg with its demuxer named (``-f``), so ffmpeg never guesses and never opens a
   playlist or a URL (``-protocol_whitelist file``);
3. the duration the container's header states (libsndfile for WAV/FLAC/Ogg, ``ffprobe``
   otherwise), refused when over the limit before any decoding; recordings from
   ``MediaRecorder`` state none, so
4. ffmpeg's output is cut at the limit plus a margin (``-t``, ``-fs``) and measured:
   a clip longer than the limit is refused, never silently cut;
5. silence is refused with a hint about the microphone.

ffmpeg and ffprobe run with a deadline and one thread; their messages go to the log,
never to the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

LOGGER = logging.getLogger(__name__)

OUTPUT_SAMPLE_RATE_HZ = 16_000
# ffmpeg's output is cut this far past the limit: enough to tell "too long" from "just at it".
CUT_MARGIN_S = 0.5
# Peak below this (of full scale) is taken as "nothing was recorded".
SILENCE_PEAK = 1e-4
WAV_HEADER_BYTES = 44

# Container -> (ffmpeg demuxer, what people call it).
CONTAINERS = {
    "wav": ("wav", "WAV"),
    "flac": ("flac", "FLAC"),
    "ogg": ("ogg", "Ogg (Opus/Vorbis)"),
    "webm": ("matroska", "WebM/Matroska"),
    "mp3": ("mp3", "MP3"),
    "mp4": ("mov", "MP4/M4A"),
}
SUPPORTED = ", ".join(label for _, label in CONTAINERS.values())
# libsndfile reports this many frames when the header leaves the length open (a streamed FLAC).
_UNKNOWN_FRAMES = 2**62
# Containers whose header libsndfile reads (duration without ffprobe).
_SNDFILE_CONTAINERS = {"wav", "flac", "ogg"}


class RejectedAudioError(ValueError):
    """An upload the app will not send to the server.

    Attributes:
        status: HTTP status of the refusal.
        reason: Short machine-readable reason (``too_large``, ``too_long``, ``not_audio``, …).
    """

    def __init__(self, message: str, *, status: int = 400, reason: str = "bad_audio") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class AudioLimits:
    """Bounds of an upload."""

    max_bytes: int
    max_duration_s: float
    min_duration_s: float
    timeout_s: float


@dataclasses.dataclass(frozen=True)
class ReceivedAudio:
    """An accepted upload.

    Attributes:
        wav: The 16 kHz mono 16-bit WAV file sent to Triton.
        container: The sniffed container (a key of :data:`CONTAINERS`).
        duration_s: Duration of ``wav``.
    """

    wav: bytes
    container: str
    duration_s: float


def sniff_container(data: bytes) -> str:
    """The container of ``data`` from its magic bytes, or :class:`RejectedAudioError`."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if data[4:8] == b"ftyp":
        return "mp4"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    raise RejectedAudioError(
        f"This file is not audio the app can read ({len(data)} bytes, unknown format); send {SUPPORTED}.",
        status=415,
        reason="not_audio",
    )


def check_size(size: int, limits: AudioLimits) -> None:
    """Refuse empty uploads and uploads over ``limits.max_bytes``."""
    if size == 0:
        raise RejectedAudioError("The upload is empty; record or choose an audio file.", reason="empty")
    if size > limits.max_bytes:
        raise RejectedAudioError(
            f"The file is {size / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.1f} MB.",
            status=413,
            reason="too_large",
        )


def too_long(duration_s: float, limits: AudioLimits) -> RejectedAudioError:
    """The refusal of a clip over the duration limit."""
    return RejectedAudioError(
        f"The clip is {duration_s:.1f} s long; the limit is {limits.max_duration_s:.0f} s. Record a shorter one.",
        status=413,
        reason="too_long",
    )


def header_duration_sndfile(data: bytes) -> float | None:
    """The duration a WAV/FLAC/Ogg header states (libsndfile reads only the header), or ``None``."""
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            if not 0 < sound.frames < _UNKNOWN_FRAMES or sound.samplerate <= 0:
                return None
            return sound.frames / sound.samplerate
    except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError):
        return None


async def _run(command: list[str], timeout_s: float) -> tuple[int, bytes, bytes]:
    """Run a tool with a deadline; kill it when the deadline passes."""
    process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    return process.returncode, stdout, stderr


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RejectedAudioError(
            f"The app cannot convert audio: `{name}` is not installed on the server (apt-get install ffmpeg).",
            status=503,
            reason="no_ffmpeg",
        )
    return path


async def header_duration_ffprobe(path: Path, demuxer: str, timeout_s: float) -> float | None:
    """The duration the container states, as ffprobe reads it; ``None`` when it states none."""
    command = [
        _tool("ffprobe"),
        *("-v", "error", "-protocol_whitelist", "file", "-f", demuxer),
        *("-show_entries", "format=duration", "-of", "default=noprint_wrappers=1:nokey=1", str(path)),
    ]
    code, stdout, stderr = await _run(command, timeout_s)
    if code != 0:
        LOGGER.info("ffprobe refused an upload: %s", stderr[:500].decode("utf-8", "replace"))
        return None
    try:
        return float(stdout.strip())
    except ValueError:  # "N/A": MediaRecorder's WebM has no duration in its header
        return None


def ffmpeg_command(source: Path, demuxer: str, target: Path, limits: AudioLimits) -> list[str]:
    """The ffmpeg arguments: one demuxer, local files only, first audio stream, 16 kHz mono s16 WAV, bounded."""
    cut_s = limits.max_duration_s + CUT_MARGIN_S
    max_output_bytes = int(cut_s * OUTPUT_SAMPLE_RATE_HZ * 2) + 4096
    return [
        _tool("ffmpeg"),
        *("-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1"),
        *("-protocol_whitelist", "file", "-f", demuxer, "-i", str(source)),
        *("-map", "0:a:0", "-vn", "-sn", "-dn", "-ac", "1", "-ar", str(OUTPUT_SAMPLE_RATE_HZ)),
        *("-c:a", "pcm_s16le", "-t", f"{cut_s:.3f}", "-fs", str(max_output_bytes)),
        *("-bitexact", "-f", "wav", "-y", str(target)),
    ]


async def convert_upload(data: bytes, limits: AudioLimits) -> ReceivedAudio:
    """Check ``data`` and convert it to the WAV sent to Triton; :class:`RejectedAudioError` says why not."""
    check_size(len(data), limits)
    container = sniff_container(data)
    demuxer, label = CONTAINERS[container]
    with tempfile.TemporaryDirectory(prefix="s2i-web-") as folder:
        source, target = Path(folder) / "upload", Path(folder) / "audio.wav"
        source.write_bytes(data)
        try:
            if container in _SNDFILE_CONTAINERS:
                stated = header_duration_sndfile(data)
            else:
                stated = await header_duration_ffprobe(source, demuxer, limits.timeout_s)
            if stated is not None and stated > limits.max_duration_s:
                raise too_long(stated, limits)
            code, _, stderr = await _run(ffmpeg_command(source, demuxer, target, limits), limits.timeout_s)
        except TimeoutError as e:
            raise RejectedAudioError(
                f"Converting the {label} file took over {limits.timeout_s:.0f} s; send a shorter or simpler file.",
                status=422,
                reason="convert_timeout",
            ) from e
        if code != 0 or not target.exists() or target.stat().st_size <= WAV_HEADER_BYTES:
            LOGGER.info("ffmpeg refused a %s upload: %s", label, stderr[:500].decode("utf-8", "replace"))
            raise RejectedAudioError(
                f"The {label} file could not be decoded as audio; is it damaged or empty?",
                status=422,
                reason="undecodable",
            )
        wav = target.read_bytes()
    return ReceivedAudio(wav=wav, container=container, duration_s=check_converted(wav, limits))


def check_converted(wav: bytes, limits: AudioLimits) -> float:
    """Duration and content checks of the converted WAV; returns its duration."""
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    duration_s = samples.shape[0] / rate
    if duration_s > limits.max_duration_s:
        raise too_long(duration_s, limits)
    if duration_s < limits.min_duration_s:
        raise RejectedAudioError(
            f"The clip is {duration_s:.2f} s long; at least {limits.min_duration_s:.1f} s of speech is needed.",
            reason="too_short",
        )
    if samples.size == 0 or float(np.max(np.abs(samples))) < SILENCE_PEAK:
        raise RejectedAudioError(
            "The clip is silent; check that the right microphone is selected and not muted.", reason="silent"
        )
    return duration_s
