"""`s2i bench` against a deployed-style server: restricted statistics, the admin key, no statistics, CSV."""

import csv
import json
import subprocess
import sys

import pytest

from tests.restricted_server import ADMIN_KEY, serve_restricted

BENCH = ["bench", "--workload", "model:echo", "--dynamic-size", "4", "--concurrency", "1,2", "--requests", "4"]
BENCH += ["--warmup", "1", "--baseline-requests", "0"]


@pytest.fixture(scope="module")
def restricted_server(tmp_path_factory):
    yield from serve_restricted(tmp_path_factory)


def bench(restricted_server, output, *extra: str) -> dict:
    command = [sys.executable, "-m", "s2i.cli", *BENCH, "--url", restricted_server.grpc_url, "--output", str(output)]
    completed = subprocess.run([*command, *extra], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    return json.loads((output / "report.json").read_text())


def test_bench_runs_without_the_breakdown_when_statistics_are_restricted(restricted_server, tmp_path):
    report = bench(restricted_server, tmp_path)
    assert report["statistics"].startswith("unavailable: This protocol is restricted")
    assert [run["completed"] for run in report["runs"]] == [4, 4]
    assert all(run["errors"] == 0 and run["server"] == {} for run in report["runs"])


def test_bench_reads_restricted_statistics_with_the_admin_key_and_writes_perf_analyzer_columns(
    restricted_server, tmp_path
):
    report = bench(restricted_server, tmp_path, "--admin-key", ADMIN_KEY, "--header", "x-tenant=bench")
    assert report["statistics"] == "on"
    assert [run["server"]["echo"]["requests"] for run in report["runs"]] == [4, 4]
    with (tmp_path / "report.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [row["Concurrency"] for row in rows] == ["1", "2"]
    assert all(float(row["Inferences/Second"]) > 0 and int(row["p50 latency"]) > 0 for row in rows)
    assert all(int(row["Server Compute Infer"]) > 0 for row in rows)


def test_bench_skips_statistics_when_told(restricted_server, tmp_path):
    report = bench(restricted_server, tmp_path, "--no-stats", "--admin-key", ADMIN_KEY)
    assert report["statistics"] == "off"
    assert all(run["server"] == {} and run["completed"] == 4 for run in report["runs"])


def test_bench_refuses_a_malformed_header(restricted_server, tmp_path):
    command = [sys.executable, "-m", "s2i.cli", *BENCH, "--url", restricted_server.grpc_url, "--header", "novalue"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert "`--header` must be KEY=VALUE" in completed.stderr


def test_bench_measures_in_time_windows_until_stable_for_levels_and_rates(restricted_server, tmp_path):
    # 100 % over 2 windows: any two windows that both completed requests agree.
    windows = ["--stability-percentage", "100", "--stability-windows", "2", "--measurement-interval-s", "0.5"]
    report = bench(restricted_server, tmp_path, "--no-stats", "--rate", "40", *windows)
    assert [run["mode"] for run in report["runs"]] == ["closed", "closed", "open"]
    for run in report["runs"]:
        stability = run["stability"]
        assert stability["stable"] is True and 2 <= stability["windows_run"] <= 10
        assert len(stability["windows"]) == 2
        assert run["completed"] == sum(window["completed"] for window in stability["windows"]) > 0
        assert run["wall_s"] == pytest.approx(sum(window["duration_s"] for window in stability["windows"]))
        assert run["errors"] == 0
    with (tmp_path / "report-rate.csv").open() as stream:
        (row,) = list(csv.DictReader(stream))
    assert row["Request Rate"] == "40.0" and row["Stable"] == "true" and row["Windows"] == "2"
