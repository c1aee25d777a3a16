"""Helpers of the web app's tests: the app served by a real uvicorn in a thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn

from s2i.web import WebConfig, create_app
from tests.conftest import MAX_NEW_TOKENS


@contextlib.contextmanager
def serve_app(config: WebConfig, stream=None, startup_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``create_app(config)`` on a free loopback port; yields its base URL."""
    app = create_app(config, stream)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="s2i-web-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the web app did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def web_config(triton_url: str, tmp_path, **overrides) -> WebConfig:
    """The app's config for tests: the session's tiny models, short Whisper output, a private cache."""
    values = dict(triton_url=triton_url, cache_dir=tmp_path / "cache", max_new_tokens=MAX_NEW_TOKENS, port=0)
    return WebConfig(**{**values, **overrides})
