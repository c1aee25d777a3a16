"""The web app's checks and job handling: options, limits, refusals before Triton, disconnect -> cancel."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
from starlette.testclient import TestClient

from s2i import names
from s2i.audio import sine
from s2i.client import CallOptions
from s2i.client.results import SpeechToImageResult, StreamEvent
from s2i.web import WebConfig, create_app
from s2i.web.config import SCHEDULERS, parse_sizes
from s2i.web.limits import BusyError, JobLimiter
from s2i.web.observability import LOG_EVENT, LOGGER_NAME, valid_traceparent
from s2i.web.options import OptionError, parse_options
from tests.web.conftest import serve_app, web_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
SCORES = dict(zip(names.EMOTION_LABELS, [0.05, 0.05, 0.5, 0.1, 0.1, 0.1, 0.05, 0.05], strict=True))


def result(png: bytes = b"", seed: int = -1) -> SpeechToImageResult:
    return SpeechToImageResult(
        png=png,
        text="a child plays",
        transcript="",
        emotion="happy",
        detected_emotion="happy",
        emotion_scores=SCORES,
        prompt="a child plays, bright",
        negative_prompt="blurry",
        seed=seed,
        timings_ms={},
    )


class FakeStream:
    """Stands in for Triton where the test controls timing: records calls; may hang after the text."""

    def __init__(self, hang_after_text: bool = False) -> None:
        self.calls: list[tuple[bytes, object, CallOptions]] = []
        self.hang_after_text = hang_after_text
        self.cancelled = asyncio.Event()
        self.closed = asyncio.Event()

    async def __call__(self, wav: bytes, options, call: CallOptions):
        self.calls.append((wav, options, call))
        try:
            yield StreamEvent("text", 0, result())
            if self.hang_after_text:
                await asyncio.Event().wait()  # a long denoising loop
            yield StreamEvent("preview", 1, result(png=b"\x89PNG-preview"))
            yield StreamEvent("image", 2, result(png=b"\x89PNG-final", seed=7))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.closed.set()


def wav(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, sine(220, seconds, rate), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def parse_events(body: str) -> list[tuple[str, dict]]:
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def job_lines(caplog) -> list[dict]:
    """The web app's job log lines so far, parsed (each must be one JSON object)."""
    lines = [record.getMessage() for record in caplog.records if record.name == LOGGER_NAME]
    assert all("\n" not in line for line in lines)
    return [json.loads(line) for line in lines]


@pytest.fixture()
def config(tmp_path) -> WebConfig:
    return web_config("127.0.0.1:1", tmp_path, max_duration_s=5.0)


# Configuration and options.


def test_config_load_takes_flags_over_environment_over_defaults(tmp_path):
    environ = {"S2I_WEB_MAX_JOBS": "6", "S2I_WEB_PORT": "9000", "S2I_WEB_HEADERS": "Authorization=Bearer x"}
    config = WebConfig.load({"port": "9100", "sizes": None}, environ=environ)
    assert (config.max_jobs, config.port, config.host) == (6, 9100, "127.0.0.1")
    assert config.headers == {"authorization": "Bearer x"}
    assert config.client_options()["headers"] == {"authorization": "Bearer x"}


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({"S2I_WEB_MAX_DURATION_S": "45"}, "`max_duration_s`"),
        ({"S2I_WEB_MAX_JOBS": "many"}, "`max_jobs`: cannot read 'many'"),
        ({"S2I_WEB_SSL": "perhaps"}, "`ssl`"),
        ({"S2I_WEB_MAX_JOBS_PER_CLIENT": "9"}, "`max_jobs_per_client`"),
        ({"S2I_WEB_SAMPLE_EMOTION": "ecstatic"}, "`sample_emotion`"),
        ({"S2I_WEB_SAMPLE_TEXT": "   "}, "`sample_text`"),
        ({"S2I_WEB_SAMPLE_STRONG": "true"}, "`sample_strong`"),
        ({"S2I_WEB_SAMPLE_TEXT": "क" * 201}, r"`sample_text`: invalid value 'क{79} \(see"),
    ],
)
def test_config_load_names_the_setting_when_a_value_is_invalid(environ, match):
    with pytest.raises(ValueError, match=match):
        WebConfig.load(environ=environ)


