"""Configuration of ``s2i web``: every setting has an ``S2I_WEB_*`` environment variable and a flag.

Flags win over the environment, the environment over the defaults. The defaults are
the safe ones: loopback only, small uploads, clips no longer than the server accepts,
few concurrent jobs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from s2i.names import EMOTION_LABELS

# The server refuses audio over 30 s (s2i.audio.MAX_DURATION_S); the app never sends more.
SERVER_MAX_DURATION_S = 30.0
# diffusers schedulers the server knows (s2i.stages.diffusion.sampling.SCHEDULERS; a test
# checks they agree). Listed here so the web app does not import the diffusion stack.
SCHEDULERS = ("ddim", "euler", "euler_ancestral", "dpmsolver++", "pndm", "lcm")
ENV_PREFIX = "S2I_WEB_"
# The page's sample clip: "a child is playing in the park" (s2i.speech.HINDI_SENTENCES[1]).
DEFAULT_SAMPLE_TEXT = "एक बच्चा पार्क में खेल रहा है"
DEFAULT_SAMPLE_ENGLISH = "A child is playing in the park."
# espeak-ng speaks the sample once; a bound keeps that (and the page) small.
MAX_SAMPLE_CHARS = 200


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "s2i-web"


@dataclasses.dataclass(frozen=True)
class WebConfig:
    """Settings of the web app.

    Attributes:
        triton_url: gRPC ``host:port`` of the Triton server.
        ssl: Talk TLS to Triton.
        root_certificates: PEM file of the CA of Triton's certificate.
        private_key: PEM client key (mutual TLS).
        certificate_chain: PEM client certificate (mutual TLS).
        headers: Sent with every gRPC call (e.g. ``authorization`` for a gateway).
        host: Address the app listens on (loopback by default).
        port: Port the app listens on.
        max_upload_bytes: Largest audio upload accepted (checked before it is read).
        max_duration_s: Longest clip accepted, at most the server's 30 s.
        min_duration_s: Shortest clip accepted.
        max_jobs: Jobs (conversion + generation) running at once, all clients together.
        max_jobs_per_client: Jobs running at once per client address.
        job_timeout_s: Deadline of one generation on the server (the gRPC stream's deadline).
        upload_timeout_s: Deadline for receiving an upload.
        convert_timeout_s: Deadline for probing and converting an upload with ffmpeg.
        max_steps: Most denoising steps a user may ask for.
        preview_every: A preview every this many denoising steps.
        max_new_tokens: Whisper token budget sent with every request (``None``: the server's).
        sizes: Image sizes offered, ``(height, width)``; the first entry is the default,
            ``(0, 0)`` means the model's own size.
        cache_dir: Where the bundled Hindi sample is written on first use.
        expose_audio: Send back the WAV the app sent to Triton (play it back; the browser test uses it).
        sample_text: The Hindi sentence of the page's sample clip (spoken by espeak-ng on first use).
        sample_english: Its English translation, shown beside it.
        sample_emotion: Speak the sample with this emotion's prosody (empty: espeak-ng's plain voice).
        sample_strong: Speak it at RAVDESS's strong intensity.
    """

    triton_url: str = "localhost:8001"
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8080
    max_upload_bytes: int = 8 * 1024 * 1024
    max_duration_s: float = SERVER_MAX_DURATION_S
    min_duration_s: float = 0.3
    max_jobs: int = 4
    max_jobs_per_client: int = 1
    job_timeout_s: float = 300.0
    upload_timeout_s: float = 30.0
    convert_timeout_s: float = 20.0
    max_steps: int = 50
    preview_every: int = 1
    max_new_tokens: int | None = None
    sizes: tuple[tuple[int, int], ...] = ((0, 0), (256, 256), (512, 512))
    cache_dir: Path = dataclasses.field(default_factory=_default_cache_dir)
    expose_audio: bool = True
    sample_text: str = DEFAULT_SAMPLE_TEXT
    sample_english: str = DEFAULT_SAMPLE_ENGLISH
    sample_emotion: str | None = None
    sample_strong: bool = False

    def __post_init__(self) -> None:
        checks = {
            "max_upload_bytes": self.max_upload_bytes > 0,
            "max_duration_s": 0 < self.max_duration_s <= SERVER_MAX_DURATION_S,
            "min_duration_s": 0 < self.min_duration_s < self.max_duration_s,
            "max_jobs": self.max_jobs >= 1,
            "max_jobs_per_client": 1 <= self.max_jobs_per_client <= self.max_jobs,
            "job_timeout_s": self.job_timeout_s > 0,
            "upload_timeout_s": self.upload_timeout_s > 0,
            "convert_timeout_s": self.convert_timeout_s > 0,
            "max_steps": 1 <= self.max_steps <= 150,
            "preview_every": self.preview_every >= 0,
            "sizes": bool(self.sizes) and all(h >= 0 and w >= 0 for h, w in self.sizes),
            "port": 0 <= self.port <= 65535,
            "sample_text": 0 < len(self.sample_text.strip()) <= MAX_SAMPLE_CHARS,
            "sample_english": len(self.sample_english) <= MAX_SAMPLE_CHARS,
            "sample_emotion": self.sample_emotion in (None, *EMOTION_LABELS),
            "sample_strong": not self.sample_strong or self.sample_emotion is not None,
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"`{field}`: invalid value {repr(getattr(self, field))[:80]} (see `s2i web --help`).")

    def client_options(self) -> dict:
        """Keyword options of :class:`s2i.client.AsyncClient` (the same as the CLI's client)."""
        return {
            "timeout_s": self.job_timeout_s,
            "headers": dict(self.headers),
            "ssl": self.ssl,
            "root_certificates": self.root_certificates,
            "private_key": self.private_key,
            "certificate_chain": self.certificate_chain,
        }

    @classmethod
    def load(cls, overrides: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None) -> WebConfig:
        """Defaults, then ``S2I_WEB_<FIELD>`` variables, then ``overrides`` (flags; ``None`` values are skipped)."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None and raw != "":
                values[field.name] = _parse(field.name, raw)
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = _parse(name, value) if isinstance(value, str) else value
        return cls(**values)


_INT_FIELDS = {
    "port",
    "max_upload_bytes",
    "max_jobs",
    "max_jobs_per_client",
    "max_steps",
    "preview_every",
    "max_new_tokens",
}
_FLOAT_FIELDS = {"max_duration_s", "min_duration_s", "job_timeout_s", "upload_timeout_s", "convert_timeout_s"}
_BOOL_FIELDS = {"ssl", "expose_audio", "sample_strong"}


def _parse(name: str, raw: str) -> object:
    """One setting from its text form (environment variable or flag)."""
    try:
        if name in _INT_FIELDS:
            return int(raw)
        if name in _FLOAT_FIELDS:
            return float(raw)
        if name in _BOOL_FIELDS:
            return _parse_bool(raw)
        if name == "headers":
            return parse_headers(raw.split(",") if raw else [])
        if name == "sizes":
            return parse_sizes(raw)
        if name == "cache_dir":
            return Path(raw)
    except ValueError as e:
        raise ValueError(f"`{name}`: cannot read {raw[:80]!r}: {e}") from e
    return raw


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def parse_headers(items: list[str]) -> dict[str, str]:
    """``["name=value", ...]`` -> a header dict (names lower-cased, as gRPC metadata must be)."""
    headers = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"header {item[:40]!r} is not `name=value`")
        headers[name.strip().lower()] = value.strip()
    return headers


def parse_sizes(raw: str) -> tuple[tuple[int, int], ...]:
    """``"default,512x512,512x768"`` -> ``((0, 0), (512, 512), (512, 768))`` (height x width)."""
    sizes = []
    for item in raw.split(","):
        item = item.strip().lower()
        if item == "default":
            sizes.append((0, 0))
            continue
        height, sep, width = item.partition("x")
        if not sep:
            raise ValueError(f"size {item!r} is not `HEIGHTxWIDTH` or `default`")
        sizes.append((int(height), int(width)))
    return tuple(sizes)
