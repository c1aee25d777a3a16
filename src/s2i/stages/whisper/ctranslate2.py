"""Import a CTranslate2 / faster-whisper Whisper model into the Hugging Face layout.

Teams that fine-tuned Whisper for faster-whisper ship a folder with ``model.bin``
(CTranslate2's binary weights), ``config.json`` (suppress ids, language ids,
alignment heads), ``vocabulary.json`` and often ``tokenizer.json`` /
``preprocessor_config.json``. :func:`import_whisper_ctranslate2` turns it into a
``WhisperForConditionalGeneration`` checkpoint (safetensors, ``config.json``,
``generation_config.json``, tokenizer and feature-extractor files) that
``s2i convert --whisper`` takes like any other.

``model.bin`` is read here without the ``ctranslate2`` package. Its layout
(binary version 6, little endian)::

    u32 binary_version, str spec_name, u32 spec_revision, u32 num_variables,
    num_variables x (str name, u8 rank, rank x u32 dim, u8 dtype_id, u32 num_bytes, bytes),
    u32 num_aliases, num_aliases x (str alias, str target)

where ``str`` is ``u16 length`` (including a trailing NUL) then the UTF-8 bytes and
the NUL. Variable names are CTranslate2's spec scopes (``encoder/layer_0/ffn/linear_0/weight``);
the naming is inverted back to transformers' module names below: CTranslate2's
converter fuses q/k/v projections into one matrix (k/v for cross-attention) and
stores a zero bias for the bias-free ``k_proj``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

LOGGER = logging.getLogger(__name__)

# Versions 5 and 6 share the variable layout read here (dtype id + byte count, aliases).
SUPPORTED_BINARY_VERSIONS = (5, 6)
WHISPER_SPEC_NAME = "WhisperSpec"
# ctranslate2/specs/model_spec.py: `_dtype_to_type_id`; bfloat16 is read as raw 16-bit words.
DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
BFLOAT16_ID = 5
# The decoder's activation enum value for exact GELU (ctranslate2 `Activation.GELU`).
GELU_ACTIVATION = 3
# Bounds checked before allocating, so a corrupt header fails fast instead of reading gigabytes.
MAX_RANK = 8
MAX_VARIABLES = 100_000
# Arrays from this size on are memory-mapped instead of read (a large-v3 model.bin is 3 GB).
MEMMAP_MIN_BYTES = 1 << 20
OUTPUT_DTYPES = ("float32", "float16")
EOT = "<|endoftext|>"


class CTranslate2FormatError(ValueError):
    """``model.bin`` or its companion files are not a CTranslate2 Whisper model this importer reads."""


@dataclasses.dataclass(frozen=True)
class CTranslate2Model:
    """The content of one ``model.bin``: spec, revision and named arrays (aliases resolved)."""

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise CTranslate2FormatError(f"`model.bin` ends inside {what} (wanted {size} bytes, got {len(data)}).")
    return data


def _read_uint(stream: BinaryIO, fmt: str, what: str) -> int:
    return struct.unpack("<" + fmt, _read_exact(stream, struct.calcsize(fmt), what))[0]


def _read_string(stream: BinaryIO, what: str) -> str:
    length = _read_uint(stream, "H", what)
    raw = _read_exact(stream, length, what)
    if length == 0 or raw[-1] != 0:
        raise CTranslate2FormatError(f"`model.bin` {what} is not NUL-terminated.")
    return raw[:-1].decode("utf-8")


def _read_data(stream: BinaryIO, path: Path, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The variable's array; large ones are mapped from the file, so only their float32 copies take memory."""
    num_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    offset = stream.tell()
    if num_bytes < MEMMAP_MIN_BYTES:
        return np.frombuffer(_read_exact(stream, num_bytes, f"the data of `{name}`"), dtype=dtype).reshape(shape)
    if offset + num_bytes > path.stat().st_size:
        raise CTranslate2FormatError(f"`model.bin` ends inside the data of `{name}`.")
    stream.seek(num_bytes, 1)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _read_variable(stream: BinaryIO, path: Path) -> tuple[str, np.ndarray]:
    name = _read_string(stream, "a variable name")
    rank = _read_uint(stream, "B", f"the rank of `{name}`")
    if rank > MAX_RANK:
        raise CTranslate2FormatError(f"`{name}` has rank {rank}; at most {MAX_RANK} is supported.")
    shape = tuple(_read_uint(stream, "I", f"the shape of `{name}`") for _ in range(rank))
    type_id = _read_uint(stream, "B", f"the dtype of `{name}`")
    if type_id not in DTYPES:
        raise CTranslate2FormatError(f"`{name}` has unknown dtype id {type_id}; known: {sorted(DTYPES)}.")
    dtype = DTYPES[type_id]
    num_bytes = _read_uint(stream, "I", f"the size of `{name}`")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if num_bytes != expected:
        raise CTranslate2FormatError(f"`{name}` holds {num_bytes} bytes; shape {shape} of {dtype} needs {expected}.")
    array = _read_data(stream, path, name, dtype, shape)
    if type_id == BFLOAT16_ID:
        # bfloat16 is the upper half of a float32.
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return name, array


