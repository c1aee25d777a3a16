"""The product end to end through the real server: ensemble, stream, client, HTTP; parity with the reference."""

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from s2i.client import AsyncClient, Client, InvalidRequestError
from s2i.pipeline.reference import ReferencePipeline
from s2i.pipeline.steps import decode_png
from tests.conftest import MAX_NEW_TOKENS

# Few steps and tokens: the models are tiny and random; what is tested is the plumbing and parity.
OPTIONS = dict(num_inference_steps=3, max_new_tokens=MAX_NEW_TOKENS // 3)


@pytest.fixture(scope="module")
def reference(checkpoints):
    return ReferencePipeline(checkpoints)


def assert_same(served, expected):
    assert served.text == expected.text
    assert served.transcript == expected.transcript
    assert served.detected_emotion == expected.detected_emotion
    assert served.emotion == expected.emotion
    assert served.prompt == expected.prompt and served.negative_prompt == expected.negative_prompt
    for label, probability in expected.emotion_scores.items():
        assert served.emotion_scores[label] == pytest.approx(probability, abs=1e-4)
    served_pixels, expected_pixels = decode_png(served.png).astype(int), decode_png(expected.png).astype(int)
    assert served_pixels.shape == expected_pixels.shape
    assert np.abs(served_pixels - expected_pixels).max() <= 1


def test_pipeline_matches_reference_when_sent_wav_bytes(client, reference, hindi_clips):
    clip = hindi_clips[0]
    served = client.speech_to_image(clip.wav_bytes, seed=11, return_transcript=True, **OPTIONS)
    assert_same(served, reference.run(clip.wav_bytes, seed=11, return_transcript=True, **OPTIONS))
    assert served.seed == 11
    assert served.transcript and served.text
    assert set(served.timings_ms) == {
        "preprocess",
        "whisper",
        "emotion",
        "prompt_composer",
        "diffusion",
        "postprocess",
        "total",
    }
    assert all(ms > 0 for ms in served.timings_ms.values())
    assert served.image.size == (64, 64)


def test_pipeline_matches_reference_when_sent_raw_samples(client, reference, hindi_clips):
    clip = hindi_clips[1]
    served = client.speech_to_image(clip.samples, clip.sample_rate_hz, seed=5, **OPTIONS)
    assert_same(served, reference.run(clip.samples, clip.sample_rate_hz, seed=5, **OPTIONS))
    assert served.transcript == ""


def test_pipeline_applies_emotion_override_and_style_template(client, hindi_clips):
    served = client.speech_to_image(
        hindi_clips[2].wav_bytes, seed=1, emotion_override="fearful", style_template="painting", **OPTIONS
    )
    assert served.emotion == "fearful"
    assert served.prompt.endswith("gothic painting, dark chiaroscuro, ominous shadows")
    assert served.detected_emotion in served.emotion_scores


def test_pipeline_returns_each_requests_own_result_when_16_requests_are_concurrent(triton_server, hindi_clips):
    jobs = [(index % len(hindi_clips), 100 + index) for index in range(16)]

    def run(job):
        clip, seed = job
        with Client(triton_server.grpc_url, timeout_s=600) as own:
            return own.speech_to_image(hindi_clips[clip].wav_bytes, seed=seed, **OPTIONS)

    with ThreadPoolExecutor(max_workers=16) as pool:
        concurrent = list(pool.map(run, jobs))
    with Client(triton_server.grpc_url, timeout_s=600) as own:
        for job, result in zip(jobs, concurrent, strict=True):
            alone = own.speech_to_image(hindi_clips[job[0]].wav_bytes, seed=job[1], **OPTIONS)
            assert result.seed == job[1]
            assert (result.text, result.emotion, result.png) == (alone.text, alone.emotion, alone.png), job
    assert len({result.png for result in concurrent}) == 16


def test_pipeline_uses_shared_memory_for_audio_and_pixels_with_the_same_result(triton_server, client, hindi_clips):
    clip = hindi_clips[0]
    expected = client.speech_to_image(clip.samples, clip.sample_rate_hz, seed=2, height=64, width=48, **OPTIONS)
    assert expected.image_pixels is None
    # Shared-memory registration is an admin API: the client sends the server's key.
    with Client(triton_server.grpc_url, use_shared_memory=True, headers=triton_server.admin_headers) as shm_client:
        served = shm_client.speech_to_image(clip.samples, clip.sample_rate_hz, seed=2, height=64, width=48, **OPTIONS)
    assert served.png == expected.png
    assert served.image_pixels.shape == (64, 48, 3)
    np.testing.assert_array_equal(served.pixels, decode_png(expected.png))


def test_stream_delivers_text_before_previews_before_the_image(triton_server, client, hindi_clips):
    clip = hindi_clips[0]

    async def collect():
        async with AsyncClient(triton_server.grpc_url) as stream_client:
            return [
                event
                async for event in stream_client.stream_speech_to_image(
                    clip.wav_bytes, preview_every=1, seed=4, **OPTIONS
                )
            ]

    events = asyncio.run(collect())
    kinds = [event.kind for event in events]
    assert kinds[0] == "text" and kinds[-1] == "image"
    assert kinds.count("preview") >= 2 and set(kinds[1:-1]) == {"preview"}
    assert events[0].result.png == b"" and events[0].result.text
    previews = [decode_png(event.result.png) for event in events if event.kind == "preview"]
    assert all(preview.shape == (16, 16, 3) for preview in previews)
    steps = [event.step for event in events]
    assert steps == sorted(steps)
    expected = client.speech_to_image(clip.wav_bytes, seed=4, **OPTIONS)
    assert events[-1].result.png == expected.png
    assert events[-1].result.text == expected.text and events[-1].result.seed == 4


def test_async_client_gives_the_same_result_as_the_sync_client(triton_server, client, hindi_clips):
    async def run():
        async with AsyncClient(triton_server.grpc_url) as async_client:
            return await async_client.speech_to_image(hindi_clips[1].wav_bytes, seed=9, **OPTIONS)

    assert asyncio.run(run()).png == client.speech_to_image(hindi_clips[1].wav_bytes, seed=9, **OPTIONS).png


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(audio=b"%PDF-1.4 not audio" * 50), "`audio_bytes`: could not be decoded as WAV, FLAC or OGG"),
        (dict(audio=np.zeros(0, np.float32), sample_rate_hz=16_000), "`audio_samples`: holds 0 samples"),
        (dict(audio=np.full(8_000, np.nan, np.float32), sample_rate_hz=16_000), "NaN or infinite"),
        (dict(style_template="cubist"), "`style_template`: 'cubist' is not a style template"),
        (dict(emotion_override="bored"), "`emotion_override`: must be one of"),
        (dict(num_inference_steps=0), "`num_inference_steps`"),
        (dict(guidance_scale=-1.0), "`guidance_scale`"),
        (dict(height=60), "`height`"),
        (dict(scheduler="magic"), "`scheduler`"),
        (dict(max_new_tokens=0), "`max_new_tokens`"),
    ],
    ids=[
        "non-audio",
        "empty",
        "nan",
        "template",
        "emotion",
        "steps",
        "guidance",
        "height",
        "scheduler",
        "tokens",
    ],
)
def test_pipeline_refuses_bad_input_naming_the_field_and_serves_the_next_request(client, hindi_clips, kwargs, match):
    audio = kwargs.pop("audio", hindi_clips[0].wav_bytes)
    options = {**OPTIONS, **kwargs}
    with pytest.raises(InvalidRequestError, match=match):
        client.speech_to_image(audio, seed=1, **options)
    assert client.speech_to_image(hindi_clips[0].wav_bytes, seed=1, **OPTIONS).png


