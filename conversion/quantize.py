"""``s2i convert --quantize int8``: dynamic int8 quantisation of the exported stage graphs, for CPUs.

ONNX Runtime's dynamic quantisation stores each ``MatMul``'s weights as int8 (one
scale per tensor) and quantises the activations at run time; on CPUs with VNNI
(or AMX) the integer kernels do about twice the work per cycle, and the graphs
shrink about 4x. Only ``MatMul`` is quantised: it is where transformers (Whisper,
CLIP, the UNet's attention and projections) spend their time, and ONNX Runtime's
integer convolution kernels are slower than its float ones on CPU.

This is a lossy, opt-in target: the float graphs are validated against PyTorch
first (the usual tolerances), then quantised; the quantised graphs are checked
only for their names, types and ranks. What it costs in output quality is stated
in ``benchmarks/README.md`` (tokens equal on the test clips, image PSNR). Graphs
whose output is pixels (the VAE decoder) stay float: their errors are what one
sees, and they are convolution-bound, so quantising their few ``MatMul`` s gains
nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

from s2i.stages.base import StageExport

LOGGER = logging.getLogger(__name__)

INT8 = "int8"
QUANTIZATIONS = (INT8,)
# Stage graphs kept float under --quantize (why: see the module docstring).
KEPT_FLOAT = frozenset({"vae_decoder"})
QUANTIZED_OPS = ("MatMul",)


def quantized_export(exported: StageExport, output_dir: Path, quantization: str = INT8) -> StageExport:
    """A copy of ``exported`` in ``output_dir`` whose graphs are dynamically quantised.

    Every other file of the export (tokenizer assets, configs) is linked beside
    them, so stages that read their export folder find the same files. The folder
    is reused while its stamp names the same source graphs (path, size, mtime).

    Raises:
        ValueError: ``quantization`` is not one of :data:`QUANTIZATIONS`.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantize` must be one of {list(QUANTIZATIONS)}, got {quantization!r}.")
    source_dir, output_dir = Path(exported.onnx_dir), Path(output_dir)
    graphs = {component.onnx_file for component in exported.components if component.model_name not in KEPT_FLOAT}
    stamp_file = output_dir / "quantized_from.json"
    stamp = {"quantization": quantization, "sources": _file_stamps(source_dir)}
    if not (stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp):
        shutil.rmtree(output_dir, ignore_errors=True)
        output_dir.mkdir(parents=True)
        for source in sorted(path for path in source_dir.rglob("*") if path.is_file()):
            # Diffusers exports keep each graph in a sub-folder (`unet/model.onnx`).
            relative = source.relative_to(source_dir)
            destination = output_dir / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            if relative.as_posix() in graphs:
                quantize_graph(source, destination)
            else:
                _link_or_copy(source, destination)
        stamp_file.write_text(json.dumps(stamp))
    for component in exported.components:
        component.check_graph(output_dir / component.onnx_file)
    return dataclasses.replace(exported, onnx_dir=output_dir)


def quantize_graph(source: Path, destination: Path) -> None:
    """Write ``source`` with its ``MatMul`` weights dynamically quantised to int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    LOGGER.info("Quantising %s to int8", source)
    quantize_dynamic(
        str(source),
        str(destination),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(QUANTIZED_OPS),
        # Graphs over 2 GB (SD-size UNets) keep their weights in a file beside the graph.
        use_external_data_format=_has_external_data(source),
    )


def _has_external_data(onnx_path: Path) -> bool:
    from s2i.conversion.repository import external_data_files

    return bool(external_data_files(onnx_path))


def _file_stamps(folder: Path) -> dict[str, list]:
    return {
        path.relative_to(folder).as_posix(): [str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns]
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
