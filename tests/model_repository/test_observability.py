"""Tracing, custom metrics and request log lines of the Python models, read from the real server.

The session server runs Triton's trace file mode at level OFF (tests/conftest.py); the trace
test switches it on through the trace API for one request, as an operator would.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from s2i.client import AsyncClient, InvalidRequestError
from s2i.model_repository.observability import request_log_line, tensor_size, trace_id_of
from s2i.server import TraceOptions
from tests.conftest import BUILD_DIR, MAX_NEW_TOKENS, TRACE_DIR, started_server, sub_repository

STEPS = 3
TOKENS = MAX_NEW_TOKENS // 3
OPTIONS = dict(num_inference_steps=STEPS, max_new_tokens=TOKENS)
PIPELINE_STEPS = ("preprocess", "whisper", "emotion_classifier", "prompt_composer", "diffusion", "postprocess")
# Prometheus text format: name{labels} value (no timestamps in Triton's output).
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# Waits for files and samples the server writes after answering; generous, as the full suite runs on a busy host.
DEADLINE_S = 300


# --------------------------------------------------------------------------- helpers


def wait_for(check: Callable[[], object], what: str, timeout_s: float = DEADLINE_S):
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def scrape(server) -> dict[tuple[str, frozenset], float]:
    """Every sample of the server's metrics page: (name, labels) -> value."""
    url = f"http://127.0.0.1:{server.options.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode("utf-8")
    samples = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(LABEL.findall(match[2] or ""))
            samples[match[1], labels] = float(match[3])
    return samples


def value(samples, name: str, **labels) -> float:
    """The sample ``name`` whose labels include ``labels``; 0 when absent (a counter not yet created)."""
    wanted = set(labels.items())
    found = [v for (n, have), v in samples.items() if n == name and wanted <= have]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} series"
    return found[0] if found else 0.0


