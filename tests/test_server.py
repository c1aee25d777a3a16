import dataclasses
import socket
import subprocess
from pathlib import Path

import pytest

from s2i.server import (
    GrpcTls,
    ServerError,
    ServerOptions,
    TritonDistribution,
    TritonServer,
    free_ports,
    pod_server_options,
    server_environment,
    tritonserver_args,
)


def test_tritonserver_args_carry_ports_repository_and_python_backend_shm_when_rendered():
    options = ServerOptions("/models", http_port=1, grpc_port=2, metrics_port=3, shm_region_prefix="abc")
    args = tritonserver_args(options, "/backends")
    assert args[:8] == [
        "--model-repository=/models",
        "--allow-http=false",
        "--http-address=127.0.0.1",
        "--http-port=1",
        "--grpc-address=127.0.0.1",
        "--grpc-port=2",
        "--metrics-address=127.0.0.1",
        "--metrics-port=3",
    ]
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


def test_tritonserver_args_restrict_http_inference_too_when_http_is_on_with_a_key():
    args = tritonserver_args(ServerOptions("/models", http=True, restricted_api_key="k"))
    assert "--allow-http=true" in args
    assert (
        "--http-restricted-api=model-repository,model-config,shared-memory,statistics,trace,logging,inference:admin-key=k"
        in args
    )
    assert (
        "--grpc-restricted-protocol=model-repository,model-config,shared-memory,statistics,trace,logging:admin-key=k"
        in args
    )


def test_tritonserver_args_turn_on_grpc_tls_when_certificate_and_key_are_given():
    tls = GrpcTls("/tls/server.pem", "/tls/server.key", root_cert="/tls/ca.pem")
    args = tritonserver_args(ServerOptions("/models", grpc_tls=tls))
    assert [arg for arg in args if arg.startswith(("--grpc-use-ssl", "--grpc-server-", "--grpc-root-"))] == [
        "--grpc-use-ssl=true",
        "--grpc-server-cert=/tls/server.pem",
        "--grpc-server-key=/tls/server.key",
        "--grpc-root-cert=/tls/ca.pem",
    ]
    assert not any("ssl" in arg for arg in tritonserver_args(ServerOptions("/models")))


def test_grpc_tls_client_kwargs_trust_the_servers_own_certificate_when_no_root_is_given():
    assert GrpcTls("/tls/server.pem", "/tls/server.key").client_kwargs() == {
        "ssl": True,
        "root_certificates": "/tls/server.pem",
    }
    named = GrpcTls("/tls/server.pem", "/tls/server.key", "/tls/ca.pem", server_name="triton.internal")
    assert named.client_kwargs()["channel_args"] == [("grpc.ssl_target_name_override", "triton.internal")]
    assert named.client_kwargs()["root_certificates"] == "/tls/ca.pem"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"server.key": b"-----BEGIN PRIVATE KEY-----\n"}, r"`grpc_tls.server_cert` '.*server.pem' is not a file"),
        ({"server.pem": b"not a certificate", "server.key": b"-----BEGIN PRIVATE KEY-----\n"}, "is not a PEM file"),
        ({"server.pem": b"-----BEGIN CERTIFICATE-----\n"}, r"`grpc_tls.server_key` '.*server.key' is not a file"),
    ],
)
def test_server_start_refuses_tls_files_before_starting_when_they_are_missing_or_not_pem(tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    tls = GrpcTls(str(tmp_path / "server.pem"), str(tmp_path / "server.key"))
    server = TritonServer(ServerOptions(str(tmp_path / "models"), grpc_tls=tls).with_free_ports())
    with pytest.raises(ServerError, match=message):
        server.start()
    assert not server.is_alive()


def test_pod_server_options_bind_every_interface_with_http_for_probes_when_rendered():
    args = tritonserver_args(pod_server_options("/models", "$(KEY)"))
    assert {
        "--allow-http=true",
        "--http-address=0.0.0.0",
        "--grpc-address=0.0.0.0",
        "--metrics-address=0.0.0.0",
    } <= set(args)


def test_server_locks_admin_apis_with_a_random_key_when_none_is_given():
    first, second = TritonServer(ServerOptions("/models")), TritonServer(ServerOptions("/models"))
    assert len(first.options.restricted_api_key) >= 32
    assert first.options.restricted_api_key != second.options.restricted_api_key
    assert any(arg.startswith("--grpc-restricted-protocol=") for arg in first.command(Path("/b")))


def test_server_describes_the_addresses_it_binds_when_defaults_are_used():
    server = TritonServer(ServerOptions("/models", http_port=1, grpc_port=2, metrics_port=3))
    assert server.describe_binds() == "gRPC 127.0.0.1:2, HTTP off, metrics 127.0.0.1:3"
    assert server.grpc_url == "127.0.0.1:2"
    assert TritonServer(ServerOptions("/m", host="0.0.0.0", grpc_port=2)).grpc_url == "127.0.0.1:2"


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


def test_server_writes_its_log_into_a_folder_it_makes_when_the_folder_is_missing(tmp_path):
    broken = tmp_path / "repository" / "broken" / "1"
    broken.mkdir(parents=True)
    (broken.parent / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 0\n')
    (broken / "model.py").write_text("raise RuntimeError('this model cannot load')\n")
    log_file = tmp_path / "not" / "yet" / "tritonserver.log"
    server = TritonServer(
        ServerOptions(str(tmp_path / "repository")).with_free_ports(), startup_timeout_s=60, log_file=log_file
    )
    with pytest.raises(ServerError):
        server.start()
    server.stop()
    assert "this model cannot load" in log_file.read_text(encoding="utf-8")


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


def test_server_is_not_ready_until_http_listens_when_only_grpc_answers(monkeypatch):
    # Triton opens gRPC before HTTP; readiness over gRPC alone raced the first HTTP request.
    options = ServerOptions(model_repository="unused", http=True).with_free_ports()
    server = TritonServer(options)
    with socket.socket() as metrics:
        metrics.bind(("127.0.0.1", options.metrics_port))
        metrics.listen()
        assert not server._other_endpoints_listening()
        with socket.socket() as http:
            http.bind(("127.0.0.1", options.http_port))
            http.listen()
            assert server._other_endpoints_listening()
