"""asyncio gRPC client: the same operations as :class:`~s2i.client.Client`, plus streaming."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import tritonclient.grpc.aio as aio
from tritonclient.grpc._utils import get_error_grpc
from tritonclient.utils import InferenceServerException

from s2i import names
from s2i.client import operations
from s2i.client.errors import ClientError, RestrictedApiError, ServerUnavailableError
from s2i.client.grpc_client import (
    SHARED_MEMORY_INITIAL_BYTES,
    UNREGISTER_ATTEMPTS,
    client_region_name,
    place_in_region,
    plan_tensors,
    read_from_region,
)
from s2i.client.operations import AudioInput, Operation, parse_speech_to_image
from s2i.client.results import EmotionResult, GeneratedImage, SpeechToImageResult, StreamEvent, Translation
from s2i.client.transport import CallOptions, Connection, RetryBudget, should_retry, wrap_error


class AsyncSharedMemoryRegion:
    """The asyncio twin of :class:`~s2i.client.grpc_client.SharedMemoryRegion`: one region per client, reused."""

    def __init__(self, client, connection: Connection) -> None:
        self._client = client
        self._connection = connection
        self.name: str | None = None
        self.handle = None
        self.size = 0
        self.lock = asyncio.Lock()

    async def ensure(self, size: int) -> None:
        """Make the region at least ``size`` bytes."""
        import tritonclient.utils.shared_memory as shm

        if size <= self.size:
            return
        await self.close()
        new_size = max(SHARED_MEMORY_INITIAL_BYTES, 1 << (size - 1).bit_length())
        name = client_region_name()
        handle = shm.create_shared_memory_region(name, f"/{name}", new_size)
        try:
            await self._client.register_system_shared_memory(
                name, f"/{name}", new_size, headers=self._connection.call_headers()
            )
        except InferenceServerException:
            shm.destroy_shared_memory_region(handle)
            raise
        self.name, self.handle, self.size = name, handle, new_size

    async def close(self) -> None:
        """Unregister and free the region."""
        import tritonclient.utils.shared_memory as shm

        if self.handle is None:
            return
        # As the sync client: Triton may still hold the region for the request just answered.
        for attempt in range(UNREGISTER_ATTEMPTS):
            try:
                await self._client.unregister_system_shared_memory(self.name, headers=self._connection.call_headers())
                break
            except InferenceServerException:
                if attempt + 1 < UNREGISTER_ATTEMPTS:
                    await asyncio.sleep(0.05 * 2**attempt)
        shm.destroy_shared_memory_region(self.handle)
        self.name, self.handle, self.size = None, None, 0


class AsyncClient:
    """Non-blocking client; ``async with AsyncClient(url) as client: ...``.

    Keyword options are those of :class:`~s2i.client.transport.Connection`, as for
    :class:`~s2i.client.Client`, and ``use_shared_memory`` (large audio in, pixels out, through
    one registered region reused by every call; same host only). Calls take ``call=CallOptions(...)``.
    """

    def __init__(self, url: str = "localhost:8001", *, use_shared_memory: bool = False, **options) -> None:
        self.connection = Connection(url=url, **options)
        self.use_shared_memory = use_shared_memory
        self._client = aio.InferenceServerClient(**self.connection.client_kwargs())
        self._budget = RetryBudget(self.connection.retry)
        self._shared_memory = AsyncSharedMemoryRegion(self._client, self.connection)

    @property
    def shared_memory_region(self) -> str | None:
        """Name of the client's registered shared-memory region, once a call has used it."""
        return self._shared_memory.name

    async def close(self) -> None:
        """Unregister the client's shared-memory region and close the channel."""
        await self._shared_memory.close()
        await self._client.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def wait_until_ready(self, timeout_s: float = 60.0, model: str | None = None) -> None:
        """Poll until the server (and ``model``) is ready, or raise :class:`ServerUnavailableError`."""
        deadline = time.monotonic() + timeout_s
        while True:
            headers = self.connection.call_headers()
            try:
                if await self._client.is_server_ready(headers=headers) and (
                    model is None or await self._client.is_model_ready(model, headers=headers)
                ):
                    return
            except InferenceServerException as e:
                if isinstance(wrap_error(e), RestrictedApiError):
                    raise wrap_error(e) from e
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

    async def _infer_with_shared_memory(self, operation: Operation, **kwargs) -> dict:
        """One call with large inputs and the known-size outputs in the client's shared-memory region."""
        inputs, outputs, placed = plan_tensors(operation, use_shared_memory=True)
        region = self._shared_memory
        async with region.lock:
            await region.ensure(max(1, sum(size for _, size, _ in placed)))
            readers = place_in_region(region, placed)
            result = await self._client.infer(operation.model, inputs, outputs=outputs, **kwargs)
            values = read_from_region(region, readers)
        values.update({name: result.as_numpy(name) for name in operation.outputs if name not in values})
        return values

    async def execute(self, operation: Operation, timeout_s: float | None = None, call: CallOptions | None = None):
        """Run an operation and return its result; retries as :meth:`s2i.client.Client.execute`."""
        call = call or CallOptions()
        request_id = call.resolved_request_id()
        policy = self.connection.retry
        attempt = 0
        while True:
            attempt += 1
            kwargs = {
                "client_timeout": timeout_s or self.connection.timeout_s,
                **self.connection.infer_kwargs(call, request_id),
            }
            try:
                if self.use_shared_memory:
                    values = await self._infer_with_shared_memory(operation, **kwargs)
                else:
                    outputs = [aio.InferRequestedOutput(name) for name in operation.outputs]
                    result = await self._client.infer(
                        operation.model, self._inputs(operation), outputs=outputs, **kwargs
                    )
                    values = {name: result.as_numpy(name) for name in operation.outputs}
                break
            except InferenceServerException as e:
                error = wrap_error(e)
                if not should_retry(error, operation.idempotent, attempt, policy, self._budget):
                    raise error from e
                await asyncio.sleep(policy.backoff_s(attempt))
        self._budget.on_success()
        return operation.parse(values)

    async def translate(
        self, audio: AudioInput, sample_rate_hz: int | None = None, *, call: CallOptions | None = None, **options
    ) -> Translation:
        """As :meth:`s2i.client.Client.translate`."""
        timeout_s = options.pop("timeout_s", None)
        return await self.execute(operations.translate(audio, sample_rate_hz, **options), timeout_s, call)

    async def classify_emotion(
        self,
        audio: AudioInput,
        sample_rate_hz: int | None = None,
        *,
        timeout_s: float | None = None,
        call: CallOptions | None = None,
    ) -> EmotionResult:
        """As :meth:`s2i.client.Client.classify_emotion`."""
        return await self.execute(operations.classify_emotion(audio, sample_rate_hz), timeout_s, call)

    async def text_to_image(
        self, prompt: str, *, timeout_s: float | None = None, call: CallOptions | None = None, **options
    ) -> GeneratedImage:
        """As :meth:`s2i.client.Client.text_to_image`."""
        return await self.execute(operations.text_to_image(prompt, **options), timeout_s, call)

    async def speech_to_image(
        self,
        audio: AudioInput,
        sample_rate_hz: int | None = None,
        *,
        timeout_s: float | None = None,
        call: CallOptions | None = None,
        **options,
    ) -> SpeechToImageResult:
        """As :meth:`s2i.client.Client.speech_to_image`."""
        started = time.perf_counter()
        operation = operations.speech_to_image(
            audio, sample_rate_hz, pixels_via_shared_memory=self.use_shared_memory, **options
        )
        result = await self.execute(operation, timeout_s, call)
        result.timings_ms["total"] = 1000 * (time.perf_counter() - started)
        return result

    async def stream_speech_to_image(
        self,
        audio: AudioInput,
        sample_rate_hz: int | None = None,
        *,
        preview_every: int = 0,
        timeout_s: float | None = None,
        call: CallOptions | None = None,
        **options,
    ) -> AsyncIterator[StreamEvent]:
        """Stream ``speech_to_image_stream``: the texts first, previews every ``preview_every`` steps, the image.

        Yields:
            :class:`~s2i.client.results.StreamEvent` in the order the server sends them.

        Not retried: a broken stream is the caller's to restart (events already received stay valid).
        """
        call = call or CallOptions()
        operation = operations.speech_to_image(audio, sample_rate_hz, model=names.SPEECH_TO_IMAGE_STREAM, **options)
        operation.inputs.append(operations._int32(names.PREVIEW_EVERY, preview_every))
        outputs = [aio.InferRequestedOutput(name) for name in [*operation.outputs, names.EVENT, names.STEP]]
        request_id = call.resolved_request_id()

        async def requests():
            yield {
                "model_name": operation.model,
                "model_version": call.model_version,
                "inputs": self._inputs(operation),
                "outputs": outputs,
                "request_id": request_id,
                "priority": call.priority,
                "enable_empty_final_response": True,
            }

        stream = self._client.stream_infer(
            requests(),
            stream_timeout=timeout_s or self.connection.timeout_s,
            headers=self.connection.call_headers(call),
            compression_algorithm=self.connection.compression,
        )
        finished = image_received = False
        try:
            async for result, error in stream:
                if error is not None:
                    raise wrap_error(error) if isinstance(error, InferenceServerException) else ClientError(str(error))
                if _is_final(result):
                    finished = True
                    return
                values = {name: result.as_numpy(name) for name in [*operation.outputs, names.EVENT, names.STEP]}
                kind = values[names.EVENT].reshape(-1)[0].decode("utf-8")
                step = int(values[names.STEP].reshape(-1)[0])
                values = {name: value for name, value in values.items() if value is not None}
                image_received = image_received or kind == "image"
                yield StreamEvent(kind, step, parse_speech_to_image(values, operation.model))
        except grpc.RpcError as e:
            # Failures of the call itself (server unreachable, deadline) come raw out of the iterator.
            raise wrap_error(get_error_grpc(e)) from e
        finally:
            try:
                if not finished and image_received:
                    # The work is done; reading the empty final response ends the call normally.
                    # Cancelling a finished decoupled call is what crashed Triton 2.51 once (server#7368).
                    finished = await _drain_to_final(stream, FINAL_RESPONSE_WAIT_S)
            finally:
                if not finished:
                    # The consumer stopped early or was cancelled (or the call failed): end the call,
                    # so the server stops working on it.
                    stream.cancel()


# How long a stream whose image has arrived waits for the server's final response before cancelling.
FINAL_RESPONSE_WAIT_S = 10.0


def _is_final(result) -> bool:
    response = result.get_response()
    final = response.parameters.get("triton_final_response")
    return final is not None and final.bool_param and not response.outputs


async def _drain_to_final(stream, timeout_s: float) -> bool:
    """Read ``stream`` up to its final response (at most ``timeout_s``); whether it arrived."""

    async def read() -> bool:
        async for result, error in stream:
            if error is not None:
                return False
            if _is_final(result):
                return True
        return True

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except (TimeoutError, grpc.RpcError):
        return False
