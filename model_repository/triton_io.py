"""Helpers for Python-backend models: reading request tensors, BLS calls, error responses.

``triton_python_backend_utils`` only exists inside the server's stub, so every
function takes that module as ``pb_utils`` instead of importing it; the rest of
the package stays importable (and testable) anywhere.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from s2i import names
from s2i.audio import load_request_audio
from s2i.errors import InvalidInputError, RequestCancelledError, bounded_message
from s2i.stages.runner import StageRunner

# How an InvalidInputError reads: "`field`: what is wrong".
# Triton prefixes errors it raises for a request that has an id with "[request id: <id>] ".
INVALID_INPUT_MESSAGE = re.compile(r"^(?:\[request id: [^\]]*\] )?`[a-z_]+`: ")
# Stage failures another replica (or this one after a restart) could serve: a dead or
# stopping stub, a model being unloaded. Reported as UNAVAILABLE, which clients retry.
RETRYABLE_MESSAGE = re.compile(r"is not healthy|Stub process|not ready|unavailable|is stopping|exiting", re.IGNORECASE)


def stage_error_code(pb_utils, code: int | None, message: str) -> int | None:
    """The code a failed BLS call is reported with: INVALID_ARG for refused input, UNAVAILABLE for retryable."""
    if code == pb_utils.TritonError.INVALID_ARG or INVALID_INPUT_MESSAGE.match(message):
        return pb_utils.TritonError.INVALID_ARG
    if code == pb_utils.TritonError.UNAVAILABLE or RETRYABLE_MESSAGE.search(message):
        return pb_utils.TritonError.UNAVAILABLE
    return code


class StageError(RuntimeError):
    """A BLS call to a stage model failed; keeps the stage's error code."""

    def __init__(self, model_name: str, message: str, code: int | None, *, invalid_input: bool = False) -> None:
        # A refused input is the caller's to fix: pass the stage's message (it names the field) unchanged.
        super().__init__(message if invalid_input else f"stage model `{model_name}` failed: {message}")
        self.model_name = model_name
        self.code = code


def scalar(value: np.ndarray | None, name: str, default=None, *, text: bool = True):
    """The single element of a ``[1, 1]`` (batch, 1) input; BYTES are decoded as UTF-8 when ``text``."""
    if value is None:
        return default
    if value.size != 1:
        raise InvalidInputError(name, f"must hold one value, got shape {list(value.shape)}.")
    item = value.reshape(-1)[0]
    if isinstance(item, bytes) and text:
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidInputError(name, "is not valid UTF-8.") from e
    return item.item() if hasattr(item, "item") else item


