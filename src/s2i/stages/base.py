"""What every pipeline stage provides, so conversion and the tiny builder compose stages without reaching into them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from s2i.conversion.components import OnnxComponent
    from s2i.conversion.repository import RepositoryModel


@dataclasses.dataclass
class StageExport:
    """Exported, validated graphs of one stage.

    Attributes:
        onnx_dir: Folder holding the graphs.
        components: One description per graph.
        max_abs_diff: Graph (stage model) name -> max abs difference to PyTorch.
    """

    onnx_dir: Path
    components: list[OnnxComponent]
    max_abs_diff: dict[str, float]


class Stage(Protocol):
    """A model family of the pipeline (``whisper``, ``emotion``, ``diffusion``)."""

    name: str
    # A file every checkpoint of this stage has at its root (`model_index.json` for diffusers).
    checkpoint_marker: str = "config.json"

    def build_tiny(self, output_dir: Path, size: str) -> Path:
        """Write a deterministic random checkpoint of preset ``size`` into ``output_dir``."""

    def export(self, checkpoint: Path, onnx_dir: Path) -> StageExport:
        """Export the checkpoint's graphs into ``onnx_dir`` and validate them against PyTorch."""

    def repository_models(self, checkpoint: Path, exported: StageExport, target: str) -> list[RepositoryModel]:
        """The models this stage adds to a repository for ``target``."""
