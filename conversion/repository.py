"""Write models into a Triton model repository, for one serving target.

Targets differ only in how stage graphs are served; BLS and ensemble models
are the same Python code everywhere:

* ``python-onnxruntime`` (default, CPU, the bundled server): each graph runs on
  ONNX Runtime inside a Python-backend model (``python_models/onnx_stage.py``).
* ``onnxruntime``: each graph is a native ``onnxruntime_onnx`` model on the CPU (NGC container).
* ``onnxruntime-gpu``: the same on the GPU (``KIND_GPU``, ONNX Runtime's CUDA execution provider).
* ``tensorrt``: each graph is a TensorRT engine (``tensorrt_plan``) built on this machine's GPU.
* ``python-torch``: each graph is run by its original PyTorch module inside a Python-backend
  model (``python_models/torch_stage.py``, :mod:`s2i.stages.torch_runner`), from the checkpoint
  files copied beside it; no ONNX export. On the GPU (float16, SDPA) when the converting host
  has one, as ``tensorrt`` builds for the converting host's GPU; otherwise on the CPU (float32).

Batching and instances come from :mod:`s2i.model_repository.deployment`, by model and device.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from s2i import names
from s2i.conversion.tensorrt import ENGINE_FILE, MANIFEST_FILE, build_engine
from s2i.model_repository.components import OnnxComponent
from s2i.model_repository.config import ModelSpec, render_config
from s2i.model_repository.deployment import CPU, GPU, ModelPolicy, policy

LOGGER = logging.getLogger(__name__)

PYTHON_ONNXRUNTIME = "python-onnxruntime"
ONNXRUNTIME = "onnxruntime"
ONNXRUNTIME_GPU = "onnxruntime-gpu"
TENSORRT = "tensorrt"
PYTHON_TORCH = "python-torch"
# Target -> the device its stage models run on (None: the converting host's, see device_of).
TARGET_DEVICE = {PYTHON_ONNXRUNTIME: CPU, ONNXRUNTIME: CPU, ONNXRUNTIME_GPU: GPU, TENSORRT: GPU, PYTHON_TORCH: None}
TARGETS = tuple(TARGET_DEVICE)
# Targets that serve the exported ONNX graphs (python-torch serves the checkpoint's modules).
ONNX_TARGETS = tuple(target for target in TARGETS if target != PYTHON_TORCH)
ONNX_MODEL_FILE = "model.onnx"
# Folder of a python-torch stage model's checkpoint files, beside its model.py.
TORCH_CHECKPOINT_DIR = "checkpoint"
# How a python-torch module runs, as model config parameters. CUDA graphs and compilation are off by
# default: they cost seconds per shape at load or first use.
TORCH_OPTION_DEFAULTS = {
    names.TORCH_DTYPE_PARAMETER: "auto",
    names.TORCH_CUDA_GRAPHS_PARAMETER: "false",
    names.TORCH_COMPILE_PARAMETER: "false",
}
# Weight files transformers and diffusers load by default; other formats and variants
# (`*.fp16.safetensors`, Flax, TensorFlow) are not copied.
TORCH_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def device_of(target: str) -> str:
    """``cpu`` or ``gpu``: where ``target``'s stage models run.

    ``python-torch`` runs where the converting host can: on the GPU when PyTorch sees CUDA
    there, else on the CPU (convert on the kind of host that serves, as for ``tensorrt``).
    """
    if target not in TARGET_DEVICE:
        raise ValueError(f"`target` must be one of {list(TARGETS)}, got {target!r}.")
    if TARGET_DEVICE[target] is None:
        import torch

        return GPU if torch.cuda.is_available() else CPU
    return TARGET_DEVICE[target]


def component_policy(component: OnnxComponent, target: str) -> ModelPolicy:
    """The batching policy of ``component``'s model on ``target``'s device."""
    return policy(component.model_name, device_of(target), default=component.batching)


def stage_model_spec(component: OnnxComponent, target: str) -> ModelSpec:
    """The Triton model serving ``component`` on ``target``."""
    chosen = component_policy(component, target)
    common = dict(
        name=component.model_name,
        inputs=component.inputs,
        outputs=component.outputs,
        max_batch_size=chosen.max_batch_size,
        dynamic_batching=chosen.dynamic_batching,
        instance_groups=chosen.instance_groups(device_of(target)),
    )
    if target == PYTHON_ONNXRUNTIME:
        # 0 = the cores the server process may use, shared among the model's instances (decided at
        # load time, so one repository fits any cpuset): a lone request's graph call then uses the
        # whole CPU, as PyTorch does in-process (measured in benchmarks/README.md).
        parameters = {
            "onnx_file": ONNX_MODEL_FILE,
            "intra_op_threads": str(chosen.intra_op_threads),
            "max_rows_per_call": str(chosen.max_rows_per_call),
        }
        return ModelSpec(backend="python", parameters=parameters, **common)
    if target == PYTHON_TORCH:
        if not component.torch_runner:
            raise ValueError(f"`{component.model_name}` names no `torch_runner`; it cannot be served on {target!r}.")
        parameters = {
            names.TORCH_RUNNER_PARAMETER: component.torch_runner,
            names.TORCH_CHECKPOINT_PARAMETER: TORCH_CHECKPOINT_DIR,
            **TORCH_OPTION_DEFAULTS,
        }
        return ModelSpec(backend="python", parameters=parameters, **common)
    if target in (ONNXRUNTIME, ONNXRUNTIME_GPU):
        return ModelSpec(backend="", platform="onnxruntime_onnx", default_model_filename=ONNX_MODEL_FILE, **common)
    return ModelSpec(backend="", platform="tensorrt_plan", default_model_filename=ENGINE_FILE, **common)


def python_model_source(name: str) -> str:
    """Source of ``model_repository/python_models/<name>.py``."""
    return importlib.resources.files("s2i.model_repository.python_models").joinpath(f"{name}.py").read_text()


def _link_or_copy(source: Path, destination: Path) -> None:
    destination.unlink(missing_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


@dataclasses.dataclass(frozen=True)
class RepositoryModel:
    """A model to write: its description, its ``model.py`` (Python backend) and its files.

    Attributes:
        spec: The model description; renders ``config.pbtxt``.
        python_model: Name of the ``python_models`` source copied to ``1/model.py``, or the path of a
            source file (a stage defined outside this package brings its own).
        files: Destination (relative to the version folder) -> source file.
    """

    spec: ModelSpec
    python_model: str | Path | None = None
    files: Mapping[str, Path] = dataclasses.field(default_factory=dict)


def write_model(repository: Path, model: RepositoryModel) -> Path:
    """Write one model into ``repository``; returns its folder."""
    model_dir = Path(repository) / model.spec.name
    version_dir = model_dir / "1"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(render_config(model.spec))
    if isinstance(model.python_model, Path):
        (version_dir / "model.py").write_text(model.python_model.read_text())
    elif model.python_model:
        (version_dir / "model.py").write_text(python_model_source(model.python_model))
    for relative, source in model.files.items():
        destination = version_dir / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(Path(source), destination)
    LOGGER.info("Wrote model `%s` to %s", model.spec.name, model_dir)
    return model_dir


def external_data_files(onnx_path: Path) -> list[Path]:
    """Files holding the graph's external weights (``model.onnx_data`` for graphs over 2 GB)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    model = onnx.load(str(onnx_path), load_external_data=False)
    locations = {
        entry.value
        for tensor in _get_all_tensors(model)
        if uses_external_data(tensor)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return [Path(onnx_path).parent / location for location in sorted(locations)]


def stage_repository_model(component: OnnxComponent, onnx_dir: Path, target: str) -> RepositoryModel:
    """The repository entry of an exported graph for ``target`` (builds its engine for ``tensorrt``)."""
    spec = stage_model_spec(component, target)
    onnx_path = Path(onnx_dir) / component.onnx_file
    if target != TENSORRT:
        python_model = "onnx_stage" if target == PYTHON_ONNXRUNTIME else None
        files = {ONNX_MODEL_FILE: onnx_path}
        # Graphs over 2 GB keep their weights in a file the graph names; it keeps that name.
        files.update({path.name: path for path in external_data_files(onnx_path)})
        return RepositoryModel(spec, python_model, files)
    chosen = component_policy(component, target)
    engine_dir = Path(onnx_dir) / "tensorrt" / component.model_name
    build_engine(
        component,
        onnx_path,
        engine_dir,
        max_batch_size=chosen.max_batch_size,
        opt_batch_size=max(chosen.preferred_batch_sizes or (1,)),
        timing_cache=Path(onnx_dir) / "tensorrt" / "timing.cache",
    )
    return RepositoryModel(
        spec, None, {ENGINE_FILE: engine_dir / ENGINE_FILE, MANIFEST_FILE: engine_dir / MANIFEST_FILE}
    )


def torch_checkpoint_files(folder: Path) -> dict[str, Path]:
    """A checkpoint folder's configs and default weight files, relative path -> file.

    Safetensors win over ``.bin`` when both are present, as transformers and diffusers
    load them; variant files (``model.fp16.safetensors``) are left out.
    """
    folder = Path(folder)
    files = [path for path in sorted(folder.rglob("*")) if path.is_file() and not path.name.startswith(".")]
    weights = [path for path in files if path.suffix in TORCH_WEIGHT_SUFFIXES and "." not in path.stem]
    if any(path.suffix == ".safetensors" for path in weights):
        weights = [path for path in weights if path.suffix == ".safetensors"]
    if not weights:
        raise FileNotFoundError(f"`{folder}` holds no weights (*.safetensors or *.bin) to serve on python-torch.")
    chosen = [path for path in files if path.suffix in (".json", ".txt")] + weights
    return {str(path.relative_to(folder)): path for path in chosen}


def torch_repository_model(
    component: OnnxComponent, checkpoint_dir: Path, target: str = PYTHON_TORCH
) -> RepositoryModel:
    """The ``python-torch`` entry of a stage graph: ``torch_stage`` with the checkpoint part its module loads."""
    files = {
        f"{TORCH_CHECKPOINT_DIR}/{relative}": path for relative, path in torch_checkpoint_files(checkpoint_dir).items()
    }
    return RepositoryModel(stage_model_spec(component, target), "torch_stage", files)
