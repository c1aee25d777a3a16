import numpy as np
import pytest

from s2i.audio import prepare_audio
from s2i.errors import InvalidInputError, RequestCancelledError
from s2i.model_repository.onnx_stage import OnnxStage, onnx_stage_runner
from s2i.stages.whisper.decoding import DecodingRules, TranscriptionRequest, WhisperRunner
from s2i.stages.whisper.reference import WhisperReference
from tests.conftest import MAX_NEW_TOKENS


@pytest.fixture(scope="module")
def whisper_dir(checkpoints):
    return checkpoints["whisper"]


@pytest.fixture(scope="module")
def onnx_runner(whisper_dir, model_repository):
    repository = model_repository.repository
    stages = {
        name: OnnxStage(repository / name / "1" / "model.onnx")
        for name in ("whisper_encoder", "whisper_decoder", "whisper_decoder_with_past")
    }
    return WhisperRunner(whisper_dir, onnx_stage_runner(stages))


@pytest.fixture(scope="module")
def reference(whisper_dir):
    return WhisperReference(whisper_dir)


@pytest.mark.parametrize("task", ["translate", "transcribe"])
def test_greedy_decode_matches_transformers_generate_when_run_on_onnx_stages(onnx_runner, reference, hindi_clips, task):
    clips = [prepare_audio(clip.samples, clip.sample_rate_hz) for clip in hindi_clips]
    results = onnx_runner.transcribe(
        [TranscriptionRequest(samples, task=task, max_new_tokens=MAX_NEW_TOKENS) for samples in clips]
    )
    for samples, result in zip(clips, results, strict=False):
        expected_ids, expected_text = reference.generate(samples, task=task, max_new_tokens=MAX_NEW_TOKENS)
        assert result.token_ids == expected_ids
        assert result.text == expected_text
    # Different clips give different sequences, so equality above is not trivial.
    assert len({tuple(result.token_ids) for result in results}) == len(results)


def test_greedy_decode_stops_at_each_requests_own_limit_when_batched(onnx_runner, hindi_clips):
    samples = prepare_audio(hindi_clips[0].samples, hindi_clips[0].sample_rate_hz)
    short, long = onnx_runner.transcribe(
        [TranscriptionRequest(samples, max_new_tokens=3), TranscriptionRequest(samples, max_new_tokens=12)]
    )
    assert len(short.token_ids) == 3
    assert len(long.token_ids) == 12
    assert long.token_ids[:3] == short.token_ids


def test_greedy_decode_stops_a_cancelled_request_within_one_step_and_finishes_the_others(onnx_runner, hindi_clips):
    samples = prepare_audio(hindi_clips[0].samples, hindi_clips[0].sample_rate_hz)
    steps = {"with_past": 0}
    run_stage = onnx_runner.run_stage

    def counting(model, inputs, outputs):
        steps["with_past"] += model == "whisper_decoder_with_past"
        return run_stage(model, inputs, outputs)

    onnx_runner.run_stage = counting
    try:
        abandoned, kept = onnx_runner.transcribe(
            [TranscriptionRequest(samples, max_new_tokens=200), TranscriptionRequest(samples, max_new_tokens=6)],
            cancelled=lambda index: index == 0 and steps["with_past"] >= 2,
        )
    finally:
        onnx_runner.run_stage = run_stage
    assert isinstance(abandoned, RequestCancelledError)
    # 6 tokens need 5 cached steps; the cancelled request added none after its client left.
    assert steps["with_past"] == 5
    assert kept.token_ids == onnx_runner.transcribe([TranscriptionRequest(samples, max_new_tokens=6)])[0].token_ids


def test_decoding_rules_prompt_is_sot_language_task_notimestamps(whisper_dir):
    rules = DecodingRules.from_checkpoint(whisper_dir)
    assert rules.prompt("hi", "translate") == [50258, 50276, 50358, 50363]
    assert rules.prompt("en", "transcribe") == [50258, 50259, 50359, 50363]


@pytest.mark.parametrize(
    ("language", "task", "match"),
    [("hi", "summarise", r"`task`: must be one of \['translate', 'transcribe'\]"), ("xx", "translate", "`language`")],
)
def test_decoding_rules_prompt_raises_when_task_or_language_unknown(whisper_dir, language, task, match):
    with pytest.raises(InvalidInputError, match=match):
        DecodingRules.from_checkpoint(whisper_dir).prompt(language, task)


@pytest.mark.parametrize("max_new_tokens", [0, 445])
def test_runner_check_raises_when_max_new_tokens_out_of_range(onnx_runner, max_new_tokens):
    with pytest.raises(InvalidInputError, match=r"`max_new_tokens`: must be between 1 and 444"):
        onnx_runner.check(TranscriptionRequest(np.zeros(1600, np.float32), max_new_tokens=max_new_tokens))
