"""Typed descriptions of Triton models, rendered to ``config.pbtxt`` through Triton's protobuf.

Every model of the repository is one :class:`ModelSpec`; :func:`render_config`
fills ``tritonclient``'s ``ModelConfig`` message and prints it in text format,
so a generated config is valid by construction and a typo in a field name is
an ``AttributeError`` at build time rather than a server that refuses to load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2


def _model_config_pb2():
    """Triton's config schema, imported where a config is rendered or parsed.

    Describing models needs no protobuf; the serving image, which has no ``tritonclient``,
    can still import every description (and so the CLI).
    """
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


# Triton datatype name (as in the KServe v2 protocol) -> numpy dtype.
TRITON_TO_NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
# KServe names differ from the config's enum for strings only.
_CONFIG_TYPE = {name: f"TYPE_{'STRING' if name == 'BYTES' else name}" for name in TRITON_TO_NUMPY}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a model.

    Attributes:
        name: Tensor name, as the client and the ONNX graph spell it.
        datatype: KServe v2 datatype (``FP32``, ``INT64``, ``BYTES``, …).
        dims: Shape without the batch dimension; ``-1`` marks a variable axis.
        optional: Inputs only: a request may leave it out.
        ragged: Inputs only: requests whose shapes differ on ``-1`` axes still share a batch
            (``allow_ragged_batch``). Only for models that read each request's tensor on its
            own, as Python-backend models do; a graph model needs equal shapes.
    """

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False
    ragged: bool = False

    def __post_init__(self) -> None:
        if self.datatype not in TRITON_TO_NUMPY:
            raise ValueError(
                f"`datatype` of `{self.name}` must be one of {sorted(TRITON_TO_NUMPY)}, got {self.datatype!r}."
            )
        if any(dim == 0 or dim < -1 for dim in self.dims):
            raise ValueError(f"`dims` of `{self.name}` must be positive or -1, got {self.dims}.")

    @property
    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype of the tensor."""
        return np.dtype(TRITON_TO_NUMPY[self.datatype])


@dataclasses.dataclass(frozen=True)
class DynamicBatching:
    """Triton's dynamic batcher: requests that arrive close together run as one batch.

    Attributes:
        preferred_batch_sizes: Batch sizes the scheduler waits for, if they come soon.
        max_queue_delay_us: How long a request may wait for batch partners.
    """

    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0


@dataclasses.dataclass(frozen=True)
class InstanceGroup:
    """How many copies of the model run, and where."""

    count: int = 1
    kind: str = "KIND_CPU"
    gpus: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class EnsembleStep:
    """One step of an ensemble: a model and the mapping of its tensors to ensemble tensors."""

    model_name: str
    input_map: Mapping[str, str]
    output_map: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything Triton needs to know about one model of the repository.

    Attributes:
        name: Model name in the repository.
        inputs: Input tensors.
        outputs: Output tensors.
        max_batch_size: ``0`` disables batching; otherwise the first axis is the batch.
        backend: Triton backend (``python``, ``onnxruntime``, …); empty with ``platform``.
        platform: ``tensorrt_plan``, ``onnxruntime_onnx`` or ``ensemble``.
        dynamic_batching: The dynamic batcher, or ``None``.
        instance_groups: Model instances.
        parameters: Free-form string parameters the model reads at ``initialize``.
        decoupled: Responses are streamed (Python backend decoupled mode).
        ensemble_steps: Steps of an ensemble model.
        default_model_filename: File name in the version folder.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    backend: str = "python"
    platform: str = ""
    dynamic_batching: DynamicBatching | None = None
    instance_groups: tuple[InstanceGroup, ...] = (InstanceGroup(),)
    parameters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    decoupled: bool = False
    ensemble_steps: tuple[EnsembleStep, ...] = ()
    default_model_filename: str = ""

    def __post_init__(self) -> None:
        for kind, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [tensor.name for tensor in tensors]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"Model `{self.name}` declares {kind} {duplicates} more than once.")
        if self.dynamic_batching and self.max_batch_size < 1:
            raise ValueError(
                f"Model `{self.name}` has `dynamic_batching` but `max_batch_size` is {self.max_batch_size}."
            )
        for size in self.dynamic_batching.preferred_batch_sizes if self.dynamic_batching else ():
            if size > self.max_batch_size:
                raise ValueError(
                    f"Model `{self.name}`: preferred batch size {size} exceeds `max_batch_size` {self.max_batch_size}."
                )

    def input(self, name: str) -> TensorSpec:
        """The input called ``name``."""
        return _find(self.inputs, name, self.name, "input")

    def output(self, name: str) -> TensorSpec:
        """The output called ``name``."""
        return _find(self.outputs, name, self.name, "output")


def _find(tensors: Sequence[TensorSpec], name: str, model: str, kind: str) -> TensorSpec:
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    raise KeyError(f"Model `{model}` has no {kind} `{name}`; it has {[t.name for t in tensors]}.")


def to_model_config(spec: ModelSpec) -> model_config_pb2.ModelConfig:
    """Fill Triton's ``ModelConfig`` protobuf from ``spec``."""
    model_config_pb2 = _model_config_pb2()
    config = model_config_pb2.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
    if spec.platform:
        config.platform = spec.platform
    if spec.backend and not spec.platform:
        config.backend = spec.backend
    if spec.default_model_filename:
        config.default_model_filename = spec.default_model_filename
    for tensor in spec.inputs:
        config.input.add(
            name=tensor.name,
            data_type=model_config_pb2.DataType.Value(_CONFIG_TYPE[tensor.datatype]),
            dims=list(tensor.dims),
            optional=tensor.optional,
            allow_ragged_batch=tensor.ragged,
        )
    for tensor in spec.outputs:
        config.output.add(
            name=tensor.name,
            data_type=model_config_pb2.DataType.Value(_CONFIG_TYPE[tensor.datatype]),
            dims=list(tensor.dims),
        )
    if spec.dynamic_batching is not None:
        config.dynamic_batching.preferred_batch_size.extend(spec.dynamic_batching.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = spec.dynamic_batching.max_queue_delay_us
    if spec.platform != "ensemble":
        for group in spec.instance_groups:
            config.instance_group.add(
                count=group.count,
                kind=model_config_pb2.ModelInstanceGroup.Kind.Value(group.kind),
                gpus=list(group.gpus),
            )
    for key, value in sorted(spec.parameters.items()):
        config.parameters[key].string_value = str(value)
    if spec.decoupled:
        config.model_transaction_policy.decoupled = True
    for step in spec.ensemble_steps:
        config.ensemble_scheduling.step.add(
            model_name=step.model_name,
            model_version=-1,
            input_map=dict(step.input_map),
            output_map=dict(step.output_map),
        )
    return config


def render_config(spec: ModelSpec) -> str:
    """Render ``spec`` as the text of a ``config.pbtxt``."""
    header = f"# Generated by speech2image-triton from the `{spec.name}` model description; do not edit.\n"
    from google.protobuf import text_format

    return header + text_format.MessageToString(to_model_config(spec))


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    """Parse the text of a ``config.pbtxt`` into Triton's ``ModelConfig`` protobuf."""
    from google.protobuf import text_format

    return text_format.Parse(text, _model_config_pb2().ModelConfig())
