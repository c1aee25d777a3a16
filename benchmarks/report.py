"""Benchmark reports: JSON (everything), a Markdown table, a CSV in perf_analyzer's columns, and PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from s2i.benchmarks.peers import comparison_markdown
from s2i.benchmarks.server_stats import PHASES


def markdown(report: dict) -> str:
    """The results table, the baseline and the ratios as Markdown."""
    lines = [
        f"### `{report['workload']}` on {report['machine']['cpu']} ({report['machine']['cpu_count']} cores)",
        "",
        f"Protocol: {report.get('protocol', 'grpc')}, shared memory: {report.get('shared_memory', 'none')}; "
        f"server statistics: {report.get('statistics', 'on')}.",
        "",
        "| mode | concurrency / rate | requests | errors | throughput (req/s) | p50 ms | p90 ms | p95 ms "
        "| p99 ms | max ms | client CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        level = run["concurrency"] if run["mode"] == "closed" else f"{run['rate_per_s']}/s"
        latency = run["latency_ms"]

        def fmt(value):
            return "–" if value is None else f"{value:.0f}"

        lines.append(
            f"| {run['mode']} | {level} | {run['requests']} | {run['errors']} | {run['throughput_per_s']:.2f} "
            f"| {fmt(latency.get('p50'))} | {fmt(latency.get('p90'))} | {fmt(latency.get('p95'))} "
            f"| {fmt(latency.get('p99'))} | {fmt(latency.get('max'))} | {run['client_cpu_ms_per_request']:.1f} |"
        )
    lines += _stream_lines(report) + _stability_lines(report)
    baseline = report.get("baseline")
    if baseline:
        lines += [
            "",
            f"Baseline (in-process reference, one request at a time): {baseline['throughput_per_s']:.2f} req/s, "
            f"p50 {baseline['latency_ms']['p50']:.0f} ms over {baseline['requests']} requests.",
        ]
        ratios = report.get("ratios", {})
        if ratios:
            per_level = ", ".join(f"{level}: {ratio:.2f}×" for level, ratio in ratios["throughput_vs_baseline"].items())
            lines.append(f"Served / baseline throughput by concurrency: {per_level}.")
            if "latency_overhead_at_concurrency_1" in ratios:
                overhead = 100 * ratios["latency_overhead_at_concurrency_1"]
                lines.append(f"Latency overhead at concurrency 1 (p50): {overhead:+.1f}%.")
    lines += comparison_markdown(report)
    busiest = max(report["runs"], key=lambda run: run.get("concurrency") or 0)
    if busiest.get("server"):
        lines += [
            "",
            f"Server-side breakdown at concurrency {busiest['concurrency']} (ms per request):",
            "",
            "| model | requests | mean batch | queue | compute input | compute infer | compute output |",
            "|---|---|---|---|---|---|---|",
        ]
        for model, stats in sorted(busiest["server"].items()):
            phases = " | ".join(f"{stats[f'{phase}_ms_per_request']:.2f}" for phase in PHASES)
            lines.append(f"| `{model}` | {stats['requests']} | {stats['mean_batch_size']:.2f} | {phases} |")
    return "\n".join(lines) + "\n"


def _level(run: dict) -> str:
    return str(run["concurrency"]) if run["mode"] == "closed" else f"{run['rate_per_s']}/s"


def _stream_lines(report: dict) -> list[str]:
    """Time to the first message of each kind, for streamed workloads."""
    if not report.get("streaming"):
        return []
    lines = [
        "",
        "Streamed: time from sending the request to its first message of each kind (ms; `image` ends the request).",
        "",
        "| mode | concurrency / rate | message | count | p50 | p90 | p95 | p99 | max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        for kind in STREAM_EVENTS:
            marks = run.get("time_to_first_ms", {}).get(kind)
            if not marks:
                continue
            figures = " | ".join(f"{marks[key]:.0f}" for key in ("p50", "p90", "p95", "p99", "max"))
            lines.append(f"| {run['mode']} | {_level(run)} | {kind} | {marks['count']} | {figures} |")
    return lines


def _stability_lines(report: dict) -> list[str]:
    """Whether each level's measurement windows agreed, and on what."""
    stability = (report.get("config") or {}).get("stability")
    if not stability:
        return []
    window = (
        f"{stability['interval_s']:g} s windows"
        if stability.get("interval_s")
        else f"windows of {report['config']['requests_per_level']} requests"
    )
    lines = [
        "",
        f"Stability: {window}; stable when the last {stability['windows']} agree within "
        f"{stability['percentage']:g} % on throughput and p50 latency; at most {stability['max_trials']} windows.",
        "",
        "| mode | concurrency / rate | stable | windows run | reported windows: req/s | p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        result = run.get("stability") or {}
        windows = result.get("windows", [])
        throughputs = ", ".join(f"{window['throughput_per_s']:.2f}" for window in windows)
        medians = ", ".join("–" if window["p50_ms"] is None else f"{window['p50_ms']:.0f}" for window in windows)
        stable = "yes" if result.get("stable") else "**no**"
        lines.append(
            f"| {run['mode']} | {_level(run)} | {stable} | {result.get('windows_run')} | {throughputs} | {medians} |"
        )
    return lines


def plot(report: dict, output_dir: Path) -> list[Path]:
    """Latency–throughput curve and stage breakdown bars as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    written = []
    closed = [run for run in report["runs"] if run["mode"] == "closed" and run["completed"]]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(
        [run["throughput_per_s"] for run in closed], [run["latency_ms"]["p50"] for run in closed], "o-", label="p50"
    )
    axes.plot(
        [run["throughput_per_s"] for run in closed], [run["latency_ms"]["p95"] for run in closed], "s--", label="p95"
    )
    for run in closed:
        axes.annotate(f"c={run['concurrency']}", (run["throughput_per_s"], run["latency_ms"]["p50"]), fontsize=8)
    if report.get("baseline"):
        axes.plot(
            [report["baseline"]["throughput_per_s"]], [report["baseline"]["latency_ms"]["p50"]], "r*", label="baseline"
        )
    axes.set_xlabel("throughput (requests/s)")
    axes.set_ylabel("latency (ms)")
    axes.set_title(f"{report['workload']}: latency vs throughput")
    axes.legend()
    figure.tight_layout()
    written.append(output_dir / "latency_throughput.png")
    figure.savefig(written[-1], dpi=100)
    plt.close(figure)

    busiest = max(report["runs"], key=lambda run: run.get("concurrency") or 0)
    if busiest.get("server"):
        models = sorted(busiest["server"])
        figure, axes = plt.subplots(figsize=(7, 0.5 * len(models) + 1.5))
        left = [0.0] * len(models)
        for phase in PHASES:
            values = [busiest["server"][model][f"{phase}_ms_per_request"] for model in models]
            axes.barh(models, values, left=left, label=phase)
            left = [a + b for a, b in zip(left, values, strict=True)]
        axes.set_xlabel("ms per request")
        axes.set_title(f"server breakdown at concurrency {busiest['concurrency']}")
        axes.legend(fontsize=8)
        figure.tight_layout()
        written.append(output_dir / "stage_breakdown.png")
        figure.savefig(written[-1], dpi=100)
        plt.close(figure)
    return written


# perf_analyzer's CSV columns (`-f`), in its order, after its first column (`Concurrency`, or
# `Request Rate` for open-loop runs); times in microseconds. `Client Send` and `Client Recv` stay
# empty (the asyncio gRPC client does not expose them), `Network+Server Send/Recv` is the average
# latency less the server's queue and compute times (as perf_analyzer derives it) when the
# statistics API was read. Columns of this bench follow.
PERF_ANALYZER_COLUMNS = (
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "Avg latency",
)
EXTRA_COLUMNS = ("Errors", "Stable", "Windows", "Protocol", "Shared Memory")
# Streamed requests: time to the first message of each kind, in microseconds.
STREAM_EVENTS = ("text", "preview", "image")
STREAM_COLUMNS = tuple(f"p{p} time to first {kind}" for kind in STREAM_EVENTS for p in (50, 95))


def _microseconds(value_ms):
    return "" if value_ms is None else round(1000 * value_ms)


def _server_row(run: dict, workload: str) -> list:
    stages = run.get("server", {})
    server = stages.get(workload) or stages.get("speech_to_image") or {}
    phases = [server.get(f"{phase}_ms_per_request") for phase in PHASES]
    # The server's figures cover the whole level (every stability window): so must the client's mean.
    mean = (run.get("stability") or {}).get("all_windows_mean_latency_ms") or run["latency_ms"].get("mean")
    network = None if None in phases or mean is None or not server else mean - sum(phases)
    if network is not None and network < 0:
        network = None  # the client saw less than the server counted (clocks, in-flight requests): unknown
    return [_microseconds(network), *(_microseconds(value) for value in phases)]


def csv_header(report: dict, mode: str) -> list[str]:
    """The header of the ``closed`` (``Concurrency``) or ``open`` (``Request Rate``) CSV."""
    first = "Concurrency" if mode == "closed" else "Request Rate"
    return [first, *PERF_ANALYZER_COLUMNS, *EXTRA_COLUMNS, *(STREAM_COLUMNS if report.get("streaming") else ())]


def csv_rows(report: dict, mode: str = "closed") -> list[list]:
    """One row per run of ``mode`` in perf_analyzer's column layout (:func:`csv_header`).

    Rows keep the order of the levels (perf_analyzer sorts them by throughput).
    """
    rows = []
    for run in report["runs"]:
        if run["mode"] != mode:
            continue
        latency = run["latency_ms"]
        stability = run.get("stability") or {}
        row = [
            run["concurrency"] if mode == "closed" else run["rate_per_s"],
            round(run["throughput_per_s"], 4),
            "",
            *_server_row(run, report["workload"]),
            "",
            *(_microseconds(latency.get(f"p{p}")) for p in (50, 90, 95, 99)),
            _microseconds(latency.get("mean")),
            run["errors"],
            "" if not stability else str(stability["stable"]).lower(),
            len(stability.get("windows", [])) if stability else "",
            report.get("protocol", "grpc"),
            report.get("shared_memory", "none"),
        ]
        if report.get("streaming"):
            marks = run.get("time_to_first_ms", {})
            row += [_microseconds(marks.get(kind, {}).get(f"p{p}")) for kind in STREAM_EVENTS for p in (50, 95)]
        rows.append(row)
    return rows


def write_report(report: dict, output_dir: Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, the CSVs (perf_analyzer's columns) and the plots.

    ``report.csv`` holds the concurrency levels, ``report-rate.csv`` the Poisson rates (perf_analyzer
    writes one mode per file, with ``Concurrency`` or ``Request Rate`` first).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "report.json", "markdown": output_dir / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["markdown"].write_text(markdown(report))
    for mode, key, name in (("closed", "csv", "report.csv"), ("open", "csv_rate", "report-rate.csv")):
        rows = csv_rows(report, mode)
        if not rows:
            continue
        paths[key] = output_dir / name
        with paths[key].open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(csv_header(report, mode))
            writer.writerows(rows)
    for path in plot(report, output_dir):
        paths[path.stem] = path
    return paths
