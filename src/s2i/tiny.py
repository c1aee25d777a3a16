"""The embedded default: tiny, deterministic, randomly initialised checkpoints, built locally.

Each model is written in its standard Hugging Face / diffusers layout, so the
conversion path is the one a real checkpoint takes. A ``.complete`` marker is
written last; a folder without it (an interrupted build) is rebuilt.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

LOGGER = logging.getLogger(__name__)

# A larger init spread than transformers' 0.02 makes a random decoder's argmax
# vary from step to step, so parity tests compare varied token sequences
# instead of one repeated token.
WHISPER_INIT_STD = 0.3


def _build_whisper(output: Path, size: str) -> Path:
    from s2i.stages.whisper.checkpoint import build_tiny_whisper

    return build_tiny_whisper(output, size=size, seed=0, init_std=WHISPER_INIT_STD)


BUILDERS: dict[str, Callable[[Path, str], Path]] = {"whisper": _build_whisper}


def build_tiny_checkpoints(output: Path, size: str = "tiny", force: bool = False) -> dict[str, Path]:
    """Build every tiny checkpoint under ``output/<size>/<model>``; reuse complete ones.

    Returns:
        Model name -> checkpoint folder.
    """
    paths = {}
    for name, build in BUILDERS.items():
        path = Path(output) / size / name
        marker = path / ".complete"
        if force or not marker.is_file():
            shutil.rmtree(path, ignore_errors=True)
            LOGGER.info("Building the %s %s checkpoint in %s", size, name, path)
            build(path, size)
            marker.write_text("ok\n")
        paths[name] = path
    return paths
