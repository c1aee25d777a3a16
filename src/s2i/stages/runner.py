"""How serving code reaches a stage graph, wherever it runs.

Loops (Whisper decoding, denoising) and single calls (the emotion graph) take a
:data:`StageRunner` instead of a client, so the same function runs inside
Triton (a BLS call, :func:`s2i.model_repository.triton_io.make_stage_runner`),
in tests and in conversion checks (a local ONNX Runtime session,
:func:`s2i.model_repository.onnx_stage.onnx_stage_runner`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

Tensors = Mapping[str, np.ndarray]
# (stage model name, inputs, requested output names) -> outputs.
StageRunner = Callable[[str, Tensors, Sequence[str]], Mapping[str, np.ndarray]]
# (index of a request in its batch) -> whether its client has gone (Triton's `request.is_cancelled()`);
# loops ask it once per step, so an abandoned request stops within one step.
Cancelled = Callable[[int], bool]