def test_config_schedulers_equal_the_servers_when_compared():
    from s2i.stages.diffusion.sampling import SCHEDULERS as SERVER_SCHEDULERS

    assert set(SCHEDULERS) == set(SERVER_SCHEDULERS)


def test_parse_sizes_reads_height_by_width_and_default():
    assert parse_sizes("default, 512x768") == ((0, 0), (512, 768))


def test_parse_options_converts_every_field_when_values_are_valid(config):
    query = {"seed": "7", "steps": "4", "guidance": "2.5", "scheduler": "euler", "size": "256x256"}
    options = parse_options({**query, "style": "photo", "emotion": "sad"}, config, {"photo": ""})
    assert options.client_kwargs() == {
        "seed": 7,
        "num_inference_steps": 4,
        "guidance_scale": 2.5,
        "scheduler": "euler",
        "height": 256,
        "width": 256,
        "style_template": "photo",
        "emotion_override": "sad",
    }
    assert parse_options({"size": "default", "seed": ""}, config, {}).client_kwargs() == {}


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ({"steps": "500"}, "`steps` must be between 1 and 50"),
        ({"steps": "four"}, "`steps` must be a number"),
        ({"seed": "-1"}, "`seed`"),
        ({"scheduler": "magic"}, "`scheduler` must be one of"),
        ({"size": "4096x4096"}, "`size`"),
        ({"emotion": "bored"}, "`emotion`"),
        ({"style": "cubist"}, "`style`"),
        ({"colour": "red"}, "`colour` is not an option"),
    ],
)
def test_parse_options_names_the_field_when_a_value_is_refused(config, query, match):
    with pytest.raises(OptionError, match=match):
        parse_options(query, config, {"photo": ""})


# Job limits.


def test_job_limiter_refuses_a_second_job_of_one_client_then_frees_it_on_release():
    limiter = JobLimiter(max_jobs=3, max_per_client=1)
    slot = limiter.acquire("a")
    with pytest.raises(BusyError, match="already have 1") as refused:
        limiter.acquire("a")
    assert refused.value.status == 429
    slot.release()
    slot.release()  # idempotent
    assert limiter.counts.active == 0
    limiter.acquire("a").release()


def test_job_limiter_refuses_with_503_when_all_slots_are_taken():
    limiter = JobLimiter(max_jobs=2, max_per_client=1)
    limiter.acquire("a"), limiter.acquire("b")
    with pytest.raises(BusyError, match="busy") as refused:
        limiter.acquire("c")
    assert refused.value.status == 503 and limiter.counts.refused_busy == 1


# The app, in-process.


def test_page_is_served_with_a_strict_content_security_policy_and_no_external_assets(config):
    with TestClient(create_app(config)) as http:
        page = http.get("/")
        assert page.status_code == 200 and 'id="record"' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset in ("/static/app.js", "/static/style.css"):
            response = http.get(asset)
            assert response.status_code == 200 and len(response.content) > 1000
        for text in (page.text, http.get("/static/app.js").text, http.get("/static/style.css").text):
            text = text.replace("http://www.w3.org/2000/svg", "")  # an XML namespace name, not a fetch
            assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_options_endpoint_lists_bounds_schedulers_styles_emotions_and_sizes(config):
    with TestClient(create_app(config)) as http:
        options = http.get("/api/options").json()
    assert options["max_duration_s"] == 5.0 and options["max_steps"] == 50
    assert options["schedulers"] == list(SCHEDULERS) and options["emotions"] == list(names.EMOTION_LABELS)
    assert options["default_style"] in [style["name"] for style in options["styles"]]
    assert options["sizes"] == ["default", "256x256", "512x512"]


