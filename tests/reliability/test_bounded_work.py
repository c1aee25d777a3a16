"""Work per request is bounded: decode bombs are refused from the header, abandoned requests stop.

Timings are compared as ratios on the same server, never to absolute limits.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import soundfile
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from s2i import names
from s2i.client import Client, ClientError
from s2i.client.transport import NO_RETRY
from tests.reliability.conftest import good_translation, tone

MB = 1024 * 1024


def silent_flac(path, seconds: int, rate_hz: int = 16_000) -> bytes:
    block = np.zeros(rate_hz * 60, dtype=np.int16)
    with soundfile.SoundFile(path, "w", samplerate=rate_hz, channels=1, format="FLAC") as sound:
        for _ in range(seconds // 60):
            sound.write(block)
    return path.read_bytes()


def test_preprocess_refuses_an_hour_long_flac_before_decoding_when_served(default_serve, tmp_path):
    expected = good_translation(default_serve.grpc_url)
    data = silent_flac(tmp_path / "hour.flac", 3600)
    stubs = default_serve.stubs_of(names.PREPROCESS)
    assert stubs
    before = [stub.memory_info().rss for stub in stubs]
    with grpcclient.InferenceServerClient(default_serve.grpc_url) as client:
        audio = grpcclient.InferInput(names.AUDIO_BYTES, [1, 1], "BYTES")
        audio.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        with pytest.raises(InferenceServerException) as refused:
            client.infer(names.PREPROCESS, [audio], client_timeout=120)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "`audio_bytes`: is 3600.0 s long (from its header)" in refused.value.message()
    # Whichever instance got the request: the largest growth.
    growth = max(stub.memory_info().rss - rss for stub, rss in zip(stubs, before, strict=True))
    assert growth < 50 * MB, f"preprocess stub grew {growth / MB:.0f} MB on a {len(data) // 1024} KB file"
    assert good_translation(default_serve.grpc_url) == expected


def _timed_translation(url: str, max_new_tokens: int, timeout_s: float = 300) -> float:
    started = time.perf_counter()
    with Client(url, timeout_s=timeout_s, retry=NO_RETRY) as client:
        ids = client.translate(tone(), 16_000, max_new_tokens=max_new_tokens).token_ids
    assert ids
    return time.perf_counter() - started


def test_abandoned_whisper_request_stops_within_a_step_so_the_next_is_not_delayed(default_serve):
    url = default_serve.grpc_url
    expected = good_translation(url)
    short = statistics.median(_timed_translation(url, 3) for _ in range(3))
    long = _timed_translation(url, 440)
    # The long request must be long for the comparison below to say anything (the decoder runs
    # in the loop's process on this target, so 440 tokens can take only a few short requests' time).
    if long < 4 * short:
        pytest.skip(
            f"a 440-token request took {long:.3f} s, under 4x a 3-token one ({short:.3f} s): nothing to compare"
        )
    # Abandon the same long request after a fraction of its time (client deadline), then ask again.
    with Client(url, timeout_s=long / 4, retry=NO_RETRY) as client, pytest.raises(ClientError) as abandoned:
        client.translate(tone(), 16_000, max_new_tokens=440)
    assert abandoned.value.status == "DEADLINE_EXCEEDED"
    started = time.perf_counter()
    assert good_translation(url) == expected
    after = time.perf_counter() - started
    # Had the abandoned loop run on, this request would have waited for most of `long`.
    assert after < long / 2, (after, long, short)