def read_model_bin(path: Path) -> CTranslate2Model:
    """Read CTranslate2's ``model.bin`` into named numpy arrays.

    Args:
        path: The ``model.bin`` file.

    Returns:
        The model's spec name, revision and variables; aliases point at the same arrays.

    Raises:
        CTranslate2FormatError: Unsupported binary version, truncated or inconsistent file.
    """
    path = Path(path)
    with path.open("rb") as stream:
        version = _read_uint(stream, "I", "the binary version")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise CTranslate2FormatError(
                f"`model.bin` binary version {version} is not supported (supported: {SUPPORTED_BINARY_VERSIONS})."
            )
        spec = _read_string(stream, "the spec name")
        revision = _read_uint(stream, "I", "the spec revision")
        count = _read_uint(stream, "I", "the variable count")
        if count > MAX_VARIABLES:
            raise CTranslate2FormatError(f"`model.bin` declares {count} variables; at most {MAX_VARIABLES}.")
        variables = dict(_read_variable(stream, path) for _ in range(count))
        for _ in range(_read_uint(stream, "I", "the alias count")):
            alias = _read_string(stream, "an alias name")
            target = _read_string(stream, "an alias target")
            if target not in variables:
                raise CTranslate2FormatError(f"alias `{alias}` points at unknown variable `{target}`.")
            # As CTranslate2's loader does: an alias also covers the target's quantisation scale.
            for suffix in ("", "_scale", "_zero"):
                if target + suffix in variables:
                    variables[alias + suffix] = variables[target + suffix]
        if stream.read(1):
            raise CTranslate2FormatError("`model.bin` has bytes after its last alias (a part missing or doubled?).")
    return CTranslate2Model(version, spec, revision, variables)


