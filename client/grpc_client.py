"""Synchronous gRPC client for the speech2image-triton server."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import uuid

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from s2i.client import operations
from s2i.client.errors import RestrictedApiError, ServerUnavailableError
from s2i.client.operations import AudioInput, Operation
from s2i.client.results import EmotionResult, GeneratedImage, SpeechToImageResult, Translation
from s2i.client.transport import CallOptions, Connection, RetryBudget, should_retry, wrap_error

# Inputs at least this large go through system shared memory when it is enabled.
SHARED_MEMORY_MIN_BYTES = 64 * 1024
UNREGISTER_ATTEMPTS = 5
LOGGER = logging.getLogger(__name__)
# The client's shared-memory region starts at this size and doubles when a call needs more.
SHARED_MEMORY_INITIAL_BYTES = 1 << 20
# Region names carry the creating process's pid namespace and pid, so the server side
# (`s2i.shm_reaper`, run by `s2i serve`) can tell a region whose client died without
# unregistering it (kill -9, OOM) from one still in use, and reclaim it.
CLIENT_REGION_PREFIX = "s2i-client-"
_CLIENT_REGION = re.compile(rf"^/?{CLIENT_REGION_PREFIX}(\d+)-(\d+)-[0-9a-f]+$")


def pid_namespace() -> int:
    """Inode of this process's pid namespace (0 where ``/proc`` does not tell): pids compare only within one."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def client_region_name() -> str:
    """A new region name: ``s2i-client-<pid namespace>-<pid>-<random>`` (also its ``/dev/shm`` key)."""
    return f"{CLIENT_REGION_PREFIX}{pid_namespace()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def region_owner(key: str) -> tuple[int, int] | None:
    """``(pid namespace, pid)`` of the client that created the region ``key``; ``None`` if not a client's."""
    match = _CLIENT_REGION.match(key)
    return (int(match.group(1)), int(match.group(2))) if match else None


