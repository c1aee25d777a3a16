"""Whisper checkpoints users bring: few decoder positions, older transformers layouts, refusals.

One tiny Whisper with 16 decoder positions is built and converted (in the layout
without ``generation_config.json``); its other layouts share its weights, hence its graphs.
"""

import json
import shutil

import numpy as np
import pytest

from s2i.audio import prepare_audio
from s2i.conversion.convert import convert
from s2i.errors import InvalidInputError
from s2i.model_repository.onnx_stage import OnnxStage, onnx_stage_runner
from s2i.stages.base import UnsupportedCheckpointError
from s2i.stages.whisper.checkpoint import build_tiny_whisper
from s2i.stages.whisper.decoding import DecodingRules, TranscriptionRequest, WhisperRunner
from s2i.stages.whisper.reference import WhisperReference
from s2i.stages.whisper.specs import TYPICAL_DECODED_TOKENS, whisper_components
from s2i.stages.whisper.stage import TINY_INIT_STD, WhisperStage
from tests.conftest import BUILD_DIR

POSITIONS = 16
PROMPT_LENGTH = 4
GRAPHS = ("whisper_encoder", "whisper_decoder", "whisper_decoder_with_past")
# Keys transformers < 4.27 saved in config.json before generation_config.json existed.
LEGACY_GENERATION_KEYS = ("suppress_tokens", "begin_suppress_tokens")


def _json(path):
    return json.loads(path.read_text())


def _layout_copy(source, destination):
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(source, destination)
    return destination


def _forced_decoder_ids(generation):
    return [
        [1, generation["lang_to_id"]["<|hi|>"]],
        [2, generation["task_to_id"]["translate"]],
        [3, generation["no_timestamps_token_id"]],
    ]


def config_only_layout(source, destination):
    """Generation settings in config.json (with `forced_decoder_ids`), no generation_config.json."""
    _layout_copy(source, destination)
    generation = _json(destination / "generation_config.json")
    config = _json(destination / "config.json")
    config.update({key: generation[key] for key in LEGACY_GENERATION_KEYS})
    config["forced_decoder_ids"] = _forced_decoder_ids(generation)
    (destination / "config.json").write_text(json.dumps(config))
    (destination / "generation_config.json").unlink()
    return destination


def forced_ids_layout(source, destination):
    """A generation_config.json with `forced_decoder_ids` and no `lang_to_id`/`task_to_id`."""
    _layout_copy(source, destination)
    generation = _json(destination / "generation_config.json")
    forced = _forced_decoder_ids(generation)
    for key in ("lang_to_id", "task_to_id", "no_timestamps_token_id", "is_multilingual"):
        generation.pop(key)
    generation["forced_decoder_ids"] = forced
    (destination / "generation_config.json").write_text(json.dumps(generation))
    return destination


@pytest.fixture(scope="module")
def short_whisper():
    """A random multilingual Whisper with 16 decoder positions, in the current layout."""
    output = BUILD_DIR / "checkpoints-matrix" / "whisper-16-positions"
    if (output / "model.safetensors").is_file():  # deterministic: a local rerun reuses it
        return output
    return build_tiny_whisper(output, init_std=TINY_INIT_STD, max_target_positions=POSITIONS)


@pytest.fixture(scope="module")
def layouts(short_whisper):
    root = BUILD_DIR / "checkpoints-matrix"
    return {
        "current": short_whisper,
        "config-only": config_only_layout(short_whisper, root / "whisper-16-config-only"),
        "forced-decoder-ids": forced_ids_layout(short_whisper, root / "whisper-16-forced-ids"),
    }


@pytest.fixture(scope="module")
def converted(layouts):
    """The layout without generation_config.json through `convert` (checks, export, validation)."""
    return convert(
        {"whisper": layouts["config-only"]},
        BUILD_DIR / "checkpoints-matrix" / "whisper-16-repository",
        work_dir=BUILD_DIR / "onnx",
    )


@pytest.fixture(scope="module")
def stage_runner(converted):
    return onnx_stage_runner({name: OnnxStage(converted.repository / name / "1" / "model.onnx") for name in GRAPHS})


@pytest.fixture(scope="module")
def reference(short_whisper):
    return WhisperReference(short_whisper)


@pytest.fixture(scope="module")
def samples(hindi_clips):
    return prepare_audio(hindi_clips[0].samples, hindi_clips[0].sample_rate_hz)


def test_convert_writes_whisper_graphs_when_checkpoint_has_no_generation_config(converted):
    assert sorted(converted.models) == sorted([*GRAPHS, "whisper"])
    assets = converted.repository / "whisper" / "1" / "assets"
    assert not (assets / "generation_config.json").exists()
    assert _json(assets / "config.json")["forced_decoder_ids"][0] == [1, 50276]


