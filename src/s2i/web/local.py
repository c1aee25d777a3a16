"""``s2i web --serve-tiny``: the whole stack on one machine — tiny models, an embedded tritonserver, the app."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from s2i.web.config import WebConfig

LOGGER = logging.getLogger(__name__)
# The tiny Whisper is random and rarely emits <|endoftext|>; a short budget keeps each image quick.
TINY_MAX_NEW_TOKENS = 16


def serve_tiny(config: WebConfig, build_dir: Path, *, forwarded_allow_ips: str | None = None) -> int:
    """Build (cached) and convert the tiny models into ``build_dir``, start Triton on free ports, serve the app."""
    from s2i.conversion.convert import convert
    from s2i.server import ServerOptions, TritonServer
    from s2i.tiny import build_tiny_checkpoints
    from s2i.web import run

    print(f"[1/3] tiny checkpoints and model repository in {build_dir} (cached) ...", flush=True)
    checkpoints = build_tiny_checkpoints(build_dir / "checkpoints")
    report = convert(checkpoints, build_dir / "model_repository")
    log_file = build_dir / "tritonserver.log"
    print(f"[2/3] starting tritonserver with {len(report.models)} models (log: {log_file}) ...", flush=True)
    server = TritonServer(ServerOptions(str(report.repository)).with_free_ports(), log_file=log_file)
    server.start()
    try:
        config = dataclasses.replace(
            config,
            triton_url=server.grpc_url,
            max_new_tokens=config.max_new_tokens or TINY_MAX_NEW_TOKENS,
        )
        print(f"[3/3] open http://{config.host}:{config.port}/ (Ctrl-C stops app and server)", flush=True)
        run(config, forwarded_allow_ips=forwarded_allow_ips)
    finally:
        server.stop()
    return 0
