"""Smoke test: the benchmark tool against the session's real server, checking the report is consistent."""

import pytest
from PIL import Image

from s2i.benchmarks.report import markdown, write_report
from s2i.benchmarks.runner import BenchConfig, run_benchmark
from s2i.benchmarks.workloads import stage_workload, whisper_workload
from s2i.client.transport import Connection
from tests.conftest import ADMIN_KEY

# On `python-onnxruntime` the decoder graphs run inside `whisper` (the KV cache stays in its process).
WHISPER_MODELS = {"whisper", "whisper_encoder"}


@pytest.fixture(scope="module")
def report(triton_server, hindi_clips, checkpoints):
    clips = [(clip.samples, clip.sample_rate_hz) for clip in hindi_clips]
    workload = whisper_workload(clips, max_new_tokens=4, checkpoint_dir=checkpoints["whisper"])
    config = BenchConfig(
        concurrencies=(1, 3), requests_per_level=4, max_duration_s=60, rates_per_s=(4.0,), baseline_requests=2
    )
    return run_benchmark(Connection(triton_server.grpc_url, admin_key=ADMIN_KEY), workload, config)


def test_bench_counts_add_up_and_nothing_failed(report):
    assert [run["mode"] for run in report["runs"]] == ["closed", "closed", "open"]
    for run in report["runs"]:
        assert run["requests"] == run["completed"] + run["errors"]
        assert run["errors"] == 0, run["error_examples"]
        assert run["completed"] == 4
        assert run["throughput_per_s"] == pytest.approx(run["completed"] / run["wall_s"])


def test_bench_latency_percentiles_are_ordered(report):
    for run in report["runs"]:
        latency = run["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"] <= latency["max"]


def test_bench_server_breakdown_has_every_whisper_stage_with_matching_request_counts(report):
    for run in report["runs"]:
        server = run["server"]
        assert set(server) == WHISPER_MODELS
        assert server["whisper"]["requests"] == run["completed"]
        # The whisper loop batches clips: one encoder call may carry several, one row each.
        assert server["whisper_encoder"]["inferences"] == run["completed"]
        assert 0 < server["whisper_encoder"]["requests"] <= run["completed"]
        assert all(stats["compute_infer_ms_per_request"] > 0 for stats in server.values())


def test_bench_reports_baseline_and_ratios_from_the_same_run(report):
    baseline = report["baseline"]
    assert baseline["requests"] == 2 and baseline["throughput_per_s"] > 0
    ratios = report["ratios"]["throughput_vs_baseline"]
    assert set(ratios) == {"1", "3"}
    single = report["runs"][0]
    assert ratios["1"] == pytest.approx(single["throughput_per_s"] / baseline["throughput_per_s"])
    assert report["ratios"]["latency_overhead_at_concurrency_1"] == pytest.approx(
        single["latency_ms"]["p50"] / baseline["latency_ms"]["p50"] - 1
    )


def test_bench_report_records_machine_and_versions(report):
    assert report["machine"]["cpu_count"] >= 1
    assert report["machine"]["versions"]["tritonserver"] == "2.51.0"


def test_bench_writes_json_markdown_and_png_plots(report, tmp_path):
    paths = write_report(report, tmp_path)
    assert {"json", "markdown", "latency_throughput", "stage_breakdown"} <= set(paths)
    assert "| closed | 3 |" in paths["markdown"].read_text()
    for name in ("latency_throughput", "stage_breakdown"):
        with Image.open(paths[name]) as image:
            assert image.format == "PNG" and image.size[0] > 100
    assert "Served / baseline throughput by concurrency" in markdown(report)


def test_bench_stage_workload_drives_any_single_model(triton_server):
    workload = stage_workload(Connection(triton_server.grpc_url, admin_key=ADMIN_KEY), "whisper_encoder")
    config = BenchConfig(concurrencies=(2,), requests_per_level=2, baseline_requests=0, warmup_requests=1)
    report = run_benchmark(Connection(triton_server.grpc_url, admin_key=ADMIN_KEY), workload, config)
    (run,) = report["runs"]
    assert run["completed"] == 2 and run["errors"] == 0
    assert set(run["server"]) == {"whisper_encoder"}
    assert report["baseline"] is None and report["ratios"] == {}


def test_bench_cli_writes_a_report_against_a_running_server(triton_server, tmp_path):
    import json
    import subprocess
    import sys

    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "s2i.cli",
            "bench",
            "--url",
            triton_server.grpc_url,
            "--admin-key",
            ADMIN_KEY,
            "--concurrency",
            "1,2",
        ]
        + ["--requests", "2", "--baseline-requests", "0", "--max-new-tokens", "2", "--steps", "2"]
        + ["--workload", "pipeline", "--build-dir", str(tmp_path)]
        + ["--output", str(tmp_path / "bench")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "bench" / "report.json").read_text())
    assert [run["concurrency"] for run in report["runs"]] == [1, 2]
    assert all(run["errors"] == 0 for run in report["runs"])
    assert "| closed | 2 |" in completed.stdout
    # Every step of the pipeline shows up in the server-side breakdown, stage graphs included.
    expected = {"speech_to_image", "preprocess", "whisper", "emotion_classifier", "prompt_composer", "diffusion"}
    expected |= {"postprocess", "whisper_encoder", "emotion_classifier_graph", "text_encoder", "unet", "vae_decoder"}
    for run in report["runs"]:
        assert expected <= set(run["server"]), expected - set(run["server"])
        assert run["server"]["speech_to_image"]["requests"] == run["completed"]
        # At least one UNet call per denoising step (2); concurrent loops may share calls.
        assert 2 <= run["server"]["unet"]["requests"] <= 8 * run["completed"]
