"""A toy fourth stage, defined entirely outside the project's packages and registered at test time.

``loudness``: speech samples in, one number out (a learned scale and offset over the clip's
mean power). It has what a real stage has — a checkpoint folder, an exported and validated
graph, a BLS model that reaches the graph through a stage runner — and nothing else, so it
shows what adding a stage costs: this file, its BLS model and (to join the pipeline) the DAG.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from s2i.conversion.validation import check_tolerances, export_once, max_abs_diff
from s2i.model_repository.components import OnnxComponent
from s2i.model_repository.config import ModelSpec, TensorSpec
from s2i.model_repository.deployment import ModelPolicy
from s2i.model_repository.onnx_stage import OnnxStage
from s2i.stages.base import Stage, StageExport

GRAPH = "loudness_graph"
BLS = "loudness"
SAMPLES = "samples"
LOUDNESS = "loudness"
MAX_SAMPLES = 16_000 * 30


class LoudnessNet(torch.nn.Module):
    """``scale * mean(samples²) + offset`` per clip."""

    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))
        self.offset = torch.nn.Parameter(torch.tensor(offset))

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return (samples * samples).mean(dim=1, keepdim=True) * self.scale + self.offset

    @classmethod
    def from_checkpoint(cls, checkpoint: Path) -> LoudnessNet:
        config = json.loads((Path(checkpoint) / "config.json").read_text())
        return cls(config["scale"], config["offset"])


def loudness_component() -> OnnxComponent:
    return OnnxComponent(
        model_name=GRAPH,
        onnx_file="loudness.onnx",
        inputs=(TensorSpec(SAMPLES, "FP32", (-1,)),),
        outputs=(TensorSpec(LOUDNESS, "FP32", (1,)),),
        atol=1e-5,
        axis_ranges={SAMPLES: {0: (1600, 48_000, MAX_SAMPLES)}},
        # The deployment table does not list a plugin's graph: it brings its own batching.
        batching=ModelPolicy(max_batch_size=8),
    )


class LoudnessStage(Stage):
    """Speech -> how loud it is."""

    name = "loudness"
    order = 40
    bls_model = Path(__file__).with_name("loudness_model.py")
    required_assets = ("config.json",)

    def build_tiny(self, output_dir: Path, size: str) -> Path:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps({"model_type": "toy-loudness", "scale": 3.0, "offset": 0.5}))
        return output_dir

    def export(self, checkpoint: Path, onnx_dir: Path) -> StageExport:
        component = loudness_component()
        model = LoudnessNet.from_checkpoint(checkpoint)
        sample = torch.randn(2, 16_000)

        def run_export() -> None:
            onnx_dir.mkdir(parents=True, exist_ok=True)
            torch.onnx.export(
                model,
                (sample,),
                str(onnx_dir / component.onnx_file),
                input_names=[SAMPLES],
                output_names=[LOUDNESS],
                dynamic_axes={SAMPLES: {0: "batch", 1: "samples"}, LOUDNESS: {0: "batch"}},
                dynamo=False,
            )

        export_once(onnx_dir, json.loads((checkpoint / "config.json").read_text()), [component], run_export)
        clips = np.random.default_rng(0).standard_normal((3, 24_000), dtype=np.float32)
        actual = OnnxStage(onnx_dir / component.onnx_file).run({SAMPLES: clips})[LOUDNESS]
        with torch.no_grad():
            diff = max_abs_diff(model(torch.from_numpy(clips)), actual)
        return StageExport(onnx_dir, [component], check_tolerances({GRAPH: diff}, [component]))

    def bls_spec(self, checkpoint: Path, exported: StageExport, device: str) -> ModelSpec:
        return ModelSpec(
            name=BLS,
            backend="python",
            inputs=(TensorSpec("audio_samples", "FP32", (-1,)),),
            outputs=(TensorSpec(LOUDNESS, "FP32", (1,)),),
            max_batch_size=8,
        )
