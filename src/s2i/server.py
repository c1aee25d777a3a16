"""Run the real ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel.

The wheel carries the server, ``libtritonserver.so`` and the Python backend,
but the backend only works when three things line up (see the environment
notes): the stub built for the running interpreter sits next to
``libtriton_python.so``, ``PATH`` starts with the ``bin/`` of the environment
that holds the project's packages (otherwise every Python-backend output comes
back with 0 bytes, silently), and ``LD_LIBRARY_PATH`` starts with the
interpreter's ``LIBDIR`` (otherwise the stub may load another libpython).

:func:`tritonserver_args` is the one source of truth for the server's flags:
the embedded launcher, ``s2i serve`` and the Kubernetes manifests use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import uuid
from pathlib import Path
from typing import IO

LOGGER = logging.getLogger(__name__)

# The Python backend copies every tensor through shared memory; 4 MiB is what
# PyTriton passes, and the region grows on demand in 1 MiB steps.
SHM_DEFAULT_BYTE_SIZE = 4 * 1024 * 1024
SHM_GROWTH_BYTE_SIZE = 1024 * 1024
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
# Loopback unless told otherwise: a laptop or CI host must not expose inference
# (or the Python backend's shared memory) to its network by default.
DEFAULT_HOST = "127.0.0.1"
# Where the Python backend's (POSIX) shared-memory regions live on Linux.
DEV_SHM = Path("/dev/shm")
# Real checkpoints (Whisper small + SD 1.5, 15 Python stubs) load for minutes on
# a small machine; 180 s killed servers that were still loading.
DEFAULT_STARTUP_TIMEOUT_S = 600.0
# Where `s2i serve` and the health command read the admin key when no flag gives it.
ADMIN_KEY_ENV = "S2I_ADMIN_KEY"
# The header Triton checks on restricted APIs (`--*-restricted-*=...:admin-key=<value>`): HTTP
# clients send it as is; gRPC clients send it as metadata with Triton's gRPC prefix.
ADMIN_KEY_HEADER = "admin-key"
ADMIN_KEY_GRPC_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"


class ServerError(RuntimeError):
    """The server could not be started, or stopped while it was needed."""


# A PEM certificate or key is a few KiB; anything much larger is not one.
MAX_PEM_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class GrpcTls:
    """TLS on the gRPC endpoint: Triton's ``--grpc-use-ssl``, ``--grpc-server-cert/-key`` and ``--grpc-root-cert``.

    Attributes:
        server_cert: PEM file of the server's certificate (with its chain). It must name the host
            clients connect to (subjectAltName), ``127.0.0.1`` included for the embedded
            launcher's readiness polls unless ``server_name`` says otherwise.
        server_key: PEM file of the certificate's private key.
        root_cert: PEM file of the CA that signed ``server_cert`` (Triton also hands it to gRPC
            as the root for client certificates); the readiness polls trust it, or the server's
            own certificate (self-signed) when ``None``.
        server_name: The name the readiness polls check the certificate against, when it does
            not name the connect host (gRPC's ``grpc.ssl_target_name_override``).
    """

    server_cert: str
    server_key: str
    root_cert: str | None = None
    server_name: str | None = None

    def check(self) -> None:
        """Refuse missing, unreadable, oversized or non-PEM files before the server starts."""
        for field in ("server_cert", "server_key", "root_cert"):
            value = getattr(self, field)
            if value is None:
                continue
            path = Path(value)
            if not path.is_file():
                raise ServerError(f"`grpc_tls.{field}` {str(value)[:200]!r} is not a file.")
            size = path.stat().st_size
            if size > MAX_PEM_BYTES:
                raise ServerError(f"`grpc_tls.{field}` is {size} bytes; a PEM file is at most {MAX_PEM_BYTES}.")
            try:
                text = path.read_bytes()
            except OSError as e:
                raise ServerError(f"`grpc_tls.{field}` {str(value)[:200]!r} cannot be read: {e.strerror}.") from e
            if b"-----BEGIN " not in text:
                raise ServerError(f"`grpc_tls.{field}` {str(value)[:200]!r} is not a PEM file (no `-----BEGIN`).")

    def args(self) -> list[str]:
        """Triton's flags for this configuration."""
        args = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.server_cert}", f"--grpc-server-key={self.server_key}"]
        if self.root_cert:
            args.append(f"--grpc-root-cert={self.root_cert}")
        return args

    def client_kwargs(self) -> dict:
        """``tritonclient`` keyword arguments that reach this server over TLS."""
        kwargs: dict = {"ssl": True, "root_certificates": self.root_cert or self.server_cert}
        if self.server_name:
            kwargs["channel_args"] = [("grpc.ssl_target_name_override", self.server_name)]
        return kwargs


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """What the server is started with; rendered by :func:`tritonserver_args`.

    Attributes:
        model_repository: Folder (or ``s3://``/``gs://`` URL) with the model repository.
        http_port: KServe v2 HTTP/REST port.
        grpc_port: KServe v2 gRPC port.
        metrics_port: Prometheus metrics port.
        log_verbose: Triton's ``--log-verbose`` level.
        exit_timeout_s: How long Triton waits for in-flight requests on shutdown.
        shm_region_prefix: Prefix of the Python backend's shared-memory regions; must be
            unique per server on one host, so two servers never share a region.
        restricted_api_key: When set, the model-repository, model-config, shared-memory,
            statistics, trace and logging APIs need the key: header ``admin-key: <value>``
            over HTTP, ``triton-grpc-protocol-admin-key: <value>`` over gRPC (Triton
            prefixes the key name on gRPC).
            :class:`TritonServer` locks them with a random key when this is ``None``, so
            no embedded server ever lets an unauthenticated client register shared memory.
        host: Address the gRPC, HTTP and metrics endpoints bind to.
        http: Whether the HTTP/REST endpoint runs at all. Off by default: Triton 2.51's
            HTTP JSON parser sizes a buffer from a request's declared shape before it
            checks the data, so one small request kills the server (docs/security.md).
        http_inference_restricted: With ``http``, HTTP inference also needs the admin
            key (Triton checks the header before it parses the body, so the crashing
            request is refused unparsed). Pods turn it off: their ingress serves HTTP
            inference and a gateway in front is what must check declared sizes there.
        trace: Request tracing; ``None`` keeps the default, :data:`DEFAULT_TRACE`.
        grpc_tls: TLS on the gRPC endpoint (:class:`GrpcTls`); plaintext when ``None``.
    """

    model_repository: str
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    log_verbose: int = 0
    exit_timeout_s: int = 30
    shm_region_prefix: str | None = None
    restricted_api_key: str | None = None
    host: str = DEFAULT_HOST
    http: bool = False
    http_inference_restricted: bool = True
    trace: TraceOptions | None = None
    grpc_tls: GrpcTls | None = None

    def with_free_ports(self) -> ServerOptions:
        """Return a copy whose three ports are free on this host."""
        http_port, grpc_port, metrics_port = free_ports(3)
        return dataclasses.replace(self, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)


