"""The ASGI app: one page, a JSON options endpoint, and ``POST /api/generate`` streaming Server-Sent Events.

``POST /api/generate?seed=…&steps=…`` takes the audio file as the request body (no
multipart parser: the body is the file). Before anything reaches Triton, in order:
a job slot (429 for a client with a job running, 503 when the app is full), the
options (400 naming the field), the declared and received size (413), the upload
deadline (408), then :mod:`s2i.web.intake` (format, duration, conversion). Only
then does the response start: ``text/event-stream`` events ``audio``, ``text``,
``preview``…, ``image`` or ``error``, each a JSON object. The generation talks to
Triton through :class:`s2i.client.AsyncClient`'s decoupled stream with the job's
deadline; when the browser goes away the stream is cancelled (see
:class:`EventStream`), which cancels the gRPC call.

Every ``/api/generate`` answer carries the job's ``x-request-id`` and ``traceparent``
(the caller's W3C context when valid, else a new trace), the same ones the gRPC stream
sends to Triton, and every job ends with one JSON line on the ``s2i.web.jobs`` logger
(:mod:`s2i.web.observability`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib.resources
import json
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from s2i import names
from s2i.web.config import SCHEDULERS, WebConfig
from s2i.web.intake import AudioLimits, ReceivedAudio, RejectedAudioError, check_size, convert_upload
from s2i.web.limits import BusyError, JobLimiter, Slot
from s2i.web.observability import JobRecord, response_headers
from s2i.web.options import GenerationOptions, OptionError, parse_options

if TYPE_CHECKING:
    from s2i.client import CallOptions

LOGGER = logging.getLogger(__name__)

# StreamFactory(wav_bytes, options, call) -> the client's stream events; ``call`` holds the
# job's request id and traceparent. The default is AsyncClient.stream_speech_to_image;
# tests substitute one to control timing.
StreamFactory = Callable[[bytes, GenerationOptions, "CallOptions"], AsyncIterator]
# Server messages shown to people are cut to this many characters.
MAX_MESSAGE_CHARS = 300
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' data: blob:; "
        "script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "permissions-policy": "microphone=(self)",
}


def static_dir() -> Path:
    """The packaged page, script and stylesheet."""
    return Path(str(importlib.resources.files("s2i.web").joinpath("static")))


def style_templates() -> tuple[dict[str, str], str]:
    """Style template name -> description, and the default template, from the packaged ``styles.toml``."""
    from s2i.pipeline.prompt import StyleTemplates

    templates = StyleTemplates.load()
    return {name: t.description for name, t in templates.templates.items()}, templates.default_template


def sse(event: str, data: dict) -> bytes:
    """One Server-Sent Event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def data_url(payload: bytes, media_type: str) -> str:
    """``payload`` as a ``data:`` URL (the page shows and downloads it without another request)."""
    return f"data:{media_type};base64,{base64.b64encode(payload).decode('ascii')}"


def _bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"


def error_message(error: BaseException) -> tuple[str, str]:
    """A failed generation's message for people and reason for scripts."""
    from s2i.client import ClientError, InvalidRequestError, ServerUnavailableError

    if isinstance(error, ServerUnavailableError):
        return "The image server is not reachable right now; try again in a minute.", "server_down"
    if isinstance(error, InvalidRequestError):
        return f"The server refused this clip: {_bounded(str(error))}", "invalid"
    if isinstance(error, ClientError) and error.status == "DEADLINE_EXCEEDED":
        return "The image took too long and was stopped; try fewer steps or a smaller size.", "timeout"
    return "The image server failed on this clip; try again.", "server_error"


# The job log's outcome of each error reason; the rest are "error".
_OUTCOME_OF_REASON = {"server_down": "server_down", "invalid": "invalid"}


def _text_fields(result) -> dict:
    return {
        "text": result.text,
        "transcript": result.transcript,
        "emotion": result.emotion,
        "detected_emotion": result.detected_emotion,
        "scores": result.emotion_scores,
        "prompt": result.prompt,
        "negative_prompt": result.negative_prompt,
    }


