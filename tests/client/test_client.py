"""Client behaviour that does not depend on a model: retries, errors, TLS options, the generate CLI."""

import subprocess
import sys

import numpy as np
import pytest

from s2i.client import Client, InvalidRequestError, RetryPolicy, ServerUnavailableError
from s2i.client.transport import Connection, wrap_error
from s2i.server import free_ports


def test_client_retries_unavailable_with_backoff_then_raises(monkeypatch):
    sleeps = []
    monkeypatch.setattr("s2i.client.grpc_client.time.sleep", sleeps.append)
    (port,) = free_ports(1)  # nothing listens there
    client = Client(f"127.0.0.1:{port}", retry=RetryPolicy(max_attempts=4, initial_backoff_s=0.1), timeout_s=5)
    with client, pytest.raises(ServerUnavailableError) as error:
        client.translate(np.zeros(16_000, np.float32), 16_000)
    assert error.value.status == "UNAVAILABLE"
    assert len(sleeps) == 3
    # Exponential: each wait is drawn from [0.5, 1] x 0.1, 0.2, 0.4 s.
    for sleep, base in zip(sleeps, (0.1, 0.2, 0.4), strict=True):
        assert 0.5 * base <= sleep <= base


def test_client_does_not_retry_invalid_argument(triton_server, monkeypatch):
    sleeps = []
    monkeypatch.setattr("s2i.client.grpc_client.time.sleep", sleeps.append)
    client = Client(triton_server.grpc_url, retry=RetryPolicy(max_attempts=5))
    with client, pytest.raises(InvalidRequestError):
        client.translate(b"not audio at all" * 10)
    assert sleeps == []


def test_connection_renders_tls_options_for_tritonclient():
    connection = Connection(url="s2i.example:443", ssl=True, root_certificates="ca.pem", private_key="k.pem")
    assert connection.client_kwargs() == {
        "url": "s2i.example:443",
        "ssl": True,
        "root_certificates": "ca.pem",
        "private_key": "k.pem",
        "certificate_chain": None,
    }
    assert Connection(url="localhost:8001").client_kwargs() == {"url": "localhost:8001"}


def test_client_sends_headers_with_each_call(triton_server, hindi_clips):
    with Client(triton_server.grpc_url, headers={"authorization": "Bearer test"}) as client:
        assert client.translate(hindi_clips[0].wav_bytes, max_new_tokens=2).token_ids


def test_cli_generate_writes_the_png_and_prints_texts_and_timings(triton_server, client, hindi_clips, tmp_path):
    speech, image = tmp_path / "speech.wav", tmp_path / "out" / "image.png"
    speech.write_bytes(hindi_clips[0].wav_bytes)
    completed = subprocess.run(
        [sys.executable, "-m", "s2i.cli", "generate", str(speech), "-o", str(image), "--url", triton_server.grpc_url]
        + ["--seed", "6", "--steps", "2", "--max-new-tokens", "3", "--emotion", "calm"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    expected = client.speech_to_image(
        hindi_clips[0].wav_bytes, seed=6, num_inference_steps=2, max_new_tokens=3, emotion_override="calm"
    )
    assert image.read_bytes() == expected.png
    assert f"translation: {expected.text}" in completed.stdout
    assert "emotion: calm (detected" in completed.stdout
    assert "timings: preprocess" in completed.stdout and "diffusion" in completed.stdout


@pytest.mark.parametrize(
    ("status", "message", "retryable"),
    [
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'whisper' has no available versions", True),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'whisperr' is not found", False),
        ("StatusCode.UNAVAILABLE", "Server not ready", True),
        ("StatusCode.INTERNAL", "Request for unknown model: 'whisper' has no available versions", False),
    ],
)
def test_wrap_error_retries_a_model_without_loaded_versions_when_the_server_is_stopping(status, message, retryable):
    from tritonclient.utils import InferenceServerException

    error = wrap_error(InferenceServerException(message, status=status))

    assert isinstance(error, ServerUnavailableError) is retryable
    assert error.status == status.removeprefix("StatusCode.")


@pytest.mark.parametrize(
    ("message", "status"),
    [
        ("stage model `unet` failed: Model unet - Error when running inference: Server not ready", "UNAVAILABLE"),
        ("stage model `whisper_encoder` failed: Stub process 'whisper_encoder_0_0' is not healthy.", "UNAVAILABLE"),
        ("`seed`: must be between 0 and 2**63-1, got -1", "INVALID_ARGUMENT"),
        ("something else went wrong", None),
    ],
)
def test_wrap_error_reads_the_status_from_the_message_when_a_stream_error_has_none(message, status):
    from tritonclient.utils import InferenceServerException

    error = wrap_error(InferenceServerException(message))

    assert error.status == status
    assert isinstance(error, ServerUnavailableError) is (status == "UNAVAILABLE")
