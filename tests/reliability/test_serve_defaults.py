"""`s2i serve` as the README starts it: loopback only, HTTP off, admin APIs (shared memory) locked.

Each refusal is followed by a good request whose values are checked, so a
refusal that took the server down would fail here.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.reliability.conftest import ADMIN_KEY, GRPC_ADMIN, good_translation

# The request of issue #14: 400 bytes that made Triton 2.51's HTTP frontend allocate 4 TiB.
CRASH_BODY = json.dumps(
    {
        "inputs": [
            {"name": "audio_samples", "shape": [1, 1099511627776], "datatype": "FP32", "data": [0.0]},
            {"name": "sample_rate_hz", "shape": [1, 1], "datatype": "INT32", "data": [16000]},
        ]
    }
).encode()


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or IPv4 loopback mapped into IPv6 (gRPC binds `::ffff:127.0.0.1`)."""
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def listening_addresses(served) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the server process tree listens on."""
    processes = [served.tritonserver(), *served.tritonserver().children(recursive=True)]
    return {
        (connection.laddr.ip, connection.laddr.port)
        for process in processes
        for connection in process.net_connections(kind="tcp")
        if connection.status == psutil.CONN_LISTEN
    }


def admin_calls(client: grpcclient.InferenceServerClient, headers: dict | None):
    """One call of each restricted protocol."""
    return {
        "model-repository": lambda: client.get_model_repository_index(headers=headers),
        "model-config": lambda: client.get_model_config("whisper", headers=headers),
        "statistics": lambda: client.get_inference_statistics(headers=headers),
        "trace": lambda: client.get_trace_settings(headers=headers),
        "logging": lambda: client.get_log_settings(headers=headers),
        "shared-memory": lambda: client.get_system_shared_memory_status(headers=headers),
    }


def test_serve_listens_only_on_loopback_grpc_and_metrics_when_started_with_defaults(default_serve):
    addresses = listening_addresses(default_serve)
    assert addresses and all(is_loopback(ip) for ip, _ in addresses), addresses
    assert {port for _, port in addresses} == {default_serve.grpc_port, default_serve.metrics_port}
    assert default_serve.banner.startswith("serving ")
    assert f"gRPC 127.0.0.1:{default_serve.grpc_port}, HTTP off, metrics 127.0.0.1:" in default_serve.banner
    assert "admin APIs locked" in default_serve.banner
    assert len(good_translation(default_serve.grpc_url)) in (1, 2, 3)


def test_serve_refuses_the_http_crash_request_with_a_closed_port_when_started_with_defaults(default_serve):
    expected = good_translation(default_serve.grpc_url)
    request = urllib.request.Request(
        f"http://{default_serve.http_url}/v2/models/whisper/infer", data=CRASH_BODY, method="POST"
    )
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        urllib.request.urlopen(request, timeout=10)
    assert default_serve.process.poll() is None
    assert good_translation(default_serve.grpc_url) == expected


@pytest.mark.parametrize(
    "protocol", ["model-repository", "model-config", "statistics", "trace", "logging", "shared-memory"]
)
def test_serve_refuses_admin_protocols_when_no_key_is_configured(default_serve, protocol):
    expected = good_translation(default_serve.grpc_url)
    with grpcclient.InferenceServerClient(default_serve.grpc_url) as client:
        for headers in (None, {"triton-grpc-protocol-admin-key": "guess"}, {"admin-key": "guess"}):
            with pytest.raises(InferenceServerException, match="restricted"):
                admin_calls(client, headers)[protocol]()
    assert good_translation(default_serve.grpc_url) == expected


def test_serve_refuses_registering_another_processes_segment_when_started_with_defaults(default_serve):
    expected = good_translation(default_serve.grpc_url)
    # A segment this test process owns stands for "another process's" memory; the server's
    # own Python-backend regions (found in /dev/shm) must be just as unreachable.
    handle = shm.create_shared_memory_region("victim", "/s2i-victim-segment", 64)
    try:
        shm.set_shared_memory_region(handle, [np.frombuffer(b"secret".ljust(64, b"\0"), dtype=np.uint8)])
        server_regions = [
            name
            for name in (entry.split("/")[-1] for entry in _dev_shm())
            if name.startswith(("s2i", "triton_python_backend_shm"))
        ]
        with grpcclient.InferenceServerClient(default_serve.grpc_url) as client:
            for key in ["/s2i-victim-segment", *(f"/{name}" for name in server_regions[:3])]:
                with pytest.raises(InferenceServerException, match="restricted"):
                    client.register_system_shared_memory("stolen", key, 64)
    finally:
        shm.destroy_shared_memory_region(handle)
    assert good_translation(default_serve.grpc_url) == expected


def _dev_shm() -> list[str]:
    import os

    return os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []


@pytest.mark.parametrize(
    "protocol", ["model-repository", "model-config", "statistics", "trace", "logging", "shared-memory"]
)
def test_serve_opens_admin_protocols_only_with_the_key_when_one_is_configured(keyed_serve, protocol):
    with grpcclient.InferenceServerClient(keyed_serve.grpc_url) as client:
        with pytest.raises(InferenceServerException, match="restricted"):
            admin_calls(client, {"triton-grpc-protocol-admin-key": "wrong"})[protocol]()
        with pytest.raises(InferenceServerException, match="restricted"):
            # The HTTP spelling of the header does not open gRPC.
            admin_calls(client, {"admin-key": ADMIN_KEY})[protocol]()
        admin_calls(client, GRPC_ADMIN)[protocol]()
        index = client.get_model_repository_index(headers=GRPC_ADMIN, as_json=True)
    assert {model["name"] for model in index["models"]} >= {"whisper", "preprocess"}
    assert len(good_translation(keyed_serve.grpc_url)) in (1, 2, 3)


def test_serve_refuses_unkeyed_http_inference_before_parsing_when_http_is_on(keyed_serve):
    expected = good_translation(keyed_serve.grpc_url)
    assert f"HTTP 127.0.0.1:{keyed_serve.http_port}" in keyed_serve.banner
    request = urllib.request.Request(
        f"http://{keyed_serve.http_url}/v2/models/whisper/infer", data=CRASH_BODY, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code in (401, 403)
    assert "restricted" in refused.value.read().decode()
    assert keyed_serve.process.poll() is None
    # Health stays open for probes.
    with urllib.request.urlopen(f"http://{keyed_serve.http_url}/v2/health/ready", timeout=10) as ready:
        assert ready.status == 200
    assert good_translation(keyed_serve.grpc_url) == expected
