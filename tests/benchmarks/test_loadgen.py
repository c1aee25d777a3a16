"""The bench's measurement windows and stability criterion, its CSV layout and its recorded audio (no server)."""

import numpy as np
import pytest
import soundfile

from s2i.benchmarks.loadgen import Recorder, RunResult, Stability, Window, is_stable
from s2i.benchmarks.report import csv_header, csv_rows
from s2i.benchmarks.workloads import MAX_AUDIO_FILES, load_recorded_audio

# perf_analyzer's `-f` header (client docs, "Visualizing Latency vs. Throughput"), then `Avg latency`.
PERF_ANALYZER_HEADER = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
    "Avg latency"
)
PERF_ANALYZER_COUNT = PERF_ANALYZER_HEADER.count(",") + 1


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def window(throughput_per_s: float, p50_s: float, requests: int = 4) -> Window:
    return Window(0.0, latencies_s=[p50_s] * requests, duration_s=requests / throughput_per_s)


def test_is_stable_when_the_last_windows_agree_within_the_percentage():
    stability = Stability(percentage=10, windows=3)
    windows = [window(1.0, 9.0), window(2.0, 1.00), window(2.1, 1.05), window(1.95, 0.98)]
    assert is_stable(windows, stability)
    assert not is_stable(windows[:3], stability)  # the first window is far off


@pytest.mark.parametrize(
    "last",
    [window(2.5, 1.0), window(2.0, 1.3), Window(0.0, errors=["Error: x"], duration_s=1.0)],
    ids=["throughput", "p50", "nothing-completed"],
)
def test_is_not_stable_when_one_window_differs_or_completed_nothing(last):
    assert not is_stable([window(2.0, 1.0), window(2.0, 1.0), last], Stability(percentage=10, windows=3))


def test_recorder_stops_once_count_windows_agree_and_reports_the_last_ones():
    clock = FakeClock()
    recorder = Recorder(Stability(percentage=20, windows=2, max_trials=5), window_requests=2, clock=clock)
    for latency in (5.0, 5.0, 1.0, 1.0, 1.0, 1.0):  # a slow first window, then two that agree
        clock.now += latency
        recorder.add(latency, None)
    assert recorder.stop.is_set()
    clock.now += 1.0
    recorder.add(1.0, None)  # in flight when the run stopped: not measured
    result = RunResult.from_windows("closed", {"concurrency": 1}, recorder, client_cpu_s=0.0)
    summary = result.summary()
    assert summary["stability"]["stable"] is True and summary["stability"]["windows_run"] == 3
    assert [window["completed"] for window in summary["stability"]["windows"]] == [2, 2]
    assert summary["completed"] == 4 and summary["wall_s"] == pytest.approx(4.0)
    assert summary["throughput_per_s"] == pytest.approx(1.0) and summary["latency_ms"]["p50"] == pytest.approx(1000)
    assert result.run_completed == 6


def test_recorder_gives_up_after_max_trials_and_says_the_run_was_not_stable():
    clock = FakeClock()
    recorder = Recorder(Stability(percentage=5, windows=2, max_trials=3), window_requests=1, clock=clock)
    for latency in (1.0, 2.0, 4.0, 8.0):
        clock.now += latency
        recorder.add(latency, None)
    result = RunResult.from_windows("closed", {"concurrency": 1}, recorder, client_cpu_s=0.0)
    assert recorder.stop.is_set() and result.stable is False and result.windows_run == 3
    assert result.latencies_s == [2.0, 4.0]


def test_recorder_is_one_window_when_no_stability_is_asked():
    clock = FakeClock()
    recorder = Recorder(None, window_requests=3, clock=clock)
    for latency in (1.0, 3.0, 2.0):
        clock.now += latency
        recorder.add(latency, None, {"text": latency / 2})
    recorder.add(None, "InferenceServerException: boom")
    result = RunResult.from_windows("closed", {"concurrency": 2}, recorder, client_cpu_s=0.0)
    summary = result.summary()
    assert "stability" not in summary and summary["requests"] == 4 and summary["errors"] == 1
    assert summary["time_to_first_ms"]["text"]["count"] == 3
    assert summary["time_to_first_ms"]["text"]["p50"] == pytest.approx(1000)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"percentage": 0}, "`stability_percentage`"),
        ({"windows": 0}, "`stability_windows`"),
        ({"windows": 4, "max_trials": 3}, "`max_trials`"),
        ({"interval_s": -1.0}, "`measurement_interval_s`"),
    ],
)
def test_stability_refuses_settings_that_cannot_work(options, message):
    with pytest.raises(ValueError, match=message):
        Stability(**options)


def run(mode="closed", **extra):
    return {
        "mode": mode,
        "concurrency": 2 if mode == "closed" else None,
        "rate_per_s": 1.5 if mode == "open" else None,
        "throughput_per_s": 3.0,
        "errors": 0,
        "latency_ms": {"p50": 10.0, "p90": 11.0, "p95": 12.0, "p99": 13.0, "mean": 10.5, "max": 14.0},
        "server": {
            "whisper": {
                f"{phase}_ms_per_request": 1.0
                for phase in ("queue", "compute_input", "compute_infer", "compute_output")
            }
        },
        **extra,
    }


