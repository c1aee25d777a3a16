import json

import numpy as np
import onnxruntime as ort
import pytest

from s2i import names
from s2i.audio import prepare_audio
from s2i.model_repository.onnx_stage import OnnxStage, onnx_stage_runner
from s2i.stages.whisper.decoding import TranscriptionRequest, WhisperRunner, past_names
from s2i.stages.whisper.reference import WhisperReference
from s2i.stages.whisper.runtime import InProcessDecoder, routed_stage_runner
from tests.conftest import MAX_NEW_TOKENS


@pytest.fixture(scope="module")
def decoder(model_repository):
    # The loop model's own copy of the decoder graphs, as the repository writer placed it.
    return InProcessDecoder(model_repository.repository / "whisper" / "1" / "decoder")


@pytest.fixture(scope="module")
def runner(checkpoints, model_repository, decoder):
    encoder = OnnxStage(model_repository.repository / "whisper_encoder" / "1" / "model.onnx")
    fallback = onnx_stage_runner({names.WHISPER_ENCODER: encoder})
    return WhisperRunner(checkpoints["whisper"], routed_stage_runner(decoder.run_stage, fallback))


@pytest.mark.parametrize("task", ["translate", "transcribe"])
def test_in_process_decoder_matches_transformers_generate_when_batched(runner, checkpoints, hindi_clips, task):
    reference = WhisperReference(checkpoints["whisper"])
    clips = [prepare_audio(clip.samples, clip.sample_rate_hz) for clip in hindi_clips]
    results = runner.transcribe(
        [TranscriptionRequest(samples, task=task, max_new_tokens=MAX_NEW_TOKENS) for samples in clips]
    )
    for samples, result in zip(clips, results, strict=True):
        assert (result.token_ids, result.text) == reference.generate(samples, task=task, max_new_tokens=MAX_NEW_TOKENS)
    assert len({tuple(result.token_ids) for result in results}) == len(results)


def test_in_process_decoder_keeps_cache_in_ort_and_returns_last_logits_when_prompt_is_long(
    decoder, model_repository, checkpoints
):
    config = json.loads((checkpoints["whisper"] / "config.json").read_text())
    stage = OnnxStage(model_repository.repository / "whisper_decoder" / "1" / "model.onnx")
    layers = len(past_names_of(decoder)) // 4
    rng = np.random.default_rng(0)
    hidden_shape = [2, config["max_source_positions"], config["d_model"]]
    inputs = {
        names.INPUT_IDS: np.array([[50258, 50276, 50358, 50363]] * 2, dtype=np.int64),
        names.ENCODER_HIDDEN_STATES: rng.standard_normal(hidden_shape).astype(np.float32),
    }
    present = past_names(layers, prefix="present", include_encoder=True)
    local = decoder.run_stage(names.WHISPER_DECODER, inputs, [names.LOGITS, *present])
    expected = stage.run(inputs)
    # Only the last prompt position leaves ONNX Runtime.
    assert local[names.LOGITS].shape == (2, 1, expected[names.LOGITS].shape[-1])
    np.testing.assert_allclose(local[names.LOGITS], expected[names.LOGITS][:, -1:], rtol=1e-5, atol=1e-5)
    for name in present:
        assert isinstance(local[name], ort.OrtValue)
        np.testing.assert_allclose(local[name].numpy(), expected[name], rtol=1e-5, atol=1e-5)
    # The next step takes those OrtValues as its cache, unchanged.
    past = {name.replace("present", "past_key_values", 1): local[name] for name in present}
    step = decoder.run_stage(
        names.WHISPER_DECODER_WITH_PAST,
        {names.INPUT_IDS: np.array([[440], [1000]], dtype=np.int64), **past},
        [names.LOGITS, *past_names(layers, prefix="present", include_encoder=False)],
    )
    assert step[names.LOGITS].shape == local[names.LOGITS].shape
    assert step["present.0.decoder.key"].shape()[2] == 5


def past_names_of(decoder: InProcessDecoder) -> list[str]:
    return [name for name in decoder.input_names[names.WHISPER_DECODER_WITH_PAST] if name.startswith("past")]


@pytest.mark.parametrize("target", ["python-onnxruntime", "onnxruntime"])
def test_whisper_loop_model_carries_decoder_graphs_only_when_target_runs_graphs_in_python(
    checkpoints, model_repository, target
):
    from s2i.stages.base import StageExport
    from s2i.stages.whisper.specs import whisper_components
    from s2i.stages.whisper.stage import WhisperStage

    config = json.loads((checkpoints["whisper"] / "config.json").read_text())
    components = whisper_components(config)
    # The stage models' files, laid out as the export names them.
    exported_dir = model_repository.repository.parent / "whisper-export-view"
    exported_dir.mkdir(exist_ok=True)
    for component in components:
        link = exported_dir / component.onnx_file
        link.unlink(missing_ok=True)
        link.symlink_to(model_repository.repository / component.model_name / "1" / "model.onnx")
    exported = StageExport(onnx_dir=exported_dir, components=components, max_abs_diff={})
    *stage_models, loop = WhisperStage().repository_models(checkpoints["whisper"], exported, target)
    decoder_files = {name for name in loop.files if name.startswith("decoder/")}
    assert [model.spec.name for model in stage_models] == [c.model_name for c in components]
    if target == "python-onnxruntime":
        assert decoder_files == {"decoder/decoder_model.onnx", "decoder/decoder_with_past_model.onnx"}
        assert loop.spec.parameters["decoder_onnx_dir"] == "decoder"
    else:
        assert decoder_files == set() and "decoder_onnx_dir" not in loop.spec.parameters
