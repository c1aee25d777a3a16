"""The CTranslate2 importer: model.bin reader on synthetic files, naming inversion on a tiny Whisper."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from s2i.audio import prepare_audio
from s2i.stages.whisper.ctranslate2 import (
    CTranslate2FormatError,
    dequantized,
    import_whisper_ctranslate2,
    read_model_bin,
)
from tests.stages.whisper.ct2_format import encode_variable, write_faster_whisper_folder, write_model_bin

RNG = np.random.default_rng(0)
VARIABLES = {
    "a/float32": RNG.standard_normal((3, 4)).astype(np.float32),
    "a/float16": RNG.standard_normal((5,)).astype(np.float16),
    "b/int32": np.arange(6, dtype=np.int32).reshape(2, 3),
    "b/conv": RNG.standard_normal((2, 3, 3)).astype(np.float32),
    "c/num_heads": np.array(8, np.int16),
    "c/flag": np.array(1, np.int8),
    # Over MEMMAP_MIN_BYTES: mapped from the file instead of read.
    "d/big": RNG.standard_normal((520, 512)).astype(np.float32),
}


def test_read_model_bin_returns_every_variable_when_written_in_the_format(tmp_path):
    path = write_model_bin(tmp_path / "model.bin", VARIABLES, {"z/alias": "a/float32"}, spec="TinySpec", revision=7)
    model = read_model_bin(path)
    assert (model.binary_version, model.spec, model.revision) == (6, "TinySpec", 7)
    assert sorted(model.variables) == sorted([*VARIABLES, "z/alias"])
    for name, array in VARIABLES.items():
        assert model.variables[name].dtype == array.dtype
        np.testing.assert_array_equal(model.variables[name], array)
    np.testing.assert_array_equal(model.variables["z/alias"], VARIABLES["a/float32"])
    assert model.variables["c/num_heads"].shape == ()


def test_read_model_bin_aliases_the_scale_too_when_the_target_is_quantised(tmp_path):
    quantized = {"e/weight": np.array([[127, -5]], np.int8), "e/weight_scale": np.array([63.5], np.float32)}
    path = write_model_bin(tmp_path / "model.bin", quantized, {"p/weight": "e/weight"})
    weights = dequantized(read_model_bin(path).variables)
    np.testing.assert_array_equal(weights["p/weight"], weights["e/weight"])
    np.testing.assert_allclose(weights["p/weight"], [[2.0, -5 / 63.5]])


def test_read_model_bin_widens_bfloat16_to_float32_when_stored_as_bfloat16(tmp_path):
    # Values exactly representable in bfloat16 (8 mantissa bits) come back unchanged.
    values = np.array([[1.0, -2.5, 0.15625], [196608.0, -7.0, 0.0]], np.float32)
    path = write_model_bin(tmp_path / "model.bin", {"w": values}, bfloat16=("w",))
    read = read_model_bin(path).variables["w"]
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, values)


def test_dequantized_divides_by_the_row_scale_when_weights_are_int8():
    weight = np.array([[0.5, -1.0], [0.02, 0.01]], np.float32)
    scale = (127.0 / np.abs(weight).max(axis=1)).astype(np.float32)
    quantized = np.rint(weight * scale[:, None]).astype(np.int8)
    result = dequantized({"l/weight": quantized, "l/weight_scale": scale, "l/bias": np.ones(2, np.float32)})
    assert sorted(result) == ["l/bias", "l/weight"]
    # One quantisation step of each row at most.
    assert np.all(np.abs(result["l/weight"] - weight) <= 0.5 / scale[:, None] + 1e-7)


def test_dequantized_refuses_awq_weights_when_a_zero_point_is_present():
    with pytest.raises(CTranslate2FormatError, match="`l/weight` is AWQ-quantised"):
        dequantized({"l/weight": np.zeros((2, 2), np.int8), "l/weight_zero": np.zeros(2, np.float32)})


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda data: struct.pack("<I", 9) + data[4:], "binary version 9 is not supported"),
        (lambda data: data[:-20], "ends inside"),
        (lambda data: data[: data.index(b"d/big") + 5 + 50], "ends inside the data of `d/big`"),
        (lambda data: data + b"\0", "bytes after its last alias"),
        (lambda data: data.replace(struct.pack("<BI", 0, 48), struct.pack("<BI", 0, 40), 1), "holds 40 bytes"),
    ],
)
def test_read_model_bin_names_the_problem_when_the_file_is_damaged(tmp_path, mutate, message):
    data = write_model_bin(tmp_path / "good.bin", VARIABLES).read_bytes()
    (tmp_path / "bad.bin").write_bytes(mutate(data))
    with pytest.raises(CTranslate2FormatError, match=message):
        read_model_bin(tmp_path / "bad.bin")


def test_encode_variable_layout_matches_the_documented_record():
    record = encode_variable("w", np.array([1.0], np.float32))
    assert record == struct.pack("<H", 2) + b"w\0" + struct.pack("<BIBI", 1, 1, 0, 4) + struct.pack("<f", 1.0)


# --- a tiny HF Whisper written as a faster-whisper folder, imported back ---


@pytest.fixture(scope="module")
def tiny_ct2(checkpoints, tmp_path_factory):
    return write_faster_whisper_folder(checkpoints["whisper"], tmp_path_factory.mktemp("tiny-ct2"))


@pytest.fixture(scope="module")
def imported(tiny_ct2, tmp_path_factory):
    return import_whisper_ctranslate2(tiny_ct2, tmp_path_factory.mktemp("tiny-imported"))


def test_import_restores_every_weight_when_the_folder_came_from_an_hf_checkpoint(checkpoints, imported):
    from safetensors.numpy import load_file

    original = load_file(checkpoints["whisper"] / "model.safetensors")
    restored = load_file(imported / "model.safetensors")
    # proj_out is tied to the embeddings: saved once, like the original.
    assert sorted(restored) == sorted(original)
    for name, array in original.items():
        np.testing.assert_array_equal(restored[name], array, err_msg=name)


def test_import_writes_the_config_and_generation_rules_when_read_from_ct2_files(checkpoints, imported):
    from transformers import GenerationConfig, WhisperConfig

    keys = ("vocab_size", "num_mel_bins", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads")
    keys += ("decoder_ffn_dim", "max_source_positions", "max_target_positions", "decoder_start_token_id")
    original, result = WhisperConfig.from_pretrained(checkpoints["whisper"]), WhisperConfig.from_pretrained(imported)
    assert {key: getattr(result, key) for key in keys} == {key: getattr(original, key) for key in keys}
    original = GenerationConfig.from_pretrained(checkpoints["whisper"])
    result = GenerationConfig.from_pretrained(imported)
    for key in ("suppress_tokens", "begin_suppress_tokens", "lang_to_id", "task_to_id", "no_timestamps_token_id"):
        assert getattr(result, key) == getattr(original, key), key
    assert result.lang_to_id["<|hi|>"] == 50276


def test_import_gives_the_same_tokens_as_the_original_when_generating(checkpoints, imported, hindi_clips):
    from s2i.stages.whisper.reference import WhisperReference

    samples = prepare_audio(hindi_clips[0].samples, hindi_clips[0].sample_rate_hz)
    expected = WhisperReference(checkpoints["whisper"]).generate(samples, max_new_tokens=12)
    assert WhisperReference(imported).generate(samples, max_new_tokens=12) == expected


# Bound of |imported - original| relative to the largest weight of the matrix (None: exact).
QUANTISATION_BOUND = {"float32": None, "int8": 1 / 127, "int16": 1 / 2**10, "bfloat16": 2**-8}


@pytest.mark.parametrize("quantization", sorted(QUANTISATION_BOUND))
def test_import_inverts_ctranslate2s_own_converter_when_weights_are_quantised(checkpoints, tmp_path, quantization):
    from safetensors.numpy import load_file

    converters = pytest.importorskip("ctranslate2.converters", reason="ctranslate2 is in the `dev` extra")
    source = tmp_path / "ct2"
    converter = converters.TransformersConverter(str(checkpoints["whisper"]), copy_files=["tokenizer.json"])
    converter.convert(str(source), quantization=quantization)
    original = load_file(checkpoints["whisper"] / "model.safetensors")
    restored = load_file(import_whisper_ctranslate2(source, tmp_path / "hf") / "model.safetensors")
    assert sorted(restored) == sorted(original)
    bound = QUANTISATION_BOUND[quantization]
    for name, array in original.items():
        if bound is None:
            np.testing.assert_array_equal(restored[name], array, err_msg=name)
        else:
            assert np.abs(restored[name] - array).max() <= bound * np.abs(array).max() + 1e-7, name


def test_import_keeps_half_precision_when_asked_for_float16(tiny_ct2, tmp_path):
    from safetensors.numpy import load_file

    output = import_whisper_ctranslate2(tiny_ct2, tmp_path / "fp16", dtype="float16")
    weights = load_file(output / "model.safetensors")
    assert {array.dtype for array in weights.values()} == {np.dtype(np.float16)}


def test_import_uses_openai_whispers_tokenizer_when_the_folder_has_only_a_vocabulary_txt(tiny_ct2, imported, tmp_path):
    from transformers import WhisperTokenizerFast

    source = tmp_path / "old-layout"
    source.mkdir()
    for name in ("model.bin", "config.json"):
        (source / name).symlink_to(tiny_ct2 / name)
    # CTranslate2 2.x wrote one token per line; faster-whisper folders may lack tokenizer.json.
    vocabulary = json.loads((tiny_ct2 / "vocabulary.json").read_text())
    (source / "vocabulary.txt").write_text("".join(token + "\n" for token in vocabulary), encoding="utf-8")
    output = import_whisper_ctranslate2(source, tmp_path / "out")
    text = "नमस्ते, आज मौसम बहुत अच्छा है. A child is playing."
    ids = WhisperTokenizerFast.from_pretrained(output)(text).input_ids
    assert ids == WhisperTokenizerFast.from_pretrained(imported)(text).input_ids
    assert ids[:2] == [50258, 50363]


def test_import_refuses_a_model_that_is_not_whisper_when_the_spec_differs(tiny_ct2, tmp_path):
    source = tmp_path / "other"
    source.mkdir()
    for name in ("config.json", "vocabulary.json", "tokenizer.json"):
        (source / name).write_bytes((tiny_ct2 / name).read_bytes())
    write_model_bin(source / "model.bin", VARIABLES, spec="TransformerSpec")
    with pytest.raises(CTranslate2FormatError, match="holds a `TransformerSpec`, not a `WhisperSpec`"):
        import_whisper_ctranslate2(source, tmp_path / "out")


def test_import_refuses_weights_it_cannot_place_when_model_bin_has_extra_ones(tiny_ct2, tmp_path):
    source = tmp_path / "extra"
    source.mkdir()
    for name in ("config.json", "vocabulary.json", "tokenizer.json"):
        (source / name).symlink_to(tiny_ct2 / name)
    variables = dict(read_model_bin(tiny_ct2 / "model.bin").variables)
    variables["encoder/adapter/weight"] = np.zeros((2, 2), np.float32)
    write_model_bin(source / "model.bin", variables)
    with pytest.raises(CTranslate2FormatError, match=r"does not place: \['encoder/adapter/weight'\]"):
        import_whisper_ctranslate2(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_refuses_a_front_end_of_another_mel_count_leaving_no_output(tiny_ct2, tmp_path):
    from transformers import WhisperFeatureExtractor

    source = tmp_path / "128-mels"
    source.mkdir()
    for name in ("model.bin", "config.json", "vocabulary.json", "tokenizer.json"):
        (source / name).symlink_to(tiny_ct2 / name)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(source)
    with pytest.raises(CTranslate2FormatError, match="`feature_size` in `preprocessor_config.json` is 128"):
        import_whisper_ctranslate2(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_refuses_a_vocabulary_that_does_not_fit_the_embeddings(tiny_ct2, tmp_path):
    source = tmp_path / "short-vocab"
    source.mkdir()
    for name in ("model.bin", "config.json", "tokenizer.json"):
        (source / name).symlink_to(tiny_ct2 / name)
    vocabulary = json.loads((tiny_ct2 / "vocabulary.json").read_text())
    (source / "vocabulary.json").write_text(json.dumps(vocabulary[:-1]))
    with pytest.raises(CTranslate2FormatError, match="tokenizer has 51865 tokens but `vocabulary.json` has 51864"):
        import_whisper_ctranslate2(source, tmp_path / "out")


def test_cli_import_whisper_writes_a_checkpoint_convert_takes_when_given_a_ct2_folder(tiny_ct2, tmp_path, capsys):
    from s2i.cli import main
    from s2i.stages.whisper.stage import WhisperStage

    assert main(["import-whisper", "--ctranslate2", str(tiny_ct2), "--output", str(tmp_path / "hf")]) == 0
    assert f"s2i convert --whisper {tmp_path / 'hf'}" in capsys.readouterr().out
    present = {path.name for path in (tmp_path / "hf").iterdir()}
    assert set(WhisperStage.required_assets) | {"generation_config.json", "tokenizer.json"} <= present


def test_cli_import_whisper_exits_2_naming_the_file_when_model_bin_is_missing(tmp_path, capsys):
    from s2i.cli import main

    assert main(["import-whisper", "--ctranslate2", str(tmp_path), "--output", str(tmp_path / "hf")]) == 2
    assert "has no `model.bin`" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