def dequantized(variables: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float arrays for every weight, undoing CTranslate2's int8/int16 quantisation.

    CTranslate2 stores ``round(w * scale)`` with ``scale = 127 / max|row|`` (int8, one
    scale per output row) or one scale per matrix (int16), next to ``<name>_scale``.
    """
    result = {}
    for name, array in variables.items():
        if name.endswith("_scale") or name.endswith("_zero"):
            continue
        if f"{name}_zero" in variables:
            raise CTranslate2FormatError(f"`{name}` is AWQ-quantised (`{name}_zero`); only int8/int16 are supported.")
        scale = variables.get(f"{name}_scale")
        if scale is not None:
            scale = scale.astype(np.float32)
            array = array.astype(np.float32) / scale.reshape(scale.shape + (1,) * (array.ndim - scale.ndim))
        result[name] = array
    return result


def _scalar(variables: Mapping[str, np.ndarray], name: str) -> int:
    if name not in variables:
        raise CTranslate2FormatError(f"`model.bin` has no `{name}`.")
    return int(variables[name].reshape(-1)[0])


def _layer_count(variables: Mapping[str, np.ndarray], stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(match.group(1)) for name in variables if (match := pattern.match(name))}
    if indices != set(range(len(indices))) or not indices:
        raise CTranslate2FormatError(f"`{stack}` layers are not numbered 0..n-1: {sorted(indices)}.")
    return len(indices)


def _linear(variables: Mapping[str, np.ndarray], scope: str, target: str, out: dict[str, np.ndarray]) -> None:
    out[f"{target}.weight"] = variables[f"{scope}/weight"]
    if f"{scope}/bias" in variables:
        out[f"{target}.bias"] = variables[f"{scope}/bias"]


def _layer_norm(variables: Mapping[str, np.ndarray], scope: str, target: str, out: dict[str, np.ndarray]) -> None:
    out[f"{target}.weight"] = variables[f"{scope}/gamma"]
    out[f"{target}.bias"] = variables[f"{scope}/beta"]


def _split_projections(
    variables: Mapping[str, np.ndarray], scope: str, targets: tuple[str, ...], out: dict[str, np.ndarray]
) -> None:
    """Undo ``fuse_linear``: equal row blocks, in q/k/v order; ``k_proj`` has no bias in Whisper."""
    weights = np.split(variables[f"{scope}/weight"], len(targets))
    biases = np.split(variables[f"{scope}/bias"], len(targets))
    for target, weight, bias in zip(targets, weights, biases, strict=True):
        out[f"{target}.weight"] = weight
        if target.endswith("k_proj"):
            if np.any(bias != 0):
                raise CTranslate2FormatError(f"`{scope}/bias` has a non-zero key bias; Whisper's `k_proj` has none.")
            continue
        out[f"{target}.bias"] = bias


def _attention(
    variables: Mapping[str, np.ndarray], scope: str, target: str, out: dict[str, np.ndarray], *, cross: bool
) -> None:
    if cross:
        _linear(variables, f"{scope}/linear_0", f"{target}.q_proj", out)
        _split_projections(variables, f"{scope}/linear_1", (f"{target}.k_proj", f"{target}.v_proj"), out)
        _linear(variables, f"{scope}/linear_2", f"{target}.out_proj", out)
    else:
        projections = (f"{target}.q_proj", f"{target}.k_proj", f"{target}.v_proj")
        _split_projections(variables, f"{scope}/linear_0", projections, out)
        _linear(variables, f"{scope}/linear_1", f"{target}.out_proj", out)


def _transformer_layer(
    variables: Mapping[str, np.ndarray], scope: str, target: str, out: dict[str, np.ndarray], *, decoder: bool
) -> None:
    _attention(variables, f"{scope}/self_attention", f"{target}.self_attn", out, cross=False)
    _layer_norm(variables, f"{scope}/self_attention/layer_norm", f"{target}.self_attn_layer_norm", out)
    if decoder:
        _attention(variables, f"{scope}/attention", f"{target}.encoder_attn", out, cross=True)
        _layer_norm(variables, f"{scope}/attention/layer_norm", f"{target}.encoder_attn_layer_norm", out)
    _linear(variables, f"{scope}/ffn/linear_0", f"{target}.fc1", out)
    _linear(variables, f"{scope}/ffn/linear_1", f"{target}.fc2", out)
    _layer_norm(variables, f"{scope}/ffn/layer_norm", f"{target}.final_layer_norm", out)


class _ReadRecorder(dict):
    """A dict that remembers which keys were looked up."""

    def __init__(self, data: Mapping[str, np.ndarray]) -> None:
        super().__init__(data)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> np.ndarray:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default=None):
        """Look ``key`` up and remember it."""
        self.read.add(key)
        return super().get(key, default)


def hf_state_dict(variables: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``WhisperForConditionalGeneration`` parameter names for CTranslate2 Whisper variables.

    The inverse of ctranslate2's ``WhisperLoader`` (converters/transformers.py).
    """
    out: dict[str, np.ndarray] = {}
    variables = _ReadRecorder(variables)
    try:
        for index in range(2):
            name = f"encoder/conv{index + 1}"
            _linear(variables, name, f"model.encoder.conv{index + 1}", out)
        for stack in ("encoder", "decoder"):
            target = f"model.{stack}"
            out[f"{target}.embed_positions.weight"] = variables[f"{stack}/position_encodings/encodings"]
            _layer_norm(variables, f"{stack}/layer_norm", f"{target}.layer_norm", out)
            for index in range(_layer_count(variables, stack)):
                _transformer_layer(
                    variables, f"{stack}/layer_{index}", f"{target}.layers.{index}", out, decoder=stack == "decoder"
                )
        out["model.decoder.embed_tokens.weight"] = variables["decoder/embeddings/weight"]
        out["proj_out.weight"] = variables.get("decoder/projection/weight", variables["decoder/embeddings/weight"])
    except KeyError as error:
        raise CTranslate2FormatError(f"`model.bin` lacks the Whisper variable {error}.") from None
    if "decoder/projection/bias" in variables and np.any(variables["decoder/projection/bias"] != 0):
        raise CTranslate2FormatError("`decoder/projection/bias` is non-zero; Whisper's `proj_out` has no bias.")
    # Scalars are options (heads, activation, …); a weight nobody read would be silently dropped.
    unread = sorted(name for name, array in variables.items() if array.ndim and name not in variables.read)
    if unread:
        raise CTranslate2FormatError(f"`model.bin` has weights a Whisper import does not place: {unread[:5]}.")
    return out


def _check_whisper(model: CTranslate2Model) -> None:
    if model.spec != WHISPER_SPEC_NAME:
        raise CTranslate2FormatError(f"`model.bin` holds a `{model.spec}`, not a `{WHISPER_SPEC_NAME}`.")
    activation = _scalar(model.variables, "decoder/activation")
    if activation != GELU_ACTIVATION:
        raise CTranslate2FormatError(f"`decoder/activation` is {activation}; Whisper uses GELU ({GELU_ACTIVATION}).")
    if _scalar(model.variables, "decoder/scale_embeddings"):
        raise CTranslate2FormatError("`decoder/scale_embeddings` is set; Whisper does not scale its embeddings.")


def whisper_config(variables: Mapping[str, np.ndarray], vocabulary: list[str]):
    """A ``WhisperConfig`` whose dimensions are read off the weights' shapes.

    The suppress lists live in the generation config only (``generate`` and the serving
    loop read them there), as in the tiny checkpoints.
    """
    from transformers import WhisperConfig

    embeddings = variables["decoder/embeddings/weight"]
    if embeddings.shape[0] != len(vocabulary):
        raise CTranslate2FormatError(
            f"`vocabulary.json` has {len(vocabulary)} tokens but the embeddings have {embeddings.shape[0]} rows."
        )
    ids = {token: index for index, token in enumerate(vocabulary)}
    tied = np.array_equal(variables.get("decoder/projection/weight", embeddings), embeddings)
    return WhisperConfig(
        vocab_size=embeddings.shape[0],
        num_mel_bins=variables["encoder/conv1/weight"].shape[1],
        d_model=embeddings.shape[1],
        encoder_layers=_layer_count(variables, "encoder"),
        decoder_layers=_layer_count(variables, "decoder"),
        encoder_attention_heads=_scalar(variables, "encoder/num_heads"),
        decoder_attention_heads=_scalar(variables, "decoder/num_heads"),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=ids[EOT],
        bos_token_id=ids[EOT],
        eos_token_id=ids[EOT],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        tie_word_embeddings=tied,
    )


def whisper_generation_config(ct2_config: Mapping, vocabulary: list[str], max_length: int):
    """The ``GenerationConfig`` that makes ``generate`` decode as CTranslate2's Whisper does.

    ``suppress_ids`` / ``suppress_ids_begin`` / ``lang_ids`` / ``alignment_heads`` of
    CTranslate2's ``config.json`` are the fields its converter took from this config.
    """
    from transformers import GenerationConfig

    ids = {token: index for index, token in enumerate(vocabulary)}
    required = (EOT, "<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|notimestamps|>")
    missing = [token for token in required if token not in ids]
    if missing:
        raise CTranslate2FormatError(f"`vocabulary.json` lacks the Whisper tokens {missing}.")
    lang_ids = [int(index) for index in ct2_config.get("lang_ids") or []]
    if any(not 0 <= index < len(vocabulary) for index in lang_ids):
        raise CTranslate2FormatError("`lang_ids` in `config.json` has ids outside the vocabulary.")
    optional = {key: ids[token] for key, token in (("prev_sot_token_id", "<|startofprev|>"),) if token in ids}
    return GenerationConfig(
        bos_token_id=ids[EOT],
        eos_token_id=ids[EOT],
        pad_token_id=ids[EOT],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        max_length=max_length,
        suppress_tokens=[int(index) for index in ct2_config.get("suppress_ids") or []],
        begin_suppress_tokens=[int(index) for index in ct2_config.get("suppress_ids_begin") or []],
        lang_to_id={vocabulary[index]: index for index in lang_ids},
        task_to_id={"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        alignment_heads=[list(pair) for pair in ct2_config.get("alignment_heads") or []],
        is_multilingual=bool(lang_ids),
        max_initial_timestamp_index=50,
        return_timestamps=False,
        **optional,
    )


def _load_tokenizer(source: Path, vocabulary: list[str]):
    """The model's fast tokenizer: its ``tokenizer.json``, else the openai-whisper assets if they match."""
    from transformers import WhisperTokenizerFast

    tokenizer_file = source / "tokenizer.json"
    if tokenizer_file.is_file():
        added = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("added_tokens", [])
        specials = [entry["content"] for entry in added if entry.get("special") and entry["content"] != EOT]
        tokenizer = WhisperTokenizerFast(
            tokenizer_file=str(tokenizer_file),
            unk_token=EOT,
            bos_token=EOT,
            eos_token=EOT,
            pad_token=EOT,
            additional_special_tokens=specials,
            model_max_length=1024,
        )
    else:
        import tempfile

        from s2i.stages.whisper.tokenizer_files import build_whisper_tokenizer

        LOGGER.info("No `tokenizer.json` in %s: using openai-whisper's multilingual tokenizer", source)
        with tempfile.TemporaryDirectory() as staging:
            tokenizer = build_whisper_tokenizer(Path(staging))
    if len(tokenizer) != len(vocabulary):
        raise CTranslate2FormatError(
            f"the tokenizer has {len(tokenizer)} tokens but `vocabulary.json` has {len(vocabulary)}."
        )
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(vocabulary))))
    mismatched = [index for index, (a, b) in enumerate(zip(tokens, vocabulary, strict=True)) if a != b]
    if mismatched:
        raise CTranslate2FormatError(
            f"the tokenizer ({len(tokenizer)} tokens) disagrees with `vocabulary.json` ({len(vocabulary)} tokens)"
            f" at ids {mismatched[:5]}."
        )
    return tokenizer


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise CTranslate2FormatError(f"the CTranslate2 model folder has no `{what}` ({path}).")
    return json.loads(path.read_text(encoding="utf-8"))