@pytest.mark.parametrize("layout", ["config-only", "forced-decoder-ids"])
def test_decoding_rules_equal_current_layouts_when_checkpoint_uses_older_layout(layouts, layout):
    expected = DecodingRules.from_checkpoint(layouts["current"])
    rules = DecodingRules.from_checkpoint(layouts[layout])
    assert rules == expected
    assert rules.prompt("hi", "translate") == [50258, 50276, 50358, 50363]
    assert len(rules.lang_to_id) == 99


@pytest.mark.parametrize("layout", ["current", "config-only", "forced-decoder-ids"])
def test_runner_default_stops_at_checkpoint_limit_like_generate_when_max_new_tokens_left_out(
    layouts, stage_runner, reference, samples, layout
):
    runner = WhisperRunner(layouts[layout], stage_runner)
    (result,) = runner.transcribe([TranscriptionRequest(samples)])
    expected_ids, expected_text = reference.generate(samples, max_new_tokens=None)
    # A random model rarely emits <|endoftext|>: it runs to the limit, 16 positions - 4 prompt tokens.
    assert len(expected_ids) == POSITIONS - PROMPT_LENGTH
    assert result.token_ids == expected_ids
    assert result.text == expected_text


def test_runner_check_raises_naming_limit_when_explicit_max_new_tokens_exceeds_positions(layouts, stage_runner):
    runner = WhisperRunner(layouts["current"], stage_runner)
    request = TranscriptionRequest(np.zeros(1600, np.float32), max_new_tokens=POSITIONS - PROMPT_LENGTH + 1)
    with pytest.raises(InvalidInputError, match=r"`max_new_tokens`: must be between 1 and 12 \(this model's 16"):
        runner.check(request)
    assert runner.max_new_tokens(TranscriptionRequest(None)) == POSITIONS - PROMPT_LENGTH


def test_whisper_components_cap_tensorrt_opt_point_when_decoder_has_few_positions(short_whisper):
    components = {c.model_name: c for c in whisper_components(_json(short_whisper / "config.json"))}
    ranges = components["whisper_decoder_with_past"].axis_ranges
    assert set(ranges["past_key_values.0.decoder.key"][1]) <= set(range(1, POSITIONS))
    assert ranges["past_key_values.0.decoder.key"][1] == (1, POSITIONS - 1, POSITIONS - 1)
    assert components["whisper_decoder"].axis_ranges["input_ids"][0] == (1, PROMPT_LENGTH, POSITIONS)
    released = whisper_components({**_json(short_whisper / "config.json"), "max_target_positions": 448})
    assert released[2].axis_ranges["past_key_values.0.decoder.key"][1] == (1, TYPICAL_DECODED_TOKENS, 447)


def _config_copy(source, destination, edit=None):
    """The checkpoint's small files (no weights): what `check_checkpoint` reads."""
    destination.mkdir(parents=True)
    for path in source.iterdir():
        if path.suffix in (".json", ".txt"):
            shutil.copy(path, destination / path.name)
    if edit is not None:
        config = _json(destination / "config.json")
        edit(config)
        (destination / "config.json").write_text(json.dumps(config))
    return destination


@pytest.mark.parametrize("layout", ["current", "config-only", "forced-decoder-ids"])
def test_check_checkpoint_accepts_whisper_when_layout_is_current_or_older(layouts, layout):
    WhisperStage().check_checkpoint(layouts[layout])


def test_check_checkpoint_raises_naming_head_counts_when_encoder_and_decoder_heads_differ(short_whisper, tmp_path):
    checkpoint = _config_copy(short_whisper, tmp_path / "w", lambda c: c.update(decoder_attention_heads=2))
    with pytest.raises(UnsupportedCheckpointError, match="4 encoder and 2 decoder attention heads"):
        WhisperStage().check_checkpoint(checkpoint)


def test_check_checkpoint_raises_naming_missing_tokenizer_when_older_layout_has_no_tokenizer(layouts, tmp_path):
    checkpoint = _config_copy(layouts["forced-decoder-ids"], tmp_path / "w")
    for name in ("tokenizer.json", "vocab.json"):
        (checkpoint / name).unlink()
    with pytest.raises(UnsupportedCheckpointError, match=r"neither `lang_to_id`/`task_to_id`.*nor a tokenizer"):
        WhisperStage().check_checkpoint(checkpoint)


def test_check_checkpoint_raises_naming_model_type_when_checkpoint_is_not_whisper(short_whisper, tmp_path):
    checkpoint = _config_copy(short_whisper, tmp_path / "w", lambda c: c.update(model_type="wav2vec2"))
    with pytest.raises(UnsupportedCheckpointError, match="`model_type` 'wav2vec2'; the whisper stage supports"):
        WhisperStage().check_checkpoint(checkpoint)


def test_convert_refuses_before_export_when_whisper_heads_differ(short_whisper, tmp_path):
    checkpoint = _config_copy(short_whisper, tmp_path / "w", lambda c: c.update(decoder_attention_heads=2))
    with pytest.raises(UnsupportedCheckpointError, match="decoder attention heads"):
        convert({"whisper": checkpoint}, tmp_path / "repository", work_dir=tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
    assert not (tmp_path / "repository").exists()