def test_generate_streams_audio_text_preview_and_image_events_when_audio_is_good(config):
    stream = FakeStream()
    with TestClient(create_app(config, stream)) as http:
        response = http.post("/api/generate?seed=7&steps=2&emotion=sad", content=wav(1.0))
        health = http.get("/healthz").json()
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    assert [kind for kind, _ in events] == ["audio", "text", "preview", "image"]
    audio = events[0][1]
    assert audio["container"] == "wav" and abs(audio["duration_s"] - 1.0) < 0.01
    sent_wav, options, _ = stream.calls[0]
    assert base64.b64decode(audio["wav"].split(",", 1)[1]) == sent_wav
    assert options.client_kwargs() == {"seed": 7, "num_inference_steps": 2, "emotion_override": "sad"}
    assert events[1][1]["text"] == "a child plays" and events[1][1]["scores"] == SCORES
    assert events[2][1]["png"] == "data:image/png;base64," + base64.b64encode(b"\x89PNG-preview").decode()
    assert events[3][1]["seed"] == 7 and events[3][1]["step"] == 2
    assert health["jobs"]["active"] == 0 and health["jobs"]["cancelled"] == 0 and health["jobs"]["finished"] == 1


def test_generate_passes_the_callers_ids_to_triton_and_logs_the_job_when_audio_is_good(config, caplog):
    caplog.set_level("INFO", logger=LOGGER_NAME)
    stream, body = FakeStream(), wav(1.0)
    headers = {"traceparent": TRACEPARENT, "x-request-id": "ingress-42"}
    with TestClient(create_app(config, stream)) as http:
        response = http.post("/api/generate?steps=2", content=body, headers=headers)
    (line,) = job_lines(caplog)
    _, _, call = stream.calls[0]

    assert response.headers["traceparent"] == TRACEPARENT and response.headers["x-request-id"] == "ingress-42"
    assert (call.traceparent, call.request_id) == (TRACEPARENT, "ingress-42")
    assert {key: line[key] for key in ("event", "request_id", "trace_id", "outcome", "reason", "status")} == {
        "event": LOG_EVENT,
        "request_id": "ingress-42",
        "trace_id": TRACE_ID,
        "outcome": "ok",
        "reason": None,
        "status": 200,
    }
    assert (line["upload_bytes"], line["audio_duration_s"], line["previews"]) == (len(body), 1.0, 1)
    times = [line[key] for key in ("intake_ms", "first_text_ms", "first_preview_ms", "image_ms", "duration_ms")]
    assert all(t is not None for t in times) and times == sorted(times) and times[0] > 0
    # Sizes only: neither the transcript, the translation nor the prompt reaches the log.
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "a child plays" not in text and "blurry" not in text


@pytest.mark.parametrize(
    "traceparent",
    [
        None,
        TRACEPARENT.upper(),
        f"00-{'0' * 32}-00f067aa0ba902b7-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"ff-{TRACE_ID}-00f067aa0ba902b7-01",
        f"{TRACEPARENT}-extra",
        f"{TRACEPARENT}\n",
        TRACEPARENT[:-1],
        "00-" + "a" * 600,
        [TRACEPARENT, f"00-{'1' * 32}-00f067aa0ba902b7-01"],
    ],
    ids=[
        "absent",
        "uppercase",
        "zero-trace",
        "zero-parent",
        "version-ff",
        "v00-extra",
        "newline",
        "short",
        "long",
        "twice",
    ],
)
def test_generate_starts_a_new_trace_when_the_traceparent_is_absent_or_invalid(config, caplog, traceparent):
    caplog.set_level("INFO", logger=LOGGER_NAME)
    stream = FakeStream()
    values = [] if traceparent is None else traceparent if isinstance(traceparent, list) else [traceparent]
    headers = [("traceparent", value) for value in values]
    with TestClient(create_app(config, stream)) as http:
        response = http.post("/api/generate", content=wav(1.0), headers=headers)
    (line,) = job_lines(caplog)
    _, _, call = stream.calls[0]
    sent = response.headers["traceparent"]

    assert valid_traceparent(sent) == sent and sent.endswith("-01") and TRACE_ID not in sent
    assert all(value.split("-")[1] not in sent for value in values if value.count("-") >= 1)
    assert call.traceparent == sent and line["trace_id"] == sent.split("-")[1]
    assert len(response.headers["x-request-id"]) == 32 and call.request_id == response.headers["x-request-id"]


def test_valid_traceparent_keeps_ids_and_sampled_bit_when_the_version_is_later():
    later = f"cc-{TRACE_ID}-00f067aa0ba902b7-03-what-comes-next"

    assert valid_traceparent(later) == f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    assert valid_traceparent(TRACEPARENT) == TRACEPARENT


