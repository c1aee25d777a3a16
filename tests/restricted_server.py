"""A small real server with restricted gRPC APIs: one echo model; health, shared memory and statistics need a key."""

import dataclasses

from s2i.server import RESTRICTED_CATEGORIES, ServerOptions, TritonServer

ADMIN_KEY = "test-admin-key"
ECHO_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
            for r in requests
        ]
"""
ECHO_CONFIG = """name: "echo"
backend: "python"
max_batch_size: 0
input { name: "x" data_type: TYPE_FP32 dims: [ -1 ] }
output { name: "y" data_type: TYPE_FP32 dims: [ -1 ] }
"""


class HealthRestrictedServer(TritonServer):
    """A server whose gRPC health, shared-memory and statistics APIs need the admin key."""

    def command(self, backend_directory):
        # The admin protocols behind ADMIN_KEY, health too; model-config stays open so a `model:`
        # bench workload can shape its inputs while statistics are refused without the key.
        categories = ",".join(["health", *(c for c in RESTRICTED_CATEGORIES.split(",") if c != "model-config")])
        restriction = f"--grpc-restricted-protocol={categories}:admin-key={ADMIN_KEY}"
        command = super().command(backend_directory)
        return [restriction if arg.startswith("--grpc-restricted-protocol=") else arg for arg in command]


def serve_restricted(tmp_path_factory):
    """Start the server, yield it, stop it: the body of a module-scoped fixture."""
    repository = tmp_path_factory.mktemp("echo-repository")
    (repository / "echo" / "1").mkdir(parents=True)
    (repository / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    (repository / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    options = dataclasses.replace(ServerOptions(str(repository)), restricted_api_key=ADMIN_KEY).with_free_ports()
    server = HealthRestrictedServer(options)
    server.start()
    yield server
    server.stop()
