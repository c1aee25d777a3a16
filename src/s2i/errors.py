"""The errors a request can end with, and the bounds on what their messages echo.

Raised by every layer (audio checks, decoding and denoising loops, prompt composition) and
turned into Triton error codes in one place (``s2i.model_repository.triton_io.error_response``).
"""

from __future__ import annotations

import numpy as np

# Echoed request values are cut to this many characters (plus their length): a
# 1 MiB template echoed whole broke gRPC's 16 KiB metadata limit (RESOURCE_EXHAUSTED).
MAX_ECHO_CHARS = 64
# No error message is longer than this, whatever its parts (a backstop for `shown`).
MAX_MESSAGE_CHARS = 1024


def shown(value: object) -> str:
    """``repr(value)`` for an error message: whole when short, else a short prefix and the value's length."""
    text = repr(value)
    if len(text) <= MAX_ECHO_CHARS:
        return text
    length = len(value) if isinstance(value, str | bytes | list | tuple) else len(text)
    return f"{text[:MAX_ECHO_CHARS]}… (length {length})"


def bounded_message(message: str) -> str:
    """``message`` cut to :data:`MAX_MESSAGE_CHARS`, saying how long it was."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}… (message cut, {len(message)} characters)"


class InvalidInputError(ValueError):
    """A request input is outside what the server accepts.

    The message is bounded (:func:`bounded_message`), so an echoed input can never
    make the error itself too large to deliver.

    Attributes:
        field: The name of the offending input tensor.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(bounded_message(f"`{field}`: {message}"))
        self.field = field


class RequestCancelledError(RuntimeError):
    """The client cancelled the request (or its deadline passed) while it was being served."""

    def __init__(self, what: str = "request") -> None:
        super().__init__(f"The {what} was cancelled by the client; its work was stopped.")


def check_finite(values: np.ndarray, field: str) -> None:
    """Raise :class:`InvalidInputError` for ``field`` unless every value is finite (no NaN, no infinity)."""
    if not np.all(np.isfinite(values)):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise InvalidInputError(field, f"contains {bad} NaN or infinite values.")
