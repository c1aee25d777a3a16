"""Servers started as an operator starts them (`s2i serve`), on a small part of the tiny repository.

The reliability tests attack and kill servers, so they never use the session's
shared server. Their repository holds only the Whisper path (preprocess, whisper
and its three graphs): five Python stubs instead of fifteen, and every good
request still crosses the Python backend, BLS and the stage graphs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from s2i import names
from s2i.server import free_ports
from tests.conftest import BUILD_DIR

# The models a translate request needs (and `preprocess`, the audio front of the pipeline).
WHISPER_MODELS = (
    names.PREPROCESS,
    names.WHISPER,
    names.WHISPER_ENCODER,
    names.WHISPER_DECODER,
    names.WHISPER_DECODER_WITH_PAST,
)
SERVE_STARTUP_S = 600.0
ADMIN_KEY = "reliability-admin-key"
# gRPC clients send the key under Triton's prefixed name; HTTP clients as `admin-key`.
GRPC_ADMIN = {"triton-grpc-protocol-admin-key": ADMIN_KEY}
# The figures of the last run (soak, faults), for docs/security.md and the issue note.
FIGURES_JSON = BUILD_DIR / "reliability" / "figures.json"
FIGURES_MARKDOWN = FIGURES_JSON.with_suffix(".md")


def record_figures(section: str, figures: dict) -> None:
    """Merge ``figures`` under ``section`` into build/.../reliability/figures.json (and its Markdown)."""
    FIGURES_JSON.parent.mkdir(parents=True, exist_ok=True)
    recorded = json.loads(FIGURES_JSON.read_text()) if FIGURES_JSON.is_file() else {}
    recorded[section] = {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    FIGURES_JSON.write_text(json.dumps(recorded, indent=2) + "\n")
    lines = ["# Reliability figures (tests/reliability)", ""]
    for name, values in sorted(recorded.items()):
        lines += [f"## {name}", "", "| figure | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in values.items()]
        lines.append("")
    FIGURES_MARKDOWN.write_text("\n".join(lines))


@dataclasses.dataclass
class Served:
    """A running `s2i serve` process and where it listens."""

    process: subprocess.Popen
    grpc_port: int
    http_port: int
    metrics_port: int
    banner: str
    log_file: Path

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def tritonserver(self) -> psutil.Process:
        """The `tritonserver` child of `s2i serve`."""
        (server,) = [p for p in psutil.Process(self.process.pid).children() if p.name() == "tritonserver"]
        return server

    def stubs(self) -> list[psutil.Process]:
        """Every Python-backend stub process of the server."""
        return [
            child
            for child in self.tritonserver().children(recursive=True)
            if child.cmdline() and child.cmdline()[0].endswith("triton_python_backend_stub")
        ]

    def stubs_of(self, model: str) -> list[psutil.Process]:
        """The stubs of ``model``'s instances, found by instance name (`whisper_0_0`) on their command lines."""
        return [p for p in self.stubs() if any(arg.startswith(f"{model}_0_") for arg in p.cmdline()[1:])]

    def stub_rss_by_instance(self) -> dict[str, int]:
        """RSS of each stub, keyed by its model instance (`whisper_encoder_0_0`)."""
        rss = {}
        for stub in self.stubs():
            instances = [arg for arg in stub.cmdline()[1:] if arg.startswith(WHISPER_MODELS)]
            rss[instances[0] if instances else str(stub.pid)] = stub.memory_info().rss
        return rss

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def whisper_repository(full_repository: Path, destination: Path) -> Path:
    """A repository of symlinks to the Whisper-path models of ``full_repository``."""
    destination.mkdir(parents=True, exist_ok=True)
    for model in WHISPER_MODELS:
        link = destination / model
        if not link.exists():
            link.symlink_to(Path(full_repository).resolve() / model, target_is_directory=True)
    return destination


def start_serve(repository: Path, log_file: Path, *extra: str, env: dict | None = None) -> Served:
    """Run `s2i serve` with free ports (everything else as given); wait for its banner."""
    http_port, grpc_port, metrics_port = free_ports(3)
    command = [
        sys.executable,
        "-m",
        "s2i.cli",
        "serve",
        "--model-repository",
        str(repository),
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
        "--log-file",
        str(log_file),
        *extra,
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    )
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + SERVE_STARTUP_S
    banner = ""
    while not banner.startswith("serving") and time.monotonic() < deadline and process.poll() is None:
        if selector.select(timeout=1.0):
            banner = process.stdout.readline()
    selector.close()
    served = Served(process, grpc_port, http_port, metrics_port, banner, log_file)
    if not banner.startswith("serving"):
        served.stop()
        pytest.fail(f"`s2i serve` did not start: {banner!r}; log tail:\n{log_file.read_text()[-3000:]}")
    return served


@pytest.fixture(scope="package")
def small_repository(model_repository, tmp_path_factory) -> Path:
    return whisper_repository(model_repository.repository, tmp_path_factory.mktemp("whisper-repository"))


@pytest.fixture(scope="package")
def default_serve(small_repository, tmp_path_factory) -> Iterator[Served]:
    """`s2i serve --model-repository R` with free ports: nothing else, as the README starts it."""
    env = {"S2I_ADMIN_KEY": ""}  # an operator's environment must not leak a key into "default"
    served = start_serve(small_repository, tmp_path_factory.mktemp("default-serve") / "server.log", env=env)
    yield served
    served.stop()


@pytest.fixture(scope="package")
def keyed_serve(small_repository, tmp_path_factory) -> Iterator[Served]:
    """`s2i serve --http` with the admin key from the environment."""
    log_file = tmp_path_factory.mktemp("keyed-serve") / "server.log"
    served = start_serve(small_repository, log_file, "--http", env={"S2I_ADMIN_KEY": ADMIN_KEY})
    yield served
    served.stop()


def tone(seconds: float = 1.0, rate: int = 16_000) -> np.ndarray:
    """A quiet float32 tone: valid audio for every good request."""
    return (0.1 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def good_translation(url: str) -> list[int]:
    """Token ids of a fixed 1 s clip, 3 tokens at most; raises if the server cannot answer."""
    from s2i.client import Client

    with Client(url, timeout_s=120) as client:
        return client.translate(tone(), 16_000, max_new_tokens=3).token_ids
