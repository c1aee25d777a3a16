"""Session fixtures: tiny checkpoints, one model repository and one real tritonserver for the whole run."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

from s2i.conversion.convert import convert
from s2i.server import ServerOptions, TraceOptions, TritonServer
from s2i.speech import HINDI_SENTENCES, synthesize
from s2i.tiny import build_tiny_checkpoints

ROOT = Path(__file__).resolve().parents[1]
# Checkpoints and exports are cached here between local runs; CI starts empty.
BUILD_DIR = Path(os.environ.get("S2I_TEST_BUILD_DIR", ROOT / "build" / "test"))
# Tiny random models rarely emit <|endoftext|>; a short limit keeps each request fast.
MAX_NEW_TOKENS = 24


@dataclass(frozen=True)
class SpeechClip:
    """A Hindi clip as espeak-ng wrote it (22.05 kHz mono WAV)."""

    text: str
    wav_bytes: bytes
    samples: np.ndarray
    sample_rate_hz: int


@pytest.fixture(scope="session")
def checkpoints() -> dict[str, Path]:
    return build_tiny_checkpoints(BUILD_DIR / "checkpoints")


@pytest.fixture(scope="session")
def model_repository(checkpoints):
    return convert(checkpoints, BUILD_DIR / "model_repository", work_dir=BUILD_DIR / "onnx")


@pytest.fixture(scope="session")
def hindi_clips() -> list[SpeechClip]:
    # Different sentences and prosody, so clips give different token sequences.
    prosody = [dict(speed_wpm=160, pitch=50), dict(speed_wpm=120, pitch=70), dict(speed_wpm=190, pitch=30)]
    clips = []
    for index, (text, options) in enumerate(zip(HINDI_SENTENCES, prosody, strict=False)):
        path = synthesize(text, BUILD_DIR / "speech" / f"clip{index}.wav", **options)
        samples, rate = soundfile.read(path, dtype="float32")
        clips.append(SpeechClip(text, path.read_bytes(), samples, rate))
    return clips


# The session server's admin key; tests of admin APIs (shared memory) send it.
ADMIN_KEY = "test-admin-key"
# gRPC metadata that opens the session server's admin APIs (statistics, shared memory, ...).
ADMIN_HEADERS = {"triton-grpc-protocol-admin-key": ADMIN_KEY}


# Triton's file mode, off until a test turns it on through the trace API (tests/model_repository/test_observability.py).
TRACE_DIR = BUILD_DIR / "traces"


def session_trace_options() -> TraceOptions:
    """Tracing of the session server: JSON files under :data:`TRACE_DIR`, one per trace, level OFF."""
    if TRACE_DIR.exists():
        shutil.rmtree(TRACE_DIR)
    TRACE_DIR.mkdir(parents=True)
    return TraceOptions(mode="triton", level="OFF", rate=1, file=str(TRACE_DIR / "trace.json"), log_frequency=1)


@pytest.fixture(scope="session")
def triton_server(model_repository):
    # HTTP on for its tests, inference open as in the pods (loopback only); admin APIs behind ADMIN_KEY.
    options = ServerOptions(
        str(model_repository.repository),
        http=True,
        http_inference_restricted=False,
        restricted_api_key=ADMIN_KEY,
        trace=session_trace_options(),
    )
    server = TritonServer(options.with_free_ports(), log_file=BUILD_DIR / "tritonserver.log")
    server.start()
    yield server
    server.stop()
    assert not server.is_alive(), "tritonserver still running after stop()"


def sub_repository(source: Path, destination: Path, models: list[str], edit=None) -> Path:
    """A repository holding only ``models`` of ``source`` (version folders linked, configs copied).

    ``edit(name, config)`` may change a model's ``ModelConfig`` protobuf before it is written,
    e.g. a long queue delay that makes the dynamic batcher's merging deterministic.
    """
    from google.protobuf import text_format

    from s2i.model_repository.config import parse_config

    if destination.exists():
        shutil.rmtree(destination)
    for name in models:
        (destination / name).mkdir(parents=True)
        (destination / name / "1").symlink_to((source / name / "1").resolve(), target_is_directory=True)
        config = parse_config((source / name / "config.pbtxt").read_text())
        if edit is not None:
            edit(name, config)
        (destination / name / "config.pbtxt").write_text(text_format.MessageToString(config))
    return destination


@contextlib.contextmanager
def started_server(repository: Path, log_name: str, **options):
    """A real tritonserver on ``repository`` (free ports; other ``ServerOptions`` fields from ``options``)."""
    server = TritonServer(
        ServerOptions(str(repository), **options).with_free_ports(), log_file=BUILD_DIR / f"{log_name}.log"
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def client(triton_server):
    from s2i.client import Client

    with Client(triton_server.grpc_url, timeout_s=60) as client:
        yield client