def test_csv_follows_perf_analyzer_columns_then_the_bench_own_when_written():
    report = {"workload": "whisper", "runs": [run(), run("open")]}
    header = csv_header(report, "closed")
    assert ",".join(header[:PERF_ANALYZER_COUNT]) == PERF_ANALYZER_HEADER
    assert header[PERF_ANALYZER_COUNT:] == ["Errors", "Stable", "Windows", "Protocol", "Shared Memory"]
    assert csv_header(report, "open")[0] == "Request Rate"
    (row,) = csv_rows(report, "closed")
    values = dict(zip(header, row, strict=True))
    assert values["Concurrency"] == 2 and values["Inferences/Second"] == 3.0
    assert values["Client Send"] == "" and values["Client Recv"] == ""  # not measured
    assert values["Server Compute Infer"] == 1000 and values["p99 latency"] == 13000
    assert values["Network+Server Send/Recv"] == 6500  # 10.5 ms less the 4 ms the server reports
    assert csv_rows(report, "open")[0][0] == 1.5


def test_csv_adds_time_to_first_message_columns_when_streamed():
    marks = {
        kind: {"p50": value, "p95": value + 1} for kind, value in (("text", 2.0), ("preview", 5.0), ("image", 9.0))
    }
    stability = {"stable": True, "windows_run": 4, "windows": [{}, {}, {}]}
    report = {
        "workload": "speech_to_image_stream",
        "streaming": True,
        "runs": [run(time_to_first_ms=marks, stability=stability)],
    }
    header = csv_header(report, "closed")
    values = dict(zip(header, csv_rows(report)[0], strict=True))
    assert values["p50 time to first text"] == 2000 and values["p95 time to first preview"] == 6000
    assert values["p50 time to first image"] == 9000
    assert values["Stable"] == "true" and values["Windows"] == 3


def test_recorded_audio_reads_wav_and_flac_from_a_folder_and_resamples_to_16_khz(tmp_path):
    rate = 22_050
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate)).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", tone, rate)
    soundfile.write(tmp_path / "b.flac", tone[: rate // 2], 44_100)
    (tmp_path / "notes.txt").write_text("not audio")
    clips = load_recorded_audio([tmp_path])
    assert [clip.path.name for clip in clips] == ["a.wav", "b.flac"]
    assert [clip.samples.shape[0] for clip in clips] == [16_000, 4_000]
    assert all(clip.samples.dtype == np.float32 and clip.sample_rate_hz == 16_000 for clip in clips)
    assert clips[0].data == (tmp_path / "a.wav").read_bytes()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda path: soundfile.write(path, np.zeros((16_000, 2), np.float32), 16_000), "`clip.wav`: has 2 channels"),
        (lambda path: soundfile.write(path, np.zeros(31 * 8_000, np.float32), 8_000), "`clip.wav`: .*limit is 30 s"),
        (lambda path: path.write_bytes(b"RIFF garbage"), "`clip.wav`: could not be decoded"),
    ],
    ids=["stereo", "too-long", "not-audio"],
)
def test_recorded_audio_refuses_a_bad_file_by_name_when_loaded(tmp_path, content, message):
    content(tmp_path / "clip.wav")
    with pytest.raises(ValueError, match=f"`--audio` .*{message}"):
        load_recorded_audio([tmp_path / "clip.wav"])


def test_recorded_audio_refuses_empty_folders_missing_paths_and_too_many_files(tmp_path):
    with pytest.raises(ValueError, match="names no .wav/.flac/.ogg file"):
        load_recorded_audio([tmp_path])
    with pytest.raises(ValueError, match="is neither a file nor a folder"):
        load_recorded_audio([tmp_path / "missing.wav"])
    for index in range(MAX_AUDIO_FILES + 1):
        (tmp_path / f"{index}.wav").write_bytes(b"")
    with pytest.raises(ValueError, match=f"the limit is {MAX_AUDIO_FILES}"):
        load_recorded_audio([tmp_path])


def test_csv_network_time_uses_every_window_and_stays_empty_when_the_server_counted_more():
    server = {
        "whisper": {
            f"{phase}_ms_per_request": 3.0 for phase in ("queue", "compute_input", "compute_infer", "compute_output")
        }
    }
    windows = run(server=server, stability={"stable": True, "windows": [{}], "all_windows_mean_latency_ms": 20.0})
    header = csv_header({"workload": "whisper"}, "closed")
    values = dict(zip(header, csv_rows({"workload": "whisper", "runs": [windows]})[0], strict=True))
    assert values["Network+Server Send/Recv"] == 8000  # 20 ms over every window less 12 ms at the server
    slower_server = run(server={"whisper": {key: 5.0 for key in server["whisper"]}})
    values = dict(zip(header, csv_rows({"workload": "whisper", "runs": [slower_server]})[0], strict=True))
    assert values["Network+Server Send/Recv"] == ""  # 10.5 ms at the client, 20 ms at the server: unknown
