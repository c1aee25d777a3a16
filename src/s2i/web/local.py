"""``s2i web --serve-tiny`` and ``--serve-repository``: an embedded tritonserver and the app on one machine."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from s2i.web.config import WebConfig

LOGGER = logging.getLogger(__name__)


def serve_tiny(config: WebConfig, build_dir: Path, *, forwarded_allow_ips: str | None = None) -> int:
    """Build (cached) and convert the tiny models into ``build_dir``, then serve them with the app."""
    from s2i.conversion.convert import convert
    from s2i.tiny import TINY_MAX_NEW_TOKENS, build_tiny_checkpoints

    print(f"[0/2] tiny checkpoints and model repository in {build_dir} (cached) ...", flush=True)
    checkpoints = build_tiny_checkpoints(build_dir / "checkpoints")
    report = convert(checkpoints, build_dir / "model_repository")
    config = dataclasses.replace(config, max_new_tokens=config.max_new_tokens or TINY_MAX_NEW_TOKENS)
    return serve_repository(
        config, report.repository, log_file=build_dir / "tritonserver.log", forwarded_allow_ips=forwarded_allow_ips
    )


def serve_repository(
    config: WebConfig, repository: Path, *, log_file: Path, forwarded_allow_ips: str | None = None
) -> int:
    """Start tritonserver on ``repository`` (loopback, free ports), then the app in front of it until Ctrl-C."""
    from s2i.server import ServerOptions, TritonServer
    from s2i.web import run

    repository = Path(repository)
    if not repository.is_dir():
        raise FileNotFoundError(f"`repository`: no model repository at {repository}; convert one with `s2i convert`.")
    print(f"[1/2] starting tritonserver on {repository} (log: {log_file}) ...", flush=True)
    server = TritonServer(ServerOptions(str(repository)).with_free_ports(), log_file=log_file)
    server.start()
    try:
        config = dataclasses.replace(config, triton_url=server.grpc_url)
        print(f"[2/2] open http://{config.host}:{config.port}/ (Ctrl-C stops app and server)", flush=True)
        run(config, forwarded_allow_ips=forwarded_allow_ips)
    finally:
        server.stop()
    return 0
