"""The one request path of the Python models (`answer_batch`), on a stand-in for ``triton_python_backend_utils``.

The served behaviour (a bad request refused while its batch neighbours are answered, on a real
server) is covered by the stage and pipeline tests; here each rule of the path is pinned alone.
"""

import types

import numpy as np

from s2i.errors import InvalidInputError
from s2i.model_repository.triton_io import answer_batch, each


class TritonError:
    INVALID_ARG, INTERNAL, UNAVAILABLE, CANCELLED = 3, 13, 14, 1

    def __init__(self, message: str, code: int) -> None:
        self.message, self.code = message, code


class Tensor:
    def __init__(self, name: str, value: np.ndarray) -> None:
        self._name, self._value = name, value

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._value


class InferenceResponse:
    def __init__(self, output_tensors=(), error=None) -> None:
        self.outputs = {tensor.name(): tensor.as_numpy() for tensor in output_tensors}
        self.error = error


PB_UTILS = types.SimpleNamespace(TritonError=TritonError, Tensor=Tensor, InferenceResponse=InferenceResponse)


class Request:
    def __init__(self, x=None, *, wanted=(), cancelled=False) -> None:
        self._inputs = [] if x is None else [Tensor("x", np.array([[x]], dtype=np.int64))]
        self._wanted, self._cancelled = list(wanted), cancelled

    def inputs(self):
        return self._inputs

    def requested_output_names(self):
        return self._wanted

    def is_cancelled(self) -> bool:
        return self._cancelled


def parse(inputs):
    if "x" not in inputs:
        raise InvalidInputError("x", "is required.")
    return int(inputs["x"][0, 0])


def test_answer_batch_refuses_only_the_bad_request_when_a_batch_mixes_good_and_bad():
    batches = []

    def run_batch(items):
        batches.append(items)
        return [item * 10 for item in items]

    responses = answer_batch(
        PB_UTILS,
        [Request(1), Request(), Request(3)],
        parse,
        run_batch,
        lambda result, ms: {"y": np.array([[result]]), "compute_ms": ms},
    )
    assert batches == [[1, 3]]
    assert responses[0].outputs["y"][0, 0] == 10 and responses[2].outputs["y"][0, 0] == 30
    assert responses[1].error.code == TritonError.INVALID_ARG
    assert responses[1].error.message == "`x`: is required."
    assert responses[0].outputs["compute_ms"].shape == (1, 1)


def test_answer_batch_answers_each_item_with_all_its_jobs_when_fanned_out():
    seen = []

    def run_batch(jobs, cancelled):
        seen.append([(job, cancelled(index)) for index, job in enumerate(jobs)])
        return [ValueError("odd job") if job == 31 else job for job in jobs]

    responses = answer_batch(
        PB_UTILS,
        [Request(1), Request(2, cancelled=True), Request(3)],
        parse,
        run_batch,
        lambda results, _ms: {"y": np.array([list(results)])},
        cancellable=True,
        # Even items run once, odd ones twice (Whisper: translation, and the transcript when asked).
        fan_out=lambda item: (item,) if item % 2 == 0 else (item, item * 10 + 1),
    )
    # Jobs of one request stay together, and `cancelled` answers for the job's own request.
    assert seen == [[(1, False), (11, False), (2, True), (3, False), (31, False)]]
    assert responses[0].outputs["y"].tolist() == [[1, 11]]
    assert responses[1].outputs["y"].tolist() == [[2]]
    # A failed job fails its request only.
    assert responses[2].error.code == TritonError.INTERNAL and "odd job" in responses[2].error.message


def test_answer_batch_fails_every_request_when_the_batch_run_raises():
    def run_batch(_items):
        raise RuntimeError("graph failed")

    responses = answer_batch(PB_UTILS, [Request(1), Request(2)], parse, run_batch, lambda result, _ms: {})
    assert [response.error.message for response in responses] == ["graph failed", "graph failed"]


def test_answer_batch_sends_only_the_requested_outputs_when_the_caller_names_some():
    (response,) = answer_batch(
        PB_UTILS,
        [Request(1, wanted=["b"])],
        parse,
        lambda items: items,
        lambda result, _ms: {"a": np.array([[result]]), "b": np.array([[result + 1]])},
    )
    assert list(response.outputs) == ["b"]


def test_each_keeps_a_failure_to_its_item_when_run_one_by_one():
    results = each(lambda item: 10 // item)([1, 0, 5])
    assert results[0] == 10 and isinstance(results[1], ZeroDivisionError) and results[2] == 2
