"""`s2i bench` over HTTP and through system shared memory, against the session's real server."""

import csv
import json
import os
import subprocess
import sys

import pytest
import tritonclient.grpc as grpcclient

from s2i.benchmarks.protocols import REGION_PREFIX, Endpoint
from s2i.benchmarks.runner import BenchConfig, run_benchmark
from s2i.benchmarks.workloads import pipeline_workload, stage_workload, whisper_workload
from s2i.client.transport import Connection
from tests.conftest import ADMIN_HEADERS, ADMIN_KEY

CONFIG = BenchConfig(concurrencies=(1, 2), requests_per_level=2, warmup_requests=1, baseline_requests=0)


def endpoint(server, protocol: str, shared_memory: str = "none") -> Endpoint:
    url = server.http_url if protocol == "http" else server.grpc_url
    return Endpoint(Connection(url, admin_key=ADMIN_KEY), protocol=protocol, shared_memory=shared_memory)


def bench_regions(server) -> list[str]:
    """Shared-memory regions of this process's benches still registered with the server."""
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        status = client.get_system_shared_memory_status(headers=ADMIN_HEADERS, as_json=True)
    return [name for name in status.get("regions", {}) if name.startswith(REGION_PREFIX)]


def bench_files() -> list[str]:
    """This process's bench regions left in /dev/shm."""
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"{REGION_PREFIX}-{os.getpid()}-")]


def assert_clean_run(report: dict, protocol: str, shared_memory: str, model: str) -> None:
    assert report["protocol"] == protocol and report["shared_memory"] == shared_memory
    assert report["statistics"] == "on"
    for run in report["runs"]:
        assert run["errors"] == 0, run["error_examples"]
        assert run["completed"] == run["requests"] == 2
        assert run["latency_ms"]["p50"] > 0
        # The statistics API (read over the same protocol) counted the same requests.
        assert run["server"][model]["requests"] == 2


def test_bench_whisper_runs_over_http_when_protocol_is_http(triton_server, hindi_clips):
    clips = [(clip.samples, clip.sample_rate_hz) for clip in hindi_clips]
    workload = whisper_workload(clips, max_new_tokens=4)
    report = run_benchmark(endpoint(triton_server, "http"), workload, CONFIG)
    assert_clean_run(report, "http", "none", "whisper")
    assert report["machine"]["versions"]["tritonserver"]


def test_bench_pipeline_passes_audio_and_image_through_shared_memory_when_grpc_and_system(triton_server, hindi_clips):
    workload = pipeline_workload([clip.wav_bytes for clip in hindi_clips], num_inference_steps=2, max_new_tokens=4)
    report = run_benchmark(endpoint(triton_server, "grpc", "system"), workload, CONFIG)
    assert_clean_run(report, "grpc", "system", "speech_to_image")
    assert bench_regions(triton_server) == [] and bench_files() == []


def test_bench_model_workload_uses_shared_memory_over_http_and_cleans_up(triton_server):
    target = endpoint(triton_server, "http", "system")
    workload = stage_workload(target, "text_encoder")
    # Both outputs have fixed shapes: they come back through the output region too.
    assert set(workload.output_bytes) == {"last_hidden_state", "pooler_output"}
    report = run_benchmark(target, workload, CONFIG)
    assert_clean_run(report, "http", "system", "text_encoder")
    assert bench_regions(triton_server) == [] and bench_files() == []


def test_bench_cli_records_protocol_and_shared_memory_in_the_report_and_csv_when_http_and_system(
    triton_server, tmp_path
):
    command = [sys.executable, "-m", "s2i.cli", "bench", "--url", triton_server.http_url, "--protocol", "http"]
    command += ["--shared-memory", "system", "--admin-key", ADMIN_KEY, "--workload", "model:text_encoder"]
    command += ["--concurrency", "1", "--requests", "2", "--warmup", "1", "--output", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["protocol"], report["shared_memory"], report["statistics"]) == ("http", "system", "on")
    assert report["runs"][0]["completed"] == 2 and report["runs"][0]["errors"] == 0
    with (tmp_path / "report.csv").open() as stream:
        (row,) = list(csv.DictReader(stream))
    assert (row["Protocol"], row["Shared Memory"], row["Errors"]) == ("http", "system", "0")
    assert bench_regions(triton_server) == []


def test_bench_releases_regions_when_the_requests_fail(triton_server):
    target = endpoint(triton_server, "grpc", "system")
    workload = stage_workload(target, "text_encoder")
    model, tensors, outputs = workload.factory(0)
    workload.factory = lambda index: (model, [(name, "INT64", value[:, :5]) for name, _, value in tensors], outputs)
    config = BenchConfig(concurrencies=(1,), requests_per_level=2, warmup_requests=1, baseline_requests=0)
    report = run_benchmark(target, workload, config)
    (run,) = report["runs"]
    assert run["completed"] == 0 and run["errors"] == 2
    assert "input_ids" in run["error_examples"][0]
    assert bench_regions(triton_server) == [] and bench_files() == []


def test_endpoint_sends_the_admin_key_as_the_http_header_when_protocol_is_http():
    headers = Endpoint(Connection("h:1", admin_key="k", trace_context=False), protocol="http").headers()
    assert headers == {"admin-key": "k"}
    grpc = Endpoint(Connection("h:1", admin_key="k", trace_context=False)).headers()
    assert grpc == {"triton-grpc-protocol-admin-key": "k"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--protocol", "http"], "decoupled streaming is gRPC-only"),
        (["--shared-memory", "system"], "`--shared-memory` must be `none`"),
    ],
)
def test_bench_refuses_the_stream_workload_when_http_or_shared_memory(flags, message, tmp_path):
    command = [sys.executable, "-m", "s2i.cli", "bench", "--workload", "stream", "--url", "127.0.0.1:9", *flags]
    completed = subprocess.run([*command, "--output", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert message in completed.stderr