def _load_vocabulary(source: Path) -> list[str]:
    if (source / "vocabulary.json").is_file():
        return _read_json(source / "vocabulary.json", "vocabulary.json")
    if (source / "vocabulary.txt").is_file():
        return (source / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    raise CTranslate2FormatError(f"the CTranslate2 model folder has no `vocabulary.json` ({source}).")


def _feature_extractor(source: Path, num_mel_bins: int):
    """The folder's ``preprocessor_config.json`` if it has one, else Whisper's default front end (as faster-whisper)."""
    from transformers import WhisperFeatureExtractor

    if not (source / "preprocessor_config.json").is_file():
        return WhisperFeatureExtractor(feature_size=num_mel_bins)
    extractor = WhisperFeatureExtractor.from_pretrained(source)
    if extractor.feature_size != num_mel_bins:
        raise CTranslate2FormatError(
            f"`feature_size` in `preprocessor_config.json` is {extractor.feature_size};"
            f" the encoder takes {num_mel_bins} mel bins."
        )
    return extractor


def import_whisper_ctranslate2(source: Path, output_dir: Path, dtype: str = "float32") -> Path:
    """Write the Hugging Face checkpoint of a CTranslate2 / faster-whisper Whisper model folder.

    Args:
        source: Folder with ``model.bin``, ``config.json`` and ``vocabulary.json``
            (``tokenizer.json`` and ``preprocessor_config.json`` used when present).
        output_dir: Destination folder (created); ``s2i convert --whisper`` takes it.
        dtype: ``float32`` (what export and training expect) or ``float16`` (half the size).

    Returns:
        ``output_dir``.

    Raises:
        CTranslate2FormatError: The folder is not a Whisper model this importer reads.
    """
    import torch
    from transformers import WhisperForConditionalGeneration

    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"`dtype` must be one of {OUTPUT_DTYPES}, got {dtype!r}.")
    source, output_dir = Path(source), Path(output_dir)
    model_file = source / "model.bin"
    if not model_file.is_file():
        raise CTranslate2FormatError(f"the CTranslate2 model folder has no `model.bin` ({model_file}).")
    ct2_config = _read_json(source / "config.json", "config.json")
    vocabulary = _load_vocabulary(source)
    tokenizer = _load_tokenizer(source, vocabulary)
    ct2_model = read_model_bin(model_file)
    _check_whisper(ct2_model)
    variables = dequantized(ct2_model.variables)
    config = whisper_config(variables, vocabulary)
    state = {name: torch.from_numpy(array.astype(np.float32)) for name, array in hf_state_dict(variables).items()}
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    # strict: every parameter of the architecture must come from model.bin, and nothing may be left over.
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(getattr(torch, dtype)).eval()
    model.generation_config = whisper_generation_config(ct2_config, vocabulary, config.max_target_positions)
    feature_extractor = _feature_extractor(source, config.num_mel_bins)
    # Everything is checked above, so a refused folder leaves no partial output.
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    feature_extractor.save_pretrained(output_dir)
    LOGGER.info(
        "Imported %s (%s, binary version %d) into %s as %s",
        source,
        ct2_model.spec,
        ct2_model.binary_version,
        output_dir,
        dtype,
    )
    return output_dir
