"""A toy fourth stage, defined entirely outside the project's packages and registered at test time.

``loudness``: the clip's log-mel features in, one number out (a learned scale and offset over
their mean). It has what a real stage has — a checkpoint folder, an exported and validated
graph, a BLS model that reaches the graph through a stage runner, an in-process reference —
and nothing else, so it shows what adding a stage costs: this file, its BLS model and, to join
the pipeline, one step in the DAG (:func:`with_loudness`, the test-time DAG edit).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2i import names
from s2i.conversion.validation import check_tolerances, export_once, max_abs_diff
from s2i.model_repository.components import OnnxComponent
from s2i.model_repository.config import ModelSpec, TensorSpec
from s2i.model_repository.deployment import ModelPolicy
from s2i.model_repository.onnx_stage import OnnxStage
from s2i.pipeline.dag import Output, Pipeline, PipelineOutput, Step
from s2i.stages.base import Stage, StageExport

GRAPH = "loudness_graph"
BLS = "loudness"
FEATURES = "features"
LOUDNESS = "loudness"
TIMING = "loudness_ms"
MAX_MEL_BINS = 256
MAX_FRAMES = 3000  # Whisper's 30 s window


class LoudnessNet(torch.nn.Module):
    """``scale * mean(log-mel features) + offset`` per clip."""

    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))
        self.offset = torch.nn.Parameter(torch.tensor(offset))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(1, 2)).unsqueeze(1) * self.scale + self.offset

    @classmethod
    def from_checkpoint(cls, checkpoint: Path) -> LoudnessNet:
        config = json.loads((Path(checkpoint) / "config.json").read_text())
        return cls(config["scale"], config["offset"])


class LoudnessReference:
    """The toy's reference: :class:`LoudnessNet` in PyTorch on the features its DAG step reads."""

    def __init__(self, checkpoint: Path) -> None:
        self.model = LoudnessNet.from_checkpoint(checkpoint)

    def step(self, inputs: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
        with torch.no_grad():
            loudness = self.model(torch.from_numpy(np.asarray(inputs[FEATURES], dtype=np.float32))[None])
        return {LOUDNESS: loudness[0].numpy()}


def loudness_component() -> OnnxComponent:
    return OnnxComponent(
        model_name=GRAPH,
        onnx_file="loudness.onnx",
        inputs=(TensorSpec(FEATURES, "FP32", (-1, -1)),),
        outputs=(TensorSpec(LOUDNESS, "FP32", (1,)),),
        atol=1e-5,
        axis_ranges={FEATURES: {0: (1, 80, MAX_MEL_BINS), 1: (1, 1500, MAX_FRAMES)}},
        # The deployment table does not list a plugin's graph: it brings its own batching.
        batching=ModelPolicy(max_batch_size=8),
    )


class LoudnessStage(Stage):
    """Speech features -> how loud the clip is."""

    name = "loudness"
    order = 40
    bls_model = Path(__file__).with_name("loudness_model.py")
    required_assets = ("config.json",)

    def build_tiny(self, output_dir: Path, size: str) -> Path:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps({"model_type": "toy-loudness", "scale": 3.0, "offset": 0.5}))
        return output_dir

    def reference(self, checkpoint: Path) -> LoudnessReference:
        return LoudnessReference(checkpoint)

    def export(self, checkpoint: Path, onnx_dir: Path) -> StageExport:
        component = loudness_component()
        model = LoudnessNet.from_checkpoint(checkpoint)
        sample = torch.randn(2, 80, 100)

        def run_export() -> None:
            onnx_dir.mkdir(parents=True, exist_ok=True)
            torch.onnx.export(
                model,
                (sample,),
                str(onnx_dir / component.onnx_file),
                input_names=[FEATURES],
                output_names=[LOUDNESS],
                dynamic_axes={FEATURES: {0: "batch", 1: "mel_bins", 2: "frames"}, LOUDNESS: {0: "batch"}},
                dynamo=False,
            )

        export_once(onnx_dir, json.loads((checkpoint / "config.json").read_text()), [component], run_export)
        features = np.random.default_rng(0).standard_normal((3, 80, 300), dtype=np.float32)
        actual = OnnxStage(onnx_dir / component.onnx_file).run({FEATURES: features})[LOUDNESS]
        with torch.no_grad():
            diff = max_abs_diff(model(torch.from_numpy(features)), actual)
        return StageExport(onnx_dir, [component], check_tolerances({GRAPH: diff}, [component]))

    def bls_spec(self, checkpoint: Path, exported: StageExport, device: str) -> ModelSpec:
        return ModelSpec(
            name=BLS,
            backend="python",
            inputs=(TensorSpec(FEATURES, "FP32", (-1, -1)),),
            # Every pipeline step reports its time (`compute_ms`), which the DAG names `loudness_ms`.
            outputs=(TensorSpec(LOUDNESS, "FP32", (1,)), TensorSpec(names.COMPUTE_MS, "FP32", (1,))),
            max_batch_size=8,
        )


def with_loudness(pipeline: Pipeline) -> Pipeline:
    """``pipeline`` with the toy step: the DAG edit, and the only one.

    It reads the clip's features beside the emotion classifier, and its number is a pipeline
    output nobody else reads (a side output; see :func:`s2i.pipeline.specs.check_prunable`).
    """
    step = Step(BLS, TIMING, {FEATURES: Output(names.PREPROCESS, names.EMOTION_FEATURES)})
    classifier = [index for index, item in enumerate(pipeline.steps) if item.model == names.EMOTION_CLASSIFIER][0]
    steps = (*pipeline.steps[: classifier + 1], step, *pipeline.steps[classifier + 1 :])
    return dataclasses.replace(pipeline, steps=steps, outputs=(*pipeline.outputs, PipelineOutput(LOUDNESS, BLS)))