class BlsStageRunner:
    """A :data:`~s2i.stages.runner.StageRunner` that calls other models of the server through BLS.

    Calls made inside :meth:`parent` carry that request's trace (``trace=request.trace()``),
    which is what makes Triton record them as children of the request: without it a
    pipeline trace would stop at the BLS model and hide every UNet step and decoder token.
    They carry its request id too, so the called models' log lines (and errors) name the
    request that caused them even with tracing off. A batched model shares one call among
    its requests; Triton gives a call one parent, so the batch's calls join the first
    request's trace and id (the others' traces end at the model).

    The runner also counts calls and their time per stage model since :meth:`reset_stats`,
    for the per-request log line.
    """

    def __init__(self, pb_utils) -> None:
        self._pb_utils = pb_utils
        self._trace = None
        self._request_id = ""
        self._calls: dict[str, int] = {}
        self._seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def parent(self, request) -> Iterator[None]:
        """Attach the calls made in this block to ``request``'s trace and request id."""
        previous = self._trace, self._request_id
        self._trace = request.trace() if request is not None and hasattr(request, "trace") else None
        self._request_id = _request_id_of(request)
        try:
            yield
        finally:
            self._trace, self._request_id = previous

    def reset_stats(self) -> None:
        """Start counting calls and time per stage model afresh."""
        self._calls.clear()
        self._seconds.clear()

    def stats(self) -> dict[str, dict[str, float]]:
        """``{model: {"calls": n, "ms": total}}`` since :meth:`reset_stats`."""
        return {
            name: {"calls": calls, "ms": round(1000 * self._seconds[name], 3)} for name, calls in self._calls.items()
        }

    def __call__(self, model_name: str, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]):
        """Run ``model_name`` on ``inputs``; return the requested outputs as numpy arrays."""
        pb_utils = self._pb_utils
        extra = {} if self._trace is None else {"trace": self._trace}
        if self._request_id:
            extra["request_id"] = self._request_id
        request = pb_utils.InferenceRequest(
            model_name=model_name,
            inputs=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in inputs.items()],
            requested_output_names=list(output_names),
            **extra,
        )
        started = time.perf_counter()
        try:
            response = request.exec()
        finally:
            self._record(model_name, started)
        return _outputs_of(pb_utils, model_name, response, output_names)

    def counted(self, run_stage: StageRunner) -> StageRunner:
        """``run_stage`` (a stage run in this process, not through BLS) with its calls in :meth:`stats` too."""

        def run(model_name: str, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]):
            started = time.perf_counter()
            try:
                return run_stage(model_name, inputs, output_names)
            finally:
                self._record(model_name, started)

        return run

    def _record(self, model_name: str, started: float) -> None:
        self._calls[model_name] = self._calls.get(model_name, 0) + 1
        self._seconds[model_name] = self._seconds.get(model_name, 0.0) + time.perf_counter() - started


def _request_id_of(request) -> str:
    try:
        return str(request.request_id() or "") if request is not None else ""
    except Exception:  # noqa: BLE001 - an id is for the logs; it must never fail the request
        return ""


def _outputs_of(pb_utils, model_name: str, response, output_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The requested outputs of a BLS response; a failed call becomes a :class:`StageError`."""
    if response.has_error():
        error = response.error()
        code = error.code() if hasattr(error, "code") else None
        # BLS does not always carry the stage's code through; the message format does.
        code = stage_error_code(pb_utils, code, error.message())
        invalid = code == pb_utils.TritonError.INVALID_ARG
        raise StageError(model_name, error.message(), code, invalid_input=invalid)
    outputs = {}
    for name in output_names:
        tensor = pb_utils.get_output_tensor_by_name(response, name)
        if tensor is None:
            raise StageError(model_name, f"returned no `{name}` output", None)
        outputs[name] = tensor.as_numpy()
    return outputs


def make_stage_runner(pb_utils) -> BlsStageRunner:
    """A stage runner that calls other models of the server through BLS (see :class:`BlsStageRunner`)."""
    return BlsStageRunner(pb_utils)


def error_response(pb_utils, error: Exception):
    """An ``InferenceResponse`` carrying ``error`` with the matching Triton error code."""
    if isinstance(error, InvalidInputError):
        code = pb_utils.TritonError.INVALID_ARG
    elif isinstance(error, RequestCancelledError):
        code = getattr(pb_utils.TritonError, "CANCELLED", pb_utils.TritonError.UNAVAILABLE)
    elif isinstance(error, StageError) and error.code is not None:
        code = error.code
    else:
        code = pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(bounded_message(str(error)), code))


def request_audio(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The clip a request carries (``audio_samples`` + ``sample_rate_hz``, or ``audio_bytes``), checked, 16 kHz."""
    samples = inputs.get(names.AUDIO_SAMPLES)
    if samples is not None and samples.shape[0] != 1:
        raise InvalidInputError(
            names.AUDIO_SAMPLES,
            f"must hold one mono clip per request, got shape {list(samples.shape)} "
            "(for stereo audio, downmix to one channel first).",
        )
    return load_request_audio(
        None if samples is None else samples[0],
        scalar(inputs.get(names.SAMPLE_RATE_HZ), names.SAMPLE_RATE_HZ),
        scalar(inputs.get(names.AUDIO_BYTES), names.AUDIO_BYTES, text=False),
    )


def request_inputs(request) -> dict[str, np.ndarray]:
    """Every input ``request`` holds, as numpy arrays by name.

    Triton has already checked them against the model's config (names, datatypes, dims,
    required inputs), which is rendered from the model's description: what a model's parse
    function receives is what its description says it takes.
    """
    return {tensor.name(): tensor.as_numpy() for tensor in request.inputs()}


def response(pb_utils, outputs: Mapping[str, np.ndarray], requested: Sequence[str] = ()):
    """An ``InferenceResponse`` with ``outputs`` (only the ``requested`` ones, when the caller named any)."""
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor(name, value) for name, value in outputs.items() if not requested or name in requested
        ]
    )


