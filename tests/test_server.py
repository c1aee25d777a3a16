import dataclasses
import socket
import subprocess

import pytest

from s2i.server import (
    ServerError,
    ServerOptions,
    TritonDistribution,
    TritonServer,
    free_ports,
    server_environment,
    tritonserver_args,
)


def test_tritonserver_args_carry_ports_repository_and_python_backend_shm_when_rendered():
    options = ServerOptions("/models", http_port=1, grpc_port=2, metrics_port=3, shm_region_prefix="abc")
    args = tritonserver_args(options, "/backends")
    assert args[:4] == ["--model-repository=/models", "--http-port=1", "--grpc-port=2", "--metrics-port=3"]
    assert "--backend-config=python,shm-region-prefix-name=abc" in args
    assert "--backend-config=python,shm-default-byte-size=4194304" in args
    assert args[-1] == "--backend-directory=/backends"


def test_tritonserver_args_restrict_admin_apis_when_a_key_is_given():
    args = tritonserver_args(ServerOptions("/models", restricted_api_key="$(KEY)"))
    restricted = [arg for arg in args if "restricted" in arg]
    assert restricted == [
        "--grpc-restricted-protocol=model-repository,model-config,shared-memory,statistics,trace,logging:admin-key=$(KEY)",
        "--http-restricted-api=model-repository,model-config,shared-memory,statistics,trace,logging:admin-key=$(KEY)",
    ]


def test_server_environment_puts_this_environments_bin_first_when_built():
    import sys
    import sysconfig
    from pathlib import Path

    env = server_environment({"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"})
    assert env["PATH"].split(":")[0] == str(Path(sys.prefix) / "bin")
    library_path = env["LD_LIBRARY_PATH"].split(":")
    assert library_path[0] == sysconfig.get_config_var("LIBDIR")
    assert library_path[-1] == "/opt/lib"


def test_distribution_has_a_stub_for_this_python_when_installed():
    import sys

    distribution = TritonDistribution.find()
    assert distribution.binary.is_file()
    assert distribution.stub(f"{sys.version_info.major}.{sys.version_info.minor}").is_file()


def test_server_start_raises_when_repository_is_missing(tmp_path):
    server = TritonServer(ServerOptions(str(tmp_path / "nope")).with_free_ports())
    with pytest.raises(ServerError, match=r"`model_repository` .*nope' is not a folder; run `s2i convert` first"):
        server.start()


def test_server_start_raises_when_repository_is_empty(tmp_path):
    with pytest.raises(ServerError, match="holds no models"):
        TritonServer(ServerOptions(str(tmp_path)).with_free_ports()).start()


def test_server_start_raises_when_a_port_is_taken(model_repository):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = dataclasses.replace(ServerOptions(str(model_repository.repository)).with_free_ports(), grpc_port=port)
        with pytest.raises(ServerError, match=f"`grpc_port` {port} is already in use"):
            TritonServer(options).start()


def test_server_start_raises_when_binary_is_missing(model_repository, monkeypatch, tmp_path):
    monkeypatch.setattr(TritonDistribution, "find", classmethod(lambda cls: cls(tmp_path)))
    with pytest.raises(ServerError, match="`tritonserver` binary not found"):
        TritonServer(ServerOptions(str(model_repository.repository)).with_free_ports()).start()


def test_server_start_raises_with_log_tail_when_a_model_fails_to_load(tmp_path):
    broken = tmp_path / "repository" / "broken" / "1"
    broken.mkdir(parents=True)
    (broken.parent / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 0\n')
    (broken / "model.py").write_text("raise RuntimeError('this model cannot load')\n")
    server = TritonServer(ServerOptions(str(tmp_path / "repository")).with_free_ports(), startup_timeout_s=60)
    with pytest.raises(ServerError, match="(?s)before it was ready.*broken"):
        server.start()
    assert not server.is_alive()


def test_server_stop_leaves_no_process_and_no_workspace_when_started_and_stopped(model_repository, tmp_path):
    server = TritonServer(ServerOptions(str(model_repository.repository)).with_free_ports())
    server.start()
    pid = server._process.pid
    workspace = server._workspace
    assert server.is_ready()
    server.stop()
    assert not server.is_alive()
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
    assert not workspace.exists()


def test_free_ports_returns_distinct_ports():
    ports = free_ports(3)
    assert len(set(ports)) == 3


def test_server_start_refuses_tensorrt_engines_when_no_gpu_can_run_them(tmp_path):
    from tests.conversion.test_tensorrt import manifest

    version_dir = tmp_path / "whisper_encoder" / "1"
    version_dir.mkdir(parents=True)
    manifest().write(version_dir / "engine_manifest.json")
    with pytest.raises(ServerError, match="needs (the `tensorrt` package|an NVIDIA GPU)"):
        TritonServer(ServerOptions(str(tmp_path)).with_free_ports()).start()
