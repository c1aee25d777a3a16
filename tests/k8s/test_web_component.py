"""The web app's Kubernetes component (k8s/components/web): rendered in the overlays, wired to Triton."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from s2i import cli
from s2i.web import WebConfig
from tests.k8s.test_manifests import KUBECTL, render_overlay

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="`kubectl` is not installed")

WEB = "speech2image-web"
WEB_OVERLAYS = ["cpu-dev", "gpu"]


def web_objects(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [
        obj
        for obj in render_overlay(overlay)
        if obj["kind"] == kind and obj["metadata"].get("labels", {}).get("app.kubernetes.io/name") == WEB
    ]


def triton_object(overlay: str, kind: str) -> dict[str, Any]:
    (found,) = [obj for obj in render_overlay(overlay) if obj["kind"] == kind and obj["metadata"]["name"] != WEB]
    return found


def web_container(overlay: str) -> dict[str, Any]:
    (deployment,) = web_objects(overlay, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("overlay", WEB_OVERLAYS)
def test_web_env_and_args_load_as_the_apps_config_when_rendered(overlay):
    container = web_container(overlay)
    environ = {e["name"]: e["value"] for e in container["env"]}
    config = WebConfig.load(environ=environ)
    assert (config.host, config.port) == ("0.0.0.0", 8080)
    (port,) = [p for p in container["ports"] if p["name"] == "http"]
    assert port["containerPort"] == config.port
    parser = argparse.ArgumentParser()
    cli._add_web(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["web", *container["args"]]).forwarded_allow_ips == "*"


@pytest.mark.parametrize("overlay", WEB_OVERLAYS)
def test_web_reaches_tritons_grpc_service_by_name_and_port_when_rendered(overlay):
    url = WebConfig.load(environ={e["name"]: e["value"] for e in web_container(overlay)["env"]}).triton_url
    host, port = url.rsplit(":", 1)
    service = triton_object(overlay, "Service")
    (grpc,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert (host, int(port)) == (service["metadata"]["name"], grpc["port"])
    (policy,) = web_objects(overlay, "NetworkPolicy")
    (to_triton,) = [rule for rule in policy["spec"]["egress"] if "to" in rule]
    assert to_triton["to"][0]["podSelector"]["matchLabels"] == service["spec"]["selector"]
    assert to_triton["ports"] == [{"port": grpc["port"], "protocol": "TCP"}]


@pytest.mark.parametrize("overlay", WEB_OVERLAYS)
def test_web_service_probes_and_security_context_are_consistent_when_rendered(overlay):
    (deployment,) = web_objects(overlay, "Deployment")
    (service,) = web_objects(overlay, "Service")
    (budget,) = web_objects(overlay, "PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container = web_container(overlay)
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert any(mount["mountPath"] == "/tmp" for mount in container["volumeMounts"])
    assert deployment["metadata"]["namespace"] == triton_object(overlay, "Deployment")["metadata"]["namespace"]
    assert container["image"] == "speech2image-web:0.1.0"


def test_web_ingress_routes_to_the_web_service_only_in_the_gpu_overlay():
    assert web_objects("cpu-dev", "Ingress") == []
    (ingress,) = web_objects("gpu", "Ingress")
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": WEB, "port": {"name": "http"}}
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