def each(run_one):
    """A ``run_batch`` for :func:`answer_batch` that runs items one at a time; a failure is that item's only."""

    def run_batch(items: list) -> list:
        results = []
        for item in items:
            try:
                results.append(run_one(item))
            except Exception as error:  # noqa: BLE001 - becomes this item's error response
                results.append(error)
        return results

    return run_batch


def answer_batch(pb_utils, requests, parse, run_batch, outputs_of, *, cancellable: bool = False, fan_out=None) -> list:
    """The request path of every Python model: parse each request, run the valid ones as one batch, answer each.

    Each request is parsed and checked alone, and gets its own response: a bad request never
    fails its neighbours.

    Args:
        pb_utils: ``triton_python_backend_utils``.
        requests: The batch Triton handed to ``execute``.
        parse: ``parse(inputs) -> item``, with ``inputs`` the request's tensors by name
            (:func:`request_inputs`); raising refuses that request only.
        run_batch: ``run_batch(jobs) -> results`` in the same order; a result may be an exception.
        outputs_of: ``outputs_of(result, compute_ms) -> {name: array}``, with ``compute_ms`` the
            batch's time so far as a ``[1, 1]`` float32 array. With ``fan_out``, ``result`` is the
            tuple of the item's job results.
        cancellable: Call ``run_batch(jobs, cancelled)`` instead, with ``cancelled(i)`` telling
            whether the client of job ``i`` has gone (``request.is_cancelled()``).
        fan_out: ``fan_out(item) -> jobs``: an item becomes several jobs of the same batch (Whisper's
            translation and transcript of one clip); a failed job fails its request only.
    """
    started = time.perf_counter()
    responses = [None] * len(requests)
    jobs, owners = [], []  # owners[j]: the index of the request job j answers
    for index, request in enumerate(requests):
        try:
            item = parse(request_inputs(request))
            item_jobs = tuple(fan_out(item)) if fan_out else (item,)
        except Exception as error:  # noqa: BLE001 - becomes this request's error response
            responses[index] = error_response(pb_utils, error)
            continue
        jobs.extend(item_jobs)
        owners.extend([index] * len(item_jobs))
    if not jobs:
        return responses
    try:
        results = run_batch(jobs, lambda i: requests[owners[i]].is_cancelled()) if cancellable else run_batch(jobs)
    except Exception as error:  # noqa: BLE001 - every request of the batch gets it
        results = [error] * len(jobs)
    compute_ms = np.array([[1000 * (time.perf_counter() - started)]], dtype=np.float32)
    parts: dict[int, list] = {}
    for index, result in zip(owners, results, strict=True):
        parts.setdefault(index, []).append(result)
    for index, results_of in parts.items():
        failed = [result for result in results_of if isinstance(result, Exception)]
        if failed:
            responses[index] = error_response(pb_utils, failed[0])
            continue
        try:
            outputs = outputs_of(tuple(results_of) if fan_out else results_of[0], compute_ms)
            responses[index] = response(pb_utils, outputs, _requested_outputs(requests[index]))
        except Exception as error:  # noqa: BLE001 - becomes this request's error response
            responses[index] = error_response(pb_utils, error)
    return responses


def _requested_outputs(request) -> tuple[str, ...]:
    wanted = request.requested_output_names() if hasattr(request, "requested_output_names") else None
    return tuple(wanted or ())
