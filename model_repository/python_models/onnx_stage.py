"""Triton Python-backend model: one exported ONNX graph on ONNX Runtime.

Parameters (config.pbtxt): ``onnx_file`` (beside this file), ``intra_op_threads``
(0: the cores this process may use, shared among the model's CPU instances) and
``max_rows_per_call`` (0: a batch in one ONNX Runtime call; else slices of that many rows).
Input and output names come from the model config, which is generated from the
same description the graph was checked against.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from s2i.model_repository.onnx_stage import OnnxStage
from s2i.model_repository.triton_io import answer_batch


class TritonPythonModel:
    """Runs the graph for each batch of requests, batching same-shape requests into one call."""

    def initialize(self, args):
        """Load the graph named by the ``onnx_file`` parameter."""
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1
        self.stage = OnnxStage(
            version_dir / parameters["onnx_file"],
            int(parameters.get("intra_op_threads", "0")),
            instances=instances,
            max_rows_per_call=int(parameters.get("max_rows_per_call", "0")),
        )

    def execute(self, requests):
        """Run all requests of the batch; a failure fails the whole batch's call, each with its own response."""
        return answer_batch(
            pb_utils,
            requests,
            self._parse,
            lambda items: self.stage.run_requests(items, self.output_names),
            # The response keeps only what each caller asked for (answer_batch).
            lambda result, _compute_ms: result,
        )

    def _parse(self, inputs):
        return {name: inputs[name] for name in self.input_names}
