"""``s2i bench``: latency/throughput against a running server, or one it starts on a preset."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

# Workloads that reach only the Whisper stage: a started server serves that stage alone.
WHISPER_ONLY_WORKLOADS = ("whisper", "whisper-tokens")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part]


def add_parser(commands) -> None:
    """Register ``bench`` on the ``s2i`` sub-command parser."""
    from s2i.benchmarks.presets import PRESETS

    bench = commands.add_parser("bench", help="latency/throughput benchmark with a baseline in the same run")
    bench.add_argument(
        "--workload",
        default="pipeline",
        help="`pipeline` (speech_to_image), `stream` (speech_to_image_stream: time to the first text, preview "
        "and image), `whisper`, `model:<name>` for any model, or `whisper-tokens` "
        "(per-token decoding time, served vs the same graphs in-process; needs a started server)",
    )
    bench.add_argument(
        "--audio",
        type=Path,
        nargs="+",
        help="recorded WAV/FLAC/OGG files or folders of them, sent round-robin (default: synthesized Hindi speech)",
    )
    bench.add_argument(
        "--preview-every", type=int, help="`stream`: a preview every this many steps (default: half the steps)"
    )
    bench.add_argument(
        "--url", help="host:port of a running server's --protocol endpoint (default: start one on --preset)"
    )
    bench.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model sizes for a started server")
    bench.add_argument("--build-dir", type=Path, default=Path("build"), help="where preset models are built")
    bench.add_argument("--concurrency", type=_ints, default=[1, 2, 4, 8], help="closed-loop levels, e.g. 1,2,4,8,16")
    bench.add_argument("--requests", type=int, default=16, help="requests per level")
    bench.add_argument("--duration-s", type=float, default=120.0, help="bound of each run")
    bench.add_argument("--rate", type=_floats, default=[], help="open-loop Poisson rates (req/s), e.g. 1,2")
    bench.add_argument("--warmup", type=int, default=2, help="unmeasured requests first")
    bench.add_argument("--baseline-requests", type=int, default=8, help="in-process reference requests (0: none)")
    bench.add_argument("--max-new-tokens", type=int, default=32, help="Whisper token budget per request")
    bench.add_argument("--steps", type=int, default=10, help="denoising steps per image (`pipeline`)")
    bench.add_argument("--dynamic-size", type=int, default=1, help="size of -1 axes for `model:` workloads")
    bench.add_argument(
        "--peer",
        action="append",
        choices=("optimum",),
        default=[],
        help="also run a peer in-process on the same inputs (`optimum`: Optimum's ORT pipelines); needs a preset",
    )
    bench.add_argument(
        "--quantize",
        choices=("int8",),
        help="serve the preset's graphs dynamically quantised (`s2i convert --quantize`); peers stay float",
    )
    bench.add_argument(
        "--startup-timeout-s", type=float, default=180.0, help="how long a started server may take to load its models"
    )
    bench.add_argument("--output", type=Path, default=Path("build/bench"), help="report folder")
    stability = bench.add_argument_group(
        "stability (perf_analyzer's criterion)",
        "Measure each level in windows until the last --stability-windows agree within --stability-percentage "
        "on throughput and p50 latency, or --max-trials windows ran; off unless --stability-percentage is given.",
    )
    stability.add_argument("--stability-percentage", type=float, help="largest deviation from the windows' mean, %%")
    stability.add_argument(
        "--measurement-interval-s",
        type=float,
        help="time windows of this many seconds (default: count windows of --requests requests)",
    )
    stability.add_argument("--stability-windows", type=int, default=3, help="how many last windows must agree")
    stability.add_argument("--max-trials", type=int, default=10, help="most windows per level")
    target = bench.add_argument_group("a deployed server (with --url)")
    target.add_argument("--header", action="append", default=[], help="KEY=VALUE sent with every call (repeatable)")
    target.add_argument("--admin-key", help="the server's admin-key, for its restricted statistics/model-config APIs")
    target.add_argument("--ssl", action="store_true", help="TLS")
    target.add_argument("--root-certificates", help="PEM file of the CA that signed the server's certificate")
    target.add_argument("--no-stats", action="store_true", help="skip Triton's statistics API (no per-model breakdown)")
    transport = bench.add_argument_group("protocol and shared memory")
    transport.add_argument(
        "--protocol",
        choices=("grpc", "http"),
        default="grpc",
        help="`grpc`, or `http` (KServe v2 REST, binary tensors; not for the `stream` workload: decoupled "
        "streaming is gRPC-only); a started server turns HTTP on",
    )
    transport.add_argument(
        "--shared-memory",
        choices=("none", "system"),
        default="none",
        help="`system`: inputs (and large outputs, such as the image) through POSIX shared-memory regions "
        "registered once per in-flight request slot and reused; only for a server on THIS host; its "
        "shared-memory API is restricted, so a hardened server needs --admin-key; not for `stream`",
    )
    bench.set_defaults(handler=run)


def _endpoint(args, url: str):
    from s2i.benchmarks.protocols import Endpoint

    return Endpoint(_connection(args, url), protocol=args.protocol, shared_memory=args.shared_memory)


def _connection(args, url: str):
    from s2i.client.transport import Connection

    headers = {}
    for header in args.header:
        key, separator, value = header.partition("=")
        if not separator or not key:
            raise ValueError(f"`--header` must be KEY=VALUE, got {header!r}.")
        headers[key.strip().lower()] = value
    return Connection(
        url=url, headers=headers, admin_key=args.admin_key, ssl=args.ssl, root_certificates=args.root_certificates
    )


def repository_dir(args: argparse.Namespace) -> Path:
    """The model repository a started server serves: the whole preset, or its Whisper stage alone."""
    suffix = "-whisper" if args.workload in WHISPER_ONLY_WORKLOADS else ""
    suffix += f"-{args.quantize}" if args.quantize else ""
    return args.build_dir / f"model_repository-{args.preset}{suffix}"


@contextlib.contextmanager
def _server(args):
    if args.url:
        yield args.url, None, None
        return
    from s2i.benchmarks.presets import PRESETS
    from s2i.conversion.convert import convert
    from s2i.server import ServerOptions, TritonServer
    from s2i.tiny import build_tiny_checkpoints

    sizes = PRESETS[args.preset]
    if args.workload in WHISPER_ONLY_WORKLOADS:
        # Only the stages the workload reaches: the other stage processes would only take memory
        # and compete for the cores on a shared machine.
        sizes = {"whisper": sizes["whisper"]}
    print(f"building the `{args.preset}` preset and its model repository ...", file=sys.stderr, flush=True)
    checkpoints = build_tiny_checkpoints(args.build_dir / "checkpoints", sizes=sizes)
    repository = repository_dir(args)
    convert(checkpoints, repository, work_dir=args.build_dir / "onnx", quantize=args.quantize)
    # HTTP only when the bench sends over it (Triton's HTTP endpoint stays off by default, s2i.server).
    options = ServerOptions(str(repository), http=args.protocol == "http").with_free_ports()
    print("starting tritonserver ...", file=sys.stderr, flush=True)
    log_file = args.build_dir / f"tritonserver-bench-{args.preset}.log"
    with TritonServer(options, log_file=log_file, startup_timeout_s=args.startup_timeout_s) as server:
        # The started server locks its admin APIs (statistics included) with a key of its own.
        args.admin_key = args.admin_key or server.options.restricted_api_key
        yield server.http_url if args.protocol == "http" else server.grpc_url, checkpoints, server.pid


WORKLOADS = ("pipeline", "stream", "whisper")


def _audio(args):
    """The recorded clips of ``--audio``, or synthesized Hindi sentences."""
    from s2i.benchmarks.workloads import load_recorded_audio

    if args.audio:
        return load_recorded_audio(args.audio)
    from s2i.speech import HINDI_SENTENCES, synthesize

    paths = [
        synthesize(sentence, args.build_dir / "speech" / f"bench{index}.wav", speed_wpm=140 + 15 * index)
        for index, sentence in enumerate(HINDI_SENTENCES)
    ]
    return load_recorded_audio(paths)


def _workload(args, url: str, checkpoints, clips):
    from s2i.benchmarks.workloads import pipeline_workload, stage_workload, whisper_workload

    if args.workload.startswith("model:"):
        return stage_workload(url, args.workload.split(":", 1)[1], dynamic_size=args.dynamic_size)
    baseline_checkpoints = checkpoints if checkpoints and args.baseline_requests else None
    if args.workload in ("pipeline", "stream"):
        preview_every = None
        if args.workload == "stream":
            preview_every = max(1, args.steps // 2) if args.preview_every is None else args.preview_every
        return pipeline_workload(
            [clip.data for clip in clips],
            num_inference_steps=args.steps,
            max_new_tokens=args.max_new_tokens,
            checkpoints=baseline_checkpoints,
            preview_every=preview_every,
        )
    checkpoint = baseline_checkpoints["whisper"] if baseline_checkpoints else None
    return whisper_workload([(clip.samples, clip.sample_rate_hz) for clip in clips], args.max_new_tokens, checkpoint)


def _check_args(args) -> str | None:
    """What is wrong with the flags, before any server is started or called; ``None`` when nothing."""
    if any(level < 1 for level in args.concurrency) or args.requests < 1:
        return "`--concurrency` levels and `--requests` must be positive"
    if not (args.workload in (*WORKLOADS, "whisper-tokens") or args.workload.startswith("model:")):
        choices = ", ".join(WORKLOADS)
        return f"`--workload` must be one of {choices}, whisper-tokens or model:<name>, got {args.workload!r}"
    if args.audio and args.workload not in WORKLOADS:
        return f"`--audio` needs the {', '.join(WORKLOADS)} workload, not {args.workload!r}"
    if args.preview_every is not None and (args.workload != "stream" or args.preview_every < 0):
        return "`--preview-every` needs `--workload stream` and a value of 0 (no previews) or more"
    if args.stability_percentage is None and args.measurement_interval_s is not None:
        return "`--measurement-interval-s` needs `--stability-percentage`"
    if args.peer and (args.url or args.workload not in ("whisper", "pipeline")):
        # Checked here: the peers are built after the served runs.
        return "`--peer` needs a started server (`--preset`, no `--url`) and the `pipeline` or `whisper` workload"
    return _check_transport(args)


def _check_transport(args) -> str | None:
    """What is wrong with ``--protocol`` / ``--shared-memory`` for this workload; ``None`` when nothing."""
    if args.workload == "stream" and args.protocol == "http":
        return "`--workload stream` needs `--protocol grpc`: decoupled streaming is gRPC-only in Triton"
    if args.workload == "stream" and args.shared_memory != "none":
        return "`--workload stream` sends its tensors inline: `--shared-memory` must be `none`"
    if args.workload == "whisper-tokens" and (args.protocol != "grpc" or args.shared_memory != "none"):
        return "`--workload whisper-tokens` runs over gRPC without shared memory"
    if args.protocol == "http" and args.ssl:
        return "`--ssl` is for gRPC; `--protocol http` sends plaintext (put TLS in front of HTTP)"
    return None


def _stability(args):
    from s2i.benchmarks.loadgen import Stability

    if args.stability_percentage is None:
        return None
    return Stability(
        percentage=args.stability_percentage,
        windows=args.stability_windows,
        max_trials=args.max_trials,
        interval_s=args.measurement_interval_s,
    )


def _reachable(endpoint) -> str | None:
    """Why the server cannot be reached with these connection options (protocol, TLS); ``None`` if it can."""
    import aiohttp
    from tritonclient.utils import InferenceServerException

    connection = endpoint.connection
    try:
        endpoint.call("get_server_metadata")
    except (InferenceServerException, aiohttp.ClientError, OSError) as e:
        reason = str(e)[:300]
        if "restricted" in reason:
            return None  # the server answered: it restricts even health (the load's calls may still pass)
        if endpoint.http:
            return f"cannot reach {connection.url} over HTTP ({reason}); is the server's HTTP endpoint on this port?"
        if connection.ssl:
            return (
                f"cannot reach {connection.url} over TLS ({reason}); check that the server serves TLS on this port "
                "and that `--root-certificates` names the CA that signed its certificate"
            )
        return (
            f"cannot reach {connection.url} over plaintext gRPC ({reason}); if the server serves TLS, pass `--ssl` "
            "(and `--root-certificates` for a private CA)"
        )
    return None


def _add_peers(args, workload, checkpoints, clips) -> None:
    """Attach the ``--peer`` runners to the workload (the same clips as the served requests)."""
    if not args.peer:
        return
    if not checkpoints or args.workload not in ("whisper", "pipeline"):
        raise ValueError("`--peer` needs a started server (`--preset`) and the `pipeline` or `whisper` workload.")
    from s2i.benchmarks.peers import optimum_pipeline_peer, optimum_whisper_peer

    work_dir = args.build_dir / "optimum" / args.preset
    if args.workload == "pipeline":
        workload.peers["optimum"] = optimum_pipeline_peer(
            checkpoints,
            work_dir,
            [clip.data for clip in clips],
            num_inference_steps=args.steps,
            max_new_tokens=args.max_new_tokens,
        )
    else:
        workload.peers["optimum"] = optimum_whisper_peer(
            checkpoints["whisper"], work_dir, [clip.samples for clip in clips], max_new_tokens=args.max_new_tokens
        )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write its report."""
    from s2i.benchmarks.report import markdown, write_report
    from s2i.benchmarks.runner import BenchConfig, add_in_process, run_served

    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    stability = _stability(args)  # a ValueError names the flag; `s2i` prints it and exits 2
    config = BenchConfig(
        concurrencies=tuple(args.concurrency),
        requests_per_level=args.requests,
        max_duration_s=args.duration_s,
        rates_per_s=tuple(args.rate),
        warmup_requests=args.warmup,
        baseline_requests=args.baseline_requests,
        statistics=not args.no_stats,
        stability=stability,
    )
    if args.workload == "whisper-tokens":
        return _run_tokens(args)
    with _server(args) as (url, checkpoints, server_pid):
        config = dataclasses.replace(config, server_pid=server_pid)
        connection = _endpoint(args, url)
        unreachable = _reachable(connection)
        if unreachable:
            print(f"error: {unreachable}", file=sys.stderr)
            return 2
        clips = _audio(args) if args.workload in WORKLOADS else []
        workload = _workload(args, connection, checkpoints, clips)
        report = run_served(connection, workload, config)
    # After a started server has stopped: its stage processes' memory (ONNX Runtime arenas) and
    # threads are gone before the in-process reference and peers run.
    _add_peers(args, workload, checkpoints, clips)
    report = add_in_process(report, workload, config)
    report["preset"] = None if args.url else args.preset
    report["command"] = "s2i " + " ".join(sys.argv[1:])
    paths = write_report(report, args.output)
    print(markdown(report))
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0


def _run_tokens(args: argparse.Namespace) -> int:
    """``--workload whisper-tokens``: per-token decoding time served vs in-process (see decoding.py)."""
    import json

    import soundfile

    from s2i.audio import prepare_audio
    from s2i.benchmarks.decoding import markdown, token_benchmark
    from s2i.speech import HINDI_SENTENCES, synthesize

    if args.url:
        print("error: `--workload whisper-tokens` starts its own server (it reads the repository's graphs)")
        return 2
    path = synthesize(HINDI_SENTENCES[0], args.build_dir / "speech" / "bench0.wav", speed_wpm=140)
    clip = prepare_audio(*soundfile.read(path, dtype="float32"))
    with _server(args) as (url, checkpoints, server_pid):
        repository = repository_dir(args)
        result = token_benchmark(
            url, checkpoints["whisper"], repository, clip, budgets=(4, args.max_new_tokens), server_pid=server_pid
        )
    result["command"] = "s2i " + " ".join(sys.argv[1:])
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "tokens.json").write_text(json.dumps(result, indent=2))
    print(markdown(result))
    return 0
