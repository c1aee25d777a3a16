"""Triton Python-backend model ``postprocess``: the RGB image -> PNG bytes."""

import numpy as np
import triton_python_backend_utils as pb_utils

from s2i import names
from s2i.model_repository.triton_io import answer_batch, each
from s2i.pipeline.steps import encode_png


class TritonPythonModel:
    """Encode each request's image."""

    def execute(self, requests):
        """One response per request; a bad request gets its own error."""
        return answer_batch(
            pb_utils,
            requests,
            lambda inputs: inputs[names.IMAGE],
            each(lambda image: (image, encode_png(image[0]))),
            lambda encoded, compute_ms: {
                names.PNG: np.array([[encoded[1]]], dtype=np.object_),
                names.COMPUTE_MS: compute_ms,
                # The ensemble's copy of the pixels it encoded (s2i.pipeline.specs).
                names.IMAGE: encoded[0],
            },
        )
