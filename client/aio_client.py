"""asyncio gRPC client: the same operations as :class:`~s2i.client.Client`, plus streaming."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import tritonclient.grpc.aio as aio
from tritonclient.grpc._utils import get_error_grpc
from tritonclient.utils import InferenceServerException

from s2i import names
from s2i.client import operations
from s2i.client.errors import ClientError, ServerUnavailableError
from s2i.client.operations import AudioInput, Operation, parse_speech_to_image
from s2i.client.results import EmotionResult, GeneratedImage, SpeechToImageResult, StreamEvent, Translation
from s2i.client.transport import Connection, wrap_error


class AsyncClient:
    """Non-blocking client; ``async with AsyncClient(url) as client: ...``.

    Keyword options are those of :class:`~s2i.client.transport.Connection` (``timeout_s``,
    ``headers``, ``ssl`` and its PEM files, ``retry``), as for :class:`~s2i.client.Client`.
    """

    def __init__(self, url: str = "localhost:8001", **options) -> None:
        self.connection = Connection(url=url, **options)
        self._client = aio.InferenceServerClient(**self.connection.client_kwargs())

    async def close(self) -> None:
        """Close the channel."""
        await self._client.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def wait_until_ready(self, timeout_s: float = 60.0, model: str | None = None) -> None:
        """Poll until the server (and ``model``) is ready, or raise :class:`ServerUnavailableError`."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if await self._client.is_server_ready() and (model is None or await self._client.is_model_ready(model)):
                    return
            except InferenceServerException:
                pass
            if time.monotonic() > deadline:
                raise ServerUnavailableError(
                    f"Server at {self.connection.url} not ready after {timeout_s:.0f} s.", "UNAVAILABLE"
                )
            await asyncio.sleep(0.2)

    @staticmethod
    def _inputs(operation: Operation) -> list:
        inputs = []
        for name, datatype, value in operation.inputs:
            tensor = aio.InferInput(name, list(value.shape), datatype)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        return inputs

    async def execute(self, operation: Operation, timeout_s: float | None = None):
        """Run an operation, retrying on ``UNAVAILABLE``; return its result."""
        outputs = [aio.InferRequestedOutput(name) for name in operation.outputs]
        policy = self.connection.retry
        for attempt in range(1, policy.max_attempts + 1):
            try:
                result = await self._client.infer(
                    operation.model,
                    self._inputs(operation),
                    outputs=outputs,
                    client_timeout=timeout_s or self.connection.timeout_s,
                    headers=self.connection.headers or None,
                )
                break
            except InferenceServerException as e:
                error = wrap_error(e)
                if not isinstance(error, ServerUnavailableError) or attempt == policy.max_attempts:
                    raise error from e
                await asyncio.sleep(policy.backoff_s(attempt))
        return operation.parse({name: result.as_numpy(name) for name in operation.outputs})

    async def translate(self, audio: AudioInput, sample_rate_hz: int | None = None, **options) -> Translation:
        """As :meth:`s2i.client.Client.translate`."""
        timeout_s = options.pop("timeout_s", None)
        return await self.execute(operations.translate(audio, sample_rate_hz, **options), timeout_s)

    async def classify_emotion(
        self, audio: AudioInput, sample_rate_hz: int | None = None, *, timeout_s: float | None = None
    ) -> EmotionResult:
        """As :meth:`s2i.client.Client.classify_emotion`."""
        return await self.execute(operations.classify_emotion(audio, sample_rate_hz), timeout_s)

    async def text_to_image(self, prompt: str, *, timeout_s: float | None = None, **options) -> GeneratedImage:
        """As :meth:`s2i.client.Client.text_to_image`."""
        return await self.execute(operations.text_to_image(prompt, **options), timeout_s)

    async def speech_to_image(
        self, audio: AudioInput, sample_rate_hz: int | None = None, *, timeout_s: float | None = None, **options
    ) -> SpeechToImageResult:
        """As :meth:`s2i.client.Client.speech_to_image`."""
        started = time.perf_counter()
        result = await self.execute(operations.speech_to_image(audio, sample_rate_hz, **options), timeout_s)
        result.timings_ms["total"] = 1000 * (time.perf_counter() - started)
        return result

    async def stream_speech_to_image(
        self,
        audio: AudioInput,
        sample_rate_hz: int | None = None,
        *,
        preview_every: int = 0,
        timeout_s: float | None = None,
        **options,
    ) -> AsyncIterator[StreamEvent]:
        """Stream ``speech_to_image_stream``: the texts first, previews every ``preview_every`` steps, the image.

        Yields:
            :class:`~s2i.client.results.StreamEvent` in the order the server sends them.
        """
        operation = operations.speech_to_image(audio, sample_rate_hz, model=names.SPEECH_TO_IMAGE_STREAM, **options)
        operation.inputs.append(operations._int32(names.PREVIEW_EVERY, preview_every))
        outputs = [aio.InferRequestedOutput(name) for name in [*operation.outputs, names.EVENT, names.STEP]]
        request_id = uuid.uuid4().hex

        async def requests():
            yield {
                "model_name": operation.model,
                "inputs": self._inputs(operation),
                "outputs": outputs,
                "request_id": request_id,
                "enable_empty_final_response": True,
            }

        stream = self._client.stream_infer(
            requests(), stream_timeout=timeout_s or self.connection.timeout_s, headers=self.connection.headers or None
        )
        finished = False
        try:
            async for result, error in stream:
                if error is not None:
                    raise wrap_error(error) if isinstance(error, InferenceServerException) else ClientError(str(error))
                response = result.get_response()
                final = response.parameters.get("triton_final_response")
                if final is not None and final.bool_param and not response.outputs:
                    finished = True
                    return
                values = {name: result.as_numpy(name) for name in [*operation.outputs, names.EVENT, names.STEP]}
                kind = values[names.EVENT].reshape(-1)[0].decode("utf-8")
                step = int(values[names.STEP].reshape(-1)[0])
                values = {name: value for name, value in values.items() if value is not None}
                finished = kind == "image"
                yield StreamEvent(kind, step, parse_speech_to_image(values, operation.model))
                if finished:
                    return
        except grpc.RpcError as e:
            # Failures of the call itself (server unreachable, deadline) come raw out of the iterator.
            raise wrap_error(get_error_grpc(e)) from e
        finally:
            if not finished:
                # The consumer stopped early or was cancelled (or the call failed): end the call,
                # so the server stops working on it.
                stream.cancel()
