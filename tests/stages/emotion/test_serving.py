"""The served `emotion_classifier` against PyTorch, alone and in concurrent batches, and its input checks."""

import io
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytest
import soundfile
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from s2i.audio import prepare_audio
from s2i.client import InvalidRequestError
from s2i.stages.emotion.features import slice_whisper_features
from s2i.stages.emotion.reference import EmotionReference
from tests.conftest import BUILD_DIR, started_server, sub_repository

PARITY_ATOL = 1e-4


@pytest.fixture(scope="module")
def reference(checkpoints):
    return EmotionReference(checkpoints["emotion"])


@pytest.fixture(scope="module")
def expected(reference, hindi_clips):
    return [reference.probabilities(prepare_audio(c.samples, c.sample_rate_hz)) for c in hindi_clips]


@pytest.fixture(scope="module")
def raw(triton_server):
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    yield client
    client.close()


def _infer(raw, inputs):
    result = raw.infer("emotion_classifier", inputs)
    return result.as_numpy("emotion_label"), result.as_numpy("emotion_probabilities")


def _tensor(name, value, datatype):
    tensor = grpcclient.InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


def test_served_probabilities_match_pytorch_when_requests_come_one_at_a_time(client, hindi_clips, expected, reference):
    for clip, probabilities in zip(hindi_clips, expected, strict=True):
        result = client.classify_emotion(clip.samples, clip.sample_rate_hz)
        np.testing.assert_allclose(result.probabilities, probabilities, atol=PARITY_ATOL)
        assert result.label == reference.labels[int(probabilities.argmax())]
        assert result.scores[result.label] == pytest.approx(float(probabilities.max()), abs=PARITY_ATOL)
    assert np.ptp(np.stack(expected), axis=0).max() > 0.02


def test_served_probabilities_match_pytorch_when_requests_are_batched_concurrently(client, hindi_clips, expected):
    jobs = [(index % len(hindi_clips), bool(index % 2)) for index in range(16)]

    def classify(job):
        index, as_bytes = job
        clip = hindi_clips[index]
        if as_bytes:
            return client.classify_emotion(clip.wav_bytes)
        return client.classify_emotion(clip.samples, clip.sample_rate_hz)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(classify, jobs))
    for (index, _), result in zip(jobs, results, strict=True):
        np.testing.assert_allclose(result.probabilities, expected[index], atol=PARITY_ATOL)


# A queue delay far longer than sending 16 requests takes, on any machine: the batcher holds
# requests until a full batch of 8 is there, so merging does not depend on timing.
FORCED_QUEUE_DELAY_US = 120_000_000


@pytest.fixture(scope="module")
def batching_server(model_repository):
    def wait_for_full_batches(name, config):
        if name == "emotion_classifier":
            config.dynamic_batching.max_queue_delay_microseconds = FORCED_QUEUE_DELAY_US
            del config.dynamic_batching.preferred_batch_size[:]
            config.dynamic_batching.preferred_batch_size.append(config.max_batch_size)

    repository = sub_repository(
        model_repository.repository,
        BUILD_DIR / "emotion-batching-repository",
        ["emotion_classifier", "emotion_classifier_graph"],
        wait_for_full_batches,
    )
    with started_server(repository, "emotion-batching") as server:
        yield server


def test_dynamic_batcher_merges_requests_when_a_full_batch_queues(batching_server, hindi_clips, expected):
    clip = hindi_clips[1]
    requests = 16
    raw = grpcclient.InferenceServerClient(batching_server.grpc_url)
    try:
        done = queue.Queue()
        for index in range(requests):
            inputs = [
                _tensor("audio_samples", clip.samples[None, :], "FP32"),
                _tensor("sample_rate_hz", np.array([[clip.sample_rate_hz]], np.int32), "INT32"),
            ]
            raw.async_infer(
                "emotion_classifier", inputs, partial(lambda i, result, error: done.put((i, result, error)), index)
            )
        for _ in range(requests):
            _, result, error = done.get(timeout=600)
            assert error is None, error
            np.testing.assert_allclose(result.as_numpy("emotion_probabilities")[0], expected[1], atol=PARITY_ATOL)

        def counted():
            # Triton records an execution's statistics after it sends the responses.
            stats = raw.get_inference_statistics("emotion_classifier", headers=batching_server.admin_headers)
            return stats.model_stats[0]

        deadline = time.monotonic() + 120
        while (stats := counted()).inference_count < requests and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        raw.close()
    assert stats.inference_count == requests
    # Two full batches of 8: each request's answer above is its own although it shared a call.
    assert stats.execution_count == 2


