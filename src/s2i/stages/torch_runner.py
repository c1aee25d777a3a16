"""Stage graphs run by their original PyTorch modules: the ``python-torch`` target's runners.

Each stage model of the ``python-torch`` target (``whisper_encoder``, ``unet``, …) is a
Python-backend model that loads the checkpoint copied into its version folder and runs
one :class:`TorchStage`. A stage's runner takes and returns the same tensors as its ONNX
graph (names, shapes, float32 at the boundary), so the BLS loops and the ensemble are the
same code on every target. This is the GPU target for hosts without TensorRT, and what an
image that already carries PyTorch can serve with nothing else installed.

Numerics: on CUDA the modules run in float16 with PyTorch's scaled-dot-product attention
(``attn_implementation="sdpa"``; diffusers uses it by default); on the CPU in float32, so
CPU parity with the ONNX graphs is as tight as the ONNX targets' own.

Optional speed-ups, off by default and no-ops on the CPU: CUDA graphs (captured per input
shape the second time it is seen, at most :data:`MAX_CUDA_GRAPHS` per stage; a capture that
fails turns them off for the stage and is logged) and ``torch.compile``.

This module and the stages' ``torch_runner`` modules import only the standard library,
numpy, torch, transformers and diffusers (plus :mod:`s2i.names` and :mod:`s2i.errors`), so a GPU check can
import them from a bare checkout (``sys.path.insert(0, "src")``).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from s2i import names
from s2i.errors import InvalidInputError

LOGGER = logging.getLogger(__name__)

# Model config parameters of a python-torch stage model.
RUNNER_PARAMETER = names.TORCH_RUNNER_PARAMETER
CHECKPOINT_PARAMETER = names.TORCH_CHECKPOINT_PARAMETER
DTYPE_PARAMETER = names.TORCH_DTYPE_PARAMETER
CUDA_GRAPHS_PARAMETER = names.TORCH_CUDA_GRAPHS_PARAMETER
COMPILE_PARAMETER = names.TORCH_COMPILE_PARAMETER
# Runners are looked up only in the project's stage packages: a config cannot name any module.
RUNNER_PACKAGE = "s2i.stages."
# Distinct input shapes a stage keeps a CUDA graph for; past this, new shapes run eagerly.
# Each graph holds its own input/output buffers (the KV cache for a decoder step).
MAX_CUDA_GRAPHS = 64
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

Tensors = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class TorchOptions:
    """Where and how a stage's module runs.

    Attributes:
        device: ``cpu`` or ``cuda:N``.
        dtype: ``auto`` (float16 on CUDA, float32 on the CPU) or a name in :data:`DTYPES`.
        cuda_graphs: Capture and replay CUDA graphs per input shape (CUDA only).
        compile: Wrap the module in ``torch.compile`` (CUDA only: on the CPU the
            first call of each shape would cost seconds for no gain on these sizes).
    """

    device: str = "cpu"
    dtype: str = "auto"
    cuda_graphs: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"`{DTYPE_PARAMETER}` must be 'auto' or one of {list(DTYPES)}, got {self.dtype!r}.")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"`device` must be 'cpu' or 'cuda[:N]', got {self.device!r}.")

    @property
    def on_cuda(self) -> bool:
        """Whether the module runs on a GPU."""
        return self.device.startswith("cuda")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype the module's weights and float activations have."""
        if self.dtype == "auto":
            return torch.float16 if self.on_cuda else torch.float32
        return DTYPES[self.dtype]

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str], device: str) -> TorchOptions:
        """Options from a model config's parameters (strings), for ``device``."""
        return cls(
            device=device,
            dtype=parameters.get(DTYPE_PARAMETER, "auto") or "auto",
            cuda_graphs=_flag(parameters, CUDA_GRAPHS_PARAMETER),
            compile=_flag(parameters, COMPILE_PARAMETER),
        )


def _flag(parameters: Mapping[str, str], name: str) -> bool:
    value = str(parameters.get(name, "false")).strip().lower()
    if value not in ("true", "false", "1", "0", ""):
        # bool("false") is True: parse strictly instead.
        raise ValueError(f"`{name}` must be 'true' or 'false', got {value!r}.")
    return value in ("true", "1")


