"""Synchronous gRPC client for the speech2image-triton server."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from s2i import names
from s2i.client.errors import ClientError, InvalidRequestError, ServerUnavailableError

AudioInput = str | Path | bytes | np.ndarray


@dataclasses.dataclass(frozen=True)
class Translation:
    """What the ``whisper`` model returned for one clip.

    Attributes:
        text: English translation (or the transcript, for ``task="transcribe"``).
        token_ids: Generated token ids, without the forced prompt.
    """

    text: str
    token_ids: list[int]


def _wrap(error: InferenceServerException) -> ClientError:
    status = (error.status() or "").replace("StatusCode.", "")
    message = error.message() or str(error)
    if status == "INVALID_ARGUMENT":
        return InvalidRequestError(message, status)
    if status == "UNAVAILABLE":
        return ServerUnavailableError(message, status)
    return ClientError(message, status or None)


def audio_inputs(audio: AudioInput, sample_rate_hz: int | None) -> list[grpcclient.InferInput]:
    """The request tensors for ``audio``: a file path or file bytes, or float32 mono samples."""
    if isinstance(audio, (str, Path)):
        audio = Path(audio).read_bytes()
    if isinstance(audio, bytes):
        if sample_rate_hz is not None:
            raise ValueError("`sample_rate_hz` is read from the file; pass it only with raw samples.")
        tensor = grpcclient.InferInput(names.AUDIO_BYTES, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[audio]], dtype=np.object_))
        return [tensor]
    samples = np.asarray(audio)
    if sample_rate_hz is None:
        raise ValueError("`sample_rate_hz` is required with raw samples.")
    if samples.ndim != 1:
        raise ValueError(f"`audio` must be mono samples of shape [samples], got shape {list(samples.shape)}.")
    if samples.dtype != np.float32:
        raise ValueError(f"`audio` must be float32 samples in [-1, 1], got {samples.dtype}.")
    tensor = grpcclient.InferInput(names.AUDIO_SAMPLES, [1, samples.shape[0]], "FP32")
    tensor.set_data_from_numpy(samples[None, :])
    rate = grpcclient.InferInput(names.SAMPLE_RATE_HZ, [1, 1], "INT32")
    rate.set_data_from_numpy(np.array([[sample_rate_hz]], dtype=np.int32))
    return [tensor, rate]


def text_input(name: str, value: str) -> grpcclient.InferInput:
    """A ``[1, 1]`` BYTES input."""
    tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[value.encode("utf-8")]], dtype=np.object_))
    return tensor


def int_input(name: str, value: int) -> grpcclient.InferInput:
    """A ``[1, 1]`` INT32 input."""
    tensor = grpcclient.InferInput(name, [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return tensor


class Client:
    """gRPC client; use as a context manager.

    Example:
        >>> with Client("localhost:8001") as client:
        ...     print(client.translate("speech.wav").text)
    """

    def __init__(self, url: str = "localhost:8001", *, timeout_s: float = 120.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url)

    def close(self) -> None:
        """Close the channel."""
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_until_ready(self, timeout_s: float = 60.0, model: str | None = None) -> None:
        """Poll the server (and ``model``) until ready or raise :class:`ServerUnavailableError`."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ready = self._client.is_server_ready() and (model is None or self._client.is_model_ready(model))
                if ready:
                    return
            except InferenceServerException:
                pass
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"Server at {self.url} not ready after {timeout_s:.0f} s.", "UNAVAILABLE")
            time.sleep(0.2)

    def translate(
        self,
        audio: AudioInput,
        sample_rate_hz: int | None = None,
        *,
        task: str = "translate",
        language: str = "hi",
        max_new_tokens: int | None = None,
        timeout_s: float | None = None,
    ) -> Translation:
        """Translate (or transcribe) speech with the ``whisper`` model.

        Args:
            audio: Path or bytes of a WAV/FLAC/OGG file, or float32 mono samples.
            sample_rate_hz: Sample rate of raw samples (resampled to 16 kHz on the server).
            task: ``"translate"`` (to English) or ``"transcribe"``.
            language: Spoken language code.
            max_new_tokens: Limit of generated tokens (server default when ``None``).
            timeout_s: Per-call deadline (the client's default when ``None``).
        """
        inputs = audio_inputs(audio, sample_rate_hz)
        inputs += [text_input(names.TASK, task), text_input(names.LANGUAGE, language)]
        if max_new_tokens is not None:
            inputs.append(int_input(names.MAX_NEW_TOKENS, max_new_tokens))
        outputs = [grpcclient.InferRequestedOutput(names.TEXT), grpcclient.InferRequestedOutput(names.TOKEN_IDS)]
        try:
            result = self._client.infer(
                names.WHISPER, inputs, outputs=outputs, client_timeout=timeout_s or self.timeout_s
            )
        except InferenceServerException as e:
            raise _wrap(e) from e
        text = result.as_numpy(names.TEXT)
        token_ids = result.as_numpy(names.TOKEN_IDS)
        if text is None or token_ids is None or text.size != 1:
            raise ClientError(f"`{names.WHISPER}` returned no text; is the server's Python environment set up?")
        return Translation(text=text.reshape(-1)[0].decode("utf-8"), token_ids=token_ids.reshape(-1).tolist())
