"""One description per exported graph: names, shapes, batching and validation tolerance.

A :class:`OnnxComponent` is what the ONNX, ONNX Runtime and TensorRT paths share:
the Triton stage model is rendered from it for every target, and the exported
graph is checked against it (names, datatypes, ranks) before it is served.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from s2i.model_repository.config import TensorSpec
from s2i.model_repository.deployment import ModelPolicy

_ONNX_TO_TRITON = {1: "FP32", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "FP64"}


class GraphMismatchError(ValueError):
    """An exported graph does not have the inputs/outputs its description declares."""


@dataclasses.dataclass(frozen=True)
class OnnxComponent:
    """An exported graph served as one Triton stage model.

    Attributes:
        model_name: Name of the stage model in the repository.
        onnx_file: File name of the graph in the export folder.
        inputs: Inputs, dims without the batch axis (``-1`` for dynamic axes).
        outputs: Outputs, likewise.
        batching: Batching and instances for a graph the deployment table
            (:mod:`s2i.model_repository.deployment`) does not list, such as a plugin stage's;
            the table decides for every graph it lists.
        atol: Largest absolute difference to PyTorch accepted at export.
        axis_ranges: ``(min, opt, max)`` of each dynamic (``-1``) axis other than the batch:
            input name -> {axis index in ``dims`` -> range}. TensorRT profiles are built from
            these and the batch policy; ONNX Runtime needs none.
        rtol: Largest normalised difference accepted at export when ``atol`` is exceeded:
            max abs difference / max abs PyTorch value, so the bound scales with deeper,
            larger-valued real models (``0``: the absolute bound only).
        torch_runner: ``<module>:<class>`` of the :class:`~s2i.stages.torch_runner.TorchStage` that
            runs the graph's PyTorch module on the ``python-torch`` target (empty: not servable there).
    """

    model_name: str
    onnx_file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    atol: float
    axis_ranges: Mapping[str, Mapping[int, tuple[int, int, int]]] = dataclasses.field(default_factory=dict)
    batching: ModelPolicy | None = None
    rtol: float = 0.0
    torch_runner: str = ""

    def profile(self, max_batch_size: int, opt_batch_size: int) -> dict[str, tuple[tuple[int, ...], ...]]:
        """TensorRT optimisation profile: input name -> (min, opt, max) shapes, batch axis included."""
        shapes = {}
        for tensor in self.inputs:
            ranges = self.axis_ranges.get(tensor.name, {})
            # (min, opt, max) per axis, the batch axis first.
            axes = [(1, opt_batch_size, max_batch_size)]
            for axis, dim in enumerate(tensor.dims):
                if dim != -1:
                    axes.append((dim, dim, dim))
                    continue
                if axis not in ranges:
                    raise ValueError(
                        f"`{self.model_name}` input `{tensor.name}` axis {axis} is dynamic but has no "
                        "`axis_ranges` entry; declare (min, opt, max) for it to build a TensorRT profile."
                    )
                if not 1 <= ranges[axis][0] <= ranges[axis][1] <= ranges[axis][2]:
                    raise ValueError(
                        f"`{self.model_name}` `{tensor.name}` axis {axis}: range {ranges[axis]} is not ordered."
                    )
                axes.append(tuple(ranges[axis]))
            shapes[tensor.name] = tuple(zip(*axes, strict=True))
        return shapes

    def check_graph(self, onnx_path: Path) -> None:
        """Raise :class:`GraphMismatchError` unless ``onnx_path`` matches this description."""
        import onnx

        graph = onnx.load(str(onnx_path), load_external_data=False).graph
        for kind, declared, actual in (("input", self.inputs, graph.input), ("output", self.outputs, graph.output)):
            found = {node.name: node for node in actual}
            if set(found) != {tensor.name for tensor in declared}:
                raise GraphMismatchError(
                    f"`{self.model_name}` declares {kind}s {sorted(t.name for t in declared)} but "
                    f"{onnx_path.name} has {sorted(found)}."
                )
            for tensor in declared:
                node_type = found[tensor.name].type.tensor_type
                datatype = _ONNX_TO_TRITON.get(node_type.elem_type, str(node_type.elem_type))
                dims = [dim.dim_value if dim.dim_value > 0 else -1 for dim in node_type.shape.dim][1:]
                if datatype != tensor.datatype or len(dims) != len(tensor.dims):
                    raise GraphMismatchError(
                        f"`{self.model_name}` {kind} `{tensor.name}` is declared {tensor.datatype}{list(tensor.dims)} "
                        f"but the graph has {datatype}{dims} (batch axis excluded)."
                    )
                for declared_dim, graph_dim in zip(tensor.dims, dims, strict=True):
                    if declared_dim != -1 and graph_dim != -1 and declared_dim != graph_dim:
                        raise GraphMismatchError(
                            f"`{self.model_name}` {kind} `{tensor.name}` is declared {list(tensor.dims)} "
                            f"but the graph has {dims}."
                        )
