"""TensorRT engines from the validated ONNX graphs, with a manifest that says where they may run.

An engine is only valid for the TensorRT version and GPU architecture that built
it; Triton's error for a mismatched plan is cryptic, so every engine gets an
``engine_manifest.json`` beside it, and :func:`check_engine_compatible` refuses
a mismatch with a message that says what to rebuild.

The ``tensorrt`` package (and a GPU) is needed to build; everything else here
(profiles, manifests, checks) is plain Python and tested without one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from s2i.model_repository.components import OnnxComponent

LOGGER = logging.getLogger(__name__)

MANIFEST_FILE = "engine_manifest.json"
ENGINE_FILE = "model.plan"
PRECISIONS = ("fp16", "fp32")
# Enough for the SD UNet at 512x512, batch 16, on an 80 GB card; TensorRT uses less when it can.
DEFAULT_WORKSPACE_BYTES = 8 << 30


class EngineError(RuntimeError):
    """An engine cannot be built here, or does not match the GPU / TensorRT it would run on."""


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    """What an engine is tied to."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


@dataclasses.dataclass(frozen=True)
class EngineManifest:
    """How and where an engine was built; written next to it as JSON."""

    model_name: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profiles: Mapping[str, tuple[tuple[int, ...], ...]]
    build_flags: tuple[str, ...]
    workspace_bytes: int
    onnx_sha256: str
    engine_sha256: str

    def write(self, path: Path) -> None:
        """Write the manifest as JSON."""
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True))

    @classmethod
    def read(cls, path: Path) -> EngineManifest:
        """Read a manifest written by :meth:`write`."""
        data = json.loads(Path(path).read_text())
        data["profiles"] = {name: tuple(tuple(shape) for shape in shapes) for name, shapes in data["profiles"].items()}
        data["build_flags"] = tuple(data["build_flags"])
        return cls(**data)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_engine_compatible(manifest: EngineManifest, runtime: GpuInfo) -> None:
    """Raise :class:`EngineError` unless ``manifest`` was built for ``runtime``'s TensorRT and GPU."""
    problems = []
    if manifest.tensorrt_version != runtime.tensorrt_version:
        problems.append(f"TensorRT {manifest.tensorrt_version} built it, this runtime has {runtime.tensorrt_version}")
    if manifest.compute_capability != runtime.compute_capability:
        problems.append(
            f"it was built for compute capability {manifest.compute_capability} ({manifest.gpu_name}), "
            f"this GPU is {runtime.compute_capability} ({runtime.gpu_name})"
        )
    if problems:
        raise EngineError(
            f"Engine for `{manifest.model_name}` cannot run here: {'; '.join(problems)}. "
            "Rebuild it on this machine with `s2i convert --target tensorrt`."
        )


def check_repository_engines(repository: Path, runtime: GpuInfo) -> list[str]:
    """Check every engine manifest in a repository; return the checked model names."""
    checked = []
    for manifest_path in sorted(Path(repository).glob(f"*/*/{MANIFEST_FILE}")):
        manifest = EngineManifest.read(manifest_path)
        check_engine_compatible(manifest, runtime)
        engine = manifest_path.parent / ENGINE_FILE
        if engine.is_file() and sha256_file(engine) != manifest.engine_sha256:
            raise EngineError(f"{engine} does not match its manifest's hash; rebuild or restore it.")
        checked.append(manifest.model_name)
    return checked


def local_gpu_info() -> GpuInfo:
    """TensorRT version and GPU 0's name and compute capability, or :class:`EngineError`."""
    try:
        import tensorrt
        import torch
    except ImportError as e:
        raise EngineError("Building TensorRT engines needs the `tensorrt` package and an NVIDIA GPU.") from e
    if not torch.cuda.is_available():
        raise EngineError("Building TensorRT engines needs an NVIDIA GPU; none is visible (CUDA unavailable).")
    major, minor = torch.cuda.get_device_capability(0)
    return GpuInfo(tensorrt.__version__, torch.cuda.get_device_name(0), f"{major}.{minor}")


def build_engine(
    component: OnnxComponent,
    onnx_path: Path,
    output_dir: Path,
    *,
    max_batch_size: int,
    opt_batch_size: int,
    precision: str = "fp16",
    timing_cache: Path | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> EngineManifest:
    """Build ``output_dir/model.plan`` (and its manifest) from a validated ONNX graph.

    An engine already there whose manifest matches the graph hash, precision,
    profiles and this GPU is reused.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {list(PRECISIONS)}, got {precision!r}.")
    gpu = local_gpu_info()
    import tensorrt as trt

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    engine_path, manifest_path = output_dir / ENGINE_FILE, output_dir / MANIFEST_FILE
    profiles = component.profile(max_batch_size, opt_batch_size)
    onnx_hash = sha256_file(onnx_path)
    flags = ("FP16",) if precision == "fp16" else ()
    if engine_path.is_file() and manifest_path.is_file():
        cached = EngineManifest.read(manifest_path)
        if (cached.onnx_sha256, cached.precision, dict(cached.profiles)) == (onnx_hash, precision, profiles):
            check_engine_compatible(cached, gpu)
            LOGGER.info("Reusing TensorRT engine %s", engine_path)
            return cached

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    # Parse from the file so external weights (graphs over 2 GB) are found.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (low, mid, high) in profiles.items():
        profile.set_shape(name, low, mid, high)
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    LOGGER.info("Building TensorRT engine for %s (%s, profiles %s)", component.model_name, precision, profiles)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build `{component.model_name}`; see the log above.")
    engine_path.write_bytes(bytes(serialized))
    if timing_cache is not None and cache is not None:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    manifest = EngineManifest(
        model_name=component.model_name,
        tensorrt_version=gpu.tensorrt_version,
        gpu_name=gpu.gpu_name,
        compute_capability=gpu.compute_capability,
        precision=precision,
        profiles=profiles,
        build_flags=flags,
        workspace_bytes=workspace_bytes,
        onnx_sha256=onnx_hash,
        engine_sha256=sha256_file(engine_path),
    )
    manifest.write(manifest_path)
    return manifest
