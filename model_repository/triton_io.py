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

from s2i.audio import InvalidInputError, RequestCancelledError, bounded_message
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


def optional_input(pb_utils, request, name: str) -> np.ndarray | None:
    """The numpy value of input ``name``, or ``None`` when the request left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


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


def respond_each(pb_utils, requests, respond) -> list:
    """``respond(request)`` for each request; an exception becomes that request's error response only."""
    responses = []
    for request in requests:
        try:
            responses.append(respond(request))
        except Exception as error:  # noqa: BLE001 - reported to the caller, never raised into Triton
            responses.append(error_response(pb_utils, error))
    return responses


def answer_batch(pb_utils, requests, parse, run_batch, outputs_of, *, cancellable: bool = False) -> list:
    """Check each request alone, run the valid ones as one batch, answer each with its own response.

    Args:
        pb_utils: ``triton_python_backend_utils``.
        requests: The batch Triton handed to ``execute``.
        parse: ``parse(request) -> item``; raising refuses that request only.
        run_batch: ``run_batch(items) -> results`` in the same order; a result may be an exception.
        outputs_of: ``outputs_of(result, compute_ms) -> [pb_utils.Tensor, ...]``, with
            ``compute_ms`` the batch's time so far as a ``[1, 1]`` float32 array.
        cancellable: Call ``run_batch(items, cancelled)`` instead, with ``cancelled(i)`` telling
            whether the client of item ``i`` has gone (``request.is_cancelled()``).
    """
    started = time.perf_counter()
    responses = [None] * len(requests)
    valid = {}
    for index, request in enumerate(requests):
        try:
            valid[index] = parse(request)
        except Exception as error:  # noqa: BLE001 - becomes this request's error response
            responses[index] = error_response(pb_utils, error)
    if not valid:
        return responses
    try:
        if cancellable:
            indices = list(valid)
            results = run_batch(list(valid.values()), lambda i: requests[indices[i]].is_cancelled())
        else:
            results = run_batch(list(valid.values()))
    except Exception as error:  # noqa: BLE001 - every request of the batch gets it
        results = [error] * len(valid)
    compute_ms = np.array([[1000 * (time.perf_counter() - started)]], dtype=np.float32)
    for index, result in zip(valid, results, strict=True):
        if isinstance(result, Exception):
            responses[index] = error_response(pb_utils, result)
        else:
            responses[index] = pb_utils.InferenceResponse(output_tensors=outputs_of(result, compute_ms))
    return responses
