"""The client's exceptions: one hierarchy, gRPC errors wrapped with their status."""

from __future__ import annotations


class ClientError(RuntimeError):
    """Anything that went wrong talking to the server.

    Attributes:
        status: The gRPC status name (``INVALID_ARGUMENT``, ``UNAVAILABLE``, …) when known.
    """

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class InvalidRequestError(ClientError):
    """The server refused the request's inputs (``INVALID_ARGUMENT``); fix the input, do not retry."""


class ServerUnavailableError(ClientError):
    """The server could not be reached or is not ready (``UNAVAILABLE``); retrying may help."""


class RestrictedApiError(ClientError):
    """The server restricts this API (``--grpc-restricted-protocol``) to callers sending its key header.

    Triton answers ``UNAVAILABLE``, but retrying cannot help, so this is never retried: pass the
    key (``admin_key=...`` for the server's ``admin-key``, or the header the message names).

    Attributes:
        header: The header the server expects (``triton-grpc-protocol-<key>`` over gRPC).
    """

    def __init__(self, message: str, status: str | None = None, header: str | None = None) -> None:
        super().__init__(message, status)
        self.header = header