class SharedMemoryRegion:
    """One system shared-memory region per client, registered once and reused by every call.

    A call lays its tensors out at offsets in the region; the region is re-created larger
    (and registered again) only when a call needs more than it has. ``close`` unregisters it.
    """

    def __init__(self, client, connection: Connection) -> None:
        self._client = client
        self._connection = connection
        self.name: str | None = None
        self.handle = None
        self.size = 0
        self.lock = threading.Lock()  # one call at a time uses the region

    def ensure(self, size: int) -> None:
        """Make the region at least ``size`` bytes."""
        import tritonclient.utils.shared_memory as shm

        if size <= self.size:
            return
        self.close()
        new_size = max(SHARED_MEMORY_INITIAL_BYTES, 1 << (size - 1).bit_length())
        name = client_region_name()
        handle = shm.create_shared_memory_region(name, f"/{name}", new_size)
        try:
            self._client.register_system_shared_memory(
                name, f"/{name}", new_size, headers=self._connection.call_headers()
            )
        except InferenceServerException:
            shm.destroy_shared_memory_region(handle)
            raise
        self.name, self.handle, self.size = name, handle, new_size

    def close(self) -> None:
        """Unregister and free the region."""
        import tritonclient.utils.shared_memory as shm

        if self.handle is None:
            return
        # Triton may still hold the region for the request just answered: a single try lost that
        # race 2-3 % of the time and left the region mapped in the server. Bounded: about 1.5 s.
        for attempt in range(UNREGISTER_ATTEMPTS):
            try:
                self._client.unregister_system_shared_memory(self.name, headers=self._connection.call_headers())
                break
            except InferenceServerException:
                if attempt + 1 == UNREGISTER_ATTEMPTS:
                    LOGGER.warning("shared-memory region %s could not be unregistered", self.name)
                else:
                    time.sleep(0.05 * 2**attempt)
        shm.destroy_shared_memory_region(self.handle)
        self.name, self.handle, self.size = None, None, 0


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
            ``certificate_chain`` PEM files, ``retry`` (``RetryPolicy(max_attempts=1)`` disables),
            ``admin_key``, ``compression``, ``keepalive_*``, ``channel_args``, ``trace_context``.

    Every call takes ``call=CallOptions(request_id=..., model_version=..., priority=...,
    traceparent=...)``; headers (with the admin key and a trace context) go with every call.
    """

    def __init__(self, url: str = "localhost:8001", *, use_shared_memory: bool = False, **options) -> None:
        self.connection = Connection(url=url, **options)
        self.use_shared_memory = use_shared_memory
        self._client = grpcclient.InferenceServerClient(**self.connection.client_kwargs())
        self._budget = RetryBudget(self.connection.retry)
        self._shared_memory = SharedMemoryRegion(self._client, self.connection)

    @property
    def url(self) -> str:
        """``host:port`` of the server."""
        return self.connection.url

    @property
    def timeout_s(self) -> float:
        """Default per-call deadline."""
        return self.connection.timeout_s

    def close(self) -> None:
        """Unregister the client's shared-memory region and close the channel."""
        self._shared_memory.close()
        self._client.close()

    @property
    def shared_memory_region(self) -> str | None:
        """Name of the client's registered shared-memory region, once a call has used it."""
        return self._shared_memory.name

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_until_ready(self, timeout_s: float = 60.0, model: str | None = None) -> None:
        """Poll the server (and ``model``) until ready or raise :class:`ServerUnavailableError`."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                headers = self.connection.call_headers()
                if self._client.is_server_ready(headers=headers) and (
                    model is None or self._client.is_model_ready(model, headers=headers)
                ):
                    return
            except InferenceServerException as e:
                if isinstance(wrap_error(e), RestrictedApiError):
                    raise wrap_error(e) from e
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"Server at {self.url} not ready after {timeout_s:.0f} s.", "UNAVAILABLE")
            time.sleep(0.2)

    @contextlib.contextmanager
    def _tensors(self, operation: Operation):
        """Inputs and requested outputs of an operation; large ones in the client's shared-memory region.

        Yields:
            The ``InferInput``s, the ``InferRequestedOutput``s, and a function that reads the
            shared-memory outputs back after the call (name -> array).
        """
        inputs, outputs, placed = plan_tensors(operation, self.use_shared_memory)
        if not placed:
            yield inputs, outputs, dict
            return
        region = self._shared_memory
        with region.lock:
            region.ensure(sum(size for _, size, _ in placed))
            readers = place_in_region(region, placed)
            yield inputs, outputs, lambda: read_from_region(region, readers)

    def execute(self, operation: Operation, timeout_s: float | None = None, call: CallOptions | None = None):
        """Run an :class:`~s2i.client.operations.Operation` and return its result.

        ``UNAVAILABLE`` is retried with backoff when the operation is idempotent and the
        client's retry budget allows it; the retries carry the same request id.
        """
        call = call or CallOptions()
        request_id = call.resolved_request_id()
        policy = self.connection.retry
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._tensors(operation) as (inputs, outputs, read_shared_outputs):
                    result = self._client.infer(
                        operation.model,
                        inputs,
                        outputs=outputs,
                        client_timeout=timeout_s or self.timeout_s,
                        **self.connection.infer_kwargs(call, request_id),
                    )
                    shared = read_shared_outputs()
                    values = {name: result.as_numpy(name) for name in operation.outputs if name not in shared}
                    values.update(shared)
                break
            except InferenceServerException as e:
                error = wrap_error(e)
                if not should_retry(error, operation.idempotent, attempt, policy, self._budget):
                    raise error from e
                time.sleep(policy.backoff_s(attempt))
        self._budget.on_success()
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
        call: CallOptions | None = None,
    ) -> Translation:
        """Translate (or transcribe) speech with the ``whisper`` model.

        Args:
            audio: Path or bytes of a WAV/FLAC/OGG file, or float32 mono samples.
            sample_rate_hz: Sample rate of raw samples (resampled to 16 kHz on the server).
            task: ``"translate"`` (to English) or ``"transcribe"``.
            language: Spoken language code.
            max_new_tokens: Limit of generated tokens (server default when ``None``).
            timeout_s: Per-call deadline (the client's default when ``None``).
            call: Request id, model version, priority, trace context.

        Idempotent: retried on ``UNAVAILABLE``.
        """
        operation = operations.translate(
            audio, sample_rate_hz, task=task, language=language, max_new_tokens=max_new_tokens
        )
        return self.execute(operation, timeout_s, call)

    def classify_emotion(
        self,
        audio: AudioInput,
        sample_rate_hz: int | None = None,
        *,
        timeout_s: float | None = None,
        call: CallOptions | None = None,
    ) -> EmotionResult:
        """Classify the speaker's emotion with the ``emotion_classifier`` model (same audio as ``translate``).

        Idempotent: retried on ``UNAVAILABLE``.
        """
        return self.execute(operations.classify_emotion(audio, sample_rate_hz), timeout_s, call)

    def text_to_image(
        self, prompt: str, *, timeout_s: float | None = None, call: CallOptions | None = None, **options
    ) -> GeneratedImage:
        """Generate an image with the ``diffusion`` model.

        Args:
            prompt: What to draw (CLIP keeps its first 77 tokens).
            timeout_s: Per-call deadline.
            call: Request id, model version, priority, trace context.
            **options: ``negative_prompt``, ``num_inference_steps``, ``guidance_scale``, ``height``,
                ``width``, ``seed``, ``scheduler``; ``None`` takes the server's default.

        Idempotent with a ``seed`` (then retried on ``UNAVAILABLE``); without one, not retried.
        """
        return self.execute(operations.text_to_image(prompt, **options), timeout_s, call)

    def speech_to_image(
        self,
        audio: AudioInput,
        sample_rate_hz: int | None = None,
        *,
        timeout_s: float | None = None,
        call: CallOptions | None = None,
        **options,
    ) -> SpeechToImageResult:
        """Hindi speech in, an emotion-aware image out, through the ``speech_to_image`` ensemble.

        Args:
            audio: Path or bytes of a WAV/FLAC/OGG file, or float32 mono samples.
            sample_rate_hz: Sample rate of raw samples.
            timeout_s: Per-call deadline.
            call: Request id, model version, priority, trace context.
            **options: ``seed``, ``num_inference_steps``, ``guidance_scale``, ``height``, ``width``,
                ``scheduler``, ``emotion_override``, ``style_template``, ``return_transcript``,
                ``max_new_tokens``; ``extra_outputs``, more pipeline outputs to return (in ``outputs``).

        Idempotent with a ``seed`` (then retried on ``UNAVAILABLE``); without one, not retried.
        """
        started = time.perf_counter()
        operation = operations.speech_to_image(
            audio, sample_rate_hz, pixels_via_shared_memory=self.use_shared_memory, **options
        )
        result = self.execute(operation, timeout_s, call)
        result.timings_ms["total"] = 1000 * (time.perf_counter() - started)
        return result


def plan_tensors(operation: Operation, use_shared_memory: bool) -> tuple[list, list, list]:
    """The call's ``InferInput``s and ``InferRequestedOutput``s, and which of them go through shared memory.

    Returns:
        Inputs, outputs, and ``(tensor, byte size, what)`` for each shared-memory tensor:
        ``what`` is the serialized payload of an input, ``(name, shape, dtype)`` of an output.
        Inputs under :data:`SHARED_MEMORY_MIN_BYTES` carry their data in the request.
    """
    inputs, outputs, placed = [], [], []
    for name, datatype, value in operation.inputs:
        tensor = grpcclient.InferInput(name, list(value.shape), datatype)
        payload = serialize_byte_tensor(value) if datatype == "BYTES" else value
        size = serialized_byte_size(payload) if datatype == "BYTES" else value.nbytes
        if use_shared_memory and size >= SHARED_MEMORY_MIN_BYTES:
            placed.append((tensor, size, payload))
        else:
            tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    for name in operation.outputs:
        output = grpcclient.InferRequestedOutput(name)
        if use_shared_memory and name in operation.shared_memory_outputs:
            shape, dtype = operation.shared_memory_outputs[name]
            placed.append((output, int(np.prod(shape)) * np.dtype(dtype).itemsize, (name, shape, dtype)))
        outputs.append(output)
    return inputs, outputs, placed


def place_in_region(region, placed: list) -> dict[str, tuple[int, tuple, str]]:
    """Lay ``placed`` out back to back in ``region`` (inputs written); return output name -> (offset, shape, dtype)."""
    import tritonclient.utils.shared_memory as shm

    offset, readers = 0, {}
    for tensor, size, what in placed:
        tensor.set_shared_memory(region.name, size, offset=offset)
        if isinstance(tensor, grpcclient.InferInput):
            shm.set_shared_memory_region(region.handle, [what], offset=offset)
        else:
            readers[what[0]] = (offset, what[1], what[2])
        offset += size
    return readers


def read_from_region(region, readers: dict[str, tuple[int, tuple, str]]) -> dict[str, np.ndarray]:
    """The outputs :func:`place_in_region` laid out, copied out of ``region``."""
    import tritonclient.utils.shared_memory as shm

    return {
        name: np.array(shm.get_contents_as_numpy(region.handle, dtype, shape, offset=at))
        for name, (at, shape, dtype) in readers.items()
    }
