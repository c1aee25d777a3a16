"""The Gateway API example (Gateway, HTTPRoute, GRPCRoute), checked structurally.

kubernetes-validate has no schemas for these CRDs, so the tests check what
matters: routes attach to a listener of the Gateway that serves their hostnames
over TLS, reach the Service ports the server's flags open, and route only
inference, metadata and health (never an admin API).
"""

from __future__ import annotations

import pytest

from tests.k8s.test_manifests import GPU_OVERLAYS, KUBECTL, container_port, objects, server, server_port, single

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="`kubectl` renders the kustomizations offline")

API_VERSION = "gateway.networking.k8s.io/v1"
TRITON_SERVICE = "inference.GRPCInferenceService"
# Triton's gRPC methods that need no admin key: inference, metadata and health.
OPEN_GRPC_METHODS = {
    (TRITON_SERVICE, method)
    for method in (
        "ModelInfer",
        "ModelStreamInfer",
        "ModelMetadata",
        "ModelReady",
        "ServerMetadata",
        "ServerReady",
        "ServerLive",
    )
} | {("grpc.health.v1.Health", "Check")}
OPEN_HTTP_PREFIXES = ("/v2/models", "/v2/health")
ROUTE_PORT = {"HTTPRoute": "http", "GRPCRoute": "grpc"}


def route(overlay: str, kind: str) -> dict:
    found = single(overlay, kind)
    assert found["apiVersion"] == API_VERSION
    return found


def listener(overlay: str, route_object: dict) -> dict:
    (parent,) = route_object["spec"]["parentRefs"]
    gateway = single(overlay, "Gateway")
    assert parent["name"] == gateway["metadata"]["name"]
    (found,) = [item for item in gateway["spec"]["listeners"] if item["name"] == parent["sectionName"]]
    return found


@pytest.mark.parametrize("kind", sorted(ROUTE_PORT))
@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_route_attaches_to_tls_listener_of_its_hostnames_when_rendered(overlay, kind):
    found = route(overlay, kind)
    port = listener(overlay, found)

    assert found["spec"]["hostnames"] == [port["hostname"]]
    assert port["protocol"] == "HTTPS" and port["tls"]["mode"] == "Terminate" and port["tls"]["certificateRefs"]
    assert {"kind": kind} in port["allowedRoutes"]["kinds"]


@pytest.mark.parametrize("kind", sorted(ROUTE_PORT))
@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_route_reaches_server_flag_port_through_service_when_rendered(overlay, kind):
    service = single(overlay, "Service")
    backends = [ref for rule in route(overlay, kind)["spec"]["rules"] for ref in rule["backendRefs"]]

    assert backends
    for backend in backends:
        assert backend["name"] == service["metadata"]["name"]
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == backend["port"]]
        assert container_port(server(overlay), port["targetPort"]) == server_port(overlay, ROUTE_PORT[kind])


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_grpc_backend_speaks_cleartext_http2_when_rendered(overlay):
    (port,) = [p for p in single(overlay, "Service")["spec"]["ports"] if p["name"] == "grpc"]

    assert port["appProtocol"] == "kubernetes.io/h2c"


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_http_route_exposes_no_admin_path_when_rendered(overlay):
    matches = [match for rule in route(overlay, "HTTPRoute")["spec"]["rules"] for match in rule["matches"]]

    assert matches
    for match in matches:
        assert match["path"]["type"] == "PathPrefix" and match["path"]["value"] in OPEN_HTTP_PREFIXES


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_grpc_route_exposes_only_open_methods_when_rendered(overlay):
    matches = [match for rule in route(overlay, "GRPCRoute")["spec"]["rules"] for match in rule["matches"]]
    methods = {(match["method"]["service"], match["method"]["method"]) for match in matches}

    assert methods == OPEN_GRPC_METHODS


def test_triton_has_no_ingress_when_gateway_api_is_the_example():
    assert all(objects(overlay, "Ingress") == [] for overlay in GPU_OVERLAYS)