async def generation_events(
    audio: ReceivedAudio, options: GenerationOptions, stream: StreamFactory, config: WebConfig, record: JobRecord
) -> AsyncIterator[bytes]:
    """The events of one job: the audio as sent, then the stream's messages as they come.

    ``record`` gets the time of each event and the job's outcome.
    """
    started = time.perf_counter()
    accepted = {"duration_s": round(audio.duration_s, 3), "container": audio.container}
    if config.expose_audio:
        accepted["wav"] = data_url(audio.wav, "audio/wav")
    yield sse("audio", accepted)
    from s2i.client import CallOptions, ClientError

    call = CallOptions(request_id=record.request_id, traceparent=record.traceparent)
    try:
        async with contextlib.aclosing(stream(audio.wav, options, call)) as events:
            async for event in events:
                record.event(event.kind)
                elapsed = {"elapsed_s": round(time.perf_counter() - started, 3)}
                if event.kind == "text":
                    yield sse("text", {**_text_fields(event.result), **elapsed})
                elif event.kind == "preview":
                    yield sse(
                        "preview", {"step": event.step, "png": data_url(event.result.png, "image/png"), **elapsed}
                    )
                elif event.kind == "image":
                    image = {"png": data_url(event.result.png, "image/png"), "seed": event.result.seed}
                    details = {"step": event.step, "timings_ms": event.result.timings_ms}
                    yield sse("image", {**image, **details, **_text_fields(event.result), **elapsed})
                    record.end("ok")
                    return
    except ClientError as error:
        LOGGER.info("generation failed: %s (%s)", error, error.status)
        message, reason = error_message(error)
        record.end(_OUTCOME_OF_REASON.get(reason, "error"), reason)
        yield sse("error", {"message": message, "reason": reason})
        return
    record.end("error", "no_image")
    yield sse("error", {"message": "The image server ended the job without an image; try again.", "reason": "no_image"})


