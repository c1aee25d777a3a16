"""What the sync and asyncio clients share: connection options, retries, error mapping."""

from __future__ import annotations

import dataclasses
import random
import re
import secrets
import threading
import uuid
from collections.abc import Mapping

from tritonclient.utils import InferenceServerException

from s2i.client.errors import ClientError, InvalidRequestError, RestrictedApiError, ServerUnavailableError

# Request compression tritonclient's gRPC client supports.
COMPRESSIONS = ("gzip", "deflate")
# The header the server's restricted APIs expect over gRPC for its `admin-key` (s2i.server).
ADMIN_KEY_HEADER = "triton-grpc-protocol-admin-key"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Retries with exponential backoff and jitter, for ``UNAVAILABLE`` only, within a budget.

    Other errors are not retried: ``INVALID_ARGUMENT`` will fail again, a restricted API
    needs its key, and a timed-out request may still be running on the server. Only
    idempotent calls are retried (each operation says whether it is: ``translate`` and
    ``classify_emotion`` always, the image calls only with a ``seed``, since without one a
    second run draws another image); a retry reuses the call's request id. The budget is
    gRPC's retry throttling, shared by all calls of a client: ``budget_tokens`` tokens, one
    spent per failed call, ``budget_ratio`` earned back per success; retries stop while
    fewer than half remain, so an outage does not multiply the load.

    Attributes:
        retry_non_idempotent: Also retry calls that may not be idempotent.
    """

    max_attempts: int = 3
    initial_backoff_s: float = 0.2
    multiplier: float = 2.0
    max_backoff_s: float = 5.0
    budget_tokens: float = 10.0
    budget_ratio: float = 0.1
    retry_non_idempotent: bool = False

    def backoff_s(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)


NO_RETRY = RetryPolicy(max_attempts=1)


class RetryBudget:
    """The retry budget of one client (see :class:`RetryPolicy`); thread-safe."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.max_tokens = policy.budget_tokens
        self.ratio = policy.budget_ratio
        self.tokens = policy.budget_tokens
        self._lock = threading.Lock()

    def on_failure(self) -> None:
        """A call failed with a retryable error."""
        with self._lock:
            self.tokens = max(0.0, self.tokens - 1.0)

    def on_success(self) -> None:
        """A call succeeded."""
        with self._lock:
            self.tokens = min(self.max_tokens, self.tokens + self.ratio)

    def allows_retry(self) -> bool:
        """Whether a retry may be sent now."""
        with self._lock:
            return self.tokens > self.max_tokens / 2


@dataclasses.dataclass(frozen=True)
class CallOptions:
    """Per-call request fields.

    Attributes:
        request_id: The request's id (Triton logs, traces and error messages show it); a fresh
            one per call when ``None``, the same for the call's retries.
        model_version: A model version; the server's policy (the latest) when empty.
        priority: Triton request priority (0: the model's default; lower values go first).
        traceparent: A W3C ``traceparent`` to continue the caller's trace; when ``None`` and the
            connection's ``trace_context`` is on, each call starts a new sampled trace.
    """

    request_id: str | None = None
    model_version: str = ""
    priority: int = 0
    traceparent: str | None = None

    def resolved_request_id(self) -> str:
        """The id to send: the caller's, or a new one."""
        return self.request_id or uuid.uuid4().hex


