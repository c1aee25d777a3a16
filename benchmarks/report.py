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
        f"Server statistics: {report.get('statistics', 'on')}.",
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


# perf_analyzer's CSV columns (`-f`), those this load generator measures; times in microseconds.
CSV_COLUMNS = (
    "Concurrency",
    "Request Rate",
    "Inferences/Second",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "Avg latency",
    "Errors",
)


def csv_rows(report: dict) -> list[list]:
    """One row per run in perf_analyzer's column layout; server columns from the benchmarked model's statistics."""
    rows = []
    for run in report["runs"]:
        stages = run.get("server", {})
        server = stages.get(report["workload"]) or stages.get("speech_to_image") or {}
        latency = run["latency_ms"]

        def microseconds(value):
            return "" if value is None else round(1000 * value)

        rows.append(
            [
                run["concurrency"] or "",
                run["rate_per_s"] or "",
                round(run["throughput_per_s"], 4),
                *(microseconds(server.get(f"{phase}_ms_per_request")) for phase in PHASES),
                *(microseconds(latency.get(f"p{p}")) for p in (50, 90, 95, 99)),
                microseconds(latency.get("mean")),
                run["errors"],
            ]
        )
    return rows


def write_report(report: dict, output_dir: Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.csv`` (perf_analyzer's columns) and the plots."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "report.json", "markdown": output_dir / "report.md", "csv": output_dir / "report.csv"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["markdown"].write_text(markdown(report))
    with paths["csv"].open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(csv_rows(report))
    for path in plot(report, output_dir):
        paths[path.stem] = path
    return paths
