"""Batching and instance settings of every model, per device: the one place they are decided.

Why these numbers:

* **Stage graphs batch, loops do not.** The encoder/decoder/UNet/VAE graphs are
  where compute is; Triton's dynamic batcher merges the calls that concurrent
  BLS loops make, so their ``max_batch_size`` is large and the queue delay small
  (a decoding step is a few ms; waiting longer than that costs more than it saves).
* **BLS models get instances, not big batches.** A loop (Whisper decoding, the
  denoising loop) holds its instance for the whole request; concurrency comes from
  several instances whose steps meet in the stage models' batcher.
* **CPU is the test and demo target**: one instance per stage model, whose ONNX
  Runtime pool gets the cores the server may use (divided among the model's
  instances, decided at load time): with one thread per call, a single request
  ran 29% slower than PyTorch in-process on 2 cores. The count is explicit and
  unpinned, never ONNX Runtime's 0, which pins every stage process's worker to
  the same core.
* **The Whisper loop owns its decoder on ``python-onnxruntime``** (the KV cache stays bound
  in its ONNX Runtime sessions, issue #20): the decoder sessions of each ``whisper`` instance
  get every core the process may use (``intra_op_threads`` 0 here; a loop alternates decoder
  calls with Python work, so two instances seldom compute at once), and cross-request batching
  of decoding steps happens in the loop's own batch (``whisper`` ``max_batch_size`` 8).
* **The CPU UNet computes at most 4 rows per ONNX Runtime call** (``max_rows_per_call``; a
  larger batch is run in slices of 4, issue #20): on the ``realistic`` preset (256×256) its CPU
  time per row is flat in the batch (0.43 s at 1–2 rows, 0.38–0.42 s at 4–16: convolutions,
  not per-call overhead) while ONNX Runtime's memory grows by about 0.56 GB a row (9 GB at 16
  rows), and a 16-row batch got the ``unet`` process OOM-killed on a 24 GiB machine. Triton
  still merges up to 16 rows into one execution (no queueing between the loops' steps).
* **GPU**: UNet batches of 8 images are 16 UNet rows with classifier-free guidance;
  preferred sizes are the profile's ``opt`` points, so TensorRT engines are built
  for the shapes the batcher forms.
"""

from __future__ import annotations

import dataclasses

from s2i.model_repository.config import DynamicBatching, InstanceGroup

CPU = "cpu"
GPU = "gpu"
DEVICES = (CPU, GPU)
# Two guided requests' rows: past that, ONNX Runtime's memory grows and the CPU time per row does not fall.
UNET_CPU_ROWS_PER_CALL = 4


@dataclasses.dataclass(frozen=True)
class ModelPolicy:
    """How one model is batched and replicated on one device.

    Attributes:
        max_batch_size: Largest batch Triton forms (also the TensorRT profile's max).
        preferred_batch_sizes: Batch sizes the batcher waits for (the profile's ``opt``).
        max_queue_delay_us: How long a request may wait for partners; ``None`` disables batching.
        instances: Model instances.
        intra_op_threads: ONNX Runtime threads per instance for graphs run in Python
            (``python-onnxruntime``); 0 = the cores the server may use, shared among instances.
        max_rows_per_call: Most batch rows one ONNX Runtime call computes for graphs run in
            Python (a larger batch runs in slices); 0 = the whole batch at once.
    """

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int | None = None
    instances: int = 1
    intra_op_threads: int = 0
    max_rows_per_call: int = 0

    @property
    def dynamic_batching(self) -> DynamicBatching | None:
        """The ``dynamic_batching`` block, or ``None`` when the model does not batch."""
        if self.max_queue_delay_us is None:
            return None
        return DynamicBatching(self.preferred_batch_sizes, self.max_queue_delay_us)

    def instance_groups(self, device: str) -> tuple[InstanceGroup, ...]:
        """Instance groups on ``device``; BLS models always run on the CPU."""
        return (InstanceGroup(count=self.instances, kind="KIND_GPU" if device == GPU else "KIND_CPU"),)


def _batched(max_batch_size: int, preferred: tuple[int, ...], delay_us: int, instances: int = 1) -> ModelPolicy:
    return ModelPolicy(max_batch_size, preferred, delay_us, instances)


def _unbatched(instances: int) -> ModelPolicy:
    # Light Python steps: requests that arrive together still come as one batch,
    # but waiting for partners would only add latency.
    return ModelPolicy(max_batch_size=8, instances=instances)


POLICIES: dict[str, dict[str, ModelPolicy]] = {
    CPU: {
        # Whisper: the decoder runs once per token, so its batcher waits only ~1 decoding step.
        "whisper": _batched(8, (4, 8), 5000, instances=2),
        "whisper_encoder": _batched(8, (4, 8), 2000),
        "whisper_decoder": _batched(8, (4, 8), 2000),
        "whisper_decoder_with_past": _batched(8, (4, 8), 2000),
        "emotion_classifier": _batched(8, (4, 8), 2000),
        "emotion_classifier_graph": _batched(8, (4, 8), 1000),
        # Diffusion: 16 UNet rows = 8 guided images; the two loop instances' steps meet here.
        "diffusion": _batched(8, (4, 8), 5000, instances=2),
        "text_encoder": _batched(16, (8, 16), 2000),
        "unet": dataclasses.replace(_batched(16, (8, 16), 2000), max_rows_per_call=UNET_CPU_ROWS_PER_CALL),
        "vae_decoder": _batched(8, (4, 8), 2000),
        "preprocess": _unbatched(2),
        "prompt_composer": _unbatched(1),
        "postprocess": _unbatched(1),
        "speech_to_image_stream": _unbatched(2),
    },
    GPU: {
        # More loop instances keep the GPU's batches full; stage graphs get two
        # instances so one copies while the other computes.
        "whisper": _batched(8, (4, 8), 5000, instances=8),
        "whisper_encoder": _batched(16, (8, 16), 1000, instances=2),
        "whisper_decoder": _batched(16, (8, 16), 1000, instances=2),
        "whisper_decoder_with_past": _batched(16, (8, 16), 1000, instances=2),
        "emotion_classifier": _batched(8, (4, 8), 2000, instances=4),
        "emotion_classifier_graph": _batched(16, (8, 16), 1000),
        "diffusion": _batched(8, (4, 8), 5000, instances=8),
        "text_encoder": _batched(16, (8, 16), 1000),
        "unet": _batched(16, (8, 16), 1000, instances=2),
        "vae_decoder": _batched(8, (4, 8), 1000),
        "preprocess": _unbatched(4),
        "prompt_composer": _unbatched(2),
        "postprocess": _unbatched(4),
        "speech_to_image_stream": _unbatched(8),
    },
}


def policy(model_name: str, device: str = CPU, default: ModelPolicy | None = None) -> ModelPolicy:
    """The policy of ``model_name`` on ``device``.

    Args:
        model_name: Model name in the repository.
        device: ``cpu`` or ``gpu``.
        default: Used for models the table does not list yet; without it they are an error.
    """
    if device not in DEVICES:
        raise ValueError(f"`device` must be one of {list(DEVICES)}, got {device!r}.")
    found = POLICIES[device].get(model_name, default)
    if found is None:
        raise KeyError(f"No batching policy for model `{model_name}` on {device}; add it to POLICIES.")
    return found
