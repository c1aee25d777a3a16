"""``s2i bench`` options that decide what a started server serves."""

import argparse
from pathlib import Path

import pytest

from s2i.benchmarks.cli import repository_dir


@pytest.mark.parametrize(
    ("workload", "quantize", "expected"),
    [
        ("pipeline", None, "model_repository-realistic"),
        ("whisper", None, "model_repository-realistic-whisper"),
        ("whisper-tokens", None, "model_repository-realistic-whisper"),
        ("whisper", "int8", "model_repository-realistic-whisper-int8"),
        ("pipeline", "int8", "model_repository-realistic-int8"),
    ],
)
def test_repository_dir_names_stages_and_quantisation_when_workload_reaches_whisper_alone(workload, quantize, expected):
    args = argparse.Namespace(workload=workload, quantize=quantize, preset="realistic", build_dir=Path("build"))
    assert repository_dir(args) == Path("build") / expected


def test_bench_parser_accepts_quantize_int8_only():
    from s2i.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["bench", "--quantize", "int8"]).quantize == "int8"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--quantize", "int4"])


@pytest.mark.parametrize(
    "flags",
    [
        ["--peer", "optimum", "--url", "127.0.0.1:9"],
        ["--peer", "optimum", "--workload", "stream"],
        ["--peer", "optimum", "--workload", "model:unet"],
    ],
)
def test_bench_refuses_peer_before_any_server_when_it_cannot_run_one(flags, capsys):
    # The peers are built after the served runs, so a peer that cannot run must stop the bench first.
    from s2i.cli import main

    assert main(["bench", *flags]) == 2
    assert "`--peer` needs a started server (`--preset`, no `--url`)" in capsys.readouterr().err
