"""Serve a model repository from inside an image-equivalent environment.

Run with that environment's interpreter (``<env>/bin/python serve_in_env.py REPO LOG``):
:class:`s2i.server.TritonServer` then sets up the Python backend for *this*
interpreter (its stub, ``PATH`` starting with this environment's ``bin/``,
``LD_LIBRARY_PATH`` with its ``LIBDIR``), exactly as the image's Python would be
used. Prints one JSON line with the endpoints once the server is ready, serves
until standard input closes (so the server never outlives the test), then stops.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sys
from pathlib import Path

from s2i.server import ServerError, TritonServer, pod_server_options


class ImageServer(TritonServer):
    """The server as the image runs it: ``tritonserver`` itself, without ``s2i serve``'s extra checks.

    ``s2i serve`` refuses TensorRT engines built for another GPU before starting; that check
    lives in the conversion package, which the image does not run (its entry point is
    ``tritonserver``), so it is no part of what the image must be able to import.
    """

    @staticmethod
    def _check_engines(repository: Path) -> None:
        return None


def main(repository: str, log_file: str) -> int:
    """Serve ``repository`` until stdin closes; ``log_file`` gets the server log."""
    # The pods' flags (HTTP on, admin APIs behind a key), bound to loopback for the test.
    key = secrets.token_hex(16)
    options = dataclasses.replace(pod_server_options(repository, key), host="127.0.0.1").with_free_ports()
    # A bound, not a speed check: 18 stubs load in ~3.5 min on an idle 2-core machine, and
    # took over 10 min with several test suites sharing it.
    try:
        server = ImageServer(options, log_file=Path(log_file), startup_timeout_s=1200)
        server.start()
    except ServerError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 1
    try:
        ready = {
            "grpc": server.grpc_url,
            "http": server.http_url,
            "python": sys.executable,
            "http_admin_headers": server.http_admin_headers,
        }
        print(json.dumps(ready), flush=True)
        sys.stdin.read()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
