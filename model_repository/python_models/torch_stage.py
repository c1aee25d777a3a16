"""Triton Python-backend model: one stage graph run by its PyTorch module (the ``python-torch`` target).

Parameters (config.pbtxt): ``torch_runner`` (``<module>:<class>``, a
:class:`~s2i.stages.torch_runner.TorchStage`), ``checkpoint_dir`` (the checkpoint files
beside this file), ``dtype``, ``cuda_graphs`` and ``torch_compile``. A ``KIND_GPU`` instance
runs on its GPU, a ``KIND_CPU`` one on the CPU. Input and output names come from the
model config, which is rendered from the same description as the ONNX graph's.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from s2i.model_repository.triton_io import answer_batch
from s2i.stages.torch_runner import (
    CHECKPOINT_PARAMETER,
    RUNNER_PARAMETER,
    TorchOptions,
    instance_device,
    load_stage,
)


class TritonPythonModel:
    """Runs the module for each batch of requests, batching same-shape requests into one call."""

    def initialize(self, args):
        """Load the module named by ``torch_runner`` from ``checkpoint_dir``."""
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.output_names = [tensor["name"] for tensor in config["output"]]
        device = instance_device(args.get("model_instance_kind"), args.get("model_instance_device_id"))
        checkpoint = Path(args["model_repository"]) / args["model_version"] / parameters.get(CHECKPOINT_PARAMETER, "")
        try:
            options = TorchOptions.from_parameters(parameters, device)
            self.stage = load_stage(parameters.get(RUNNER_PARAMETER, ""), checkpoint, options)
        except Exception as error:
            # Triton shows this message when the model fails to load: say what to check.
            raise pb_utils.TritonModelException(
                f"`{args['model_name']}` could not load its PyTorch module ({parameters.get(RUNNER_PARAMETER)!r}) "
                f"from `{checkpoint}` on {device}: {error}. Re-run `s2i convert --target python-torch` with this "
                "checkpoint, and check that this environment has torch, transformers and diffusers "
                "(and a GPU for KIND_GPU instances)."
            ) from error

    def execute(self, requests):
        """Run all requests of the batch; a refused request gets its own error, the others their outputs."""
        return answer_batch(
            pb_utils,
            requests,
            self._parse,
            lambda items: self.stage.run_requests(items, self.output_names),
            # The response keeps only what each caller asked for (answer_batch).
            lambda result, _compute_ms: result,
        )

    def _parse(self, inputs):
        return {name: inputs[name] for name in self.stage.input_names if name in inputs}
