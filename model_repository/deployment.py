"""Batching and instance settings of every model, per device: the one place they are decided.

Why these numbers:

* **Stage graphs batch, loops do not.** The encoder/decoder/UNet/VAE graphs are
  where compute is; Triton's dynamic batcher merges the calls that concurrent
  BLS loops make, so their ``max_batch_size`` is large and the queue delay small
  (a decoding step is a few ms; waiting longer than that costs more than it saves).
* **BLS models get instances, not big batches.** A loop (Whisper decoding, the
  denoising loop) holds its instance for the whole request; concurrency comes from
  several instances whose steps meet in the stage models' batcher.
* **CPU is the test and demo target**: 2 cores, so one instance per stage model
  (ONNX Runtime already uses the cores) and small batches.
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


@dataclasses.dataclass(frozen=True)
class ModelPolicy:
    """How one model is batched and replicated on one device.

    Attributes:
        max_batch_size: Largest batch Triton forms (also the TensorRT profile's max).
        preferred_batch_sizes: Batch sizes the batcher waits for (the profile's ``opt``).
        max_queue_delay_us: How long a request may wait for partners; ``None`` disables batching.
        instances: Model instances.
    """

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int | None = None
    instances: int = 1

    @property
    def dynamic_batching(self) -> DynamicBatching | None:
        """The ``dynamic_batching`` block, or ``None`` when the model does not batch."""
        if self.max_queue_delay_us is None:
            return None
        return DynamicBatching(self.preferred_batch_sizes, self.max_queue_delay_us)

    def instance_groups(self, device: str) -> tuple[InstanceGroup, ...]:
        """Instance groups on ``device``; BLS models always run on the CPU."""
        return (InstanceGroup(count=self.instances, kind="KIND_GPU" if device == GPU else "KIND_CPU"),)


# Stage graphs: batched, one instance (a GPU runs one graph at a time well; two
# instances on GPU overlap copies and compute).
_STAGE_CPU = ModelPolicy(max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=2000, instances=1)
_STAGE_GPU = ModelPolicy(max_batch_size=16, preferred_batch_sizes=(8, 16), max_queue_delay_us=1000, instances=2)
# Loops (BLS): each instance holds a request for its whole loop.
_LOOP_CPU = ModelPolicy(max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=5000, instances=2)
_LOOP_GPU = ModelPolicy(max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=5000, instances=8)

POLICIES: dict[str, dict[str, ModelPolicy]] = {
    CPU: {
        "whisper": _LOOP_CPU,
        "whisper_encoder": _STAGE_CPU,
        "whisper_decoder": _STAGE_CPU,
        "whisper_decoder_with_past": _STAGE_CPU,
    },
    GPU: {
        "whisper": _LOOP_GPU,
        "whisper_encoder": _STAGE_GPU,
        "whisper_decoder": _STAGE_GPU,
        "whisper_decoder_with_past": _STAGE_GPU,
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
