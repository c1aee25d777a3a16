"""What the web front end reports about each job: its W3C trace context and one JSON log line.

Trace context: a ``traceparent`` header from the browser or the ingress is checked
strictly (W3C Trace Context: lowercase hex, ids not all zero, version ``ff`` refused, a
later version read as ``00`` with only its sampled bit); an absent or invalid one starts a
new sampled trace. The app records no spans of its own, so it passes the caller's context
on unchanged: Triton's ``InferRequest`` span becomes a child of the caller's span, and the
trace stays one tree. The job's request id is the ``x-request-id`` of the ingress when it
is a plain token (:data:`REQUEST_ID`), else a new one; Triton's log lines and errors show
the same id. Both go back to the browser as response headers (:func:`response_headers`),
so the person who reports a failure can quote them.

The log line (logger :data:`LOGGER_NAME`) is one JSON object per job, written when the job
ends, whatever the end: accepted and streamed, refused before Triton, or abandoned by the
browser. It holds the ids, the outcome (:data:`OUTCOMES`), the HTTP status, the time to the
first text, preview and image, and the *sizes* of the upload (bytes, seconds of audio):
never the audio, the transcript, the translation or the prompt.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
import uuid

LOGGER_NAME = "s2i.web.jobs"
LOG_EVENT = "s2i.web.job"
# ok: an image; invalid: refused options or audio (here or by the server); busy: no job slot;
# cancelled: the browser went away; server_down: Triton unreachable; error: anything else.
OUTCOMES = ("ok", "invalid", "busy", "cancelled", "server_down", "error")
# The stream's event kinds whose first arrival the log line times.
TIMED_EVENTS = ("text", "preview", "image")
# version-trace_id-parent_id-flags, then, for a later version only, more fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
# Longer headers are not read at all (a version-00 value is 55 characters).
MAX_TRACEPARENT_CHARS = 512
# An ingress's request id (nginx: 32 hex; others: a UUID): a plain token, bounded, safe to log.
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def valid_traceparent(value: str | None) -> str | None:
    """``value`` as a version-00 ``traceparent`` when it is a valid W3C trace context, else ``None``."""
    if value is None or len(value) > MAX_TRACEPARENT_CHARS:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    if version != "00":
        # A later version: keep what version 00 defines, the sampled bit of the flags.
        flags = f"{int(flags, 16) & 1:02x}"
    return f"00-{trace_id}-{parent_id}-{flags}"


def request_id_from(value: str | None) -> str:
    """The ingress's request id when it is a plain token (:data:`REQUEST_ID`), else a new one."""
    if value is not None and REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


@dataclasses.dataclass
class JobRecord:
    """One job's ids, sizes and times, filled in as it goes; :meth:`log` writes it once.

    Times are milliseconds since the request arrived (``started``, ``time.perf_counter``).
    """

    request_id: str
    traceparent: str
    started: float = dataclasses.field(default_factory=time.perf_counter)
    outcome: str | None = None
    reason: str | None = None
    status: int = 200
    upload_bytes: int | None = None
    audio_duration_s: float | None = None
    intake_ms: float | None = None
    first_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    previews: int = 0
    _logged: bool = False

    @classmethod
    def from_headers(cls, headers) -> JobRecord:
        """The record of a request with these (Starlette) headers: ``traceparent``, ``x-request-id``."""
        from s2i.client.transport import new_traceparent

        # Two traceparent headers are as invalid as a malformed one (W3C: which parent would win?).
        values = headers.getlist("traceparent")
        traceparent = (valid_traceparent(values[0]) if len(values) == 1 else None) or new_traceparent()
        return cls(request_id=request_id_from(headers.get("x-request-id")), traceparent=traceparent)

    @property
    def trace_id(self) -> str:
        """The W3C trace id the job's Triton spans carry."""
        return self.traceparent.split("-")[1]

    def elapsed_ms(self) -> float:
        """Milliseconds since the request arrived."""
        return 1000 * (time.perf_counter() - self.started)

    def received(self, upload_bytes: int, audio_duration_s: float) -> None:
        """The upload was read and converted: its sizes, and the time that took."""
        self.upload_bytes = upload_bytes
        self.audio_duration_s = audio_duration_s
        self.intake_ms = self.elapsed_ms()

    def event(self, kind: str) -> None:
        """A stream event of ``kind`` reached the browser's response."""
        if kind in TIMED_EVENTS:
            self.first_ms.setdefault(kind, self.elapsed_ms())
        if kind == "preview":
            self.previews += 1

    def end(self, outcome: str, reason: str | None = None, status: int | None = None) -> None:
        """The job's outcome; the first one given stands (a disconnect after the image is still ``ok``)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"`outcome` must be one of {list(OUTCOMES)}, got {outcome!r}.")
        if self.outcome is None:
            self.outcome, self.reason = outcome, reason
            if status is not None:
                self.status = status

    def log_line(self) -> str:
        """The job's log line: one JSON object, keys in a stable order."""
        record = {
            "event": LOG_EVENT,
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "outcome": self.outcome or "error",
            "reason": self.reason,
            "status": self.status,
            "duration_ms": _ms(self.elapsed_ms()),
            "intake_ms": _ms(self.intake_ms),
            "first_text_ms": _ms(self.first_ms.get("text")),
            "first_preview_ms": _ms(self.first_ms.get("preview")),
            "image_ms": _ms(self.first_ms.get("image")),
            "previews": self.previews,
            "upload_bytes": self.upload_bytes,
            "audio_duration_s": None if self.audio_duration_s is None else round(self.audio_duration_s, 3),
        }
        return json.dumps(record, separators=(",", ":"), ensure_ascii=True)

    def log(self) -> None:
        """Write the log line (once; later calls do nothing)."""
        if not self._logged:
            self._logged = True
            logging.getLogger(LOGGER_NAME).info(self.log_line())


def response_headers(record: JobRecord) -> dict[str, str]:
    """The headers that tell the browser which job and trace this was."""
    return {"x-request-id": record.request_id, "traceparent": record.traceparent}


def configure_job_log() -> logging.Logger:
    """Bare JSON lines of :data:`LOGGER_NAME` on stderr, not wrapped by the root logger's format."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
