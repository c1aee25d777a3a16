"""What a benchmark sends, how a response is checked, and the in-process baseline for the same inputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from s2i import names
from s2i.audio import prepare_audio
from s2i.stages.diffusion.sampling import MAX_IMAGE_SIZE

# The most bytes a `png` output takes: an uncompressed RGB PNG of the largest image (a filter
# byte per row), headers, and the 4-byte length prefix of a BYTES element in shared memory.
MAX_PNG_BYTES = MAX_IMAGE_SIZE * (3 * MAX_IMAGE_SIZE + 1) + 64 * 2**10


@dataclasses.dataclass
class Workload:
    """A benchmarkable request stream.

    Attributes:
        name: What is benchmarked (``whisper``, a stage model name, …).
        factory: Builds request ``i``: (model, input tensors as (name, KServe datatype, array),
            requested output names); :mod:`s2i.benchmarks.protocols` sends them.
        check: Raises when a response's content is wrong (so empty outputs count as errors).
        baseline: Runs request ``i`` in-process with the reference libraries, or ``None``.
        items_per_request: Images (or clips) a request produces, for items/s.
        peers: Name -> runs request ``i`` in-process the way a user would instead of a
            Triton deployment (:mod:`s2i.benchmarks.peers`).
        streaming: Requests go over ``ModelStreamInfer`` (a decoupled model): each run also
            reports the time to the first message of each kind.
        output_bytes: Large outputs the check reads -> the most bytes each takes; with
            ``--shared-memory system`` they come back through a shared-memory region.
    """

    name: str
    factory: Callable[[int], tuple[str, list[tuple[str, str, np.ndarray]], list[str]]]
    check: Callable[[object], None]
    baseline: Callable[[int], None] | None = None
    items_per_request: int = 1
    peers: dict[str, Callable[[int], None]] = dataclasses.field(default_factory=dict)
    streaming: bool = False
    output_bytes: dict[str, int] = dataclasses.field(default_factory=dict)


# Recorded audio: what `--audio` accepts (what the server decodes), and how many files at most.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
MAX_AUDIO_FILES = 64


@dataclasses.dataclass(frozen=True)
class RecordedClip:
    """One recorded audio file: its bytes (as the client sends a file) and its samples at 16 kHz."""

    path: Path
    data: bytes
    samples: np.ndarray
    sample_rate_hz: int = 16_000


def _audio_paths(sources: Sequence[Path]) -> list[Path]:
    paths = []
    for source in sources:
        if source.is_dir():
            paths += sorted(path for path in source.iterdir() if path.suffix.lower() in AUDIO_SUFFIXES)
        elif source.is_file():
            paths.append(source)
        else:
            raise ValueError(f"`--audio` {str(source)[:200]!r} is neither a file nor a folder.")
    if not paths:
        raise ValueError(f"`--audio` names no {'/'.join(AUDIO_SUFFIXES)} file.")
    if len(paths) > MAX_AUDIO_FILES:
        raise ValueError(f"`--audio` names {len(paths)} files; the limit is {MAX_AUDIO_FILES}.")
    return paths


def load_recorded_audio(sources: Sequence[Path]) -> list[RecordedClip]:
    """Read WAV/FLAC/OGG files (and the audio files of folders), checked before any request is sent.

    Each file is bounded and decoded with the server's own checks (size, mono, sample rate,
    0.1-30 s; :func:`s2i.audio.decode_audio_bytes`) and resampled to 16 kHz with
    :func:`s2i.audio.prepare_audio`, as a client sending samples does; a bad file stops the
    bench with the file's name and what is wrong, before the load starts.
    """
    from s2i.audio import MAX_AUDIO_BYTES, InvalidInputError, decode_audio_bytes

    clips = []
    for path in _audio_paths(sources):
        size = path.stat().st_size
        if size > MAX_AUDIO_BYTES:
            raise ValueError(f"`--audio` {path.name!r} is {size} bytes; the limit is {MAX_AUDIO_BYTES} bytes.")
        data = path.read_bytes()
        try:
            samples, rate = decode_audio_bytes(data, field=path.name)
            if samples.ndim != 1:
                raise InvalidInputError(path.name, f"has {samples.shape[1]} channels; send mono audio.")
            clips.append(RecordedClip(path, data, prepare_audio(samples, rate, field=path.name)))
        except InvalidInputError as e:
            raise ValueError(f"`--audio` {e}") from e
    return clips


def whisper_workload(
    clips: Sequence[tuple[np.ndarray, int]], max_new_tokens: int, checkpoint_dir: Path | None = None
) -> Workload:
    """Translate the clips round-robin with a fixed token budget (random models never stop early)."""
    prepared = [prepare_audio(samples, rate) for samples, rate in clips]

    def factory(index: int):
        samples = prepared[index % len(prepared)]
        inputs = [
            (names.AUDIO_SAMPLES, "FP32", samples[None, :]),
            (names.SAMPLE_RATE_HZ, "INT32", np.array([[16_000]], np.int32)),
            (names.MAX_NEW_TOKENS, "INT32", np.array([[max_new_tokens]], np.int32)),
        ]
        return names.WHISPER, inputs, [names.TOKEN_IDS]

    def check(response) -> None:
        token_ids = response.as_numpy(names.TOKEN_IDS)
        if token_ids is None or token_ids.size == 0:
            raise ValueError("`token_ids` came back empty")

    baseline = None
    if checkpoint_dir is not None:
        from s2i.stages.whisper.reference import WhisperReference

        reference = WhisperReference(checkpoint_dir)

        def baseline(index: int) -> None:
            reference.generate(prepared[index % len(prepared)], max_new_tokens=max_new_tokens)

    return Workload(names.WHISPER, factory, check, baseline)


def pipeline_workload(
    clips: Sequence[bytes],
    *,
    num_inference_steps: int,
    max_new_tokens: int,
    checkpoints: dict[str, Path] | None = None,
    preview_every: int | None = None,
) -> Workload:
    """The whole ``speech_to_image`` ensemble, one audio file per request, a different seed per request.

    With ``preview_every`` (0 for no previews), ``speech_to_image_stream`` instead: the same
    request streamed, timed to its first ``text`` and ``preview`` messages and to its ``image``.
    """
    from s2i.client import operations

    streaming = preview_every is not None

    def operation(index: int):
        request = operations.speech_to_image(
            clips[index % len(clips)],
            seed=index,
            num_inference_steps=num_inference_steps,
            max_new_tokens=max_new_tokens,
            model=names.SPEECH_TO_IMAGE_STREAM if streaming else names.SPEECH_TO_IMAGE,
        )
        if streaming:
            request.inputs.append(operations._int32(names.PREVIEW_EVERY, preview_every))
            request.outputs.extend([names.EVENT, names.STEP])
        return request

    def factory(index: int):
        request = operation(index)
        return request.model, list(request.inputs), list(request.outputs)

    def check(response) -> None:
        png = response.as_numpy(names.PNG)
        if png is None or png.size != 1 or not png.reshape(-1)[0].startswith(b"\x89PNG"):
            raise ValueError("`png` came back empty or not a PNG")

    baseline = None
    if checkpoints is not None and not streaming:
        from s2i.pipeline.reference import ReferencePipeline

        reference = ReferencePipeline(checkpoints)

        def baseline(index: int) -> None:
            reference.run(
                clips[index % len(clips)],
                seed=index,
                num_inference_steps=num_inference_steps,
                max_new_tokens=max_new_tokens,
            )

    model = names.SPEECH_TO_IMAGE_STREAM if streaming else names.SPEECH_TO_IMAGE
    output_bytes = {} if streaming else {names.PNG: MAX_PNG_BYTES}
    return Workload(model, factory, check, baseline, streaming=streaming, output_bytes=output_bytes)


def stage_workload(url, model_name: str, dynamic_size: int = 1, seed: int = 0) -> Workload:
    """Random inputs for any one model, shaped from its config (``-1`` axes become ``dynamic_size``).

    ``url`` is ``host:port``, a :class:`~s2i.client.transport.Connection` (headers, TLS, admin key:
    the model-config API is restricted in a hardened deployment) or a
    :class:`~s2i.benchmarks.protocols.Endpoint` (the config is read over its protocol).
    """
    from s2i.benchmarks.protocols import as_endpoint
    from s2i.model_repository.config import TRITON_TO_NUMPY

    config = as_endpoint(url).call("get_model_config", model_name)
    config = config.get("config", config)  # gRPC wraps the config, HTTP returns it
    batched = int(config.get("max_batch_size", 0)) > 0
    rng = np.random.default_rng(seed)
    tensors = []
    for tensor in config["input"]:
        if tensor.get("optional"):
            continue
        datatype = tensor["data_type"].removeprefix("TYPE_").replace("STRING", "BYTES")
        shape = ([1] if batched else []) + [dynamic_size if int(d) == -1 else int(d) for d in tensor["dims"]]
        if datatype == "BYTES":
            value = np.full(shape, b"benchmark", dtype=np.object_)
        elif datatype.startswith("FP"):
            value = rng.standard_normal(shape).astype(TRITON_TO_NUMPY[datatype])
        else:
            value = rng.integers(0, 100, size=shape).astype(TRITON_TO_NUMPY[datatype])
        tensors.append((tensor["name"], datatype, value))
    outputs = [tensor["name"] for tensor in config["output"]]

    def factory(index: int):
        return model_name, tensors, outputs

    def check(response) -> None:
        for name in outputs:
            value = response.as_numpy(name)
            if value is None or value.size == 0:
                raise ValueError(f"`{name}` came back empty")

    return Workload(model_name, factory, check, output_bytes=_fixed_output_bytes(config))


def _fixed_output_bytes(config: dict) -> dict[str, int]:
    """Outputs whose size the config fixes (no ``-1`` axis, not BYTES): they fit a region sized up front."""
    from s2i.model_repository.config import TRITON_TO_NUMPY

    sizes = {}
    for tensor in config["output"]:
        datatype = tensor["data_type"].removeprefix("TYPE_")
        dims = [int(d) for d in tensor["dims"]]
        if datatype in ("STRING", "BYTES") or any(d < 0 for d in dims):
            continue
        sizes[tensor["name"]] = int(np.prod([1, *dims])) * np.dtype(TRITON_TO_NUMPY[datatype]).itemsize
    return sizes