@pytest.mark.parametrize(
    "request_id", [b"a b", "caf\u00e9".encode("latin-1"), b"x" * 65, b"-leading-dash", b"id;drop"], ids=repr
)
def test_generate_makes_a_new_request_id_when_the_callers_is_not_a_plain_token(config, request_id):
    stream = FakeStream()
    with TestClient(create_app(config, stream)) as http:
        response = http.post("/api/generate", content=wav(1.0), headers={"x-request-id": request_id})

    assert response.headers["x-request-id"] == stream.calls[0][2].request_id
    assert len(response.headers["x-request-id"]) == 32 and response.headers["x-request-id"].isalnum()


@pytest.mark.parametrize(
    ("path", "body", "status", "match"),
    [
        ("/api/generate?steps=0", wav(1.0), 400, "`steps` must be between"),
        ("/api/generate", wav(6.0), 413, "6.0 s long; the limit is 5 s"),
        ("/api/generate", b"definitely not audio" * 10, 415, "not audio the app can read"),
        ("/api/generate", b"", 400, "empty"),
    ],
    ids=["option", "too-long", "not-audio", "empty"],
)
def test_generate_refuses_before_triton_and_serves_the_next_request(config, path, body, status, match):
    stream = FakeStream()
    with TestClient(create_app(config, stream)) as http:
        refused = http.post(path, content=body)
        assert refused.status_code == status and match in refused.json()["error"]
        assert stream.calls == []
        assert http.post("/api/generate", content=wav(1.0)).status_code == 200
        assert http.get("/healthz").json()["jobs"]["active"] == 0
    assert len(stream.calls) == 1


def test_generate_logs_refused_jobs_with_their_reason_and_ids_when_refused_before_triton(config, caplog):
    caplog.set_level("INFO", logger=LOGGER_NAME)
    app = create_app(config, FakeStream())
    with TestClient(app) as http:
        option = http.post("/api/generate?steps=0", content=wav(1.0), headers={"traceparent": TRACEPARENT})
        too_long = http.post("/api/generate", content=wav(6.0))
        mine = app.state.web.limiter.acquire("testclient")
        busy = http.post("/api/generate", content=wav(1.0))
        mine.release()
    lines = job_lines(caplog)

    assert [(line["outcome"], line["reason"], line["status"]) for line in lines] == [
        ("invalid", "bad_option", 400),
        ("invalid", "too_long", 413),
        ("busy", "busy", 429),
    ]
    assert [line["request_id"] for line in lines] == [r.headers["x-request-id"] for r in (option, too_long, busy)]
    assert lines[0]["trace_id"] == TRACE_ID and option.headers["traceparent"] == TRACEPARENT
    assert busy.headers["retry-after"] == "10"
    for line in lines:
        assert line["upload_bytes"] is None and line["audio_duration_s"] is None
        assert line["first_text_ms"] is None and line["image_ms"] is None and line["duration_ms"] >= 0


def test_generate_refuses_by_content_length_when_the_upload_is_over_the_limit(tmp_path):
    config = web_config("127.0.0.1:1", tmp_path, max_upload_bytes=10_000)
    with TestClient(create_app(config, FakeStream())) as http:
        refused = http.post("/api/generate", content=wav(1.0))
    assert refused.status_code == 413 and "the limit is 0.0 MB" in refused.json()["error"]


def test_generate_answers_429_and_503_at_once_when_job_slots_are_taken(config):
    stream = FakeStream()
    app = create_app(config, stream)
    limiter = app.state.web.limiter
    with TestClient(app) as http:
        mine = limiter.acquire("testclient")  # TestClient's client address
        refused = http.post("/api/generate", content=wav(1.0))
        assert refused.status_code == 429 and "already have 1" in refused.json()["error"]
        mine.release()
        others = [limiter.acquire(f"10.0.0.{i}") for i in range(config.max_jobs)]
        refused = http.post("/api/generate", content=wav(1.0))
        assert refused.status_code == 503 and "busy" in refused.json()["error"]
        assert refused.headers["retry-after"] == "10"
        for slot in others:
            slot.release()
        assert http.post("/api/generate", content=wav(1.0)).status_code == 200
    assert len(stream.calls) == 1 and limiter.counts.active == 0


