"""Run one exported ONNX graph for a batch of Triton requests on ONNX Runtime.

The bundled server has no onnxruntime backend, so stage graphs run inside a
Python-backend model (``python_models/onnx_stage.py``) that calls this module.
Requests whose tensors have the same shapes are concatenated along the batch
axis and run as one call, which is what Triton's dynamic batcher is for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

Tensors = Mapping[str, np.ndarray]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container's cpuset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def intra_op_threads_for(requested: int, instances: int, cores: int | None = None) -> int:
    """ONNX Runtime intra-op threads for one instance of a stage graph.

    ``requested`` > 0 is used as is. Otherwise the cores this process may use are
    shared among the model's instances. The count is always explicit because ONNX
    Runtime's own default (0) pins its worker threads to cores 1..n-1 — in every
    stage process alike, so seven processes on two cores all competed for core 1.
    """
    if requested > 0:
        return requested
    return max(1, (available_cores() if cores is None else cores) // max(1, instances))


def session_options(intra_op_threads: int):
    """Session options for a stage graph that shares the host's cores with other stage processes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    # Idle workers spinning for work would steal the cores other stage processes are computing on.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


class OnnxStage:
    """An ONNX Runtime session with batching over requests."""

    def __init__(
        self,
        onnx_path: Path,
        intra_op_threads: int = 0,
        providers: Sequence[str] | None = None,
        instances: int = 1,
        max_rows_per_call: int = 0,
    ) -> None:
        import onnxruntime as ort

        if max_rows_per_call < 0:
            raise ValueError(f"`max_rows_per_call` must be 0 (no limit) or positive, got {max_rows_per_call}.")
        self.max_rows_per_call = max_rows_per_call
        self.intra_op_threads = intra_op_threads_for(intra_op_threads, instances)
        self.session = ort.InferenceSession(
            str(onnx_path),
            sess_options=session_options(self.intra_op_threads),
            providers=list(providers or ["CPUExecutionProvider"]),
        )
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.output_names = [node.name for node in self.session.get_outputs()]

    def run(self, inputs: Tensors, output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the graph on ``inputs``: once, or in slices of ``max_rows_per_call`` rows."""
        names = list(output_names or self.output_names)
        feed = {name: inputs[name] for name in self.input_names}
        rows = feed[self.input_names[0]].shape[0]
        if not self.max_rows_per_call or rows <= self.max_rows_per_call:
            return dict(zip(names, self.session.run(names, feed), strict=True))
        # Rows are independent (a batch axis), so slices give the rows the whole batch would,
        # with ONNX Runtime's activations sized for one slice.
        step = self.max_rows_per_call
        parts = [
            self.session.run(names, {name: value[start : start + step] for name, value in feed.items()})
            for start in range(0, rows, step)
        ]
        return {name: np.concatenate([part[i] for part in parts]) for i, name in enumerate(names)}

    def run_requests(
        self, requests: Sequence[Tensors], output_names: Sequence[str] | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Run several requests, batching those whose input shapes agree (outside the batch axis)."""
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            key = tuple((name, request[name].shape[1:], request[name].dtype.str) for name in self.input_names)
            groups.setdefault(key, []).append(index)
        results: list[dict[str, np.ndarray]] = [{} for _ in requests]
        for indices in groups.values():
            batch = {name: np.concatenate([requests[i][name] for i in indices]) for name in self.input_names}
            outputs = self.run(batch, output_names)
            sizes = np.cumsum([requests[i][self.input_names[0]].shape[0] for i in indices])[:-1]
            for name, value in outputs.items():
                for index, part in zip(indices, np.split(value, sizes), strict=True):
                    results[index][name] = part
        return results


def onnx_stage_runner(stages: Mapping[str, OnnxStage]):
    """A :data:`~s2i.stages.runner.StageRunner` that calls local sessions instead of Triton."""

    def run_stage(model_name: str, inputs: Tensors, output_names: Sequence[str]) -> dict[str, np.ndarray]:
        return stages[model_name].run(inputs, output_names)

    return run_stage
