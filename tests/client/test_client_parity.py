"""Client options against real servers: restricted APIs and their key, one reused shared-memory region
(sync and asyncio), request fields, compression and channel options, trace context, retry budget."""

import asyncio
import json
import re
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from s2i.client import AsyncClient, Client, ClientError, RestrictedApiError, RetryPolicy, ServerUnavailableError
from s2i.client.operations import Operation
from s2i.client.transport import ADMIN_KEY_HEADER, CallOptions, Connection
from s2i.server import free_ports
from tests.conftest import ADMIN_KEY as SESSION_ADMIN_KEY
from tests.restricted_server import ADMIN_KEY, serve_restricted

OPTIONS = dict(seed=4, num_inference_steps=2, max_new_tokens=4)


@pytest.fixture(scope="module")
def restricted_server(tmp_path_factory):
    yield from serve_restricted(tmp_path_factory)


def echo(values: np.ndarray) -> Operation:
    return Operation("echo", [("x", "FP32", values)], ["y"], lambda outputs: outputs["y"])


def test_wait_until_ready_sends_the_admin_key_when_health_is_restricted(restricted_server):
    with Client(restricted_server.grpc_url, admin_key=ADMIN_KEY) as client:
        client.wait_until_ready(timeout_s=30, model="echo")

    async def wait():
        async with AsyncClient(restricted_server.grpc_url, admin_key=ADMIN_KEY) as client:
            await client.wait_until_ready(timeout_s=30, model="echo")

    asyncio.run(wait())


def test_wait_until_ready_raises_restricted_api_error_at_once_when_the_key_is_missing(restricted_server):
    with Client(restricted_server.grpc_url) as client, pytest.raises(RestrictedApiError) as error:
        client.wait_until_ready(timeout_s=3600)  # raised at once: no point polling for an hour
    assert error.value.header == ADMIN_KEY_HEADER
    assert "pass its key" in str(error.value)

    async def wait():
        async with AsyncClient(restricted_server.grpc_url, headers={ADMIN_KEY_HEADER: "wrong"}) as client:
            await client.wait_until_ready(timeout_s=3600)

    with pytest.raises(RestrictedApiError):
        asyncio.run(wait())


def test_restricted_shared_memory_is_refused_without_retries_and_works_with_the_key(restricted_server, monkeypatch):
    sleeps = []
    monkeypatch.setattr("s2i.client.grpc_client.time.sleep", sleeps.append)
    values = np.linspace(-1, 1, 40_000, dtype=np.float32)  # 160 kB: sent through shared memory
    retrying = RetryPolicy(max_attempts=5)
    with (
        Client(restricted_server.grpc_url, use_shared_memory=True, retry=retrying) as client,
        pytest.raises(RestrictedApiError),
    ):
        client.execute(echo(values))
    assert sleeps == []
    with Client(restricted_server.grpc_url, use_shared_memory=True, admin_key=ADMIN_KEY) as client:
        np.testing.assert_array_equal(client.execute(echo(values)), values)
        assert client.shared_memory_region is not None