def test_stream_ends_normally_and_channel_serves_again_when_consumer_stops_at_the_image(triton_server, hindi_clips):
    # Closing the stream after the image reads the server's final response instead of
    # cancelling a finished call (the cancellation path crashed Triton 2.51 once).
    clip = hindi_clips[0]

    async def image_then_stop(stream_client) -> bytes:
        async with contextlib.aclosing(
            stream_client.stream_speech_to_image(clip.wav_bytes, seed=6, **OPTIONS)
        ) as events:
            async for event in events:
                if event.kind == "image":
                    return event.result.png
        return b""

    async def run() -> tuple[bytes, bytes]:
        async with AsyncClient(triton_server.grpc_url) as stream_client:
            first = await asyncio.wait_for(image_then_stop(stream_client), 300)
            second = await asyncio.wait_for(image_then_stop(stream_client), 300)
        return first, second

    first, second = asyncio.run(run())
    assert first and first == second


def test_stream_refuses_bad_input_with_an_error_naming_the_field(triton_server, hindi_clips):
    async def run():
        async with AsyncClient(triton_server.grpc_url) as stream_client:
            async for _ in stream_client.stream_speech_to_image(
                hindi_clips[0].wav_bytes, style_template="cubist", **OPTIONS
            ):
                pass

    with pytest.raises(InvalidRequestError, match="`style_template`: 'cubist' is not a style template"):
        asyncio.run(run())


