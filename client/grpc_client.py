"""Synchronous gRPC client for the speech2image-triton server."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from s2i.client import operations
from s2i.client.errors import ServerUnavailableError
from s2i.client.operations import AudioInput, Operation
from s2i.client.results import EmotionResult, GeneratedImage, SpeechToImageResult, Translation
from s2i.client.transport import Connection, wrap_error

# Inputs at least this large go through system shared memory when it is enabled.
SHARED_MEMORY_MIN_BYTES = 64 * 1024
UNREGISTER_ATTEMPTS = 5
LOGGER = logging.getLogger(__name__)


class Client:
    """Blocking client; use as a context manager.

    Example:
        >>> with Client("localhost:8001") as client:
        ...     result = client.speech_to_image("speech.wav", seed=7)
        ...     result.image.save("out.png")

    Args:
        url: ``host:port`` of the gRPC endpoint.
        use_shared_memory: Send large inputs (audio) and receive the pixels through system
            shared memory; only for a server on the same host.
        **options: :class:`~s2i.client.transport.Connection` fields: ``timeout_s``, ``headers``
            (auth for a gateway, …), ``ssl`` with ``root_certificates``/``private_key``/
            ``certificate_chain`` PEM files, ``retry`` (``RetryPolicy(max_attempts=1)`` disables).
    """

    def __init__(self, url: str = "localhost:8001", *, use_shared_memory: bool = False, **options) -> None:
        self.connection = Connection(url=url, **options)
        self.use_shared_memory = use_shared_memory
        self._client = grpcclient.InferenceServerClient(**self.connection.client_kwargs())

    @property
    def url(self) -> str:
        """``host:port`` of the server."""
        return self.connection.url

    @property
    def timeout_s(self) -> float:
        """Default per-call deadline."""
        return self.connection.timeout_s

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
                headers = self.connection.headers or None
                if self._client.is_server_ready(headers=headers) and (
                    model is None or self._client.is_model_ready(model, headers=headers)
                ):
                    return
            except InferenceServerException:
                pass
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"Server at {self.url} not ready after {timeout_s:.0f} s.", "UNAVAILABLE")
            time.sleep(0.2)

    def _register(self, size: int, regions: list) -> tuple[str, object]:
        """Create and register a system shared-memory region of ``size`` bytes; return (name, handle)."""
        import tritonclient.utils.shared_memory as shm

        region = f"s2i-{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(region, f"/{region}", size)
        try:
            self._client.register_system_shared_memory(
                region, f"/{region}", size, headers=self.connection.headers or None
            )
        except BaseException:
            # Never registered (e.g. the server's admin key is missing): only our segment to remove.
            shm.destroy_shared_memory_region(handle)
            raise
        regions.append((region, handle))
        return region, handle

    @contextlib.contextmanager
    def _tensors(self, operation: Operation):
        """Inputs and requested outputs of an operation; large ones in registered shared memory.

        Yields:
            The ``InferInput``s, the ``InferRequestedOutput``s, and a function that reads the
            shared-memory outputs back after the call (name -> array).
        """
        import tritonclient.utils.shared_memory as shm

        inputs, outputs, regions, readers = [], [], [], {}
        try:
            for name, datatype, value in operation.inputs:
                tensor = grpcclient.InferInput(name, list(value.shape), datatype)
                payload = serialize_byte_tensor(value) if datatype == "BYTES" else value
                size = serialized_byte_size(payload) if datatype == "BYTES" else value.nbytes
                if self.use_shared_memory and size >= SHARED_MEMORY_MIN_BYTES:
                    region, handle = self._register(size, regions)
                    shm.set_shared_memory_region(handle, [payload])
                    tensor.set_shared_memory(region, size)
                else:
                    tensor.set_data_from_numpy(value)
                inputs.append(tensor)
            for name in operation.outputs:
                output = grpcclient.InferRequestedOutput(name)
                if self.use_shared_memory and name in operation.shared_memory_outputs:
                    shape, dtype = operation.shared_memory_outputs[name]
                    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
                    region, handle = self._register(size, regions)
                    output.set_shared_memory(region, size)
                    readers[name] = (handle, shape, dtype)
                outputs.append(output)

            def read_shared_outputs() -> dict:
                return {
                    name: np.array(shm.get_contents_as_numpy(handle, dtype, shape))
                    for name, (handle, shape, dtype) in readers.items()
                }

            yield inputs, outputs, read_shared_outputs
        finally:
            for region, handle in regions:
                self._unregister(region)
                shm.destroy_shared_memory_region(handle)

    def _unregister(self, region: str) -> None:
        """Unregister ``region``, retrying while Triton still holds it from the request just answered.

        A single try lost the race 2-3 % of the time and left the region mapped in the server.
        Bounded: :data:`UNREGISTER_ATTEMPTS` tries, about 1.5 s in all.
        """
        for attempt in range(UNREGISTER_ATTEMPTS):
            try:
                self._client.unregister_system_shared_memory(region, headers=self.connection.headers or None)
                return
            except InferenceServerException:
                if attempt + 1 == UNREGISTER_ATTEMPTS:
                    LOGGER.warning("shared-memory region %s could not be unregistered", region)
                    return
                time.sleep(0.05 * 2**attempt)

    def execute(self, operation: Operation, timeout_s: float | None = None):
        """Run an :class:`~s2i.client.operations.Operation`, retrying on ``UNAVAILABLE``; return its result."""
        policy = self.connection.retry
        for attempt in range(1, policy.max_attempts + 1):
            try:
                with self._tensors(operation) as (inputs, outputs, read_shared_outputs):
                    result = self._client.infer(
                        operation.model,
                        inputs,
                        outputs=outputs,
                        client_timeout=timeout_s or self.timeout_s,
                        headers=self.connection.headers or None,
                    )
                    shared = read_shared_outputs()
                    values = {name: result.as_numpy(name) for name in operation.outputs if name not in shared}
                    values.update(shared)
                break
            except InferenceServerException as e:
                error = wrap_error(e)
                if not isinstance(error, ServerUnavailableError) or attempt == policy.max_attempts:
                    raise error from e
                time.sleep(policy.backoff_s(attempt))
        return operation.parse(values)

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
        operation = operations.translate(
            audio, sample_rate_hz, task=task, language=language, max_new_tokens=max_new_tokens
        )
        return self.execute(operation, timeout_s)

    def classify_emotion(
        self, audio: AudioInput, sample_rate_hz: int | None = None, *, timeout_s: float | None = None
    ) -> EmotionResult:
        """Classify the speaker's emotion with the ``emotion_classifier`` model (same audio as ``translate``)."""
        return self.execute(operations.classify_emotion(audio, sample_rate_hz), timeout_s)

    def text_to_image(self, prompt: str, *, timeout_s: float | None = None, **options) -> GeneratedImage:
        """Generate an image with the ``diffusion`` model.

        Args:
            prompt: What to draw (CLIP keeps its first 77 tokens).
            timeout_s: Per-call deadline.
            **options: ``negative_prompt``, ``num_inference_steps``, ``guidance_scale``, ``height``,
                ``width``, ``seed``, ``scheduler``; ``None`` takes the server's default.
        """
        return self.execute(operations.text_to_image(prompt, **options), timeout_s)

    def speech_to_image(
        self, audio: AudioInput, sample_rate_hz: int | None = None, *, timeout_s: float | None = None, **options
    ) -> SpeechToImageResult:
        """Hindi speech in, an emotion-aware image out, through the ``speech_to_image`` ensemble.

        Args:
            audio: Path or bytes of a WAV/FLAC/OGG file, or float32 mono samples.
            sample_rate_hz: Sample rate of raw samples.
            timeout_s: Per-call deadline.
            **options: ``seed``, ``num_inference_steps``, ``guidance_scale``, ``height``, ``width``,
                ``scheduler``, ``emotion_override``, ``style_template``, ``return_transcript``,
                ``max_new_tokens``.
        """
        started = time.perf_counter()
        operation = operations.speech_to_image(
            audio, sample_rate_hz, pixels_via_shared_memory=self.use_shared_memory, **options
        )
        result = self.execute(operation, timeout_s)
        result.timings_ms["total"] = 1000 * (time.perf_counter() - started)
        return result
