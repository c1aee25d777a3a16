"""The stage plugin: what a model family provides so conversion and the tiny builder compose it.

A stage (``whisper``, ``emotion``, ``diffusion``) is a package under
:mod:`s2i.stages` whose ``stage.py`` defines one :class:`Stage` subclass. The
registry (:mod:`s2i.stages.registry`) discovers it; conversion, the tiny
builder and the CLI iterate over the registry and never name a stage.

A stage exports its graphs and describes its BLS model; the rest is shared:
every graph becomes a stage model for the chosen target, and the BLS model gets
the checkpoint files it reads at ``initialize`` (``assets/``). A stage that joins
the pipeline DAG brings its in-process reference (:meth:`Stage.reference`), whose
``step`` is its step of the reference pipeline.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

from s2i.conversion.repository import (
    ONNX_TARGETS,
    PYTHON_TORCH,
    RepositoryModel,
    device_of,
    stage_repository_model,
    torch_repository_model,
)
from s2i.model_repository.components import OnnxComponent
from s2i.model_repository.config import ModelSpec


class UnsupportedCheckpointError(ValueError):
    """A checkpoint outside what its stage supports, refused before anything is exported."""


@dataclasses.dataclass
class StageExport:
    """Exported, validated graphs of one stage.

    Attributes:
        onnx_dir: Folder holding the graphs.
        components: One description per graph.
        max_abs_diff: Graph (stage model) name -> max abs difference to PyTorch.
        normalised_error: Graph name -> max abs difference / max abs PyTorch value.
    """

    onnx_dir: Path
    components: list[OnnxComponent]
    max_abs_diff: dict[str, float]
    normalised_error: dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def validated(cls, onnx_dir: Path, components: list[OnnxComponent], errors: Mapping) -> StageExport:
        """The export with each graph's errors (``GraphError``s from the stage's validation; none when skipped)."""
        return cls(
            onnx_dir=onnx_dir,
            components=components,
            max_abs_diff={name: error.max_abs_diff for name, error in errors.items()},
            normalised_error={name: error.normalised for name, error in errors.items()},
        )


class Reference(Protocol):
    """A stage's in-process reference (transformers, diffusers or PyTorch; no Triton, no ONNX)."""

    def step(self, inputs: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
        """The stage's step of the reference pipeline, for one request.

        Args:
            inputs: The step's inputs as the pipeline DAG wires them, by its model's input
                names: the request's value (``None`` when it has none) or an earlier step's
                reference output.
            request: Every pipeline input of the request by name; ``audio_samples`` is the
                clip decoded and resampled to 16 kHz (what speech references start from).

        Returns:
            The step's outputs by its served model's output names (those later steps and
            the client read).
        """


class Stage(abc.ABC):
    """A model family of the pipeline.

    Attributes:
        name: Key of the stage (``s2i convert --<name>``, checkpoint folders).
        order: Position in conversion order (lower first).
        checkpoint_marker: A file every checkpoint of this stage has at its root.
        bls_model: The ``python_models`` source of the stage's BLS model (a name, or a file path).
        required_assets: Checkpoint files (relative paths) the BLS model cannot work without.
        optional_assets: Checkpoint files it reads when present (tokenizer variants, …).
        targets: Serving targets the stage supports. ``python-torch`` needs :meth:`describe`
            and a ``torch_runner`` on every component; the ONNX targets only the export.
    """

    name: ClassVar[str]
    order: ClassVar[int] = 100
    checkpoint_marker: ClassVar[str] = "config.json"
    bls_model: ClassVar[str | Path]
    required_assets: ClassVar[tuple[str, ...]] = ()
    optional_assets: ClassVar[tuple[str, ...]] = ()
    targets: ClassVar[tuple[str, ...]] = ONNX_TARGETS

    def check_checkpoint(self, checkpoint: Path) -> None:
        """Refuse, before any export, a checkpoint this stage cannot serve.

        Conversion calls it for every stage before exporting any, so a refused
        checkpoint costs no export and leaves the output untouched. The default
        checks the assets the BLS model reads; stages add their family checks.

        Raises:
            UnsupportedCheckpointError: Naming the family or feature that is not
                supported and what is.
        """
        try:
            self.assets(checkpoint)
        except FileNotFoundError as error:
            raise UnsupportedCheckpointError(str(error)) from error

    @property
    def pipeline_model(self) -> str:
        """The model the stage's step of the pipeline DAG calls: its BLS model (named after the stage by default)."""
        return self.bls_model if isinstance(self.bls_model, str) else self.name

    def reference(self, checkpoint: Path) -> Reference:
        """The stage's in-process reference on ``checkpoint``: the parity tests' oracle and its reference step.

        Only a stage in the pipeline DAG needs one; the default refuses, naming the stage.
        """
        raise NotImplementedError(
            f"The {self.name} stage has no in-process reference (`Stage.reference`), so the reference "
            f"pipeline cannot run its step `{self.pipeline_model}`."
        )

    def dropped_parts(self, checkpoint: Path) -> list[str]:
        """Parts of the checkpoint its reference library runs by default but the served model would not.

        Conversion refuses a checkpoint with such parts unless told to drop them
        (``s2i convert --no-safety-checker``), so nothing is left out silently.
        """
        return []

    @abc.abstractmethod
    def build_tiny(self, output_dir: Path, size: str) -> Path:
        """Write a deterministic random checkpoint of preset ``size`` into ``output_dir``."""

    @abc.abstractmethod
    def export(self, checkpoint: Path, onnx_dir: Path) -> StageExport:
        """Export the checkpoint's graphs into ``onnx_dir`` and validate them against PyTorch."""

    def describe(self, checkpoint: Path) -> list[OnnxComponent]:
        """The stage's graph descriptions for ``checkpoint``, without exporting (what ``python-torch`` serves)."""
        raise NotImplementedError(f"The {self.name} stage does not describe its graphs without exporting them.")

    def torch_checkpoint(self, checkpoint: Path, component: OnnxComponent) -> Path:
        """The checkpoint folder ``component``'s PyTorch module loads (``python-torch``); the root by default."""
        return Path(checkpoint)

    def skip_export(self, checkpoint: Path, onnx_dir: Path) -> StageExport:
        """What :meth:`export` would describe, with no graphs written (the ``python-torch`` target)."""
        return StageExport(Path(onnx_dir), self.describe(checkpoint), max_abs_diff={})

    @abc.abstractmethod
    def bls_spec(self, checkpoint: Path, exported: StageExport, device: str) -> ModelSpec:
        """The description of the stage's BLS model on ``device``."""

    def assets(self, checkpoint: Path) -> dict[str, Path]:
        """``assets/<file>`` -> checkpoint file, for every asset the checkpoint has."""
        checkpoint = Path(checkpoint)
        missing = [name for name in self.required_assets if not (checkpoint / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"The {self.name} checkpoint `{checkpoint}` lacks {missing}, which the `{self.bls_model}` model reads."
            )
        present = [name for name in self.optional_assets if (checkpoint / name).is_file()]
        return {f"assets/{name}": checkpoint / name for name in (*self.required_assets, *present)}

    def repository_models(self, checkpoint: Path, exported: StageExport, target: str) -> list[RepositoryModel]:
        """The stage models of every exported graph for ``target``, then the BLS model."""
        if target not in self.targets:
            raise ValueError(f"The {self.name} stage supports targets {list(self.targets)}, not {target!r}.")
        assets = self.assets(checkpoint)
        if target == PYTHON_TORCH:
            stage_models = [
                torch_repository_model(component, self.torch_checkpoint(checkpoint, component), target)
                for component in exported.components
            ]
        else:
            stage_models = [stage_repository_model(c, exported.onnx_dir, target) for c in exported.components]
        return [
            *stage_models,
            RepositoryModel(self.bls_spec(checkpoint, exported, device_of(target)), self.bls_model, assets),
        ]