def new_traceparent() -> str:
    """A W3C trace context for a new, sampled trace: ``00-<trace id>-<span id>-01``."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where and how to connect.

    Attributes:
        url: ``host:port`` of the gRPC endpoint.
        timeout_s: Default per-call deadline.
        headers: Sent with every request (e.g. ``{"authorization": "Bearer …"}`` for a gateway).
        ssl: Use TLS.
        root_certificates: PEM file of the CA that signed the server's certificate.
        private_key: PEM file of the client key (mutual TLS).
        certificate_chain: PEM file of the client certificate (mutual TLS).
        retry: Retry policy for ``UNAVAILABLE``.
        admin_key: The server's ``admin-key`` for its restricted APIs (shared memory, statistics,
            model config, …), sent as ``triton-grpc-protocol-admin-key``.
        compression: Compress requests: ``gzip`` or ``deflate``; none when ``None``.
        keepalive_time_ms: gRPC keepalive ping period (through idle proxies and load balancers).
        keepalive_timeout_ms: How long a keepalive ping may go unanswered before the channel drops.
        keepalive_permit_without_calls: Ping even with no call in flight.
        channel_args: Further gRPC channel arguments, e.g. ``("grpc.max_receive_message_length", n)``.
        trace_context: Send a W3C ``traceparent`` header with each call (Triton's OpenTelemetry
            tracing joins it): the call's :attr:`CallOptions.traceparent`, else one in ``headers``,
            else a new sampled trace per call.
    """

    url: str = "localhost:8001"
    timeout_s: float = 300.0
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    retry: RetryPolicy = RetryPolicy()
    admin_key: str | None = None
    compression: str | None = None
    keepalive_time_ms: int | None = None
    keepalive_timeout_ms: int | None = None
    keepalive_permit_without_calls: bool = False
    channel_args: tuple[tuple[str, object], ...] = ()
    trace_context: bool = True

    def __post_init__(self) -> None:
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise ValueError(f"`compression` must be one of {list(COMPRESSIONS)} or None, got {self.compression!r}.")

    def client_kwargs(self) -> dict:
        """Keyword arguments of ``tritonclient``'s ``InferenceServerClient`` (sync and aio)."""
        kwargs: dict = {"url": self.url}
        if self.keepalive_time_ms is not None or self.keepalive_timeout_ms is not None:
            from tritonclient.grpc import KeepAliveOptions

            kwargs["keepalive_options"] = KeepAliveOptions(
                keepalive_time_ms=self.keepalive_time_ms or 2**31 - 1,
                keepalive_timeout_ms=self.keepalive_timeout_ms or 20_000,
                keepalive_permit_without_calls=self.keepalive_permit_without_calls,
            )
        if self.channel_args:
            kwargs["channel_args"] = [tuple(arg) for arg in self.channel_args]
        if self.ssl:
            kwargs.update(
                ssl=True,
                root_certificates=self.root_certificates,
                private_key=self.private_key,
                certificate_chain=self.certificate_chain,
            )
        return kwargs

    def call_headers(self, call: CallOptions | None = None) -> dict[str, str] | None:
        """The headers of one call: the connection's, the admin key, and a trace context."""
        headers = dict(self.headers)
        if self.admin_key:
            headers[ADMIN_KEY_HEADER] = self.admin_key
        traceparent = call.traceparent if call else None
        if traceparent is not None and not _TRACEPARENT.match(traceparent):
            raise ValueError(
                f"`traceparent` must be a W3C trace context (00-<32 hex>-<16 hex>-<2 hex>), got {traceparent!r}."
            )
        # A traceparent the caller put in the connection's headers is theirs: keep it.
        if traceparent or (self.trace_context and "traceparent" not in headers):
            headers["traceparent"] = traceparent or new_traceparent()
        return headers or None

    def infer_kwargs(self, call: CallOptions, request_id: str) -> dict:
        """The per-call keyword arguments of ``tritonclient``'s ``infer``."""
        return {
            "request_id": request_id,
            "model_version": call.model_version,
            "priority": call.priority,
            "headers": self.call_headers(call),
            "compression_algorithm": self.compression,
        }


def should_retry(error: ClientError, idempotent: bool, attempt: int, policy: RetryPolicy, budget: RetryBudget) -> bool:
    """Whether a call that failed with ``error`` on attempt ``attempt`` is sent again."""
    if not isinstance(error, ServerUnavailableError):
        return False
    budget.on_failure()
    if attempt >= policy.max_attempts or not (idempotent or policy.retry_non_idempotent):
        return False
    return budget.allows_retry()


_RESTRICTED = re.compile(r"This protocol is restricted, expecting header '([^']+)'")
# Triton's answer for a model with no loaded version. A stopping Triton (SIGTERM) unloads every
# model once nothing is in flight, then still answers new requests with this NOT_FOUND until it
# exits; another replica can serve the call, so it is retried like UNAVAILABLE.
_NO_LOADED_VERSION = re.compile(r"Request for unknown model: '[^']*' has no available versions")
# Errors on a gRPC stream carry no status code; these messages are the server's UNAVAILABLE ones
# (a stage refused while Triton exits, a dead stub), so a stream's caller can restart elsewhere.
_UNAVAILABLE_MESSAGE = re.compile(r"Server not ready|Server is stopping|Stub process '[^']*' is not healthy")
# The server's refusals read "`field`: what is wrong" (s2i.audio.InvalidInputError).
# Triton prefixes errors it raises for a request that has an id with "[request id: <id>] ".
_INVALID_INPUT_MESSAGE = re.compile(r"^(?:\[request id: [^\]]*\] )?`[a-z_]+`: ")


def wrap_error(error: InferenceServerException) -> ClientError:
    """The client exception for a ``tritonclient`` error, keeping the gRPC status.

    Errors on a gRPC stream carry no status code, only the message; there a
    message in the server's invalid-input format is taken as ``INVALID_ARGUMENT``.
    """
    status = (error.status() or "").replace("StatusCode.", "")
    message = error.message() or str(error)
    restricted = _RESTRICTED.search(message)
    if restricted:
        hint = "; the server restricts this API: pass its key (`admin_key=...`, or that header in `headers`)"
        return RestrictedApiError(message + hint, status or None, header=restricted.group(1))
    if not status and _INVALID_INPUT_MESSAGE.match(message):
        status = "INVALID_ARGUMENT"
    elif not status and _UNAVAILABLE_MESSAGE.search(message):
        status = "UNAVAILABLE"
    if status == "INVALID_ARGUMENT":
        return InvalidRequestError(message, status)
    if status == "UNAVAILABLE" or (status == "NOT_FOUND" and _NO_LOADED_VERSION.search(message)):
        return ServerUnavailableError(message, status)
    if status == "DEADLINE_EXCEEDED":
        return ClientError(f"{message} (raise `timeout_s` for long requests)", status)
    return ClientError(message, status or None)
