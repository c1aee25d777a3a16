"""``s2i convert``: trained checkpoints in, a validated Triton model repository out."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from s2i.conversion.quantize import QUANTIZATIONS, quantized_export
from s2i.conversion.repository import (
    ONNXRUNTIME,
    PYTHON_ONNXRUNTIME,
    PYTHON_TORCH,
    TARGETS,
    device_of,
    write_model,
)
from s2i.model_repository.deployment import CPU
from s2i.pipeline.dag import PIPELINE, Pipeline
from s2i.pipeline.specs import has_pipeline_models, pipeline_repository_models
from s2i.stages.base import Stage, UnsupportedCheckpointError
from s2i.stages.registry import STAGES

LOGGER = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint cannot be found or is not of the expected kind."""


class RepositoryError(RuntimeError):
    """A written model repository is incomplete; it is not put in place."""


def resolve_checkpoint(reference: str | Path, required_file: str = "config.json") -> Path:
    """A local checkpoint folder for ``reference``: a folder, or a hub id downloaded once.

    Hub ids only work where the hub is reachable and ``HF_HUB_OFFLINE`` is not set.
    """
    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / required_file).is_file():
            raise CheckpointError(f"`{reference}` has no {required_file}; is it a Hugging Face checkpoint folder?")
        return path
    if path.exists() or str(reference).startswith((".", "/")) or str(reference).count("/") != 1:
        raise CheckpointError(f"Checkpoint `{reference}` is not a folder (nor a hub id like `openai/whisper-base`).")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise CheckpointError(f"`{reference}` looks like a hub id, but HF_HUB_OFFLINE is set; download it first.")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(reference)))


def _cache_key(checkpoint: Path) -> str:
    """A key that changes when any of the checkpoint's files change (path, sizes, mtimes)."""
    digest = hashlib.sha256(str(checkpoint.resolve()).encode())
    # Whole tree: a diffusers checkpoint keeps its weights in sub-folders (unet/, vae/, …).
    for file in sorted(checkpoint.rglob("*")):
        if file.is_file() and not file.name.startswith("."):
            stat = file.stat()
            digest.update(f"{file.relative_to(checkpoint)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert` did: the repository, its models and each graph's errors against PyTorch."""

    repository: Path
    models: list[str]
    max_abs_diff: dict[str, float]
    normalised_error: dict[str, float] = dataclasses.field(default_factory=dict)


def convert(
    checkpoints: Mapping[str, str | Path],
    output: Path,
    *,
    target: str = PYTHON_ONNXRUNTIME,
    work_dir: Path | None = None,
    quantize: str | None = None,
    drop_safety_checker: bool = False,
    pipeline: Pipeline = PIPELINE,
) -> ConversionReport:
    """Export, validate and write every given stage into the model repository ``output``, atomically.

    Every checkpoint is checked first (:meth:`~s2i.stages.base.Stage.check_checkpoint`), so
    an unsupported one is refused before anything is exported. The repository is then
    written into a staging folder beside ``output``, checked, and renamed into place:
    ``output`` holds the previous repository or the complete new one, never a mix, and
    a conversion that fails leaves it untouched.

    Args:
        checkpoints: Stage name (``whisper``, …) -> checkpoint folder or hub id.
        output: Repository folder; a previous repository there is replaced as a whole.
        target: How stage graphs are served; one of :data:`~s2i.conversion.repository.TARGETS`.
        work_dir: Where ONNX exports are cached (``<output>/../onnx`` by default).
        quantize: ``int8`` serves dynamically quantised graphs (CPU targets only; lossy, see
            :mod:`s2i.conversion.quantize`); ``None`` serves the validated float graphs.
        drop_safety_checker: Convert a checkpoint whose pipeline runs a safety checker
            (Stable Diffusion 1.5) without it; refused otherwise (the served model has no checker).
        pipeline: The DAG the ensemble and the stream follow, written when the repository holds
            every stage it composes (:data:`~s2i.pipeline.dag.PIPELINE` by default).
    """
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {list(TARGETS)}, got {target!r}.")
    check_quantization(quantize, target)
    unknown = sorted(set(checkpoints) - set(STAGES))
    if unknown or not checkpoints:
        raise ValueError(f"`checkpoints` must name stages among {sorted(STAGES)}, got {sorted(checkpoints)}.")
    output = Path(output)
    work_dir = Path(work_dir) if work_dir else output.parent / "onnx"
    chosen = [
        (name, stage, resolve_checkpoint(checkpoints[name], stage.checkpoint_marker))
        for name, stage in STAGES.items()
        if name in checkpoints
    ]
    for _, stage, checkpoint in chosen:
        if target not in stage.targets:
            raise ValueError(f"The {stage.name} stage supports targets {list(stage.targets)}, not {target!r}.")
        stage.check_checkpoint(checkpoint)
        check_dropped_parts(stage, checkpoint, drop_safety_checker)
    with staged_repository(output) as staging:
        report = ConversionReport(output, [], {})
        for name, stage, checkpoint in chosen:
            onnx_dir = work_dir / f"{name}-{_cache_key(checkpoint)}"
            # python-torch serves the checkpoint's own modules: nothing to export or validate.
            exported = (
                stage.skip_export(checkpoint, onnx_dir)
                if target == PYTHON_TORCH
                else stage.export(checkpoint, onnx_dir)
            )
            if quantize:
                # The float graphs were validated against PyTorch; these are what is served.
                exported = quantized_export(exported, Path(f"{exported.onnx_dir}-{quantize}"), quantize)
            for model in stage.repository_models(checkpoint, exported, target):
                write_model(staging, model)
                report.models.append(model.spec.name)
            report.max_abs_diff.update(exported.max_abs_diff)
            report.normalised_error.update(exported.normalised_error)
        if has_pipeline_models(staging, pipeline):
            for model in pipeline_repository_models(staging, device_of(target), pipeline=pipeline):
                write_model(staging, model)
                report.models.append(model.spec.name)
        check_repository(staging, report.models)
    return report


def check_quantization(quantize: str | None, target: str) -> None:
    """Refuse a quantisation the target cannot serve, before any export."""
    if quantize is None:
        return
    if target == PYTHON_TORCH:
        raise ValueError(
            f"`quantize` {quantize!r} quantises ONNX graphs; `target` {target!r} serves PyTorch modules. "
            f"Use {PYTHON_ONNXRUNTIME} or {ONNXRUNTIME} to serve int8 graphs."
        )
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"`quantize` must be one of {list(QUANTIZATIONS)}, got {quantize!r}.")
    if device_of(target) != CPU:
        # Dynamic quantisation's integer kernels are ONNX Runtime's CPU ones; TensorRT wants QDQ graphs.
        raise ValueError(
            f"`quantize` {quantize!r} is for the CPU targets ({PYTHON_ONNXRUNTIME}, {ONNXRUNTIME}), "
            f"not `target` {target!r}."
        )