def registered_regions(triton_server) -> set[str]:
    request = urllib.request.Request(
        f"http://{triton_server.http_url}/v2/systemsharedmemory/status", headers=triton_server.http_admin_headers
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return {region["name"] for region in json.loads(r.read())}


def test_client_registers_one_shared_memory_region_and_reuses_it_for_every_call(triton_server, client, hindi_clips):
    clip = hindi_clips[0]
    expected = client.speech_to_image(clip.samples, clip.sample_rate_hz, height=64, width=48, **OPTIONS)
    with Client(triton_server.grpc_url, use_shared_memory=True, admin_key=SESSION_ADMIN_KEY) as shm_client:
        first = shm_client.speech_to_image(clip.samples, clip.sample_rate_hz, height=64, width=48, **OPTIONS)
        region = shm_client.shared_memory_region
        assert region in registered_regions(triton_server)
        second = shm_client.speech_to_image(hindi_clips[1].samples, hindi_clips[1].sample_rate_hz, **OPTIONS)
        assert shm_client.shared_memory_region == region
        assert [name for name in registered_regions(triton_server) if name.startswith("s2i-")] == [region]
    assert region not in registered_regions(triton_server)
    assert first.png == expected.png and first.image_pixels.shape == (64, 48, 3)
    assert second.png == client.speech_to_image(hindi_clips[1].samples, hindi_clips[1].sample_rate_hz, **OPTIONS).png


def test_async_client_uses_shared_memory_with_the_same_result(triton_server, client, hindi_clips):
    clip = hindi_clips[2]
    expected = client.speech_to_image(clip.samples, clip.sample_rate_hz, height=64, width=48, **OPTIONS)

    async def run():
        async with AsyncClient(
            triton_server.grpc_url, use_shared_memory=True, admin_key=SESSION_ADMIN_KEY
        ) as async_client:
            result = await async_client.speech_to_image(
                clip.samples, clip.sample_rate_hz, height=64, width=48, **OPTIONS
            )
            return result, async_client.shared_memory_region

    result, region = asyncio.run(run())
    assert region is not None and region not in registered_regions(triton_server)
    assert result.png == expected.png
    np.testing.assert_array_equal(result.pixels, expected.pixels)


def test_call_options_reach_the_server(triton_server, client, hindi_clips):
    wav = hindi_clips[0].wav_bytes
    expected = client.translate(wav, max_new_tokens=4)
    call = CallOptions(request_id="s2i-test-42", model_version="1", priority=1)
    assert client.translate(wav, max_new_tokens=4, call=call) == expected
    with pytest.raises(ClientError, match="version 7"):
        client.translate(wav, max_new_tokens=4, call=CallOptions(model_version="7"))


def test_compression_keepalive_and_channel_options_give_the_same_result(triton_server, client, hindi_clips):
    options = dict(
        compression="gzip",
        keepalive_time_ms=10_000,
        keepalive_timeout_ms=5_000,
        channel_args=(("grpc.max_receive_message_length", 64 * 2**20),),
    )
    wav = hindi_clips[1].wav_bytes
    with Client(triton_server.grpc_url, **options) as tuned:
        assert tuned.speech_to_image(wav, **OPTIONS).png == client.speech_to_image(wav, **OPTIONS).png

    async def run():
        async with AsyncClient(triton_server.grpc_url, **options) as tuned:
            return await tuned.translate(wav, max_new_tokens=4)

    assert asyncio.run(run()) == client.translate(wav, max_new_tokens=4)


def test_connection_refuses_an_unknown_compression():
    with pytest.raises(ValueError, match="`compression` must be one of"):
        Connection(compression="brotli")


def test_call_headers_carry_a_w3c_trace_context_new_per_call_or_the_callers():
    connection = Connection(headers={"authorization": "Bearer x"}, admin_key="k")
    first, second = connection.call_headers(), connection.call_headers()
    pattern = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")
    assert pattern.match(first["traceparent"]) and first["traceparent"] != second["traceparent"]
    assert first["authorization"] == "Bearer x" and first[ADMIN_KEY_HEADER] == "k"
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert connection.call_headers(CallOptions(traceparent=parent))["traceparent"] == parent
    assert Connection(trace_context=False).call_headers() is None
    with pytest.raises(ValueError, match="`traceparent` must be a W3C trace context"):
        connection.call_headers(CallOptions(traceparent="not-a-trace"))


def test_call_headers_keep_a_traceparent_from_the_connection_headers_unless_the_call_has_one():
    fixed = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    call = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    connection = Connection(headers={"traceparent": fixed})

    assert connection.call_headers()["traceparent"] == fixed
    assert connection.call_headers(CallOptions(traceparent=call))["traceparent"] == call


def test_retry_budget_stops_retries_across_calls_during_an_outage(monkeypatch):
    sleeps = []
    monkeypatch.setattr("s2i.client.grpc_client.time.sleep", sleeps.append)
    (port,) = free_ports(1)  # nothing listens there
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.01, budget_tokens=4)
    with Client(f"127.0.0.1:{port}", retry=policy, timeout_s=5) as client:
        calls = []
        for _ in range(3):
            before = len(sleeps)
            with pytest.raises(ServerUnavailableError):
                client.translate(np.zeros(16_000, np.float32), 16_000)
            calls.append(len(sleeps) - before)
    # 4 tokens, retries only above 2: the first call retries once, then the budget is spent.
    assert calls == [1, 0, 0]


def test_image_calls_without_a_seed_are_not_retried(monkeypatch):
    sleeps = []
    monkeypatch.setattr("s2i.client.grpc_client.time.sleep", sleeps.append)
    (port,) = free_ports(1)
    with Client(f"127.0.0.1:{port}", retry=RetryPolicy(max_attempts=4), timeout_s=5) as client:
        with pytest.raises(ServerUnavailableError):
            client.speech_to_image(np.zeros(16_000, np.float32), 16_000)
        assert sleeps == []
        with pytest.raises(ServerUnavailableError):
            client.speech_to_image(np.zeros(16_000, np.float32), 16_000, seed=1)
        assert len(sleeps) == 3


def test_raw_tritonclient_sees_the_restricted_header_name(restricted_server):
    # What the admin key header is over gRPC, independent of this client: Triton's own answer.
    with grpcclient.InferenceServerClient(restricted_server.grpc_url) as raw:
        assert raw.is_server_ready(headers={ADMIN_KEY_HEADER: ADMIN_KEY})


@pytest.mark.parametrize("prefix", ["", "[request id: 3f2a] "])
def test_stream_error_is_invalid_request_when_message_names_a_field_with_or_without_request_id(prefix):
    from tritonclient.utils import InferenceServerException

    from s2i.client import InvalidRequestError
    from s2i.client.transport import wrap_error

    wrapped = wrap_error(InferenceServerException(f"{prefix}`seed`: must be between 0 and 2**63."))

    assert isinstance(wrapped, InvalidRequestError) and wrapped.status == "INVALID_ARGUMENT"
    assert not isinstance(wrap_error(InferenceServerException("[request id: 3f2a] out of memory")), InvalidRequestError)
