"""Export an emotion classifier checkpoint to ONNX (dynamic batch and time axes) and validate it against PyTorch."""

from __future__ import annotations

import logging
from pathlib import Path

from s2i import names
from s2i.conversion.validation import GraphError, ValidationError, check_errors, export_once, graph_error
from s2i.model_repository.components import OnnxComponent
from s2i.model_repository.onnx_stage import OnnxStage
from s2i.stages.base import StageExport
from s2i.stages.emotion.config import load_config
from s2i.stages.emotion.modeling import EmotionClassifier
from s2i.stages.emotion.specs import emotion_component

LOGGER = logging.getLogger(__name__)

# 17 has LayerNormalization as one op and is supported by every onnxruntime and
# TensorRT release the project targets.
DEFAULT_ONNX_OPSET = 17
# Traced at one shape; validated at others, so a shape baked into the graph is caught.
TRACE_SHAPE = (2, 120)
# (batch, frames): odd and even lengths, the shortest (0.1 s) and the longest (30 s) clip.
VALIDATION_SHAPES = ((1, 10), (3, 77), (2, 301), (1, 3000))


def export_emotion(checkpoint: Path, onnx_dir: Path, *, validate: bool = True) -> StageExport:
    """Export ``checkpoint`` into ``onnx_dir`` and validate it; a cached export of the same config is reused.

    The cache is keyed by ``config.json`` only; :func:`s2i.conversion.convert.convert`
    gives every checkpoint version (file sizes and times) its own ``onnx_dir``.
    """
    import torch

    checkpoint, onnx_dir = Path(checkpoint), Path(onnx_dir)
    config = load_config(checkpoint)
    component = emotion_component(config)
    onnx_path = onnx_dir / component.onnx_file

    def export() -> None:
        LOGGER.info("Exporting %s to ONNX (%s)", checkpoint, config.architecture)
        onnx_dir.mkdir(parents=True, exist_ok=True)
        model = EmotionClassifier.from_pretrained(checkpoint)
        batch, frames = TRACE_SHAPE
        sample = torch.randn(batch, config.num_mel_bins, frames, generator=torch.Generator().manual_seed(0))
        torch.onnx.export(
            model,
            (sample,),
            str(onnx_path),
            input_names=[names.INPUT_FEATURES],
            output_names=[names.LOGITS],
            dynamic_axes={names.INPUT_FEATURES: {0: "batch", 2: "frames"}, names.LOGITS: {0: "batch"}},
            opset_version=DEFAULT_ONNX_OPSET,
            # The TorchScript exporter: the dynamo one needs onnxscript, which is not a dependency.
            dynamo=False,
        )

    export_once(onnx_dir, config.to_dict(), [component], export)
    diffs = validate_emotion_export(checkpoint, onnx_dir, component) if validate else {}
    return StageExport.validated(onnx_dir, [component], diffs)


def validate_emotion_export(checkpoint: Path, onnx_dir: Path, component: OnnxComponent) -> dict[str, GraphError]:
    """Run the graph and PyTorch on :data:`VALIDATION_SHAPES`; return the logits' errors.

    Raises:
        ValidationError: The difference exceeds the component's ``atol`` and ``rtol``.
    """
    import torch

    model = EmotionClassifier.from_pretrained(checkpoint)
    stage = OnnxStage(Path(onnx_dir) / component.onnx_file)
    generator = torch.Generator().manual_seed(1)
    error = GraphError(0.0, 0.0)
    for batch, frames in VALIDATION_SHAPES:
        # Whisper features lie in about [-1.5, 1.5].
        features = torch.randn(batch, model.config.num_mel_bins, frames, generator=generator) * 0.5
        with torch.no_grad():
            expected = model(features).numpy()
        actual = stage.run({names.INPUT_FEATURES: features.numpy()})[names.LOGITS]
        if actual.shape != expected.shape:
            raise ValidationError(
                f"`{component.model_name}` returned logits of shape {list(actual.shape)} for input "
                f"{[batch, model.config.num_mel_bins, frames]}; PyTorch returns {list(expected.shape)}."
            )
        error = error.worst(graph_error(expected, actual))
    return check_errors({component.model_name: error}, [component])
