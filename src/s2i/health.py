"""Deep health: a tiny canned inference per model, so a dead Python stub shows as unhealthy.

Triton 2.51 neither restarts a Python stub the kernel killed nor marks its model
unready: ``/v2/health/ready`` keeps answering 200 while every request through that
model fails. :func:`deep_check` asks each model (BLS models reach their stage
graphs, so every stub of the pipeline answers) for a small real result and checks
its values. ``s2i health --deep`` runs it; the pods' probes exec that command.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping

import numpy as np

from s2i import names

LOGGER = logging.getLogger(__name__)

# 0.5 s of a quiet 16 kHz tone: valid audio that decodes fast.
_TONE = (0.1 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)).astype(np.float32)


def _text(value: str) -> np.ndarray:
    return np.array([[value.encode()]], dtype=np.object_)


def _int32(value: int) -> np.ndarray:
    return np.array([[value]], dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class Probe:
    """One canned request: the model, its inputs, the outputs to read and a check of their values."""

    model: str
    inputs: Mapping[str, np.ndarray]
    check: Callable[[Mapping[str, np.ndarray]], bool]


# What each model must answer. `whisper` also exercises its encoder and both decoder
# graphs (2 tokens), `emotion_classifier` its graph, `diffusion` the text encoder,
# UNet and VAE (one step, smallest image), the stream every step model again.
PROBES = (
    Probe(
        names.PREPROCESS,
        {names.AUDIO_SAMPLES: _TONE[None], names.SAMPLE_RATE_HZ: _int32(16000)},
        lambda out: out[names.INPUT_FEATURES].shape[-1] == 3000 and bool(np.isfinite(out[names.INPUT_FEATURES]).all()),
    ),
    Probe(
        names.WHISPER,
        {names.AUDIO_SAMPLES: _TONE[None], names.SAMPLE_RATE_HZ: _int32(16000), names.MAX_NEW_TOKENS: _int32(2)},
        lambda out: 1 <= out[names.TOKEN_IDS].size <= 2,
    ),
    Probe(
        names.EMOTION_CLASSIFIER,
        {names.AUDIO_SAMPLES: _TONE[None], names.SAMPLE_RATE_HZ: _int32(16000)},
        lambda out: abs(float(out[names.EMOTION_PROBABILITIES].sum()) - 1.0) < 1e-3,
    ),
    Probe(
        names.PROMPT_COMPOSER,
        {names.TEXT: _text("a tree"), names.EMOTION_LABEL: _text("happy")},
        lambda out: b"a tree" in out[names.PROMPT].reshape(-1)[0],
    ),
    Probe(
        names.DIFFUSION,
        {
            names.PROMPT: _text("a tree"),
            names.NUM_INFERENCE_STEPS: _int32(1),
            names.SEED: np.array([[0]], dtype=np.int64),
        },
        lambda out: out[names.IMAGE].ndim == 4 and out[names.IMAGE].shape[-1] == 3,
    ),
    Probe(
        names.POSTPROCESS,
        {names.IMAGE: np.zeros((1, 8, 8, 3), dtype=np.uint8)},
        lambda out: out[names.PNG].reshape(-1)[0].startswith(b"\x89PNG"),
    ),
)


@dataclasses.dataclass(frozen=True)
class ModelHealth:
    """The outcome of one probe."""

    model: str
    healthy: bool
    detail: str
    seconds: float


def _datatype(value: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(value.dtype)


def _run_probe(client, probe: Probe, timeout_s: float, headers: Mapping[str, str] | None) -> ModelHealth:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    started = time.monotonic()
    try:
        metadata = client.get_model_metadata(probe.model, headers=headers, as_json=True)
        inputs = []
        for name, value in probe.inputs.items():
            tensor = grpcclient.InferInput(name, list(value.shape), _datatype(value))
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(output["name"]) for output in metadata["outputs"]]
        result = client.infer(probe.model, inputs, outputs=outputs, client_timeout=timeout_s, headers=headers)
        values = {output["name"]: result.as_numpy(output["name"]) for output in metadata["outputs"]}
        healthy = bool(probe.check(values))
        detail = "ok" if healthy else "answered with unexpected values"
    except InferenceServerException as e:
        healthy, detail = False, (e.message() or str(e))[:300]
    except (KeyError, ValueError, AttributeError, IndexError) as e:
        healthy, detail = False, f"answered with unexpected outputs: {e}"[:300]
    return ModelHealth(probe.model, healthy, detail, time.monotonic() - started)


def deep_check(url: str, *, timeout_s: float = 30.0, headers: Mapping[str, str] | None = None) -> list[ModelHealth]:
    """Probe every model of :data:`PROBES` the server has; models it does not have are skipped.

    A server that is not ready, or that does not answer, gives one unhealthy ``server`` entry.
    """
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with grpcclient.InferenceServerClient(url) as client:
        try:
            ready = client.is_server_ready(headers=headers, client_timeout=timeout_s)
            index = {probe.model: client.is_model_ready(probe.model, headers=headers) for probe in PROBES}
        except InferenceServerException as e:
            return [ModelHealth("server", False, (e.message() or str(e))[:300], 0.0)]
        if not ready:
            return [ModelHealth("server", False, "not ready", 0.0)]
        present = [probe for probe in PROBES if index[probe.model] or _known(client, probe.model, headers)]
        return [_run_probe(client, probe, timeout_s, headers) for probe in present]


def _known(client, model: str, headers: Mapping[str, str] | None) -> bool:
    """Whether the server has ``model`` at all (an unready model is known; an absent one is not)."""
    from tritonclient.utils import InferenceServerException

    try:
        client.get_model_metadata(model, headers=headers)
    except InferenceServerException as e:
        return "unknown model" not in (e.message() or "").lower()
    return True