def check_dropped_parts(stage: Stage, checkpoint: Path, drop_safety_checker: bool) -> None:
    """Refuse a checkpoint with parts the served model would leave out, unless told to drop them.

    The served pipeline has no safety checker stage; ``StableDiffusionPipeline`` runs
    the checkpoint's by default, so dropping it silently would serve images it would black out.
    """
    dropped = stage.dropped_parts(checkpoint)
    if dropped and not drop_safety_checker:
        raise UnsupportedCheckpointError(
            f"`{checkpoint}` has a {', '.join(dropped)}, which diffusers runs by default and the served "
            "pipeline does not (it has no safety-checker stage). Convert with `--no-safety-checker` "
            "(`drop_safety_checker=True`) to serve it without one, and filter images elsewhere if you need to."
        )
    for part in dropped:
        LOGGER.warning("%s: dropping its %s (--no-safety-checker)", checkpoint, part)


def check_repository(repository: Path, models: Sequence[str]) -> None:
    """Check a written repository before it goes live: every model has a parsable config and a version.

    Raises:
        RepositoryError: Naming the model that is incomplete.
    """
    from s2i.model_repository.config import parse_config

    present = sorted(path.name for path in Path(repository).iterdir() if path.is_dir())
    if sorted(set(models)) != present:
        raise RepositoryError(f"The repository holds models {present}, expected {sorted(set(models))}.")
    for name in present:
        model_dir = Path(repository) / name
        config_file = model_dir / "config.pbtxt"
        if not config_file.is_file():
            raise RepositoryError(f"Model `{name}` has no config.pbtxt.")
        config = parse_config(config_file.read_text())
        if config.name != name:
            raise RepositoryError(f"Model `{name}`'s config.pbtxt names it `{config.name}`.")
        version = model_dir / "1"
        if config.platform != "ensemble" and not (version.is_dir() and any(version.iterdir())):
            raise RepositoryError(f"Model `{name}` has no files in its version folder `1/`.")


@contextlib.contextmanager
def staged_repository(output: Path) -> Iterator[Path]:
    """A fresh staging folder, renamed into ``output`` when the block succeeds and removed when it fails.

    The staging folder sits beside ``output`` (same file system, so the rename is
    atomic). When ``output`` is a mount point (a Kubernetes volume), it cannot be
    renamed: the staging folder then sits inside it and the models are swapped in
    one by one after the whole repository was written and checked.
    """
    output = Path(output)
    inside = os.path.ismount(output)
    parent = output if inside else output.parent
    parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = parent / f".{output.name}.staging-{tag}"
    staging.mkdir()
    try:
        yield staging
        if inside:
            _swap_entries(staging, output, parent / f".{output.name}.previous-{tag}")
        else:
            _swap_folder(staging, output, parent / f".{output.name}.previous-{tag}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    LOGGER.info("Model repository written to %s", output)


def _swap_folder(staging: Path, output: Path, previous: Path) -> None:
    """Rename ``staging`` to ``output``; the previous ``output`` is removed once the new one is in place."""
    if output.exists():
        output.rename(previous)
    try:
        staging.rename(output)
    except OSError:
        if previous.exists():
            previous.rename(output)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def _swap_entries(staging: Path, output: Path, previous: Path) -> None:
    """Move ``output``'s entries aside, then ``staging``'s in; the old ones are removed at the end."""
    previous.mkdir()
    keep = {staging.name, previous.name}

    def move_all(source: Path, destination: Path) -> None:
        for entry in [entry for entry in source.iterdir() if entry.name not in keep]:
            entry.rename(destination / entry.name)

    try:
        move_all(output, previous)
        move_all(staging, output)
    except OSError:
        # Put the previous repository back: a failed swap must not leave a mix.
        move_all(output, staging)
        move_all(previous, output)
        previous.rmdir()
        raise
    shutil.rmtree(previous, ignore_errors=True)