def set_tracing(server, **settings) -> dict:
    """POST Triton's global trace settings (an admin API: the server's key); return the settings it reports."""
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/trace/setting",
        data=json.dumps(settings).encode(),
        headers={"Content-Type": "application/json", **server.http_admin_headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def trace_trees(paths: list[Path]) -> list[dict]:
    """Traces in Triton's JSON files as nodes ``{id, model, parent, timestamps}``."""
    nodes: dict[int, dict] = {}
    for path in paths:
        for entry in json.loads(path.read_text()):
            node = nodes.setdefault(entry["id"], {"id": entry["id"], "timestamps": []})
            if "model_name" in entry:
                node.update(model=entry["model_name"], parent=entry.get("parent_id"))
            node["timestamps"] += [stamp["name"] for stamp in entry.get("timestamps", [])]
    return list(nodes.values())


def children(nodes: list[dict], parent: dict) -> collections.Counter:
    return collections.Counter(node["model"] for node in nodes if node.get("parent") == parent["id"])


def node_of(nodes: list[dict], model: str, parent: dict | None = None) -> dict:
    (found,) = [n for n in nodes if n.get("model") == model and (parent is None or n.get("parent") == parent["id"])]
    return found


def loop_timesteps(checkpoints, steps: int) -> int:
    """How many UNet steps the checkpoint's scheduler runs for ``steps`` (PNDM runs one more)."""
    import diffusers

    config = json.loads((Path(checkpoints["diffusion"]) / "scheduler" / "scheduler_config.json").read_text())
    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def stream(server, clip, **options) -> list:
    async def collect():
        async with AsyncClient(server.grpc_url) as stream_client:
            return [event async for event in stream_client.stream_speech_to_image(clip.wav_bytes, **options)]

    return asyncio.run(collect())


def log_records(server, model: str) -> list[dict]:
    """The request log lines of ``model`` in the server's log, parsed."""
    records = []
    for line in server.log_text.splitlines():
        if line.startswith('{"event":"s2i.request"'):
            record = json.loads(line)
            if record["model"] == model:
                records.append(record)
    return records


@pytest.fixture(scope="module")
def expected_tokens(triton_server, hindi_clips) -> int:
    """Tokens Whisper generates for clip 0 (the same clip the pipeline tests send)."""
    from s2i.client import Client

    with Client(triton_server.grpc_url, timeout_s=120) as own:
        return len(own.translate(hindi_clips[0].wav_bytes, max_new_tokens=TOKENS).token_ids)


# --------------------------------------------------------------------------- pure functions


def test_trace_id_of_reads_the_w3c_traceparent_when_context_is_json():
    context = json.dumps({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})

    assert trace_id_of(context) == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("context", [None, "", "{}", "not-a-traceparent", '{"traceparent": 5}'])
def test_trace_id_of_gives_none_when_context_has_no_trace(context):
    assert trace_id_of(context) is None


def test_tensor_size_counts_element_bytes_when_tensor_is_bytes():
    import numpy as np

    assert tensor_size(np.array([[b"abc", b"de"]], dtype=np.object_)) == 5
    assert tensor_size(np.zeros((2, 3), dtype=np.float32)) == 24


def test_request_log_line_is_one_json_line_when_rendered():
    line = request_log_line(
        model="diffusion",
        request_id="r1",
        trace_id=None,
        outcome="ok",
        duration_ms=12.3456,
        batch_size=2,
        stages={"unet": {"calls": 3, "ms": 1.5}},
        input_bytes={"prompt": 10},
    )

    assert "\n" not in line
    assert json.loads(line) == {
        "event": "s2i.request",
        "model": "diffusion",
        "request_id": "r1",
        "trace_id": None,
        "outcome": "ok",
        "duration_ms": 12.346,
        "batch_size": 2,
        "stages": {"unet": {"calls": 3, "ms": 1.5}},
        "input_bytes": {"prompt": 10},
    }


# --------------------------------------------------------------------------- traces


@pytest.fixture()
def tracing(triton_server):
    """Tracing on (every request, timestamps) for one test; the files it writes."""
    before = set(TRACE_DIR.glob("trace.json*"))
    settings = set_tracing(triton_server, trace_level=["TIMESTAMPS"], trace_rate="1", trace_count="-1")
    assert settings["trace_level"] == ["TIMESTAMPS"] and settings["trace_mode"] == "triton"
    try:
        yield lambda: sorted(set(TRACE_DIR.glob("trace.json*")) - before)
    finally:
        assert set_tracing(triton_server, trace_level=["OFF"])["trace_level"] == ["OFF"]


def traced_request(new_files, root_model: str) -> list[dict]:
    """The nodes of the (single) trace rooted at ``root_model``, once its file is written."""

    def complete():
        try:
            nodes = trace_trees(new_files())
        except ValueError:  # a file Triton is still writing
            return None
        roots = [node for node in nodes if node.get("model") == root_model and node.get("parent") is None]
        ids = {node["id"] for node in nodes}
        # Triton writes each trace of the tree as it ends (one file per trace): wait for all of them.
        ended = all("REQUEST_END" in node["timestamps"] and "model" in node for node in nodes)
        linked = all(node.get("parent") in ids for node in nodes if node.get("parent") is not None)
        return nodes if roots and ended and linked else None

    return wait_for(complete, f"the trace of `{root_model}`")


def test_trace_holds_ensemble_steps_and_loop_calls_when_tracing_is_on(
    triton_server, client, hindi_clips, checkpoints, expected_tokens, tracing
):
    client.speech_to_image(hindi_clips[0].wav_bytes, seed=3, **OPTIONS)
    nodes = traced_request(tracing, "speech_to_image")
    root = node_of(nodes, "speech_to_image")
    whisper, emotion = node_of(nodes, "whisper", root), node_of(nodes, "emotion_classifier", root)
    diffusion = node_of(nodes, "diffusion", root)

    assert children(nodes, root) == collections.Counter(PIPELINE_STEPS)
    # The decoder runs inside the whisper model (python-onnxruntime target): its steps are no
    # BLS calls, so only the encoder is a child; the log line counts the decoder's steps.
    assert children(nodes, whisper) == {"whisper_encoder": 1}
    assert children(nodes, emotion) == {"emotion_classifier_graph": 1}
    assert children(nodes, diffusion) == {
        "text_encoder": 1,
        "unet": loop_timesteps(checkpoints, STEPS),
        "vae_decoder": 1,
    }
    # Nothing else: the root, its steps, Whisper's encoder + decoder calls, the emotion graph, diffusion's.
    whisper_calls, diffusion_calls = 1, 2 + loop_timesteps(checkpoints, STEPS)
    assert len(nodes) == 1 + len(PIPELINE_STEPS) + whisper_calls + 1 + diffusion_calls
    for node in nodes:
        assert {"REQUEST_START", "REQUEST_END"} <= set(node["timestamps"]), node["model"]
        if node is not root:
            assert {"COMPUTE_START", "COMPUTE_END"} <= set(node["timestamps"]), node["model"]


def test_trace_holds_stream_calls_and_preview_decodes_when_tracing_is_on(
    triton_server, hindi_clips, checkpoints, expected_tokens, tracing
):
    events = stream(triton_server, hindi_clips[0], preview_every=1, seed=3, **OPTIONS)
    nodes = traced_request(tracing, "speech_to_image_stream")
    root = node_of(nodes, "speech_to_image_stream")
    previews = sum(event.kind == "preview" for event in events)

    assert previews >= 1
    assert children(nodes, root) == {
        "preprocess": 1,
        "whisper": 1,
        "emotion_classifier": 1,
        "prompt_composer": 1,
        "text_encoder": 1,
        "unet": loop_timesteps(checkpoints, STEPS),
        "vae_decoder": previews + 1,
    }
    whisper = node_of(nodes, "whisper", root)
    assert children(nodes, whisper) == {"whisper_encoder": 1}


def test_trace_files_stay_unwritten_when_tracing_is_off(triton_server, client, hindi_clips):
    before = set(TRACE_DIR.glob("trace.json*"))

    client.translate(hindi_clips[1].wav_bytes, max_new_tokens=2)

    assert set(TRACE_DIR.glob("trace.json*")) == before


# --------------------------------------------------------------------------- OpenTelemetry (the pods' mode)

WHISPER_MODELS = ["whisper", "whisper_encoder", "whisper_decoder", "whisper_decoder_with_past"]
TRACEPARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"


@contextlib.contextmanager
def otlp_collector() -> Iterator[tuple[str, list[dict]]]:
    """An OTLP/HTTP endpoint on loopback that keeps the JSON bodies Triton's exporter posts."""
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/json":
                bodies.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/traces", bodies
    finally:
        server.shutdown()
        thread.join(timeout=10)


def spans_of(bodies: list[dict]) -> list[dict]:
    return [
        span
        for body in bodies
        for resource in body.get("resourceSpans", [])
        for scope in resource.get("scopeSpans", [])
        for span in scope.get("spans", [])
    ]


def test_otel_trace_continues_the_clients_traceparent_through_bls_calls_when_exported_by_env(
    model_repository, hindi_clips, monkeypatch
):
    from s2i.client import CallOptions, Client

    clip = hindi_clips[0]
    repository = sub_repository(model_repository.repository, BUILD_DIR / "otel-repository", WHISPER_MODELS)
    with otlp_collector() as (url, bodies):
        # As in the pods: the endpoint comes from the environment, not from a flag.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        with started_server(repository, "otel", trace=TraceOptions(level="TIMESTAMPS", rate=1)) as server:
            call = CallOptions(traceparent=f"00-{TRACEPARENT_ID}-{CLIENT_SPAN_ID}-01")
            with Client(server.grpc_url, timeout_s=120) as traced:
                tokens = len(traced.translate(clip.wav_bytes, max_new_tokens=TOKENS, call=call).token_ids)

            def whisper_span_exported():
                spans = spans_of(bodies)
                return spans if any(span["name"] == "whisper" for span in spans) else None

            spans = wait_for(whisper_span_exported, "the exported whisper span")
            (record,) = log_records(server, "whisper")
    # Triton adds a frontend span (InferRequest) and one `compute` span per model execution.
    models = collections.Counter(span["name"] for span in spans if span["name"] not in ("compute", "InferRequest"))
    (frontend,) = [span for span in spans if span["name"] == "InferRequest"]
    (whisper,) = [span for span in spans if span["name"] == "whisper"]
    whisper_ids = {whisper["spanId"]} | {span["spanId"] for span in spans if span["parentSpanId"] == whisper["spanId"]}

    assert {span["traceId"] for span in spans} == {TRACEPARENT_ID}
    assert frontend["parentSpanId"] == CLIENT_SPAN_ID and whisper["parentSpanId"] == frontend["spanId"]
    assert models == {"whisper": 1, "whisper_encoder": 1}
    assert record["stages"]["whisper_decoder_with_past"]["calls"] == tokens - 1
    assert all(span["parentSpanId"] in whisper_ids for span in spans if span["name"].startswith("whisper_"))
    assert record["trace_id"] == TRACEPARENT_ID and record["outcome"] == "ok"


# --------------------------------------------------------------------------- metrics


def test_metrics_move_by_steps_tokens_images_and_previews_when_pipeline_and_stream_run(
    triton_server, client, hindi_clips, checkpoints, expected_tokens
):
    before = scrape(triton_server)
    client.speech_to_image(hindi_clips[0].wav_bytes, seed=5, **OPTIONS)
    events = stream(triton_server, hindi_clips[0], preview_every=1, seed=5, **OPTIONS)
    previews = sum(event.kind == "preview" for event in events)
    stream_done = dict(model="speech_to_image_stream", outcome="ok")

    def stream_counted():
        samples = scrape(triton_server)
        done = value(samples, "s2i_requests_total", **stream_done) > value(before, "s2i_requests_total", **stream_done)
        return samples if done else None

    after = wait_for(stream_counted, "the stream's metrics")

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    steps = loop_timesteps(checkpoints, STEPS)
    assert delta("s2i_denoising_steps_total", model="diffusion") == steps
    assert delta("s2i_denoising_steps_total", model="speech_to_image_stream") == steps
    assert delta("s2i_images_total", model="diffusion") == 1
    assert delta("s2i_images_total", model="speech_to_image_stream") == 1
    assert previews >= 1 and delta("s2i_previews_total", model="speech_to_image_stream") == previews
    assert delta("s2i_tokens_generated_total", model="whisper") == 2 * expected_tokens
    assert delta("s2i_time_to_first_preview_seconds_count", model="speech_to_image_stream") == 1
    assert delta("s2i_request_duration_seconds_count", model="diffusion") == 1
    assert delta("s2i_request_duration_seconds_count", model="whisper") == 2
    assert delta("s2i_requests_total", model="diffusion", outcome="ok") == 1
    assert delta("s2i_requests_cancelled_total", model="speech_to_image_stream") == 0
    # Triton's own families, with the summary the server args switch on.
    assert delta("nv_inference_request_success", model="speech_to_image") == 1
    assert delta("nv_inference_request_summary_us_count", model="speech_to_image") == 1
    assert delta("nv_inference_exec_count", model="unet") == 2 * steps


def test_metrics_count_an_invalid_request_by_outcome_and_the_next_one_as_ok(triton_server, client):
    before = scrape(triton_server)

    with pytest.raises(InvalidRequestError, match="`num_inference_steps`"):
        client.text_to_image("a cat", num_inference_steps=0)
    image = client.text_to_image("a cat", num_inference_steps=1, seed=1)

    after = scrape(triton_server)
    assert image.image.shape[-1] == 3 and image.seed == 1
    for outcome, expected in (("invalid_input", 1), ("ok", 1), ("error", 0)):
        labels = dict(model="diffusion", outcome=outcome)
        assert value(after, "s2i_requests_total", **labels) - value(before, "s2i_requests_total", **labels) == expected


# --------------------------------------------------------------------------- log lines


def test_log_line_per_request_holds_stage_calls_and_sizes_but_no_contents_when_pipeline_runs(
    triton_server, client, hindi_clips, checkpoints, expected_tokens
):
    clip = hindi_clips[0]
    seen = len(log_records(triton_server, "diffusion"))
    served = client.speech_to_image(clip.wav_bytes, seed=8, **OPTIONS)
    records = wait_for(lambda: log_records(triton_server, "diffusion")[seen:], "the diffusion log line")
    (diffusion,) = records
    whisper = log_records(triton_server, "whisper")[-1]

    assert diffusion["outcome"] == "ok" and diffusion["batch_size"] == 1
    assert diffusion["stages"]["unet"]["calls"] == loop_timesteps(checkpoints, STEPS)
    assert diffusion["stages"]["text_encoder"]["calls"] == diffusion["stages"]["vae_decoder"]["calls"] == 1
    assert diffusion["input_bytes"]["prompt"] == len(served.prompt.encode("utf-8"))
    assert whisper["stages"]["whisper_decoder_with_past"]["calls"] == expected_tokens - 1
    assert whisper["input_bytes"]["input_features"] > 0
    lines = [line for line in triton_server.log_text.splitlines() if line.startswith('{"event":"s2i.request"')]
    contents = [served.prompt] + ([served.text] if len(served.text) >= 8 else [])
    assert not any(content in line for content in contents for line in lines)
