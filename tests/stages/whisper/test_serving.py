"""The served `whisper` model over real gRPC: parity with transformers, concurrency, bad input."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from s2i.audio import prepare_audio
from s2i.client import Client, InvalidRequestError
from s2i.stages.whisper.reference import WhisperReference
from tests.conftest import MAX_NEW_TOKENS


@pytest.fixture(scope="module")
def reference(checkpoints):
    return WhisperReference(checkpoints["whisper"])


@pytest.fixture(scope="module")
def expected(reference, hindi_clips):
    """Reference token ids per (clip index, task)."""
    return {
        (index, task): reference.generate(
            prepare_audio(clip.samples, clip.sample_rate_hz), task=task, max_new_tokens=MAX_NEW_TOKENS
        )
        for index, clip in enumerate(hindi_clips)
        for task in ("translate", "transcribe")
    }


@pytest.mark.parametrize("task", ["translate", "transcribe"])
def test_served_whisper_matches_transformers_generate_when_sent_wav_bytes(client, hindi_clips, expected, task):
    for index, clip in enumerate(hindi_clips):
        result = client.translate(clip.wav_bytes, task=task, max_new_tokens=MAX_NEW_TOKENS)
        token_ids, text = expected[index, task]
        assert result.token_ids == token_ids
        assert result.text == text
        assert len(result.token_ids) > 0


def test_served_whisper_matches_transformers_generate_when_sent_raw_samples_at_22khz(client, hindi_clips, expected):
    clip = hindi_clips[1]
    assert clip.sample_rate_hz == 22_050
    result = client.translate(clip.samples, clip.sample_rate_hz, max_new_tokens=MAX_NEW_TOKENS)
    assert result.token_ids == expected[1, "translate"][0]


def test_served_whisper_gives_same_tokens_when_sent_samples_already_at_16khz(client, hindi_clips, expected):
    clip = hindi_clips[2]
    samples_16khz = prepare_audio(clip.samples, clip.sample_rate_hz)
    result = client.translate(samples_16khz, 16_000, max_new_tokens=MAX_NEW_TOKENS)
    assert result.token_ids == expected[2, "translate"][0]


def test_served_whisper_returns_each_requests_own_result_when_requests_are_concurrent(
    triton_server, hindi_clips, expected
):
    jobs = [(index, task) for index in range(len(hindi_clips)) for task in ("translate", "transcribe")] * 2

    def run(job):
        index, task = job
        with Client(triton_server.grpc_url, timeout_s=120) as own_client:
            return own_client.translate(hindi_clips[index].wav_bytes, task=task, max_new_tokens=MAX_NEW_TOKENS)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    for job, result in zip(jobs, results, strict=True):
        assert result.token_ids == expected[job][0], job


def test_served_whisper_returns_each_requests_own_result_when_raw_clips_of_different_lengths_are_concurrent(
    triton_server, hindi_clips, expected
):
    # Raw samples of different lengths may share one batch of the loop (`allow_ragged_batch`).
    clips = [prepare_audio(clip.samples, clip.sample_rate_hz) for clip in hindi_clips]
    assert len({clip.shape[0] for clip in clips}) == len(clips)
    jobs = list(range(len(clips))) * 3

    def run(index):
        with Client(triton_server.grpc_url, timeout_s=120) as own_client:
            return own_client.translate(clips[index], 16_000, max_new_tokens=MAX_NEW_TOKENS)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    for index, result in zip(jobs, results, strict=True):
        assert result.token_ids == expected[index, "translate"][0], index


def test_served_whisper_honours_max_new_tokens_when_given(client, hindi_clips, expected):
    result = client.translate(hindi_clips[0].wav_bytes, max_new_tokens=5)
    assert result.token_ids == expected[0, "translate"][0][:5]


GOOD_SECOND = np.sin(np.linspace(0, 2000, 16_000)).astype(np.float32) * 0.1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(audio=np.zeros(0, np.float32), sample_rate_hz=16_000), "`audio_samples`: holds 0 samples"),
        (dict(audio=np.full(16_000, np.nan, np.float32), sample_rate_hz=16_000), "16000 NaN or infinite"),
        (dict(audio=np.r_[GOOD_SECOND, np.float32(np.inf)], sample_rate_hz=16_000), "1 NaN or infinite"),
        (dict(audio=np.zeros(31 * 16_000, np.float32), sample_rate_hz=16_000), "31.0 s long; the limit is 30 s"),
        (dict(audio=GOOD_SECOND, sample_rate_hz=1_000_000), "`sample_rate_hz`: must be between"),
        (dict(audio=b"\x00\x01garbage" * 100), "`audio_bytes`: could not be decoded as WAV, FLAC or OGG"),
        (dict(audio=GOOD_SECOND, sample_rate_hz=16_000, task="summarise"), "`task`: must be one of"),
        (dict(audio=GOOD_SECOND, sample_rate_hz=16_000, language="klingon"), "`language`: 'klingon' is not"),
        (dict(audio=GOOD_SECOND, sample_rate_hz=16_000, max_new_tokens=0), "`max_new_tokens`: must be between 1"),
        (dict(audio=GOOD_SECOND, sample_rate_hz=16_000, max_new_tokens=10_000), "`max_new_tokens`: must be between"),
    ],
    ids=[
        "empty",
        "nan",
        "inf",
        "too-long",
        "sample-rate",
        "garbage-bytes",
        "task",
        "language",
        "zero-tokens",
        "too-many-tokens",
    ],
)
def test_served_whisper_refuses_bad_input_and_serves_next_request(client, hindi_clips, expected, kwargs, match):
    audio = kwargs.pop("audio")
    with pytest.raises(InvalidRequestError, match=match) as error:
        client.translate(audio, **kwargs)
    assert error.value.status == "INVALID_ARGUMENT"
    result = client.translate(hindi_clips[0].wav_bytes, max_new_tokens=MAX_NEW_TOKENS)
    assert result.token_ids == expected[0, "translate"][0]


def test_served_whisper_refuses_stereo_wav_bytes_naming_the_field(client, hindi_clips, tmp_path):
    import soundfile

    stereo = np.stack([hindi_clips[0].samples, hindi_clips[0].samples], axis=1)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo, hindi_clips[0].sample_rate_hz)
    with pytest.raises(InvalidRequestError, match="`audio_bytes`: has 2 channels; send mono audio"):
        client.translate(path.read_bytes())


def raw_infer(triton_server, inputs):
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as raw:
        return raw.infer("whisper", inputs, outputs=[grpcclient.InferRequestedOutput("text")])


def test_served_whisper_refuses_int16_samples_with_a_dtype_error(triton_server, client, hindi_clips, expected):
    samples = grpcclient.InferInput("audio_samples", [1, 16_000], "INT16")
    samples.set_data_from_numpy(np.zeros((1, 16_000), np.int16))
    rate = grpcclient.InferInput("sample_rate_hz", [1, 1], "INT32")
    rate.set_data_from_numpy(np.array([[16_000]], np.int32))
    with pytest.raises(InferenceServerException, match="(?i)audio_samples.*(data-type|datatype|FP32)") as error:
        raw_infer(triton_server, [samples, rate])
    assert "INVALID_ARGUMENT" in str(error.value.status())
    assert client.translate(hindi_clips[0].wav_bytes, max_new_tokens=3).token_ids == expected[0, "translate"][0][:3]


def test_served_whisper_refuses_two_channels_sent_as_a_batch_of_samples(triton_server, client, hindi_clips):
    samples = grpcclient.InferInput("audio_samples", [2, 16_000], "FP32")
    samples.set_data_from_numpy(np.stack([GOOD_SECOND, GOOD_SECOND]))
    rate = grpcclient.InferInput("sample_rate_hz", [2, 1], "INT32")
    rate.set_data_from_numpy(np.array([[16_000], [16_000]], np.int32))
    with pytest.raises(InferenceServerException, match="`audio_samples`: must hold one mono clip per request"):
        raw_infer(triton_server, [samples, rate])
    assert client.translate(hindi_clips[0].wav_bytes, max_new_tokens=3).text


def test_served_whisper_refuses_requests_without_audio(triton_server):
    task = grpcclient.InferInput("task", [1, 1], "BYTES")
    task.set_data_from_numpy(np.array([[b"translate"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="send exactly one of `audio_samples`"):
        raw_infer(triton_server, [task])