def _generate_scope(body: bytes, query: str = "") -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/generate",
        "raw_path": b"/api/generate",
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }


def test_generate_cancels_the_stream_and_frees_the_slot_when_the_browser_disconnects(config, caplog):
    caplog.set_level("INFO", logger=LOGGER_NAME)
    stream = FakeStream(hang_after_text=True)
    app = create_app(config, stream)
    body = wav(1.0)

    async def run() -> list[bytes]:
        disconnected = asyncio.Event()
        chunks: list[bytes] = []
        delivered = False

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body":
                chunks.append(message["body"])
                if b"event: text" in message["body"]:
                    disconnected.set()  # the person closed the tab once the text arrived

        await asyncio.wait_for(app(_generate_scope(body), receive, send), timeout=60)
        return chunks

    chunks = asyncio.run(run())
    assert any(b"event: text" in chunk for chunk in chunks)
    assert not any(b"event: image" in chunk for chunk in chunks)
    assert stream.cancelled.is_set() and stream.closed.is_set()
    counts = app.state.web.limiter.counts
    assert (counts.active, counts.cancelled, counts.finished) == (0, 1, 1)
    (line,) = job_lines(caplog)
    assert (line["outcome"], line["reason"], line["status"]) == ("cancelled", "disconnected", 200)
    assert line["first_text_ms"] is not None and line["first_preview_ms"] is None and line["image_ms"] is None
    assert line["upload_bytes"] == len(body) and line["audio_duration_s"] == 1.0
    assert line["duration_ms"] >= line["first_text_ms"]


def test_generate_sends_a_server_down_message_when_triton_is_unreachable(tmp_path, caplog):
    caplog.set_level("INFO", logger=LOGGER_NAME)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = web_config(f"127.0.0.1:{port}", tmp_path)
    with TestClient(create_app(config)) as http:
        events = parse_events(http.post("/api/generate", content=wav(1.0)).text)
        ready = http.get("/readyz")
        health = http.get("/healthz")
    assert [kind for kind, _ in events] == ["audio", "error"]
    assert events[1][1] == {
        "message": "The image server is not reachable right now; try again in a minute.",
        "reason": "server_down",
    }
    assert ready.status_code == 503 and health.status_code == 200
    (line,) = job_lines(caplog)
    assert (line["outcome"], line["reason"], line["first_text_ms"]) == ("server_down", "server_down", None)


def _sample_files(config):
    return sorted(config.cache_dir.glob("sample-hi-*.wav"))


def test_sample_is_spoken_once_into_the_cache_and_then_served_from_it(config):
    with TestClient(create_app(config)) as http:
        first = http.get("/api/sample.wav")
        (path,) = _sample_files(config)
        made = path.stat().st_mtime_ns
        second = http.get("/api/sample.wav")
    samples, rate = soundfile.read(io.BytesIO(first.content), dtype="float32")
    assert first.status_code == 200 and rate == 22_050 and samples.shape[0] / rate > 1.0
    assert np.max(np.abs(samples)) > 0.1
    assert second.content == first.content and path.stat().st_mtime_ns == made


def test_sample_follows_the_configured_sentence_and_emotion_when_they_are_set(config):
    with TestClient(create_app(config)) as http:
        default = http.get("/api/sample.wav").content
    configured = dataclasses.replace(
        config, sample_text="दो लाल गोले", sample_english="two red circles", sample_emotion="sad"
    )
    with TestClient(create_app(configured)) as http:
        options = http.get("/api/options").json()
        spoken = http.get("/api/sample.wav").content
    assert options["sample"] == {"hindi": "दो लाल गोले", "english": "two red circles"}
    # A new sentence gets its own cache file, not the default sample's.
    assert len(_sample_files(config)) == 2 and spoken != default
    spoken_frames, default_frames = (soundfile.info(io.BytesIO(audio)).frames for audio in (spoken, default))
    assert 0.3 * 22_050 < spoken_frames < default_frames
    with TestClient(create_app(dataclasses.replace(configured, sample_strong=True))) as http:
        strongly = http.get("/api/sample.wav").content
    # Strongly sad is slower still: the strong intensity is spoken, not only named in the cache file.
    assert len(_sample_files(config)) == 3 and soundfile.info(io.BytesIO(strongly)).frames > spoken_frames


