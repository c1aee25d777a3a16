"""The ``s2i`` command line: build, convert, serve, and talk to the server."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from s2i import __version__
from s2i.names import EMOTION_LABELS

LOGGER = logging.getLogger("s2i")

DEFAULT_BUILD_DIR = Path("build")
TINY_DEMO_STEPS = 8


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
    report = convert(
        checkpoints,
        args.output,
        target=args.target,
        work_dir=args.work_dir,
        quantize=args.quantize,
        drop_safety_checker=args.no_safety_checker,
    )
    for name, diff in report.max_abs_diff.items():
        normalised = report.normalised_error.get(name, float("nan"))
        print(f"validated {name}: max abs diff to PyTorch {diff:.2e} ({normalised:.1e} of the output range)")
    print(f"model repository: {report.repository} ({', '.join(report.models)})")
    return 0


def cmd_import_whisper(args: argparse.Namespace) -> int:
    """Turn a CTranslate2 / faster-whisper Whisper folder into a Hugging Face checkpoint."""
    from s2i.stages.whisper.ctranslate2 import import_whisper_ctranslate2

    # A malformed folder raises CTranslate2FormatError (a ValueError): main() prints it, exit code 2.
    output = import_whisper_ctranslate2(args.ctranslate2, args.output, dtype=args.dtype)
    print(f"checkpoint: {output} (convert with `s2i convert --whisper {output}`)")
    return 0


def cmd_contract(args: argparse.Namespace) -> int:
    """Write the public contract (JSON or Markdown), or the gRPC descriptors for non-Python clients."""
    from s2i.contract import contract, descriptor_set, render_json, render_markdown

    if args.descriptor_set:
        args.descriptor_set.write_bytes(descriptor_set())
        print(f"gRPC descriptors (FileDescriptorSet): {args.descriptor_set}")
        return 0
    if not (args.model_repository / "speech_to_image" / "config.pbtxt").is_file():
        print(f"error: `--model-repository` {args.model_repository} holds no speech_to_image model", file=sys.stderr)
        return 2
    data = contract(args.model_repository)
    text = render_markdown(data) if args.format == "markdown" else render_json(data)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _trace_options(args: argparse.Namespace):
    """Tracing flags as ``TraceOptions`` (raises ``ValueError`` naming the flag's field)."""
    from s2i.server import TraceOptions

    return TraceOptions(
        mode=args.trace_mode,
        level=args.trace_level,
        rate=args.trace_rate,
        file=None if args.trace_file is None else str(args.trace_file),
        url=args.trace_url,
    )


def _server_options(args: argparse.Namespace):
    import os

    from s2i.server import ADMIN_KEY_ENV, GrpcTls, ServerOptions

    tls = None
    if args.grpc_tls_cert or args.grpc_tls_key or args.grpc_tls_root_cert:
        if not (args.grpc_tls_cert and args.grpc_tls_key):
            raise ValueError(
                "`--grpc-tls-cert` and `--grpc-tls-key` go together (and `--grpc-tls-root-cert` needs both)."
            )
        tls = GrpcTls(
            str(args.grpc_tls_cert), str(args.grpc_tls_key), args.grpc_tls_root_cert and str(args.grpc_tls_root_cert)
        )
        tls.check()  # refuse a missing or wrong file before anything starts
    return ServerOptions(
        model_repository=str(args.model_repository),
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=args.log_verbose,
        exit_timeout_s=args.exit_timeout_s,
        host=args.host,
        http=args.http,
        restricted_api_key=args.admin_key or os.environ.get(ADMIN_KEY_ENV) or None,
        trace=_trace_options(args),
        grpc_tls=tls,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the embedded server in the foreground until SIGINT/SIGTERM."""
    from s2i.server import TritonServer, tritonserver_args
    from s2i.shm_reaper import SharedMemoryReaper

    try:
        options = _server_options(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_args:
        print(" ".join(["tritonserver", *tritonserver_args(options)]))
        return 0
    admin = "admin APIs need the admin key" if options.restricted_api_key else "admin APIs locked (no key)"
    server = TritonServer(
        options,
        log_file=args.log_file,
        log_stream=None if args.log_file else sys.stderr,
        startup_timeout_s=args.startup_timeout_s,
    )
    stop_requested = []

    def request_stop(signum, _frame):
        stop_requested.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    reaper = None
    if args.shm_reap_period_s > 0:
        # The server's own key (random when none was given) opens the shared-memory API to it.
        reaper = SharedMemoryReaper(server.grpc_url, server.admin_headers, period_s=args.shm_reap_period_s)
        reaper.start()
    print(f"serving {options.model_repository}: {server.describe_binds()}; {admin}", flush=True)
    try:
        while not stop_requested and server.is_alive():
            time.sleep(0.2)
    finally:
        if reaper is not None:
            reaper.stop()
        server.stop()
    if not stop_requested:
        print("tritonserver exited on its own; see its log above.", file=sys.stderr)
        return 1
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the server (with ``--deep``: every model, by a tiny inference) answers; else 1."""
    from s2i.health import deep_check

    if not args.deep:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        try:
            with grpcclient.InferenceServerClient(args.url) as client:
                ready = client.is_server_ready(client_timeout=args.timeout_s)
        except InferenceServerException as e:
            print(f"server: unhealthy ({e.message()})")
            return 1
        print(f"server: {'ready' if ready else 'not ready'}")
        return 0 if ready else 1
    results = deep_check(args.url, timeout_s=args.timeout_s)
    for result in results:
        print(f"{result.model}: {'ok' if result.healthy else 'UNHEALTHY'} ({result.seconds:.2f} s) {result.detail}")
    return 0 if results and all(result.healthy for result in results) else 1


def cmd_train_emotion(args: argparse.Namespace) -> int:
    """Train the emotion classifier on a RAVDESS-layout folder."""
    from s2i.stages.emotion.config import EmotionConfig
    from s2i.training.emotion import TrainingConfig, train_emotion

    if args.synthesize and args.score_scenes:
        from s2i.training.emotion import check_voices_unheard

        try:
            check_voices_unheard(range(1, args.synthesize + 1))
        except ValueError as error:
            print(f"error: --synthesize {args.synthesize} with --score-scenes: {error}", file=sys.stderr)
            return 2
    if args.synthesize:
        from s2i.stages.emotion.ravdess import synthesize_corpus

        statements = ()
        if args.hindi_statements:
            from s2i.training.hindi_corpus import training_sentences

            statements = training_sentences(args.hindi_statements)
        actors = tuple(range(1, args.synthesize + 1))
        files = synthesize_corpus(args.data, actors=actors, seed=args.seed, hindi_statements=statements)
        print(f"synthetic RAVDESS-layout corpus: {len(files)} files in {args.data}")
    if bool(args.val_actors) != bool(args.test_actors):
        print("error: give both --val-actors and --test-actors, or neither", file=sys.stderr)
        return 2
    config = TrainingConfig(
        model=EmotionConfig(architecture=args.architecture, hidden_size=args.hidden_size, num_layers=args.num_layers),
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        val_actors=tuple(args.val_actors or ()),
        test_actors=tuple(args.test_actors or ()),
        threads=args.threads,
    )
    result = train_emotion(args.data, args.output, config)
    print(
        f"held-out actors {list(result.split.test)}: macro F1 {result.test.macro_f1:.3f}, "
        f"accuracy {result.test.accuracy:.3f} (chance macro F1 {1 / config.model.num_labels:.3f}); "
        f"best epoch {result.best_epoch} of {result.epochs_run}, {result.train_seconds:.0f} s"
    )
    print(f"checkpoint: {result.checkpoint} (convert with `s2i convert --emotion {result.checkpoint}`)")
    print(f"confusion matrix: {result.confusion_png}")
    if args.score_scenes:
        from s2i.training.emotion import SPOKEN_SCORES_FILE, score_scene_phrases

        for intensity, scores in score_scene_phrases(result.checkpoint, args.score_scenes).items():
            each = ", ".join(f"{emotion} {accuracy:.0%}" for emotion, accuracy in scores.per_emotion.items())
            print(f"{args.score_scenes} held-out Hindi scene phrases x {len(scores.per_emotion)} emotions, ", end="")
            print(f"{intensity} intensity: accuracy {scores.accuracy:.0%} ({each})")
        print(f"predictions: {result.checkpoint / SPOKEN_SCORES_FILE}")
    return 0


def _add_train_emotion(train_commands) -> None:
    from s2i.stages.emotion.config import ARCHITECTURES

    emotion = train_commands.add_parser("emotion", help="speech emotion classifier on a RAVDESS-layout folder")
    emotion.add_argument("--data", type=Path, required=True, help="folder with Actor_XX/MM-VV-EE-II-SS-RR-AA.wav")
    emotion.add_argument("--output", type=Path, default=DEFAULT_BUILD_DIR / "trained" / "emotion")
    emotion.add_argument("--architecture", choices=ARCHITECTURES, default="bilstm")
    emotion.add_argument("--hidden-size", type=int, default=64)
    emotion.add_argument("--num-layers", type=int, default=1)
    emotion.add_argument("--epochs", type=int, default=40)
    emotion.add_argument("--patience", type=int, default=8, help="early stopping: epochs without better val F1")
    emotion.add_argument("--batch-size", type=int, default=16)
    emotion.add_argument("--learning-rate", type=float, default=3e-3)
    emotion.add_argument("--seed", type=int, default=0)
    emotion.add_argument("--val-actors", type=int, nargs="+", help="validation actors (default: seeded split)")
    emotion.add_argument("--test-actors", type=int, nargs="+", help="held-out test actors (default: seeded split)")
    emotion.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    emotion.add_argument(
        "--synthesize",
        type=int,
        metavar="ACTORS",
        help="first write a synthetic espeak-ng corpus with this many actors into --data (RAVDESS is not bundled)",
    )
    emotion.add_argument(
        "--hindi-statements",
        type=int,
        default=0,
        metavar="N",
        help="with --synthesize: statement 01 cycles through N training sentences of the Hindi corpus",
    )
    emotion.add_argument(
        "--score-scenes",
        type=int,
        default=0,
        metavar="N",
        help="then speak N held-out Hindi scene phrases in every emotion (unseen voices) and report the accuracy",
    )
    emotion.set_defaults(handler=cmd_train_emotion)


def cmd_speak(args: argparse.Namespace) -> int:
    """Make Hindi speech with espeak-ng."""
    from s2i.speech import synthesize

    print(synthesize(args.text, args.output))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: checkpoints (tiny by default) -> repository -> server -> Hindi speech in -> image out."""
    from s2i.demo import run_demo
    from s2i.tiny import TINY_MAX_NEW_TOKENS

    checkpoints = {name: getattr(args, name) for name in ("whisper", "emotion", "diffusion") if getattr(args, name)}
    # Tiny random models: a short denoise and token budget keep the Quick start quick (a random Whisper
    # rarely stops); given checkpoints get the server's defaults unless asked otherwise.
    default_steps, default_max_new_tokens = (TINY_DEMO_STEPS, TINY_MAX_NEW_TOKENS) if not checkpoints else (None, None)
    return run_demo(
        args.build_dir,
        args.text,
        args.output or args.build_dir / "demo" / "image.png",
        steps=args.steps if args.steps is not None else default_steps,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None else default_max_new_tokens,
        checkpoints=checkpoints,
        voice_emotion=args.voice_emotion,
        voice_strong=args.voice_strong,
    )


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the web app (``s2i.web``) in front of the Triton server."""
    from s2i.web import WebConfig, run
    from s2i.web.config import parse_headers

    overrides = {name: getattr(args, name) for name in _WEB_FLAGS}
    overrides["headers"] = parse_headers(args.header) if args.header else None
    overrides["ssl"] = True if args.ssl else None
    config = WebConfig.load(overrides)
    if args.serve_tiny:
        from s2i.web.local import serve_tiny

        return serve_tiny(config, args.serve_tiny, forwarded_allow_ips=args.forwarded_allow_ips)
    if args.serve_repository:
        from s2i.web.local import serve_repository

        return serve_repository(
            config,
            args.serve_repository,
            log_file=args.serve_repository.parent / "tritonserver-web.log",
            forwarded_allow_ips=args.forwarded_allow_ips,
        )
    print(f"s2i web: http://{config.host}:{config.port}/ -> Triton {config.triton_url}", flush=True)
    run(config, forwarded_allow_ips=args.forwarded_allow_ips)
    return 0


# `s2i web` flags that map one to one onto s2i.web.WebConfig fields (each also S2I_WEB_<FIELD>).
_WEB_FLAGS = {
    "triton_url": "gRPC host:port of Triton (S2I_WEB_TRITON_URL; default localhost:8001)",
    "root_certificates": "PEM file of Triton's CA (TLS)",
    "private_key": "PEM client key (mutual TLS)",
    "certificate_chain": "PEM client certificate (mutual TLS)",
    "host": "listen address (default 127.0.0.1: loopback only)",
    "port": "listen port (default 8080)",
    "max_jobs": "jobs at once, all clients (default 4)",
    "max_jobs_per_client": "jobs at once per client address (default 1)",
    "max_upload_bytes": "largest upload (default 8 MiB)",
    "max_duration_s": "longest clip in seconds (default and at most 30)",
    "max_steps": "most denoising steps a user may ask for (default 50)",
    "job_timeout_s": "deadline of one image (default 300)",
    "sizes": "image sizes offered, e.g. default,512x512 (HEIGHTxWIDTH)",
    "cache_dir": "where the bundled Hindi sample is written (default ~/.cache/s2i-web)",
    "max_new_tokens": "Whisper token budget per clip (default: the server's)",
    "sample_text": "Hindi sentence of the page's sample clip",
    "sample_english": "its English translation, shown beside it",
    "sample_emotion": "speak the sample with this emotion's prosody",
    "sample_strong": "speak it at the strong intensity (true/false)",
}


def _add_web(commands) -> None:
    web = commands.add_parser(
        "web",
        help="the web app: record Hindi in a browser, watch the image form",
        description="Every flag also reads S2I_WEB_<NAME> from the environment (flags win).",
    )
    for name, help_text in _WEB_FLAGS.items():
        web.add_argument("--" + name.replace("_", "-"), dest=name, help=help_text)
    web.add_argument("--ssl", action="store_true", help="talk TLS to Triton")
    web.add_argument("--header", action="append", help="name=value sent with every gRPC call (repeatable)")
    web.add_argument("--forwarded-allow-ips", help="proxies whose X-Forwarded-For is trusted (uvicorn)")
    embedded = web.add_mutually_exclusive_group()
    embedded.add_argument(
        "--serve-tiny",
        type=Path,
        metavar="BUILD_DIR",
        help="development: build the tiny models into BUILD_DIR and run an embedded tritonserver for the app",
    )
    embedded.add_argument(
        "--serve-repository",
        type=Path,
        metavar="REPOSITORY",
        help="development: run an embedded tritonserver on this model repository (e.g. trained models) for the app",
    )
    web.set_defaults(handler=cmd_web)


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    from s2i.server import (
        ADMIN_KEY_ENV,
        DEFAULT_GRPC_PORT,
        DEFAULT_HOST,
        DEFAULT_HTTP_PORT,
        DEFAULT_METRICS_PORT,
        DEFAULT_STARTUP_TIMEOUT_S,
        ServerOptions,
    )
    from s2i.shm_reaper import DEFAULT_PERIOD_S as DEFAULT_REAP_PERIOD_S

    parser.add_argument("--model-repository", type=Path, required=True, help="model repository folder")
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address gRPC, HTTP and metrics bind to (0.0.0.0: every interface)"
    )
    parser.add_argument(
        "--http",
        action="store_true",
        help="also serve HTTP/REST (off by default: Triton 2.51's HTTP parser can be crashed, see "
        "docs/security.md; with a key set, HTTP inference needs it too)",
    )
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    parser.add_argument(
        "--admin-key",
        help=f"key for the model-repository, model-config, "
        f"shared-memory, statistics, trace and logging APIs, sent as the `admin-key` HTTP header or the "
        f"`triton-grpc-protocol-admin-key` gRPC metadata (default: ${ADMIN_KEY_ENV}; without either they are locked)",
    )
    tls = parser.add_argument_group("gRPC TLS (Triton's --grpc-use-ssl)")
    tls.add_argument("--grpc-tls-cert", type=Path, help="PEM certificate of the server (naming the host clients use)")
    tls.add_argument("--grpc-tls-key", type=Path, help="PEM private key of that certificate")
    tls.add_argument("--grpc-tls-root-cert", type=Path, help="PEM file of the CA that signed it (Triton's root cert)")
    parser.add_argument(
        "--startup-timeout-s", type=float, default=DEFAULT_STARTUP_TIMEOUT_S, help="give up loading after this long"
    )
    parser.add_argument(
        "--exit-timeout-s",
        type=int,
        default=ServerOptions.exit_timeout_s,
        help="on SIGTERM, how long in-flight requests may finish",
    )
    parser.add_argument(
        "--shm-reap-period-s",
        type=float,
        default=DEFAULT_REAP_PERIOD_S,
        help="every this many seconds, unregister shared-memory regions whose client died or whose segment "
        "is gone (0: never)",
    )
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--log-file", type=Path, help="write the server log here instead of stderr")
    from s2i.server import DEFAULT_TRACE, TRACE_LEVELS, TRACE_MODES

    tracing = parser.add_argument_group("tracing (switch on and off at run time through Triton's trace API)")
    tracing.add_argument("--trace-mode", choices=TRACE_MODES, default=DEFAULT_TRACE.mode)
    tracing.add_argument("--trace-level", choices=TRACE_LEVELS, default=DEFAULT_TRACE.level)
    tracing.add_argument("--trace-rate", type=int, default=DEFAULT_TRACE.rate, help="trace one request in N")
    tracing.add_argument("--trace-file", type=Path, help="JSON trace file (`triton` mode)")
    tracing.add_argument(
        "--trace-url",
        help="OTLP/HTTP endpoint (`opentelemetry` mode; default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "
        "else http://localhost:4318/v1/traces)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``s2i``."""
    from s2i.client.cli import DEFAULT_URL, add_client_commands

    parser = argparse.ArgumentParser(prog="s2i", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and library warnings")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build-tiny", help="write tiny random checkpoints (no downloads)")
    build.add_argument("--output", type=Path, default=_checkpoints_dir(DEFAULT_BUILD_DIR))
    build.add_argument("--size", default="tiny", help="architecture preset")
    build.add_argument("--force", action="store_true", help="rebuild even if present")
    build.set_defaults(handler=cmd_build_tiny)

    from s2i.conversion.quantize import QUANTIZATIONS
    from s2i.conversion.repository import PYTHON_ONNXRUNTIME, TARGETS

    conv = commands.add_parser("convert", help="export checkpoints and write a Triton model repository")
    from s2i.stages.registry import STAGES

    for name in STAGES:
        conv.add_argument(f"--{name}", help=f"{name} checkpoint folder or hub id")
    conv.add_argument("--output", type=Path, default=DEFAULT_BUILD_DIR / "model_repository")
    conv.add_argument("--target", choices=TARGETS, default=PYTHON_ONNXRUNTIME)
    conv.add_argument("--work-dir", type=Path, help="ONNX export cache (default: next to --output)")
    conv.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        help="serve dynamically quantised graphs (CPU targets; lossy: float graphs are validated, then quantised)",
    )
    conv.add_argument(
        "--no-safety-checker",
        action="store_true",
        help="serve a Stable Diffusion checkpoint without the safety checker its pipeline runs (SD 1.5)",
    )
    conv.set_defaults(handler=cmd_convert)

    imp = commands.add_parser("import-whisper", help="CTranslate2 / faster-whisper Whisper -> Hugging Face layout")
    imp.add_argument("--ctranslate2", type=Path, required=True, help="folder with model.bin, config.json, vocabulary")
    imp.add_argument("--output", type=Path, required=True, help="checkpoint folder to write")
    imp.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="weights' dtype on disk")
    imp.set_defaults(handler=cmd_import_whisper)

    serve = commands.add_parser("serve", help="run the embedded tritonserver")
    _add_server_flags(serve)
    serve.add_argument("--print-args", action="store_true", help="print the tritonserver command and exit")
    serve.set_defaults(handler=cmd_serve)

    health = commands.add_parser("health", help="exit 0 if the server is ready (--deep: every model answers)")
    health.add_argument("--url", default=DEFAULT_URL, help="gRPC host:port")
    health.add_argument("--deep", action="store_true", help="run a tiny canned inference on every model")
    health.add_argument("--timeout-s", type=float, default=30.0, help="per-call deadline")
    health.set_defaults(handler=cmd_health)

    contract = commands.add_parser("contract", help="the public models' inputs and outputs, for any client")
    contract.add_argument("--model-repository", type=Path, default=DEFAULT_BUILD_DIR / "model_repository")
    contract.add_argument("--format", choices=("json", "markdown"), default="json")
    contract.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    contract.add_argument(
        "--descriptor-set", type=Path, help="write Triton's gRPC descriptors (a FileDescriptorSet) here instead"
    )
    contract.set_defaults(handler=cmd_contract)

    # `s2i train <model>`: one subcommand per trainer (`_add_train_<model>(train_commands)`).
    train = commands.add_parser("train", help="train or fine-tune a pipeline model")
    train_commands = train.add_subparsers(dest="train_command", required=True)
    _add_train_emotion(train_commands)
    from s2i.training.whisper import add_train_parser as _add_train_whisper

    _add_train_whisper(train_commands)
    from s2i.training.diffusion import add_train_parser as _add_train_diffusion

    _add_train_diffusion(train_commands)
    from s2i.training.world_model import add_world_parser

    add_world_parser(commands)

    from s2i.training.hindi_corpus import add_parser as _add_hindi_corpus

    _add_hindi_corpus(commands)

    speak = commands.add_parser("speak", help="make Hindi speech with espeak-ng")
    speak.add_argument("text")
    speak.add_argument("-o", "--output", type=Path, required=True)
    speak.set_defaults(handler=cmd_speak)

    from s2i.benchmarks.cli import add_parser as add_bench_parser

    add_bench_parser(commands)

    demo = commands.add_parser("demo", help="the main job: Hindi speech -> server -> image (tiny models by default)")
    demo.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR)
    demo.add_argument("--text", help="Hindi sentence to speak (default: a built-in one)")
    demo.add_argument("-o", "--output", type=Path, help="PNG to write (default: <build-dir>/demo/image.png)")
    for stage in ("whisper", "emotion", "diffusion"):
        demo.add_argument(f"--{stage}", type=Path, help=f"serve this {stage} checkpoint folder (default: the tiny one)")
    demo.add_argument("--voice-emotion", choices=EMOTION_LABELS, help="speak the sentence with this emotion")
    demo.add_argument("--voice-strong", action="store_true", help="with --voice-emotion: at the strong intensity")
    demo.add_argument("--steps", type=int, help=f"denoising steps (tiny models: {TINY_DEMO_STEPS}; else the server's)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--max-new-tokens", type=int, help="Whisper token budget (tiny models: 16, they never stop; else the server's)"
    )
    demo.set_defaults(handler=cmd_demo)

    add_client_commands(commands)
    _add_web(commands)
    return parser


def _route_library_warnings(verbose: bool) -> None:
    """Send library warnings (exporter TracerWarnings, deprecations) to the log, shown with ``-v`` only.

    Without this, an export prints dozens of warnings between the command's own progress lines.
    """
    logging.captureWarnings(True)
    if not verbose:
        warnings_logger = logging.getLogger("py.warnings")
        warnings_logger.addHandler(logging.NullHandler())
        warnings_logger.propagate = False
        # The libraries log through handlers of their own and draw progress bars; they read these
        # at import, which the commands do lazily, after this.
        for name, value in (
            ("TRANSFORMERS_VERBOSITY", "error"),
            ("DIFFUSERS_VERBOSITY", "error"),
            ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
            ("TQDM_DISABLE", "1"),
        ):
            os.environ.setdefault(name, value)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``s2i``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )
    _route_library_warnings(args.verbose)
    try:
        return args.handler(args)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
