"""What every stage's export shares: the tolerance check against PyTorch and the export cache stamp."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from s2i.model_repository.components import OnnxComponent

LOGGER = logging.getLogger(__name__)


class ValidationError(RuntimeError):
    """An exported graph differs from PyTorch by more than its tolerance."""


def max_abs_diff(reference, actual: np.ndarray) -> float:
    """Largest absolute difference between a PyTorch tensor (or array) and an ONNX Runtime output."""
    expected = reference.detach().numpy() if hasattr(reference, "detach") else np.asarray(reference)
    return float(np.max(np.abs(expected - actual)))


def check_tolerances(diffs: Mapping[str, float], components: Sequence[OnnxComponent]) -> dict[str, float]:
    """Log each graph's difference; raise :class:`ValidationError` for one past its component's ``atol``."""
    atol = {component.model_name: component.atol for component in components}
    for name, diff in diffs.items():
        LOGGER.info("%s: max abs diff to PyTorch %.2e (tolerance %.0e)", name, diff, atol[name])
        if not diff <= atol[name]:
            raise ValidationError(
                f"`{name}` differs from PyTorch by {diff:.3e}, more than the tolerance {atol[name]:.0e}; "
                "the export is not trustworthy (try another opset or exporter version)."
            )
    return dict(diffs)


def export_once(
    onnx_dir: Path, source: object, components: Sequence[OnnxComponent], export: Callable[[], None]
) -> None:
    """Run ``export`` unless ``onnx_dir`` already holds every graph, exported from the same ``source`` config.

    ``source`` (the checkpoint's configs, JSON-serialisable) is stamped next to the
    graphs; delete the folder to force a new export. Every graph is then checked
    against its description.
    """
    onnx_dir = Path(onnx_dir)
    stamp = onnx_dir / "source_config.json"
    cached = stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(source))
    if cached and all((onnx_dir / component.onnx_file).is_file() for component in components):
        LOGGER.info("Reusing the ONNX export in %s", onnx_dir)
    else:
        export()
        onnx_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(source))
    for component in components:
        component.check_graph(onnx_dir / component.onnx_file)
