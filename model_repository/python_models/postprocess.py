"""Triton Python-backend model ``postprocess``: the RGB image -> PNG bytes."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from s2i import names
from s2i.model_repository.triton_io import respond_each
from s2i.pipeline.steps import encode_png


class TritonPythonModel:
    """Encode each request's image."""

    def _respond(self, request):
        started = time.perf_counter()
        image = pb_utils.get_input_tensor_by_name(request, names.IMAGE).as_numpy()
        png = encode_png(image[0])
        elapsed_ms = np.array([[1000 * (time.perf_counter() - started)]], dtype=np.float32)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(names.PNG, np.array([[png]], dtype=np.object_)),
                pb_utils.Tensor(names.COMPUTE_MS, elapsed_ms),
                # The ensemble's copy of the pixels it encoded (s2i.pipeline.models).
                pb_utils.Tensor(names.IMAGE, image),
            ]
        )

    def execute(self, requests):
        """One response per request; a bad request gets its own error."""
        return respond_each(pb_utils, requests, self._respond)