def http_infer(triton_server, model: str, body: dict) -> tuple[dict, bytes]:
    """POST a KServe v2 request; return the JSON header and the binary tail (binary data extension)."""
    request = urllib.request.Request(
        f"http://{triton_server.http_url}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        # HTTP inference is behind the admin key (docs/security.md).
        headers={"Content-Type": "application/json", **triton_server.http_admin_headers},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        payload = response.read()
        header_length = int(response.headers.get("Inference-Header-Content-Length", len(payload)))
    return json.loads(payload[:header_length]), payload[header_length:]


def binary_output(header: dict, tail: bytes, name: str) -> bytes:
    """One BYTES output's first element from the binary tail (4-byte length + bytes per element)."""
    offset = 0
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        if output["name"] == name:
            element = tail[offset : offset + size]
            return element[4 : 4 + int.from_bytes(element[:4], "little")]
        offset += size
    raise KeyError(name)


def test_http_kserve_endpoint_serves_the_same_pipeline(triton_server, client, hindi_clips):
    clip = hindi_clips[2]
    samples = clip.samples[: clip.sample_rate_hz]  # one second keeps the JSON small
    body = {
        "inputs": [
            {"name": "audio_samples", "shape": [1, len(samples)], "datatype": "FP32", "data": samples.tolist()},
            {"name": "sample_rate_hz", "shape": [1, 1], "datatype": "INT32", "data": [clip.sample_rate_hz]},
            {"name": "seed", "shape": [1, 1], "datatype": "INT64", "data": [8]},
            {"name": "num_inference_steps", "shape": [1, 1], "datatype": "INT32", "data": [3]},
            {"name": "max_new_tokens", "shape": [1, 1], "datatype": "INT32", "data": [4]},
        ],
        # The PNG is binary: ask for every output in the binary data extension.
        "parameters": {"binary_data_output": True},
    }
    header, tail = http_infer(triton_server, "speech_to_image", body)
    expected = client.speech_to_image(samples, clip.sample_rate_hz, seed=8, num_inference_steps=3, max_new_tokens=4)
    assert binary_output(header, tail, "text").decode() == expected.text
    assert binary_output(header, tail, "emotion").decode() == expected.emotion
    assert binary_output(header, tail, "png") == expected.png


def test_http_json_endpoint_serves_whisper_text(triton_server, client, hindi_clips):
    clip = hindi_clips[0]
    samples = clip.samples[: clip.sample_rate_hz]
    body = {
        "inputs": [
            {"name": "audio_samples", "shape": [1, len(samples)], "datatype": "FP32", "data": samples.tolist()},
            {"name": "sample_rate_hz", "shape": [1, 1], "datatype": "INT32", "data": [clip.sample_rate_hz]},
            {"name": "max_new_tokens", "shape": [1, 1], "datatype": "INT32", "data": [4]},
        ],
        "outputs": [{"name": "text"}, {"name": "token_ids"}],
    }
    header, _ = http_infer(triton_server, "whisper", body)
    outputs = {output["name"]: output["data"] for output in header["outputs"]}
    expected = client.translate(samples, clip.sample_rate_hz, max_new_tokens=4)
    assert outputs["text"] == [expected.text]
    assert outputs["token_ids"] == expected.token_ids


def test_http_endpoint_refuses_bad_input_with_400(triton_server):
    body = {"inputs": [{"name": "audio_bytes", "shape": [1, 1], "datatype": "BYTES", "data": ["not audio"]}]}
    request = urllib.request.Request(
        f"http://{triton_server.http_url}/v2/models/speech_to_image/infer",
        data=json.dumps(body).encode(),
        # HTTP inference is behind the admin key (docs/security.md).
        headers={"Content-Type": "application/json", **triton_server.http_admin_headers},
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=60)
    assert error.value.code == 400
    assert "`audio_bytes`: could not be decoded" in error.value.read().decode()
