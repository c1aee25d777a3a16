"""Whisper's decoder graphs in the loop's own process, the KV cache kept where it is computed.

Why (issue #20). Through BLS, every decoding step ships the whole KV cache out of
the ``whisper`` loop model and back into ``whisper_decoder_with_past``: the
cross-attention cache (``2 x layers x heads x 1500 x head_dim`` floats per
sequence, fixed) plus the growing self-attention cache, each way, through shared
memory — about 37 MB per step at Whisper-base, 110 MB at small, 490 MB at large-v3.
On a Whisper-base-size checkpoint a served step took about 1.9x the same graph
in-process; the numbers after this change are in ``benchmarks/README.md``
(``s2i bench --workload whisper-tokens``).

So, for the ``python-onnxruntime`` target, the ``whisper`` model owns ONNX Runtime
sessions of ``whisper_decoder`` and ``whisper_decoder_with_past`` and runs them
with I/O binding: ``present.*`` outputs stay ORT-allocated :class:`OrtValue`
objects and are bound as the next step's ``past_key_values.*`` inputs without a
copy; the cross-attention cache computed at the first step is bound, unchanged,
at every later step. Only the logits leave ONNX Runtime, written straight into a
numpy buffer the loop owns (no copy), and only their last position is read — the
first step's prompt positions are never copied anywhere.

What was weighed:

* **Triton implicit state / sequence batching** keeps the cache in the server, but
  the Python backend has no implicit state, the sequence batcher puts one sequence
  per batch slot for the lifetime of a request (no cross-request batching of
  steps in the oldest strategy, per-slot state copies in the other), and the
  cross-attention cache would still be an input of every step.
* **In-process I/O binding** (chosen) keeps cross-request batching where it was
  already effective: Triton's dynamic batcher hands the loop model a batch of
  requests, and their steps run as one decoder call, as before. What is lost is
  the merging of steps from *different* loop instances in the decoder's batcher;
  on CPU the per-token cost that removes is larger than that gain (see README).

The native ``onnxruntime``/``tensorrt`` targets keep the BLS path: their decoder
runs in another backend (and on the GPU), which a Python model cannot bind into.
The ``python-torch`` target does the same as ``python-onnxruntime`` with PyTorch:
:class:`s2i.stages.whisper.torch_runner.InProcessTorchDecoder` keeps the cache as
device tensors between steps (on an H100 at Whisper-small, batch 8, the numpy round
trip through BLS cost 148 ms a step against 3.2 ms for the step itself).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from s2i import names
from s2i.model_repository.onnx_stage import intra_op_threads_for, session_options
from s2i.stages.runner import StageRunner

# Files of the decoder graphs beside the loop model (``1/decoder/``), and the
# config parameter that names that folder.
DECODER_DIR_PARAMETER = "decoder_onnx_dir"
DECODER_THREADS_PARAMETER = "decoder_intra_op_threads"
# The python-torch target's counterpart: the checkpoint folder (``1/decoder_checkpoint/``) the loop's
# own decoder loads, and where it runs (``cpu``/``gpu``, decided at conversion like its stage models).
TORCH_DECODER_PARAMETER = "decoder_torch_checkpoint"
TORCH_DECODER_DEVICE_PARAMETER = "decoder_device"
DECODER_FILES = {
    names.WHISPER_DECODER: "decoder_model.onnx",
    names.WHISPER_DECODER_WITH_PAST: "decoder_with_past_model.onnx",
}


class InProcessDecoder:
    """``whisper_decoder`` and ``whisper_decoder_with_past`` on local ONNX Runtime sessions.

    :meth:`run_stage` is a :data:`~s2i.stages.runner.StageRunner` for the two decoder
    graphs: inputs may be numpy arrays or :class:`onnxruntime.OrtValue` (a previous
    step's cache); ``present.*`` outputs come back as ``OrtValue`` (left where ONNX
    Runtime wrote them) and ``logits`` as a numpy array of the last position only,
    ``[batch, 1, vocab]``.
    """

    def __init__(
        self,
        onnx_dir: Path,
        intra_op_threads: int = 0,
        providers: Sequence[str] | None = None,
        instances: int = 1,
    ) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.intra_op_threads = intra_op_threads_for(intra_op_threads, instances)
        self.sessions = {
            model: ort.InferenceSession(
                str(Path(onnx_dir) / file),
                sess_options=session_options(self.intra_op_threads),
                providers=list(providers or ["CPUExecutionProvider"]),
            )
            for model, file in DECODER_FILES.items()
        }
        self.input_names = {
            model: [node.name for node in session.get_inputs()] for model, session in self.sessions.items()
        }
        # The vocabulary axis of `logits` (a number in Optimum's exports; symbolic would mean "ask ORT").
        self.vocab = {
            model: next(node.shape[-1] for node in session.get_outputs() if node.name == names.LOGITS)
            for model, session in self.sessions.items()
        }

    def run_stage(
        self, model_name: str, inputs: Mapping[str, object], output_names: Sequence[str]
    ) -> dict[str, object]:
        """Run one decoder step with the cache bound in place."""
        session = self.sessions[model_name]
        binding = session.io_binding()
        for name in self.input_names[model_name]:
            value = inputs[name]
            if isinstance(value, self._ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        batch, positions = np.shape(inputs[names.INPUT_IDS])
        logits = None
        for name in output_names:
            if name == names.LOGITS and isinstance(self.vocab[model_name], int):
                # ONNX Runtime writes the logits into this buffer; only the last position is read.
                logits = np.empty((batch, positions, self.vocab[model_name]), dtype=np.float32)
                binding.bind_output(name, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
            else:
                binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        outputs = dict(zip(output_names, binding.get_outputs(), strict=True))
        if names.LOGITS in outputs:
            outputs[names.LOGITS] = (logits if logits is not None else outputs[names.LOGITS].numpy())[:, -1:, :]
        return outputs


def routed_stage_runner(in_process: StageRunner, fallback: StageRunner) -> StageRunner:
    """Decoder graphs through ``in_process``, every other stage graph through ``fallback`` (BLS).

    ``in_process`` is an :class:`InProcessDecoder`'s ``run_stage``, possibly wrapped (counted).
    """

    def run_stage(model_name: str, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]):
        if model_name in DECODER_FILES:
            return in_process(model_name, inputs, output_names)
        return fallback(model_name, inputs, output_names)

    return run_stage