def instance_device(kind: str | None, device_id: str | int | None) -> str:
    """The torch device of a Triton model instance (``model_instance_kind``/``model_instance_device_id``)."""
    if str(kind or "").upper() in ("GPU", "KIND_GPU"):
        return f"cuda:{int(device_id or 0)}"
    return "cpu"


class TorchStage(abc.ABC):
    """One stage graph as a PyTorch module, with the graph's tensor contract.

    Subclasses load their library model in :meth:`load_model`, keep what the graph runs in
    :meth:`adopt` and compute in :meth:`forward` (torch tensors in, torch tensors out, on the
    stage's device). :meth:`run` is the numpy contract the ONNX graph has; :meth:`run_requests`
    batches Triton requests. A model already in memory (the GPU check's random ones at real
    dimensions) is adopted without a checkpoint: ``Runner(model=model, options=...)``.

    Attributes:
        input_names: The graph's inputs, in order.
        output_names: The graph's outputs, in order.
        graphs_captured: CUDA graphs captured so far (0 when off or on the CPU).
    """

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def __init__(
        self, checkpoint: Path | None = None, options: TorchOptions | None = None, *, model: object | None = None
    ) -> None:
        if (checkpoint is None) == (model is None):
            raise ValueError("Give a runner either a `checkpoint` folder or a loaded `model`.")
        self.options = options or TorchOptions()
        self.device = torch.device(self.options.device)
        self.dtype = self.options.torch_dtype
        self.adopt(self.load_model(Path(checkpoint)) if model is None else model)
        self._graphs: dict[tuple, _CapturedGraph] = {}
        self._seen: set[tuple] = set()
        self._graphs_enabled = self.options.cuda_graphs and self.options.on_cuda
        self.graphs_captured = 0
        self._forward: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = self.forward
        if self.options.compile and self.options.on_cuda:
            # The whole step as one compiled function; shapes that vary (the KV cache) recompile as dynamic.
            self._forward = torch.compile(self.forward, dynamic=None)

    @abc.abstractmethod
    def load_model(self, checkpoint: Path) -> object:
        """The library model of ``checkpoint`` (on the CPU; diffusers models already in ``self.dtype``)."""

    @abc.abstractmethod
    def adopt(self, model: object) -> None:
        """Keep the parts of ``model`` the graph runs, through :meth:`module` (device, dtype, eval)."""

    @abc.abstractmethod
    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute every output from inputs already on the device (float inputs in ``self.dtype``)."""

    def check(self, inputs: Tensors) -> None:  # noqa: B027 - most graphs accept whatever Triton let through
        """Refuse inputs the module cannot run on (raise :class:`InvalidInputError`); the default accepts all.

        Checked on the host before anything reaches the device: some bad inputs (an
        out-of-range token id) end in a CUDA device assert, which breaks the process for
        every later request.
        """

    def module(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` on the stage's device and dtype, in eval mode, without gradients.

        The dtype is changed only when it differs: diffusers models are loaded in theirs
        (``torch_dtype``), which keeps layers a model marks as float32-only in float32.
        """
        current = next(module.parameters()).dtype
        moved = module.to(device=self.device, dtype=self.dtype) if current != self.dtype else module.to(self.device)
        moved.eval().requires_grad_(False)
        return moved

    def to_device(self, name: str, value: np.ndarray | torch.Tensor) -> torch.Tensor:
        """An input on the device; float inputs in the module's dtype, integer ones unchanged."""
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        if tensor.is_floating_point():
            return tensor.to(device=self.device, dtype=self.dtype, non_blocking=True)
        return tensor.to(device=self.device, non_blocking=True)

    def run_torch(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every output as a device tensor (module dtype): the in-process path, no host copies."""
        on_device = {name: self.to_device(name, inputs[name]) for name in self.input_names if name in inputs}
        with torch.inference_mode():
            if self._graphs_enabled:
                return self._run_graphed(on_device)
            return self._forward(on_device)

    def run(self, inputs: Tensors, output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The graph's contract: numpy inputs in, the requested outputs as float32 (or integer) numpy arrays."""
        self.check(inputs)
        outputs = self.run_torch(inputs)
        names = list(output_names or self.output_names)
        return {name: _to_numpy(outputs[name]) for name in names}

    def run_requests(self, requests: Sequence[Tensors], output_names: Sequence[str] | None = None) -> list:
        """Run several requests, batching those whose input shapes agree outside the batch axis.

        Each request is checked alone; a refused one gets its :class:`InvalidInputError` in its
        place of the result list, and the others still run.
        """
        results: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            try:
                self.check(request)
            except InvalidInputError as error:
                results[index] = error
                continue
            key = tuple((name, request[name].shape[1:], request[name].dtype.str) for name in self.present(request))
            groups.setdefault(key, []).append(index)
        for indices in groups.values():
            present = self.present(requests[indices[0]])
            batch = {name: np.concatenate([requests[i][name] for i in indices]) for name in present}
            outputs = self.run_torch(batch)
            sizes = np.cumsum([requests[i][present[0]].shape[0] for i in indices])[:-1]
            for name in output_names or self.output_names:
                for index, part in zip(indices, np.split(_to_numpy(outputs[name]), sizes), strict=True):
                    results[index] = {**(results[index] or {}), name: part}
        return results

    def present(self, request: Tensors) -> list[str]:
        """The stage's inputs ``request`` holds (optional ones may be absent), in order."""
        return [name for name in self.input_names if name in request]

    def _run_graphed(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = tuple((name, tuple(value.shape), value.dtype) for name, value in inputs.items())
        graph = self._graphs.get(key)
        if graph is not None:
            return graph.replay(inputs)
        if key not in self._seen or len(self._graphs) >= MAX_CUDA_GRAPHS:
            # First sighting (or no room): run eagerly; a shape seen twice is worth a capture.
            self._seen.add(key)
            return self._forward(inputs)
        try:
            graph = _CapturedGraph(self._forward, inputs)
        except Exception as error:  # noqa: BLE001 - any capture failure falls back to eager, once
            LOGGER.warning(
                "CUDA graph capture failed for %s; running eagerly from now on: %s", type(self).__name__, error
            )
            self._graphs_enabled = False
            return self._forward(inputs)
        self._graphs[key] = graph
        self.graphs_captured += 1
        return graph.replay(inputs)


class _CapturedGraph:
    """One forward pass captured as a CUDA graph, with its static input and output buffers."""

    def __init__(self, forward, inputs: dict[str, torch.Tensor]) -> None:
        self.inputs = {name: value.clone() for name, value in inputs.items()}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            # Warm-up on a side stream, as capture requires (lazy inits, cuBLAS workspaces).
            for _ in range(2):
                forward(self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = forward(self.inputs)

    def replay(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for name, value in inputs.items():
            self.inputs[name].copy_(value, non_blocking=True)
        self.graph.replay()
        # The next replay overwrites the static outputs: hand out copies.
        return {name: value.clone() for name, value in self.outputs.items()}


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


def runner_class(reference: str) -> type[TorchStage]:
    """The :class:`TorchStage` subclass named ``"<module>:<class>"`` (a module of :mod:`s2i.stages`)."""
    module_name, _, class_name = reference.partition(":")
    if not module_name.startswith(RUNNER_PACKAGE) or not class_name:
        raise ValueError(
            f"`{RUNNER_PARAMETER}` must name a runner as '{RUNNER_PACKAGE}<stage>.torch_runner:<Class>', "
            f"got {reference!r}."
        )
    found = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(found, type) and issubclass(found, TorchStage)):
        raise ValueError(f"`{RUNNER_PARAMETER}` {reference!r} does not name a TorchStage class.")
    return found


def load_stage(reference: str, checkpoint: Path, options: TorchOptions | None = None) -> TorchStage:
    """Load the runner named ``reference`` on ``checkpoint``."""
    return runner_class(reference)(checkpoint, options)


def torch_stage_runner(stages: Mapping[str, TorchStage]):
    """A :data:`~s2i.stages.runner.StageRunner` over local torch stages (tests, the GPU check)."""

    def run_stage(model_name: str, inputs: Tensors, output_names: Sequence[str]) -> dict[str, np.ndarray]:
        return stages[model_name].run(inputs, output_names)

    return run_stage


def check_token_ids(ids: np.ndarray, field: str, vocab_size: int) -> None:
    """Refuse token ids outside ``[0, vocab_size)`` (an embedding lookup would fail, on CUDA fatally)."""
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise InvalidInputError(
            field, f"holds ids from {int(ids.min())} to {int(ids.max())}; this model's are 0 to {vocab_size - 1}."
        )