def test_served_model_accepts_whisper_features_cut_to_the_clip(raw, reference, hindi_clips, expected):
    samples = prepare_audio(hindi_clips[2].samples, hindi_clips[2].sample_rate_hz)
    padded = reference.feature_extractor(samples, sampling_rate=16_000, return_tensors="np").input_features
    features = slice_whisper_features(padded.astype(np.float32), [samples.shape[0]])[0]
    _, probabilities = _infer(raw, [_tensor("input_features", features, "FP32")])
    np.testing.assert_allclose(probabilities[0], expected[2], atol=PARITY_ATOL)


def _stereo_wav(clip) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([clip.samples, clip.samples], axis=1), clip.sample_rate_hz, format="WAV")
    return buffer.getvalue()


def _bad_requests(clip):
    rate = np.array([[16_000]], np.int32)
    nan = np.zeros((1, 16_000), np.float32)
    nan[0, 100] = np.nan
    inf = np.zeros((1, 16_000), np.float32)
    inf[0, 5] = np.inf
    return {
        "empty samples": ([("audio_samples", np.zeros((1, 0), np.float32)), ("sample_rate_hz", rate)], "audio_samples"),
        "empty bytes": ([("audio_bytes", np.array([[b""]], np.object_))], "audio_bytes"),
        "nan": ([("audio_samples", nan), ("sample_rate_hz", rate)], "audio_samples"),
        "inf": ([("audio_samples", inf), ("sample_rate_hz", rate)], "audio_samples"),
        "float64 samples": ([("audio_samples", np.zeros((1, 16_000))), ("sample_rate_hz", rate)], "audio_samples"),
        "stereo samples": (
            [
                ("audio_samples", np.zeros((2, 16_000), np.float32)),
                ("sample_rate_hz", np.array([[16_000]] * 2, np.int32)),
            ],
            "audio_samples",
        ),
        "stereo samples 3-d": (
            [("audio_samples", np.zeros((1, 16_000, 2), np.float32)), ("sample_rate_hz", rate)],
            "audio_samples",
        ),
        "stereo wav": ([("audio_bytes", np.array([[_stereo_wav(clip)]], np.object_))], "audio_bytes"),
        "31 s": (
            [("audio_samples", np.zeros((1, 31 * 16_000), np.float32)), ("sample_rate_hz", rate)],
            "audio_samples",
        ),
        "garbage bytes": ([("audio_bytes", np.array([[b"\x00garbage" * 50]], np.object_))], "audio_bytes"),
        "no rate": ([("audio_samples", np.zeros((1, 16_000), np.float32))], "sample_rate_hz"),
        "nan features": ([("input_features", np.full((1, 80, 50), np.nan, np.float32))], "input_features"),
        "short features": ([("input_features", np.zeros((1, 80, 3), np.float32))], "input_features"),
    }


_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int32): "INT32"}


BAD_CASES = (
    "empty samples",
    "empty bytes",
    "nan",
    "inf",
    "float64 samples",
    "stereo samples",
    "stereo samples 3-d",
    "stereo wav",
    "31 s",
    "garbage bytes",
    "no rate",
    "nan features",
    "short features",
)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_refused_naming_the_field_and_the_next_request_succeeds(raw, hindi_clips, expected, case):
    tensors, field = _bad_requests(hindi_clips[0])[case]
    inputs = [_tensor(name, value, _DATATYPES.get(value.dtype, "BYTES")) for name, value in tensors]
    with pytest.raises(InferenceServerException) as error:
        _infer(raw, inputs)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert field in error.value.message()
    clip = hindi_clips[0]
    samples = clip.samples[None, :]
    label, probabilities = _infer(
        raw,
        [
            _tensor("audio_samples", samples, "FP32"),
            _tensor("sample_rate_hz", np.array([[clip.sample_rate_hz]], np.int32), "INT32"),
        ],
    )
    np.testing.assert_allclose(probabilities[0], expected[0], atol=PARITY_ATOL)


def test_client_raises_invalid_request_when_the_server_refuses_the_audio(client):
    with pytest.raises(InvalidRequestError, match=r"`audio_samples`: contains 1 NaN") as error:
        client.classify_emotion(np.array([np.nan] + [0.0] * 15_999, np.float32), 16_000)
    assert error.value.status == "INVALID_ARGUMENT"


def test_cli_emotion_prints_the_label_and_eight_probabilities(
    triton_server, hindi_clips, capsys, reference, expected, tmp_path
):
    from s2i.cli import main

    wav = tmp_path / "speech.wav"
    wav.write_bytes(hindi_clips[1].wav_bytes)
    assert main(["emotion", str(wav), "--url", triton_server.grpc_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == reference.labels[int(expected[1].argmax())]
    assert len(lines) == 9
    assert float(lines[1].split()[1]) == pytest.approx(float(expected[1].max()), abs=1e-4)
