"""The ``s2i`` command line: build, convert, serve, and talk to the server."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

LOGGER = logging.getLogger("s2i")

DEFAULT_BUILD_DIR = Path("build")
DEFAULT_URL = "localhost:8001"


def _checkpoints_dir(build_dir: Path) -> Path:
    return build_dir / "checkpoints"


def cmd_build_tiny(args: argparse.Namespace) -> int:
    """Write the tiny random checkpoints."""
    from s2i.tiny import build_tiny_checkpoints

    paths = build_tiny_checkpoints(args.output, size=args.size, force=args.force)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Export, validate and write the model repository."""
    from s2i.conversion.convert import convert
    from s2i.stages.registry import STAGES

    checkpoints = {name: getattr(args, name) for name in STAGES if getattr(args, name, None)}
    if not checkpoints:
        print(f"error: name at least one checkpoint ({', '.join('--' + name for name in STAGES)})", file=sys.stderr)
        return 2
    report = convert(checkpoints, args.output, target=args.target, work_dir=args.work_dir)
    for name, diff in report.max_abs_diff.items():
        print(f"validated {name}: max abs diff to PyTorch {diff:.2e}")
    print(f"model repository: {report.repository} ({', '.join(report.models)})")
    return 0


def _server_options(args: argparse.Namespace):
    from s2i.server import ServerOptions

    return ServerOptions(
        model_repository=str(args.model_repository),
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=args.log_verbose,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the embedded server in the foreground until SIGINT/SIGTERM."""
    from s2i.server import TritonServer, tritonserver_args

    options = _server_options(args)
    if args.print_args:
        print(" ".join(["tritonserver", *tritonserver_args(options)]))
        return 0
    server = TritonServer(options, log_file=args.log_file, log_stream=None if args.log_file else sys.stderr)
    stop_requested = []

    def request_stop(signum, _frame):
        stop_requested.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    print(f"serving {options.model_repository}: gRPC {server.grpc_url}, HTTP {server.http_url}", flush=True)
    try:
        while not stop_requested and server.is_alive():
            time.sleep(0.2)
    finally:
        server.stop()
    if not stop_requested:
        print("tritonserver exited on its own; see its log above.", file=sys.stderr)
        return 1
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    """Send a speech file to the ``whisper`` model and print the text."""
    from s2i.client import Client, ClientError

    with Client(args.url, timeout_s=args.timeout_s) as client:
        try:
            result = client.translate(
                args.audio, task=args.task, language=args.language, max_new_tokens=args.max_new_tokens
            )
        except ClientError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(result.text)
    return 0


def cmd_speak(args: argparse.Namespace) -> int:
    """Make Hindi speech with espeak-ng."""
    from s2i.speech import synthesize

    print(synthesize(args.text, args.output))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: tiny models → repository → server → Hindi speech in → English text out."""
    from s2i.client import Client
    from s2i.conversion.convert import convert
    from s2i.server import ServerOptions, TritonServer
    from s2i.speech import HINDI_SENTENCES, synthesize
    from s2i.tiny import build_tiny_checkpoints

    build_dir: Path = args.build_dir
    print("[1/4] building tiny checkpoints (cached) ...", flush=True)
    checkpoints = build_tiny_checkpoints(_checkpoints_dir(build_dir))
    print("[2/4] exporting to ONNX, validating against PyTorch, writing the model repository ...", flush=True)
    report = convert(checkpoints, build_dir / "model_repository")
    for name, diff in report.max_abs_diff.items():
        print(f"      {name}: max abs diff {diff:.2e}")
    sentence = args.text or HINDI_SENTENCES[0]
    speech = synthesize(sentence, build_dir / "speech" / "hindi.wav")
    print(f"[3/4] starting tritonserver on {report.repository} ...", flush=True)
    options = ServerOptions(str(report.repository)).with_free_ports()
    with TritonServer(options, log_file=build_dir / "tritonserver.log") as server:
        print(f"      ready: gRPC {server.grpc_url} (log: {build_dir / 'tritonserver.log'})", flush=True)
        print(f"[4/4] sending Hindi speech ({speech}): {sentence}", flush=True)
        with Client(server.grpc_url) as client:
            started = time.perf_counter()
            result = client.translate(speech, max_new_tokens=args.max_new_tokens)
            latency_ms = (time.perf_counter() - started) * 1000
    print(f"English translation (from the server, {latency_ms:.0f} ms): {result.text}")
    print(f"token ids: {result.token_ids}")
    return 0


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    from s2i.server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT

    parser.add_argument("--model-repository", type=Path, required=True, help="model repository folder")
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--log-file", type=Path, help="write the server log here instead of stderr")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``s2i``."""
    parser = argparse.ArgumentParser(prog="s2i", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build-tiny", help="write tiny random checkpoints (no downloads)")
    build.add_argument("--output", type=Path, default=_checkpoints_dir(DEFAULT_BUILD_DIR))
    build.add_argument("--size", default="tiny", help="architecture preset")
    build.add_argument("--force", action="store_true", help="rebuild even if present")
    build.set_defaults(handler=cmd_build_tiny)

    from s2i.conversion.repository import PYTHON_ONNXRUNTIME, TARGETS

    conv = commands.add_parser("convert", help="export checkpoints and write a Triton model repository")
    from s2i.stages.registry import STAGES

    for name in STAGES:
        conv.add_argument(f"--{name}", help=f"{name} checkpoint folder or hub id")
    conv.add_argument("--output", type=Path, default=DEFAULT_BUILD_DIR / "model_repository")
    conv.add_argument("--target", choices=TARGETS, default=PYTHON_ONNXRUNTIME)
    conv.add_argument("--work-dir", type=Path, help="ONNX export cache (default: next to --output)")
    conv.set_defaults(handler=cmd_convert)

    serve = commands.add_parser("serve", help="run the embedded tritonserver")
    _add_server_flags(serve)
    serve.add_argument("--print-args", action="store_true", help="print the tritonserver command and exit")
    serve.set_defaults(handler=cmd_serve)

    translate = commands.add_parser("translate", help="Hindi speech file -> English text, through the server")
    translate.add_argument("audio", type=Path, help="WAV/FLAC/OGG file")
    translate.add_argument("--url", default=DEFAULT_URL, help="gRPC host:port")
    translate.add_argument("--task", choices=("translate", "transcribe"), default="translate")
    translate.add_argument("--language", default="hi")
    translate.add_argument("--max-new-tokens", type=int)
    translate.add_argument("--timeout-s", type=float, default=120.0)
    translate.set_defaults(handler=cmd_translate)

    speak = commands.add_parser("speak", help="make Hindi speech with espeak-ng")
    speak.add_argument("text")
    speak.add_argument("-o", "--output", type=Path, required=True)
    speak.set_defaults(handler=cmd_speak)

    from s2i.benchmarks.cli import add_parser as add_bench_parser

    add_bench_parser(commands)

    demo = commands.add_parser("demo", help="the main job, end to end on the tiny models")
    demo.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR)
    demo.add_argument("--text", help="Hindi sentence to speak (default: a built-in one)")
    demo.add_argument("--max-new-tokens", type=int, default=32)
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``s2i``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )
    try:
        return args.handler(args)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
