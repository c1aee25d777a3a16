"""The embedded default: tiny, deterministic, randomly initialised checkpoints, built locally.

Each model is written in its standard Hugging Face / diffusers layout, so the
conversion path is the one a real checkpoint takes. A ``.complete`` marker is
written last; a folder without it (an interrupted build) is rebuilt.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path

from s2i.stages.registry import STAGES

LOGGER = logging.getLogger(__name__)
# The tiny Whisper is random and rarely emits <|endoftext|>; a short token budget keeps each request quick.
TINY_MAX_NEW_TOKENS = 16


def build_tiny_checkpoints(
    output: Path, size: str = "tiny", force: bool = False, sizes: Mapping[str, str] | None = None
) -> dict[str, Path]:
    """Build every stage's checkpoint under ``output/<size>/<stage>``; reuse complete ones.

    Args:
        output: Root folder.
        size: Size preset of every stage.
        force: Rebuild complete checkpoints too.
        sizes: Stage -> size; when given, only these stages are built, each at its size.

    Returns:
        Stage name -> checkpoint folder.
    """
    chosen = dict(sizes) if sizes is not None else dict.fromkeys(STAGES, size)
    unknown = sorted(set(chosen) - set(STAGES))
    if unknown:
        raise ValueError(f"`sizes` names unknown stages {unknown}; stages are {sorted(STAGES)}.")
    paths = {}
    for name, size in chosen.items():
        stage = STAGES[name]
        path = Path(output) / size / name
        marker = path / ".complete"
        if force or not marker.is_file():
            shutil.rmtree(path, ignore_errors=True)
            LOGGER.info("Building the %s %s checkpoint in %s", size, name, path)
            stage.build_tiny(path, size)
            marker.write_text("ok\n")
        paths[name] = path
    return paths
