"""``s2i convert``: trained checkpoints in, a validated Triton model repository out."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from s2i.conversion.repository import PYTHON_ONNXRUNTIME, TARGETS, device_of, write_model
from s2i.pipeline.models import has_pipeline_models, pipeline_repository_models
from s2i.stages.registry import STAGES

LOGGER = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint cannot be found or is not of the expected kind."""


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
    """What :func:`convert` did: the repository, its models and each graph's max abs diff to PyTorch."""

    repository: Path
    models: list[str]
    max_abs_diff: dict[str, float]


def convert(
    checkpoints: Mapping[str, str | Path],
    output: Path,
    *,
    target: str = PYTHON_ONNXRUNTIME,
    work_dir: Path | None = None,
) -> ConversionReport:
    """Export, validate and write every given stage into the model repository ``output``.

    Args:
        checkpoints: Stage name (``whisper``, …) -> checkpoint folder or hub id.
        output: Repository folder (models already there are replaced, others kept).
        target: How stage graphs are served; one of :data:`~s2i.conversion.repository.TARGETS`.
        work_dir: Where ONNX exports are cached (``<output>/../onnx`` by default).
    """
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {list(TARGETS)}, got {target!r}.")
    unknown = sorted(set(checkpoints) - set(STAGES))
    if unknown or not checkpoints:
        raise ValueError(f"`checkpoints` must name stages among {sorted(STAGES)}, got {sorted(checkpoints)}.")
    output = Path(output)
    work_dir = Path(work_dir) if work_dir else output.parent / "onnx"
    report = ConversionReport(output, [], {})
    for name, stage in STAGES.items():
        if name not in checkpoints:
            continue
        checkpoint = resolve_checkpoint(checkpoints[name], stage.checkpoint_marker)
        exported = stage.export(checkpoint, work_dir / f"{name}-{_cache_key(checkpoint)}")
        output.mkdir(parents=True, exist_ok=True)
        for model in stage.repository_models(checkpoint, exported, target):
            write_model(output, model)
            report.models.append(model.spec.name)
        report.max_abs_diff.update(exported.max_abs_diff)
    if has_pipeline_models(output):
        for model in pipeline_repository_models(output, device_of(target)):
            write_model(output, model)
            report.models.append(model.spec.name)
    return report
