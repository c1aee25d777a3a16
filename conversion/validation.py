"""What every stage's export shares: the tolerance check against PyTorch and the export cache stamp."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from s2i.model_repository.components import GraphMismatchError, OnnxComponent

LOGGER = logging.getLogger(__name__)


class ValidationError(RuntimeError):
    """An exported graph differs from PyTorch by more than its tolerance."""


def max_abs_diff(reference, actual: np.ndarray) -> float:
    """Largest absolute difference between a PyTorch tensor (or array) and an ONNX Runtime output."""
    return graph_error(reference, actual).max_abs_diff


@dataclasses.dataclass(frozen=True)
class GraphError:
    """How far a graph's outputs are from PyTorch's.

    Attributes:
        max_abs_diff: Largest absolute difference over the compared tensors.
        normalised: Largest ``max abs difference / max abs reference value`` over the compared
            tensors: the error relative to the tensor's range, comparable across model sizes.
    """

    max_abs_diff: float
    normalised: float

    def worst(self, other: GraphError) -> GraphError:
        """The larger of each measure (a graph with several outputs is as good as its worst)."""
        return GraphError(max(self.max_abs_diff, other.max_abs_diff), max(self.normalised, other.normalised))


def graph_error(reference, actual: np.ndarray) -> GraphError:
    """:class:`GraphError` of one ONNX Runtime output against a PyTorch tensor (or array)."""
    expected = reference.detach().numpy() if hasattr(reference, "detach") else np.asarray(reference)
    diff = float(np.max(np.abs(expected - actual)))
    scale = float(np.max(np.abs(expected)))
    # An all-zero reference has no range: any difference is a full-range error.
    normalised = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return GraphError(diff, normalised)


def worst_error(errors: Iterable[GraphError]) -> GraphError:
    """The worst of several tensors' errors."""
    return functools.reduce(GraphError.worst, errors)


def check_errors(
    errors: Mapping[str, GraphError | float], components: Sequence[OnnxComponent]
) -> dict[str, GraphError]:
    """Log each graph's errors; raise :class:`ValidationError` for one past its component's tolerances.

    A graph passes when its max abs difference is within ``atol`` or, for
    components with an ``rtol``, its normalised difference is within ``rtol``:
    the absolute bound suits small-valued tiny models, the normalised one deep
    real models whose activations (and float32 rounding) are larger.

    Returns:
        Graph name -> its errors (a bare float is a max abs difference with no normalised measure).
    """
    by_name = {component.model_name: component for component in components}
    checked = {}
    for name, error in errors.items():
        if not isinstance(error, GraphError):
            error = GraphError(float(error), float("inf"))
        checked[name] = error
        atol, rtol = by_name[name].atol, by_name[name].rtol
        LOGGER.info(
            "%s: max abs diff to PyTorch %.2e (tolerance %.0e), normalised %.2e (tolerance %.0e)",
            name,
            error.max_abs_diff,
            atol,
            error.normalised,
            rtol,
        )
        if not (error.max_abs_diff <= atol or error.normalised <= rtol):
            raise ValidationError(
                f"`{name}` differs from PyTorch by {error.max_abs_diff:.3e}, more than the tolerance {atol:.0e}, "
                f"and by {error.normalised:.3e} of its output range, more than the normalised tolerance {rtol:.0e}; "
                "the export is not trustworthy (try another opset or exporter version)."
            )
    return checked


def check_tolerances(diffs: Mapping[str, GraphError | float], components: Sequence[OnnxComponent]) -> dict[str, float]:
    """:func:`check_errors`, returning max abs differences only (what ``StageExport.max_abs_diff`` holds)."""
    return {name: error.max_abs_diff for name, error in check_errors(diffs, components).items()}


def optimum_export(checkpoint: Path, onnx_dir: Path, task: str, **options) -> None:
    """Export ``checkpoint`` with Optimum's ``main_export`` for ``task`` on the CPU, unvalidated.

    Validation is the stage's own (against PyTorch, with its components' tolerances), and
    Optimum's post-processing (merged decoders) is not served, so both are off here.
    """
    from optimum.exporters.onnx import main_export

    LOGGER.info("Exporting %s to ONNX (%s)", checkpoint, task)
    main_export(
        str(checkpoint), output=onnx_dir, task=task, no_post_process=True, do_validation=False, device="cpu", **options
    )


def export_once(
    onnx_dir: Path, source: object, components: Sequence[OnnxComponent], export: Callable[[], None]
) -> None:
    """Run ``export`` unless ``onnx_dir`` already holds every graph, exported from the same ``source`` config.

    ``source`` (the checkpoint's configs, JSON-serialisable) is stamped next to the
    graphs; delete the folder to force a new export. Every graph is then checked
    against its description. A cached export that no longer matches its description
    (the stage's code changed its graphs since) is exported again rather than refused.
    """
    onnx_dir = Path(onnx_dir)
    stamp = onnx_dir / "source_config.json"
    cached = stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(source))
    if cached and all((onnx_dir / component.onnx_file).is_file() for component in components):
        try:
            for component in components:
                component.check_graph(onnx_dir / component.onnx_file)
        except GraphMismatchError as error:
            LOGGER.info("The ONNX export in %s is stale (%s); exporting again", onnx_dir, error)
        else:
            LOGGER.info("Reusing the ONNX export in %s", onnx_dir)
            return
    export()
    onnx_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(source))
    for component in components:
        component.check_graph(onnx_dir / component.onnx_file)