class EventStream:
    """A ``text/event-stream`` response that stops its producer when the browser disconnects.

    The producer and a watcher of ``http.disconnect`` run side by side; whichever
    ends first cancels the other, so an abandoned job's gRPC stream is cancelled at
    once rather than at the next event. The job's slot is released and its log line
    written in every case.
    """

    def __init__(self, events: AsyncIterator[bytes], slot: Slot, record: JobRecord) -> None:
        self.events = events
        self.slot = slot
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream the events until they end or the browser disconnects; release the slot."""
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),  # nginx: pass events through as they come
            *[(name.encode(), value.encode()) for name, value in response_headers(self.record).items()],
        ]
        finished = False
        try:
            async with anyio.create_task_group() as group:

                async def produce() -> None:
                    nonlocal finished
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    async with contextlib.aclosing(self.events) as events:
                        async for chunk in events:
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    # Once the last body message is sent, the server reports the request as disconnected.
                    finished = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    group.cancel_scope.cancel()

                group.start_soon(produce)
                while (await receive())["type"] != "http.disconnect":
                    pass
                if not finished:
                    self.slot.cancelled = True
                    self.record.end("cancelled", "disconnected")
                    LOGGER.info("browser disconnected; cancelling its job")
                group.cancel_scope.cancel()
        finally:
            self.slot.release()
            # Ended without an outcome: the producer failed (the server logs the exception).
            self.record.end("error", "app_error")
            self.record.log()


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, refusing more than ``max_bytes`` (declared or sent) or a slower upload than the deadline."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        check_size(max(int(declared), 1), _size_only(max_bytes))

    async def receive_all() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                check_size(size, _size_only(max_bytes))
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(receive_all(), timeout_s)
    except TimeoutError as e:
        raise RejectedAudioError(
            f"The upload did not arrive within {timeout_s:.0f} s.", status=408, reason="upload_timeout"
        ) from e


def _size_only(max_bytes: int) -> AudioLimits:
    return AudioLimits(max_bytes=max_bytes, max_duration_s=1.0, min_duration_s=0.1, timeout_s=1.0)


def _client_key(request: Request) -> str:
    # Behind a proxy, uvicorn's --forwarded-allow-ips makes this the forwarded address.
    return request.client.host if request.client else "unknown"


class WebApp:
    """The app's state (config, limiter, Triton client) and its endpoints."""

    def __init__(self, config: WebConfig, stream: StreamFactory | None = None) -> None:
        self.config = config
        self.limiter = JobLimiter(config.max_jobs, config.max_jobs_per_client)
        self.styles, self.default_style = style_templates()
        self.limits = AudioLimits(
            max_bytes=config.max_upload_bytes,
            max_duration_s=config.max_duration_s,
            min_duration_s=config.min_duration_s,
            timeout_s=config.convert_timeout_s,
        )
        self._stream = stream
        self._client = None
        self._sample_lock = asyncio.Lock()
        # Named after what is spoken, so a changed sample is spoken again rather than served stale.
        spoken = f"{config.sample_emotion or ''}\n{config.sample_strong}\n{config.sample_text}"
        self._sample_path = config.cache_dir / f"sample-hi-{hashlib.sha256(spoken.encode()).hexdigest()[:16]}.wav"

    async def client(self):
        """The shared :class:`s2i.client.AsyncClient` (one gRPC channel for all jobs), made on first use."""
        if self._client is None:
            from s2i.client import AsyncClient
            from s2i.client.transport import NO_RETRY

            self._client = AsyncClient(self.config.triton_url, retry=NO_RETRY, **self.config.client_options())
        return self._client

    async def close(self) -> None:
        """Close the gRPC channel."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    def stream(self, wav: bytes, options: GenerationOptions, call: CallOptions) -> AsyncIterator:
        """The decoupled stream for one job (or the substitute given to the app)."""
        if self._stream is not None:
            return self._stream(wav, options, call)
        return self._triton_stream(wav, options, call)

    async def _triton_stream(self, wav: bytes, options: GenerationOptions, call: CallOptions) -> AsyncIterator:
        client = await self.client()
        extra = {} if self.config.max_new_tokens is None else {"max_new_tokens": self.config.max_new_tokens}
        async for event in client.stream_speech_to_image(
            wav,
            preview_every=self.config.preview_every,
            timeout_s=self.config.job_timeout_s,
            call=call,
            **options.client_kwargs(),
            **extra,
        ):
            yield event

    # Endpoints.

    async def index(self, request: Request) -> Response:
        """The page."""
        return FileResponse(static_dir() / "index.html", headers={"cache-control": "no-cache"})

    async def options(self, request: Request) -> Response:
        """What the page offers: bounds, schedulers, styles, emotions, sizes, the sample's text."""
        return JSONResponse(
            {
                "max_duration_s": self.config.max_duration_s,
                "min_duration_s": self.config.min_duration_s,
                "max_upload_bytes": self.config.max_upload_bytes,
                "max_steps": self.config.max_steps,
                "schedulers": list(SCHEDULERS),
                "styles": [{"name": name, "description": text} for name, text in self.styles.items()],
                "default_style": self.default_style,
                "emotions": list(names.EMOTION_LABELS),
                "sizes": ["default" if (h, w) == (0, 0) else f"{h}x{w}" for h, w in self.config.sizes],
                "sample": {"hindi": self.config.sample_text, "english": self.config.sample_english},
            }
        )

    async def sample(self, request: Request) -> Response:
        """The configured Hindi sample, spoken by espeak-ng into the cache folder on first use."""
        from s2i.speech import speak

        path = self._sample_path
        async with self._sample_lock:
            if not path.exists():
                try:
                    partial = path.with_suffix(".partial.wav")
                    await asyncio.to_thread(
                        speak,
                        self.config.sample_text,
                        partial,
                        emotion=self.config.sample_emotion,
                        strong=self.config.sample_strong,
                    )
                    partial.replace(path)
                except (RuntimeError, OSError, ValueError, subprocess.CalledProcessError) as e:
                    LOGGER.warning("could not make the sample: %s", e)
                    return JSONResponse({"error": "The sample is not available on this server."}, status_code=503)
        return FileResponse(path, media_type="audio/wav", headers={"cache-control": "no-cache"})

    async def generate(self, request: Request) -> Response:
        """Check everything, then stream the job's events (see the module docstring)."""
        record = JobRecord.from_headers(request.headers)
        try:
            slot = self.limiter.acquire(_client_key(request))
        except BusyError as busy:
            return _refusal(record, str(busy), "busy", busy.status, outcome="busy", headers={"retry-after": "10"})
        try:
            options = parse_options(request.query_params, self.config, self.styles)
            body = await read_body(request, self.config.max_upload_bytes, self.config.upload_timeout_s)
            audio = await convert_upload(body, self.limits)
        except OptionError as e:
            slot.release()
            return _refusal(record, str(e), "bad_option", 400)
        except RejectedAudioError as e:
            slot.release()
            # 5xx (no ffmpeg here) is the app's fault, not the upload's.
            return _refusal(record, str(e), e.reason, e.status, outcome="error" if e.status >= 500 else "invalid")
        except BaseException as e:
            slot.release()
            record.end("cancelled" if isinstance(e, ClientDisconnect) else "error", type(e).__name__)
            record.log()
            raise
        record.received(len(body), audio.duration_s)
        events = generation_events(audio, options, self.stream, self.config, record)
        return EventStream(events, slot, record)

    async def health(self, request: Request) -> Response:
        """Liveness of the app itself (not of Triton, so the page can still say that Triton is down)."""
        counts = self.limiter.counts
        return JSONResponse(
            {
                "status": "ok",
                "jobs": {
                    "active": counts.active,
                    "started": counts.started,
                    "finished": counts.finished,
                    "cancelled": counts.cancelled,
                    "refused_busy": counts.refused_busy,
                    "max": self.config.max_jobs,
                },
            }
        )

    async def ready(self, request: Request) -> Response:
        """Whether Triton answers and the stream model is ready (200), or not (503)."""
        from s2i.client import ClientError

        client = await self.client()
        try:
            await client.wait_until_ready(timeout_s=2.0, model=names.SPEECH_TO_IMAGE_STREAM)
        except ClientError:
            return JSONResponse({"status": "triton unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})


def _refusal(
    record: JobRecord, message: str, reason: str, status: int, outcome: str = "invalid", headers=None
) -> JSONResponse:
    """A job refused before Triton: log it, answer ``status`` with the message and the job's ids."""
    record.end(outcome, reason, status)
    record.log()
    headers = {**response_headers(record), **(headers or {})}
    return JSONResponse({"error": message, "reason": reason}, status_code=status, headers=headers)


async def _security_headers(scope: Scope, receive: Receive, send: Send, app) -> None:
    async def send_with_headers(message) -> None:
        if message["type"] == "http.response.start":
            present = {name for name, _ in message.get("headers", [])}
            extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    await app(scope, receive, send_with_headers)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response (pure ASGI: streaming stays streaming)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add the headers to the response's start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _security_headers(scope, receive, send, self.app)


def create_app(config: WebConfig, stream: StreamFactory | None = None) -> Starlette:
    """The Starlette application; ``stream`` replaces the Triton stream (tests only)."""
    web = WebApp(config, stream)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await web.close()

    app = Starlette(
        routes=[
            Route("/", web.index),
            Route("/api/options", web.options),
            Route("/api/sample.wav", web.sample),
            Route("/api/generate", web.generate, methods=["POST"]),
            Route("/healthz", web.health),
            Route("/readyz", web.ready),
            Mount("/static", StaticFiles(directory=static_dir()), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.web = web
    app.add_middleware(SecurityHeaders)
    return app
