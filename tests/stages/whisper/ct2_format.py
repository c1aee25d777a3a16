"""Test helpers: write CTranslate2's ``model.bin`` and a faster-whisper folder from a tiny HF Whisper.

The writer follows the documented layout (see ``s2i.stages.whisper.ctranslate2``) so the
reader is tested on files made without the ``ctranslate2`` package, and the HF -> CTranslate2
naming below is the forward direction of what the importer inverts (ctranslate2's
``WhisperLoader``: q/k/v fused, a zero bias for ``k_proj``, projection aliased to the embeddings).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}
BFLOAT16 = "bfloat16"


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def encode_variable(name: str, array: np.ndarray, dtype: str | None = None) -> bytes:
    """One variable record; ``dtype="bfloat16"`` stores a float32 array's upper halves."""
    if dtype == BFLOAT16:
        payload, type_id = (np.ascontiguousarray(array, np.float32).view(np.uint32) >> 16).astype("<u2"), 5
    else:
        payload, type_id = np.ascontiguousarray(array), TYPE_IDS[array.dtype.name]
    header = _string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
    return header + struct.pack("<BI", type_id, payload.nbytes) + payload.tobytes()


def write_model_bin(
    path: Path,
    variables: Mapping[str, np.ndarray],
    aliases: Mapping[str, str] = (),
    *,
    spec: str = "WhisperSpec",
    revision: int = 3,
    version: int = 6,
    bfloat16: tuple[str, ...] = (),
) -> Path:
    body = struct.pack("<I", version) + _string(spec) + struct.pack("<II", revision, len(variables))
    for name in sorted(variables):
        body += encode_variable(name, variables[name], BFLOAT16 if name in bfloat16 else None)
    body += struct.pack("<I", len(aliases))
    for alias, target in dict(aliases).items():
        body += _string(alias) + _string(target)
    Path(path).write_bytes(body)
    return Path(path)


def _fuse(weights: list[np.ndarray], biases: list[np.ndarray | None], scope: str, out: dict) -> None:
    out[f"{scope}/weight"] = np.concatenate(weights)
    out[f"{scope}/bias"] = np.concatenate(
        [bias if bias is not None else np.zeros(w.shape[0], w.dtype) for w, bias in zip(weights, biases, strict=True)]
    )


def _hf_layer_to_ct2(state: Mapping[str, np.ndarray], hf: str, ct2: str, out: dict, decoder: bool) -> None:
    def linear(module: str, scope: str) -> None:
        out[f"{scope}/weight"] = state[f"{module}.weight"]
        out[f"{scope}/bias"] = state[f"{module}.bias"]

    def norm(module: str, scope: str) -> None:
        out[f"{scope}/gamma"] = state[f"{module}.weight"]
        out[f"{scope}/beta"] = state[f"{module}.bias"]

    attn = f"{hf}.self_attn"
    _fuse(
        [state[f"{attn}.{p}_proj.weight"] for p in "qkv"],
        [state.get(f"{attn}.{p}_proj.bias") for p in "qkv"],
        f"{ct2}/self_attention/linear_0",
        out,
    )
    linear(f"{attn}.out_proj", f"{ct2}/self_attention/linear_1")
    norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
    if decoder:
        cross = f"{hf}.encoder_attn"
        linear(f"{cross}.q_proj", f"{ct2}/attention/linear_0")
        _fuse(
            [state[f"{cross}.{p}_proj.weight"] for p in "kv"],
            [state.get(f"{cross}.{p}_proj.bias") for p in "kv"],
            f"{ct2}/attention/linear_1",
            out,
        )
        linear(f"{cross}.out_proj", f"{ct2}/attention/linear_2")
        norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
    linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
    linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
    norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")


def ct2_variables(model) -> dict[str, np.ndarray]:
    """CTranslate2 Whisper variables of a ``WhisperForConditionalGeneration`` (float32)."""
    state = {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}
    config = model.config
    out: dict[str, np.ndarray] = {}
    for index in (1, 2):
        out[f"encoder/conv{index}/weight"] = state[f"model.encoder.conv{index}.weight"]
        out[f"encoder/conv{index}/bias"] = state[f"model.encoder.conv{index}.bias"]
    for stack, layers, heads in (
        ("encoder", config.encoder_layers, config.encoder_attention_heads),
        ("decoder", config.decoder_layers, config.decoder_attention_heads),
    ):
        out[f"{stack}/position_encodings/encodings"] = state[f"model.{stack}.embed_positions.weight"]
        out[f"{stack}/layer_norm/gamma"] = state[f"model.{stack}.layer_norm.weight"]
        out[f"{stack}/layer_norm/beta"] = state[f"model.{stack}.layer_norm.bias"]
        out[f"{stack}/num_heads"] = np.array(heads, np.int16)
        for index in range(layers):
            _hf_layer_to_ct2(state, f"model.{stack}.layers.{index}", f"{stack}/layer_{index}", out, stack == "decoder")
    out["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"]
    out["decoder/activation"] = np.array(3, np.int8)
    out["decoder/scale_embeddings"] = np.array(0, np.int8)
    out["decoder/pre_norm"] = np.array(1, np.int8)
    return out


def write_faster_whisper_folder(checkpoint: Path, output: Path, *, float16: bool = False) -> Path:
    """A faster-whisper model folder (model.bin, config.json, vocabulary.json, tokenizer.json) of an HF checkpoint."""
    from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperTokenizerFast

    model = WhisperForConditionalGeneration.from_pretrained(checkpoint).eval()
    variables = ct2_variables(model)
    if float16:
        variables = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in variables.items()}
    output.mkdir(parents=True, exist_ok=True)
    write_model_bin(output / "model.bin", variables, {"decoder/projection/weight": "decoder/embeddings/weight"})
    generation = GenerationConfig.from_pretrained(checkpoint)
    config = {
        "alignment_heads": [[1, 0]],
        "lang_ids": sorted(generation.lang_to_id.values()),
        "suppress_ids": list(generation.suppress_tokens),
        "suppress_ids_begin": list(generation.begin_suppress_tokens),
    }
    (output / "config.json").write_text(json.dumps(config))
    tokenizer = WhisperTokenizerFast.from_pretrained(checkpoint)
    vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    (output / "vocabulary.json").write_text(json.dumps(vocabulary, ensure_ascii=False))
    shutil.copyfile(Path(checkpoint) / "tokenizer.json", output / "tokenizer.json")
    return output