TRACE_MODES = ("triton", "opentelemetry")
# TENSORS would copy request contents (speech, prompts) into the traces: never offered.
TRACE_LEVELS = ("OFF", "TIMESTAMPS")
# Triton's default quantiles (value:allowed error); p50/p95/p99 are what the dashboard plots.
SUMMARY_QUANTILES = "0.5:0.05,0.9:0.01,0.95:0.001,0.99:0.001"


@dataclasses.dataclass(frozen=True)
class TraceOptions:
    """Triton request tracing (``--trace-config``), rendered by :func:`observability_args`.

    Tracing is switched on and off at run time through Triton's trace API (an admin API when
    ``restricted_api_key`` is set): ``level`` and ``rate`` here are only the starting values.
    BLS calls of the Python models join the trace of the request that made them, so one
    pipeline request is one trace tree (ensemble -> steps -> UNet/decoder loop calls).

    Attributes:
        mode: ``"opentelemetry"`` (spans to an OTLP/HTTP collector) or ``"triton"`` (JSON file).
        level: ``"OFF"`` or ``"TIMESTAMPS"``.
        rate: Trace one request in ``rate``.
        count: Stop after this many traces; ``-1``: never.
        file: Where ``triton`` mode writes its JSON (one file per ``log_frequency`` traces,
            suffixed ``.0``, ``.1``, ...).
        log_frequency: Traces per file in ``triton`` mode; 0 writes only at shutdown.
        url: OTLP/HTTP endpoint in ``opentelemetry`` mode; ``None`` leaves it to the
            exporter, which reads ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the pods set it).
    """

    mode: str = "opentelemetry"
    level: str = "OFF"
    rate: int = 1000
    count: int = -1
    file: str | None = None
    log_frequency: int = 1
    url: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in TRACE_MODES:
            raise ValueError(f"`trace.mode` must be one of {list(TRACE_MODES)}, got {self.mode!r}.")
        if self.level not in TRACE_LEVELS:
            raise ValueError(f"`trace.level` must be one of {list(TRACE_LEVELS)}, got {self.level!r}.")
        if self.rate < 1:
            raise ValueError(f"`trace.rate` must be at least 1, got {self.rate}.")
        if self.mode == "triton" and not self.file:
            raise ValueError("`trace.file` is required in `triton` mode.")