def test_web_app_and_its_entry_point_import_neither_torch_nor_diffusers_when_loaded():
    # The web image installs neither: the app and `python -m s2i.web` must not need them.
    code = (
        "import argparse, sys, s2i.web.app, s2i.web.__main__; from s2i import cli; "
        "cli._add_web(argparse.ArgumentParser().add_subparsers()); "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'scipy') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"
    usage = subprocess.run([sys.executable, "-m", "s2i.web", "--help"], capture_output=True, text=True, check=True)
    assert "--triton-url" in usage.stdout and "--max-jobs-per-client" in usage.stdout


# The app in front of the real server.


def _unet_rows(triton_server) -> int:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        stats = client.get_inference_statistics(names.UNET, as_json=True, headers=triton_server.admin_headers)
    return int(stats["model_stats"][0].get("inference_count", 0))


def test_browser_disconnect_cancels_the_triton_stream_and_frees_the_server(triton_server, hindi_clips, tmp_path):
    import urllib.request

    steps, marker = 150, "request cancelled by the client"
    config = web_config(triton_server.grpc_url, tmp_path, max_steps=steps)
    rows_before, cancels_before = _unet_rows(triton_server), triton_server.log_text.count(marker)
    with serve_app(config) as base:
        url = urllib.parse.urlsplit(base)
        body = hindi_clips[0].wav_bytes
        with socket.create_connection((url.hostname, url.port), timeout=120) as connection:
            request = (
                f"POST /api/generate?seed=1&steps={steps}&guidance=7.5 HTTP/1.1\r\nHost: test\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            connection.sendall(request + body)
            received = b""
            while b"event: preview" not in received:
                chunk = connection.recv(65536)
                assert chunk, f"the stream ended early: {received[-300:]!r}"
                received += chunk
        # The browser is gone: the app cancels the gRPC stream and the server's loop stops early.
        deadline = time.monotonic() + 120
        while triton_server.log_text.count(marker) == cancels_before:
            assert time.monotonic() < deadline, "the server never saw the cancellation"
            time.sleep(0.1)
        with urllib.request.urlopen(f"{base}/healthz") as response:
            jobs = json.load(response)["jobs"]
    assert jobs["active"] == 0 and jobs["cancelled"] == 1 and jobs["finished"] == 1
    assert b"event: image" not in received
    # Classifier-free guidance runs 2 UNet rows per step; the loop stopped long before its 150 steps.
    assert _unet_rows(triton_server) - rows_before < 2 * steps


def test_generate_sends_the_jobs_request_id_and_trace_to_triton_when_served(triton_server, hindi_clips, tmp_path):
    from tests.model_repository.test_observability import log_records

    config = web_config(triton_server.grpc_url, tmp_path)
    request_id = f"web-{time.time_ns()}"
    headers = {"traceparent": TRACEPARENT, "x-request-id": request_id}
    with TestClient(create_app(config)) as http:
        response = http.post("/api/generate?seed=3&steps=2", content=hindi_clips[0].wav_bytes, headers=headers)
    events = parse_events(response.text)

    def logged(model: str) -> list[dict]:
        return [record for record in log_records(triton_server, model) if record["request_id"] == request_id]

    # The stream model logs the request id the web app sent, and its BLS calls pass it on.
    deadline = time.monotonic() + 120
    while not logged("speech_to_image_stream"):
        assert time.monotonic() < deadline, "the server never logged the web app's request"
        time.sleep(0.1)
    stream_records = logged("speech_to_image_stream")

    assert [kind for kind, _ in events][-1] == "image" and response.headers["traceparent"] == TRACEPARENT
    assert [record["outcome"] for record in stream_records] == ["ok"] and stream_records[0]["counts"]["image"] == 1
    assert [record["outcome"] for record in logged("whisper")] == ["ok"]
    assert [record["outcome"] for record in logged("emotion_classifier")] == ["ok"]
