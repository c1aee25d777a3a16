"""What the sync and asyncio clients share: connection options, retries, error mapping."""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping

from tritonclient.utils import InferenceServerException

from s2i.client.errors import ClientError, InvalidRequestError, ServerUnavailableError


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Retries with exponential backoff and jitter, for ``UNAVAILABLE`` only.

    Other errors are not retried: ``INVALID_ARGUMENT`` will fail again, and a
    timed-out request may still be running on the server.
    """

    max_attempts: int = 3
    initial_backoff_s: float = 0.2
    multiplier: float = 2.0
    max_backoff_s: float = 5.0

    def backoff_s(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)


NO_RETRY = RetryPolicy(max_attempts=1)


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
    """

    url: str = "localhost:8001"
    timeout_s: float = 300.0
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    retry: RetryPolicy = RetryPolicy()

    def client_kwargs(self) -> dict:
        """Keyword arguments of ``tritonclient``'s ``InferenceServerClient`` (sync and aio)."""
        kwargs = {"url": self.url}
        if self.ssl:
            kwargs.update(
                ssl=True,
                root_certificates=self.root_certificates,
                private_key=self.private_key,
                certificate_chain=self.certificate_chain,
            )
        return kwargs


# The server's refusals read "`field`: what is wrong" (s2i.audio.InvalidInputError).
_INVALID_INPUT_MESSAGE = re.compile(r"^`[a-z_]+`: ")


def wrap_error(error: InferenceServerException) -> ClientError:
    """The client exception for a ``tritonclient`` error, keeping the gRPC status.

    Errors on a gRPC stream carry no status code, only the message; there a
    message in the server's invalid-input format is taken as ``INVALID_ARGUMENT``.
    """
    status = (error.status() or "").replace("StatusCode.", "")
    message = error.message() or str(error)
    if not status and _INVALID_INPUT_MESSAGE.match(message):
        status = "INVALID_ARGUMENT"
    if status == "INVALID_ARGUMENT":
        return InvalidRequestError(message, status)
    if status == "UNAVAILABLE":
        return ServerUnavailableError(message, status)
    if status == "DEADLINE_EXCEEDED":
        return ClientError(f"{message} (raise `timeout_s` for long requests)", status)
    return ClientError(message, status or None)