# Off until an operator turns it on through the trace API; OpenTelemetry so spans reach a collector.
DEFAULT_TRACE = TraceOptions()


def trace_args(trace: TraceOptions) -> list[str]:
    """The ``--trace-config`` flags for ``trace``."""
    args = [
        f"--trace-config=mode={trace.mode}",
        f"--trace-config=level={trace.level}",
        f"--trace-config=rate={trace.rate}",
        f"--trace-config=count={trace.count}",
    ]
    if trace.mode == "triton":
        args += [
            f"--trace-config=triton,file={trace.file}",
            f"--trace-config=triton,log-frequency={trace.log_frequency}",
        ]
    elif trace.url:
        args.append(f"--trace-config=opentelemetry,url={trace.url}")
    return args


def observability_args(options: ServerOptions) -> list[str]:
    """Metrics and tracing flags: latency summaries (p50/p95/p99 per model) and request tracing."""
    return [
        "--metrics-config=summary_latencies=true",
        f"--metrics-config=summary_quantiles={SUMMARY_QUANTILES}",
        *trace_args(options.trace or DEFAULT_TRACE),
    ]


RESTRICTED_CATEGORIES = "model-repository,model-config,shared-memory,statistics,trace,logging"


def pod_server_options(model_repository: str, restricted_api_key: str) -> ServerOptions:
    """The options the Kubernetes pods run with (k8s/base/deployment.yaml holds their flags).

    Every interface (the Service and the kubelet's probes reach the pod's IP), HTTP on
    for the probes and the ingress, admin APIs behind the key from the pod's Secret.
    """
    return ServerOptions(
        model_repository=model_repository,
        restricted_api_key=restricted_api_key,
        host="0.0.0.0",
        http=True,
        http_inference_restricted=False,
    )


def tritonserver_args(options: ServerOptions, backend_directory: str | None = None) -> list[str]:
    """Return the ``tritonserver`` flags for ``options`` (without the binary).

    Args:
        options: The server options.
        backend_directory: Backends folder; ``None`` keeps the server's default
            (``/opt/tritonserver/backends`` in the NGC container).
    """
    args = [
        f"--model-repository={options.model_repository}",
        f"--allow-http={str(options.http).lower()}",
        f"--http-address={options.host}",
        f"--http-port={options.http_port}",
        f"--grpc-address={options.host}",
        f"--grpc-port={options.grpc_port}",
        f"--metrics-address={options.host}",
        f"--metrics-port={options.metrics_port}",
        f"--log-verbose={options.log_verbose}",
        f"--exit-timeout-secs={options.exit_timeout_s}",
        "--strict-readiness=true",
        # Stage models run in Python processes; metrics for GPUs are added by
        # Triton itself where NVML exists.
        "--allow-metrics=true",
        f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTE_SIZE}",
        f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTE_SIZE}",
        *observability_args(options),
    ]
    if options.shm_region_prefix:
        args.append(f"--backend-config=python,shm-region-prefix-name={options.shm_region_prefix}")
    if options.restricted_api_key:
        key = f"{ADMIN_KEY_HEADER}={options.restricted_api_key}"
        http_categories = RESTRICTED_CATEGORIES
        if options.http and options.http_inference_restricted:
            http_categories += ",inference"
        args += [
            f"--grpc-restricted-protocol={RESTRICTED_CATEGORIES}:{key}",
            f"--http-restricted-api={http_categories}:{key}",
        ]
    if options.grpc_tls:
        args += options.grpc_tls.args()
    if backend_directory:
        args.append(f"--backend-directory={backend_directory}")
    return args


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that are free on the loopback interface now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


@dataclasses.dataclass(frozen=True)
class TritonDistribution:
    """Where the ``nvidia-pytriton`` wheel keeps the server, its libraries and stubs."""

    root: Path

    @classmethod
    def find(cls) -> TritonDistribution:
        """Locate the distribution inside the installed ``pytriton`` package.

        The package is found, not imported: ``pytriton/__init__.py`` imports its client
        (and so ``tritonclient``), which the server itself does not need.
        """
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise ServerError(
                "The `nvidia-pytriton` package is not installed; run `make setup` or "
                "`pip install nvidia-pytriton==0.7.0`."
            )
        return cls(Path(next(iter(spec.submodule_search_locations))) / "tritonserver")

    @property
    def binary(self) -> Path:
        """The ``tritonserver`` executable."""
        return self.root / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        """Shared libraries the wheel vendors for the server."""
        return self.root.parent.parent / "nvidia_pytriton.libs"

    def stub(self, python_version: str) -> Path:
        """The Python-backend stub built for ``python_version`` (``"3.11"``)."""
        return self.root / "python_backend_stubs" / python_version / "triton_python_backend_stub"

    def prepare_backends(self, workspace: Path) -> Path:
        """Assemble a backends folder whose Python backend matches this interpreter.

        The wheel's own folder has no stub (one per Python version ships
        beside it), so it is copied into ``workspace`` with the right stub.
        """
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.stub(version)
        if not stub.is_file():
            raise ServerError(f"The pytriton wheel has no Python-backend stub for Python {version} ({stub}).")
        python_dir = workspace / "backends" / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(self.root / "backends" / "python" / name, python_dir / name)
        shutil.copy2(stub, python_dir / "triton_python_backend_stub")
        return workspace / "backends"


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment the embedded server (and its Python stubs) need."""
    env = dict(os.environ if base is None else base)
    # The stub finds its packages through the first `python` on PATH: it must be
    # this environment's, or outputs come back empty without an error.
    env_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join([env_bin, env.get("PATH", "")])
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    distribution = TritonDistribution.find()
    library_path = [libdir, str(distribution.libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(part for part in library_path if part)
    # Stage models use onnxruntime/torch; one thread pool per process each is
    # enough and avoids oversubscribing small machines.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


class TritonServer:
    """The embedded ``tritonserver`` as a context manager.

    Example:
        >>> with TritonServer(ServerOptions("build/model_repository").with_free_ports()) as server:
        ...     print(server.grpc_url)
    """

    def __init__(
        self,
        options: ServerOptions,
        *,
        workspace: Path | None = None,
        log_file: Path | None = None,
        log_stream: IO[str] | None = None,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        if not options.shm_region_prefix:
            options = dataclasses.replace(options, shm_region_prefix=f"s2i{os.getpid()}-{uuid.uuid4().hex[:8]}")
        if not options.restricted_api_key:
            # Nobody knows this key: the admin APIs (shared memory above all) stay shut.
            options = dataclasses.replace(options, restricted_api_key=secrets.token_urlsafe(24))
        self.options = options
        self.startup_timeout_s = startup_timeout_s
        self._workspace = workspace
        self._log_file = log_file
        self._log_stream = log_stream
        self._process: subprocess.Popen[str] | None = None
        self._log_thread: threading.Thread | None = None
        self._log_lines: list[str] = []

    @property
    def _connect_host(self) -> str:
        # A wildcard bind is reached through loopback from this host.
        return "127.0.0.1" if self.options.host in ("0.0.0.0", "::", "") else self.options.host

    @property
    def grpc_url(self) -> str:
        """``host:port`` to reach the gRPC endpoint from this host."""
        return f"{self._connect_host}:{self.options.grpc_port}"

    @property
    def http_url(self) -> str:
        """``host:port`` to reach the HTTP endpoint from this host (only when ``options.http``)."""
        return f"{self._connect_host}:{self.options.http_port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        """The gRPC metadata that opens the restricted (admin) APIs of this server."""
        return {ADMIN_KEY_GRPC_HEADER: self.options.restricted_api_key or ""}

    @property
    def http_admin_headers(self) -> dict[str, str]:
        """The HTTP header that opens the restricted APIs (and HTTP inference) of this server."""
        return {ADMIN_KEY_HEADER: self.options.restricted_api_key or ""}

    def describe_binds(self) -> str:
        """What the server listens on, as the flags it got say (``gRPC 127.0.0.1:8001, HTTP off, ...``)."""
        options = self.options
        http = f"HTTP {options.host}:{options.http_port}" if options.http else "HTTP off"
        return f"gRPC {options.host}:{options.grpc_port}, {http}, metrics {options.host}:{options.metrics_port}"

    @property
    def pid(self) -> int:
        """Process id of the running ``tritonserver``."""
        if self._process is None:
            raise RuntimeError("tritonserver has not been started.")
        return self._process.pid

    @property
    def log_text(self) -> str:
        """Everything the server has printed so far."""
        return "".join(self._log_lines)

    @property
    def grpc_client_kwargs(self) -> dict:
        """``tritonclient`` gRPC keyword arguments that reach this server (URL, and TLS when it serves TLS)."""
        return {"url": self.grpc_url, **(self.options.grpc_tls.client_kwargs() if self.options.grpc_tls else {})}

    def _check_options(self) -> None:
        if self.options.grpc_tls:
            self.options.grpc_tls.check()
        repository = self.options.model_repository
        if "://" not in repository:
            path = Path(repository)
            if not path.is_dir():
                raise ServerError(f"`model_repository` {repository!r} is not a folder; run `s2i convert` first.")
            if not any(child.is_dir() for child in path.iterdir()):
                raise ServerError(f"`model_repository` {repository!r} holds no models.")
            self._check_engines(path)
        for field in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self.options, field)
            if not 0 < port < 65536:
                raise ServerError(f"`{field}` must be between 1 and 65535, got {port}.")
            if _port_in_use(port):
                raise ServerError(f"`{field}` {port} is already in use; pick another port or stop the other server.")

    @staticmethod
    def _check_engines(repository: Path) -> None:
        """Refuse TensorRT engines built for another GPU or TensorRT before Triton fails cryptically."""
        from s2i.conversion.tensorrt import MANIFEST_FILE, EngineError, check_repository_engines, local_gpu_info

        if not any(repository.glob(f"*/*/{MANIFEST_FILE}")):
            return
        try:
            check_repository_engines(repository, local_gpu_info())
        except EngineError as e:
            raise ServerError(str(e)) from e

    def command(self, backend_directory: Path) -> list[str]:
        """The full command line the server is started with."""
        return [str(TritonDistribution.find().binary), *tritonserver_args(self.options, str(backend_directory))]

    def start(self) -> None:
        """Start the server and wait until it reports ready."""
        self._check_options()
        distribution = TritonDistribution.find()
        if not os.access(distribution.binary, os.X_OK):
            raise ServerError(f"`tritonserver` binary not found or not executable at {distribution.binary}.")
        workspace = self._workspace or Path(os.environ.get("S2I_CACHE", Path.home() / ".cache" / "s2i")) / (
            f"triton-{self.options.shm_region_prefix}"
        )
        self._workspace = workspace
        backends = distribution.prepare_backends(workspace)
        if self._log_file:
            # Opened by the log thread: a missing folder there would end the thread, nothing would drain
            # the server's output pipe, and a chatty server would block on a full pipe.
            Path(self._log_file).parent.mkdir(parents=True, exist_ok=True)
        command = self.command(backends)
        LOGGER.info("Starting %s", " ".join(command))
        self._process = subprocess.Popen(
            command,
            env=server_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            # Own process group, so a Ctrl-C in a terminal reaches us first and
            # we shut the server down in order.
            start_new_session=True,
        )
        self._log_thread = threading.Thread(target=self._pump_log, name="tritonserver-log", daemon=True)
        self._log_thread.start()
        try:
            self.wait_until_ready(self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _pump_log(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        log_file = open(self._log_file, "a", encoding="utf-8") if self._log_file else None  # noqa: SIM115
        try:
            for line in self._process.stdout:
                self._log_lines.append(line)
                if log_file:
                    log_file.write(line)
                    log_file.flush()
                if self._log_stream:
                    self._log_stream.write(line)
        finally:
            if log_file:
                log_file.close()

    def is_alive(self) -> bool:
        """Whether the server process is running."""
        return self._process is not None and self._process.poll() is None

    def is_ready(self) -> bool:
        """Whether the server says it is ready over gRPC (HTTP may be off)."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        try:
            with grpcclient.InferenceServerClient(**self.grpc_client_kwargs) as client:
                # The admin key too: a deployment may restrict even the health protocol.
                return bool(client.is_server_ready(headers=self.admin_headers, client_timeout=2))
        except (InferenceServerException, ConnectionError, TimeoutError):
            return False

    def _other_endpoints_listening(self) -> bool:
        ports = [self.options.metrics_port] + ([self.options.http_port] if self.options.http else [])
        for port in ports:
            try:
                socket.create_connection((self._connect_host, port), timeout=2).close()
            except OSError:
                return False
        return True

    def wait_until_ready(self, timeout_s: float) -> None:
        """Poll readiness until ``timeout_s`` passes; raise with the log tail if it does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_alive():
                self._join_log()
                raise ServerError(
                    f"tritonserver exited with code {self._process.returncode if self._process else '?'} "
                    f"before it was ready.{self._failure_summary()} Last lines of its log:\n{self._log_tail()}"
                )
            # Triton starts gRPC before HTTP and metrics: ready over gRPC alone let the
            # first HTTP request of a busy machine meet a refused connection.
            if self.is_ready() and self._other_endpoints_listening():
                LOGGER.info("tritonserver ready (gRPC %s, HTTP %s)", self.grpc_url, self.http_url)
                return
            time.sleep(0.25)
        raise ServerError(f"tritonserver was not ready after {timeout_s:.0f} s. Last lines:\n{self._log_tail()}")

    def _failure_summary(self) -> str:
        """Error lines and unavailable models from the log, which the tail often scrolls past."""
        errors = [line.rstrip() for line in self._log_lines if line.startswith("E") or "UNAVAILABLE" in line]
        return ("\nErrors:\n" + "\n".join(errors[:20]) + "\n") if errors else ""

    def _log_tail(self, lines: int = 30) -> str:
        return "".join(self._log_lines[-lines:])

    def _join_log(self) -> None:
        if self._log_thread is not None:
            self._log_thread.join(timeout=5)

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout_s``; remove the workspace.

        SIGTERM goes to ``tritonserver`` alone, as the kubelet sends it to a pod's
        PID 1: Triton then refuses new requests, finishes the in-flight ones within
        ``exit_timeout_s`` and stops its Python stubs itself. (Signalling the whole
        process group killed the stubs at once and failed every in-flight request.)
        By default Triton gets its own ``exit_timeout_s`` plus 10 s before the group is killed.
        """
        timeout_s = self.options.exit_timeout_s + 10 if timeout_s is None else timeout_s
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                LOGGER.warning("tritonserver did not stop in %.0f s; killing it and its stubs", timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._join_log()
        if process is not None:
            self._remove_leftover_shared_memory()
        if self._workspace is not None and self._workspace.name.startswith("triton-"):
            shutil.rmtree(self._workspace, ignore_errors=True)

    def _remove_leftover_shared_memory(self) -> None:
        """Unlink the Python backend's segments that outlived the server.

        A stub killed by the kernel, or a server killed after its exit timeout, leaves its
        regions in ``/dev/shm`` (measured: 1 to 7 per server on a test machine). The prefix is
        unique to this server (``shm_region_prefix``), so nothing of another process matches.
        """
        prefix = self.options.shm_region_prefix
        if not prefix or not DEV_SHM.is_dir():
            return
        for path in DEV_SHM.glob(f"{glob.escape(prefix)}*"):
            with contextlib.suppress(OSError):
                path.unlink()
                LOGGER.info("removed leftover shared memory %s", path)

    def wait(self) -> int:
        """Block until the server exits; return its exit code."""
        assert self._process is not None
        return self._process.wait()

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
