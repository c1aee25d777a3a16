"""Offline checks of the Kubernetes manifests under ``k8s/``.

Every overlay is rendered with ``kubectl kustomize`` (no cluster needed), each
object is validated against the Kubernetes OpenAPI schemas bundled with
``kubernetes-validate`` (strict: unknown fields fail), CRDs without a bundled
schema (the Prometheus Operator's ServiceMonitor) are checked structurally, and
the policies the deployment promises are asserted on the rendered objects:
resources, probes, non-root, ports that match the server's flags, the HPA
metric that the Prometheus adapter rule provides, and the server command line
that ``s2i.server.tritonserver_args`` (what ``s2i serve`` uses) produces.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from s2i.server import SHM_DEFAULT_BYTE_SIZE, pod_server_options, tritonserver_args

K8S_DIR = Path(__file__).resolve().parents[2] / "k8s"
KUBECTL = shutil.which("kubectl")

pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="`kubectl` is not installed; it renders the kustomizations offline"
)

# The repository each overlay serves from; only `--model-repository` may differ
# from the flags `s2i serve` uses.
MODEL_REPOSITORY = {
    "gpu": "/models",
    "gpu-tensorrt": "/models",
    "gpu-object-store": "s3://speech2image-models/model-repository/v1",
    "cpu-dev": "/models",
}
OVERLAYS = sorted(MODEL_REPOSITORY)
GPU_OVERLAYS = ["gpu", "gpu-object-store", "gpu-tensorrt"]
LOCAL_REPOSITORY_OVERLAYS = [name for name, repo in MODEL_REPOSITORY.items() if "://" not in repo]
OBJECT_STORE_OVERLAYS = ["gpu-object-store"]
ADMIN_KEY_REFERENCE = "$(TRITON_ADMIN_KEY)"
SERVER_CONTAINER = "tritonserver"
SERVING_IMAGE = "speech2image-triton-server:0.1.0"
# Dockerfile targets `converter` and `converter-tensorrt`, same release as the server.
CONVERTER_IMAGES = {"speech2image-triton-converter:0.1.0", "speech2image-triton-converter-tensorrt:0.1.0"}
# Waits for the conversion Job's marker; it writes nothing.
WAIT_CONTAINER = "wait-for-model-repository"
DEPLOYMENT = "speech2image-triton"

# The oldest Kubernetes the deploy guide supports, and the newest bundled schema.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
# Kinds from CRDs: kubernetes-validate has no schema for them.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    # Gateway API (structural tests in test_gateway.py).
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"),
}
# Secrets that production creates out of band (documented in k8s/README.md).
EXTERNAL_SECRETS = {"triton-admin-key", "model-store-credentials"}
# Every model of the finished pipeline; each gets at least one Python-backend
# shared-memory region.
PIPELINE_MODELS = (
    "whisper",
    "whisper_encoder",
    "whisper_decoder",
    "whisper_decoder_with_past",
    "emotion_classifier",
    "text_encoder",
    "unet",
    "vae_decoder",
    "diffusion",
    "prompt_composer",
    "speech_to_image",
)
DASHBOARD_METRICS = [
    "nv_inference_queue_duration_us",
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_request_summary_us",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_pending_request_count",
    "nv_cpu_utilization",
    "nv_cpu_memory_used_bytes",
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
    "s2i_requests_total",
    "s2i_request_duration_seconds_bucket",
    "s2i_denoising_steps_total",
    "s2i_tokens_generated_total",
    "s2i_images_total",
    "s2i_previews_total",
    "s2i_requests_cancelled_total",
    "s2i_time_to_first_preview_seconds_bucket",
]
# Every dashboard selector filters on both template variables.
DASHBOARD_SELECTION = 'namespace="$namespace",pod=~"$pod"'
PORT_FLAGS = {"http": "--http-port", "grpc": "--grpc-port", "metrics": "--metrics-port"}
WRITABLE_PATH_ENV = ("HOME", "HF_HOME", "TRITON_AWS_MOUNT_DIRECTORY", "TRITON_GCS_MOUNT_DIRECTORY")
QUANTITY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


# --------------------------------------------------------------------------- helpers


@functools.cache
def render(path: str) -> tuple[dict[str, Any], ...]:
    """Objects rendered by ``kubectl kustomize k8s/<path>`` (shared: do not mutate)."""
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S_DIR / path)], capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0:
        pytest.fail(f"`kubectl kustomize k8s/{path}` failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render_overlay(overlay: str) -> tuple[dict[str, Any], ...]:
    return render(f"overlays/{overlay}")


# The web app's objects (components/web) are checked in test_web_component.py; these tests are Triton's.
WEB_APP_NAME = "speech2image-web"


def objects(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [
        obj
        for obj in render_overlay(overlay)
        if obj["kind"] == kind and obj["metadata"].get("labels", {}).get("app.kubernetes.io/name") != WEB_APP_NAME
    ]


def single(overlay: str, kind: str) -> dict[str, Any]:
    found = objects(overlay, kind)
    assert len(found) == 1, f"expected one {kind} in overlay `{overlay}`, got {len(found)}"
    return found[0]


def names(overlay: str, kind: str) -> set[str]:
    return {obj["metadata"]["name"] for obj in objects(overlay, kind)}


def pod_spec(overlay: str) -> dict[str, Any]:
    return single(overlay, "Deployment")["spec"]["template"]["spec"]


def all_containers(overlay: str) -> list[dict[str, Any]]:
    spec = pod_spec(overlay)
    return [*spec.get("initContainers", []), *spec["containers"]]


def server(overlay: str) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(overlay)["containers"] if c["name"] == SERVER_CONTAINER]
    return container


def init_container(overlay: str, name: str) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(overlay).get("initContainers", []) if c["name"] == name]
    return container


def flag(args: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in args if arg.split("=", 1)[0] == name]
    assert len(values) == 1, f"expected `{name}` once in the server args, got {values}"
    return values[0]


def server_port(overlay: str, port_name: str) -> int:
    """The port the server listens on for ``port_name`` according to its flags."""
    return int(flag(server(overlay)["args"], PORT_FLAGS[port_name]))


def container_port(container: dict[str, Any], port: int | str) -> int:
    """Resolve a port given by number or by the container's port name."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p["name"] == port]
    return number


def parse_quantity(quantity: str | int) -> float:
    """Parse a Kubernetes quantity (``"2Gi"``, ``"500m"``, ``"4"``) into base units."""
    text = str(quantity)
    for suffix, factor in QUANTITY_SUFFIXES.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    return float(text)


def parse_duration_s(duration: str) -> int:
    """Parse a Prometheus duration as the operator accepts it here (``"15s"``, ``"1m"``)."""
    match = re.fullmatch(r"(\d+)([smh])", duration)
    assert match, f"`{duration}` is not a Prometheus duration like 15s"
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]


def volume(overlay: str, name: str) -> dict[str, Any]:
    (found,) = [v for v in pod_spec(overlay)["volumes"] if v["name"] == name]
    return found


def mount_at(container: dict[str, Any], path: str) -> dict[str, Any]:
    (found,) = [m for m in container.get("volumeMounts", []) if m["mountPath"] == path]
    return found


def effective(container: dict[str, Any], pod: dict[str, Any], field: str) -> Any:
    """A security setting as the kubelet applies it: the container's, else the pod's."""
    return container.get("securityContext", {}).get(field, pod.get("securityContext", {}).get(field))


def secret_refs(spec: dict[str, Any]) -> Iterator[tuple[str, bool]]:
    """Every Secret the pod refers to, with whether the reference is optional."""
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                yield ref["name"], ref.get("optional", False)
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                yield source["secretRef"]["name"], source["secretRef"].get("optional", False)
    for vol in spec.get("volumes", []):
        if "secret" in vol:
            yield vol["secret"]["secretName"], vol["secret"].get("optional", False)


def config_map_refs(spec: dict[str, Any]) -> Iterator[str]:
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                yield ref["name"]
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                yield source["configMapRef"]["name"]
    for vol in spec.get("volumes", []):
        if "configMap" in vol:
            yield vol["configMap"]["name"]


def schema_errors(docs: tuple[dict[str, Any], ...], version: str) -> list[str]:
    errors = []
    for obj in docs:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{where}: {e.message} (add it to CRD_KINDS with a structural test if it is a CRD)")
    return errors


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    match = selector.get("matchLabels", {})
    return bool(match) and all(labels.get(key) == value for key, value in match.items())


def pod_labels(overlay: str) -> dict[str, str]:
    return single(overlay, "Deployment")["spec"]["template"]["metadata"]["labels"]


def adapter_rules() -> list[dict[str, Any]]:
    (config_map,) = [obj for obj in render("monitoring") if obj["metadata"]["name"] == "speech2image-adapter-config"]
    return yaml.safe_load(config_map["data"]["config.yaml"])["rules"]


def adapter_rule(metric_name: str) -> dict[str, Any]:
    rules = [rule for rule in adapter_rules() if rule["name"]["as"] == metric_name]
    assert len(rules) == 1, f"expected one adapter rule exposing `{metric_name}`, got {len(rules)}"
    return rules[0]


def hpa_metric_name(overlay: str) -> str:
    (metric,) = single(overlay, "HorizontalPodAutoscaler")["spec"]["metrics"]
    return metric[metric["type"].lower()]["metric"]["name"]


@functools.cache
def dashboard() -> dict[str, Any]:
    return json.loads((K8S_DIR / "monitoring" / "grafana" / "speech2image-pipeline.json").read_text())


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_match_kubernetes_schema_when_overlay_rendered(overlay: str, version: str) -> None:
    assert schema_errors(render_overlay(overlay), version) == []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_objects_match_kubernetes_schema_when_monitoring_rendered(version: str) -> None:
    assert schema_errors(render("monitoring"), version) == []


def test_schema_validation_rejects_deployment_when_field_is_misspelt() -> None:
    broken = copy.deepcopy(single("gpu", "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}

    assert len(schema_errors((broken,), KUBERNETES_VERSIONS[0])) == 1


def test_schema_validation_rejects_service_when_port_is_not_a_number() -> None:
    broken = copy.deepcopy(single("gpu", "Service"))
    broken["spec"]["ports"][0]["port"] = "eight-thousand"

    assert len(schema_errors((broken,), KUBERNETES_VERSIONS[0])) == 1


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_servicemonitor_has_operator_structure_when_rendered(overlay: str) -> None:
    monitor = single(overlay, "ServiceMonitor")
    spec = monitor["spec"]

    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == single(overlay, "Service")["metadata"]["namespace"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "podTargetLabels"}
    assert all(isinstance(v, str) for v in spec["selector"]["matchLabels"].values())
    assert spec["endpoints"], "a ServiceMonitor needs at least one endpoint"
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings"}
        assert isinstance(endpoint["port"], str)
        assert endpoint["path"].startswith("/")
        assert parse_duration_s(endpoint["scrapeTimeout"]) < parse_duration_s(endpoint["interval"])


# --------------------------------------------------------------------------- server command line


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_args_equal_tritonserver_args_when_rendered(overlay: str) -> None:
    options = pod_server_options(MODEL_REPOSITORY[overlay], ADMIN_KEY_REFERENCE)
    expected = tritonserver_args(options)

    assert server(overlay)["args"] == expected, (
        "k8s/base/deployment.yaml drifted from s2i.server.tritonserver_args(); paste:\n"
        + yaml.safe_dump(expected, default_flow_style=False, width=1000)
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_command_is_tritonserver_when_rendered(overlay: str) -> None:
    assert server(overlay)["command"] == ["tritonserver"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_admin_key_env_comes_from_secret_when_rendered(overlay: str) -> None:
    (env,) = [e for e in server(overlay)["env"] if e["name"] == "TRITON_ADMIN_KEY"]

    assert env["valueFrom"]["secretKeyRef"]["key"] == "admin-key"
    assert "value" not in env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_args_expand_only_defined_env_when_rendered(overlay: str) -> None:
    # Kubernetes only expands $(VAR) in args for variables the container defines.
    defined = {e["name"] for e in server(overlay)["env"]}
    referenced = set(re.findall(r"\$\((\w+)\)", " ".join(server(overlay)["args"])))

    assert referenced == {"TRITON_ADMIN_KEY"}
    assert referenced <= defined


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probe_endpoints_stay_unrestricted_when_admin_key_is_set(overlay: str) -> None:
    args = server(overlay)["args"]
    for name in ("--http-restricted-api", "--grpc-restricted-protocol"):
        categories = flag(args, name).split(":", 1)[0].split(",")
        assert "health" not in categories
        assert "inference" not in categories


# --------------------------------------------------------------------------- secrets and config


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_required_secrets_exist_or_are_documented_when_rendered(overlay: str) -> None:
    readme = (K8S_DIR / "README.md").read_text()
    rendered = names(overlay, "Secret")

    for name, optional in secret_refs(pod_spec(overlay)):
        if optional:
            continue
        assert name in rendered or (name in EXTERNAL_SECRETS and name in readme), name


def test_admin_key_secret_is_generated_when_cpu_dev() -> None:
    (env,) = [e for e in server("cpu-dev")["env"] if e["name"] == "TRITON_ADMIN_KEY"]
    ref = env["valueFrom"]["secretKeyRef"]

    (secret,) = [s for s in objects("cpu-dev", "Secret") if s["metadata"]["name"] == ref["name"]]
    assert secret["data"][ref["key"]]


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_admin_key_secret_is_not_in_manifests_when_production(overlay: str) -> None:
    assert objects(overlay, "Secret") == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_referenced_config_maps_exist_when_rendered(overlay: str) -> None:
    assert set(config_map_refs(pod_spec(overlay))) <= names(overlay, "ConfigMap")


# --------------------------------------------------------------------------- container policies


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_set_cpu_and_memory_requests_and_limits_when_rendered(overlay: str) -> None:
    for container in all_containers(overlay):
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), (container["name"], kind)
        assert parse_quantity(resources["requests"]["memory"]) == parse_quantity(resources["limits"]["memory"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_have_startup_readiness_and_liveness_probes_when_rendered(overlay: str) -> None:
    for container in pod_spec(overlay)["containers"]:
        assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container), container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_as_non_root_user_when_rendered(overlay: str) -> None:
    spec = pod_spec(overlay)
    for container in all_containers(overlay):
        assert effective(container, spec, "runAsNonRoot") is True, container["name"]
        assert effective(container, spec, "runAsUser") not in (None, 0), container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_drop_all_capabilities_when_rendered(overlay: str) -> None:
    for container in all_containers(overlay):
        capabilities = container["securityContext"]["capabilities"]
        assert capabilities["drop"] == ["ALL"], container["name"]
        assert not capabilities.get("add"), container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_forbid_privilege_escalation_when_rendered(overlay: str) -> None:
    for container in all_containers(overlay):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, container["name"]
        assert container["securityContext"].get("privileged", False) is False, container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_have_read_only_root_filesystem_when_rendered(overlay: str) -> None:
    for container in all_containers(overlay):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_uses_runtime_default_seccomp_when_rendered(overlay: str) -> None:
    assert pod_spec(overlay)["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_writable_paths_are_writable_volumes_when_root_is_read_only(overlay: str) -> None:
    for container in all_containers(overlay):
        if container["name"] == WAIT_CONTAINER:
            continue
        writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
        paths = [e["value"] for e in container.get("env", []) if e["name"] in WRITABLE_PATH_ENV]
        assert paths, container["name"]
        for path in paths:
            assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in writable), (
                container["name"],
                path,
            )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_use_serving_image_when_rendered(overlay: str) -> None:
    assert server(overlay)["image"] == SERVING_IMAGE
    for container in pod_spec(overlay).get("initContainers", []):
        expected = {SERVING_IMAGE} if container["name"] == WAIT_CONTAINER else CONVERTER_IMAGES
        assert container["image"] in expected, container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_account_token_is_not_mounted_when_rendered(overlay: str) -> None:
    assert pod_spec(overlay)["automountServiceAccountToken"] is False
    (account,) = objects(overlay, "ServiceAccount")
    assert account["metadata"]["name"] == pod_spec(overlay)["serviceAccountName"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_enforces_restricted_pod_security_when_rendered(overlay: str) -> None:
    namespace = single(overlay, "Namespace")

    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert single(overlay, "Deployment")["metadata"]["namespace"] == namespace["metadata"]["name"]


# --------------------------------------------------------------------------- probes and ports


@pytest.mark.parametrize(
    ("probe", "path"),
    [
        ("startupProbe", "/v2/health/ready"),
    ],
)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_probe_uses_triton_health_endpoint_when_rendered(overlay: str, probe: str, path: str) -> None:
    assert server(overlay)[probe]["httpGet"]["path"] == path


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_probe_runs_the_deep_health_check_on_the_grpc_port_when_rendered(overlay: str, probe: str) -> None:
    # A dead Python stub leaves /v2/health/ready at 200; only an inference per model notices (s2i.health).
    command = server(overlay)[probe]["exec"]["command"]
    assert command[:3] == ["s2i", "health", "--deep"]
    url = command[command.index("--url") + 1]
    assert url.startswith("127.0.0.1:")
    assert int(url.rsplit(":", 1)[1]) == server_port(overlay, "grpc")
    assert server(overlay)[probe]["timeoutSeconds"] > float(command[command.index("--timeout-s") + 1])


@pytest.mark.parametrize("probe", ["startupProbe"])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_probe_targets_http_port_flag_when_rendered(overlay: str, probe: str) -> None:
    container = server(overlay)

    assert container_port(container, container[probe]["httpGet"]["port"]) == server_port(overlay, "http")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_startup_probe_allows_model_loading_when_rendered(overlay: str) -> None:
    probe = server(overlay)["startupProbe"]

    # Loading Whisper and the diffusion stages takes minutes, not seconds.
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 600


@pytest.mark.parametrize("port_name", sorted(PORT_FLAGS))
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_port_matches_server_flag_when_rendered(overlay: str, port_name: str) -> None:
    container = server(overlay)

    assert container_port(container, port_name) == server_port(overlay, port_name)


@pytest.mark.parametrize("port_name", sorted(PORT_FLAGS))
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_port_reaches_server_flag_when_rendered(overlay: str, port_name: str) -> None:
    (port,) = [p for p in single(overlay, "Service")["spec"]["ports"] if p["name"] == port_name]

    assert port["port"] == server_port(overlay, port_name)
    assert container_port(server(overlay), port["targetPort"]) == server_port(overlay, port_name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_selects_server_pods_when_rendered(overlay: str) -> None:
    selector = {"matchLabels": single(overlay, "Service")["spec"]["selector"]}

    assert selects(selector, pod_labels(overlay))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_prestop_and_exit_timeout_when_rendered(overlay: str) -> None:
    container = server(overlay)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"

    exit_timeout_s = int(flag(container["args"], "--exit-timeout-secs"))
    # The pods drain for as long as `s2i serve --exit-timeout-s` does by default (one argument builder).
    assert exit_timeout_s == pod_server_options(MODEL_REPOSITORY[overlay], ADMIN_KEY_REFERENCE).exit_timeout_s
    drain_s = int(pre_stop[1]) + exit_timeout_s
    assert pod_spec(overlay)["terminationGracePeriodSeconds"] > drain_s


# --------------------------------------------------------------------------- shared memory


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dev_shm_is_memory_backed_empty_dir_when_rendered(overlay: str) -> None:
    mount = mount_at(server(overlay), "/dev/shm")

    assert volume(overlay, mount["name"])["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dev_shm_holds_one_region_per_model_when_rendered(overlay: str) -> None:
    size = parse_quantity(volume(overlay, mount_at(server(overlay), "/dev/shm")["name"])["emptyDir"]["sizeLimit"])

    # One default-sized region per model instance, with room to grow.
    assert size >= 2 * len(PIPELINE_MODELS) * SHM_DEFAULT_BYTE_SIZE


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dev_shm_fits_within_memory_limit_when_rendered(overlay: str) -> None:
    container = server(overlay)
    size = parse_quantity(volume(overlay, mount_at(container, "/dev/shm")["name"])["emptyDir"]["sizeLimit"])

    # Memory-backed emptyDir pages count against the container's limit.
    assert size <= parse_quantity(container["resources"]["limits"]["memory"]) / 4


# --------------------------------------------------------------------------- GPU scheduling


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_server_requests_one_gpu_when_gpu_overlay(overlay: str) -> None:
    resources = server(overlay)["resources"]

    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_pods_need_no_gpu_operator_label_when_gpu_overlay(overlay: str) -> None:
    # The nvidia.com/gpu request places the pod on every device-plugin cluster (GKE, EKS,
    # AKS); GPU feature discovery's presence label exists only with the GPU operator.
    assert "nvidia.com/gpu.present" not in pod_spec(overlay).get("nodeSelector", {})


@pytest.mark.parametrize(
    "toleration",
    [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    ],
)
@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_pods_tolerate_managed_cluster_gpu_taint_when_gpu_overlay(overlay: str, toleration: dict) -> None:
    assert toleration in pod_spec(overlay)["tolerations"]


def test_containers_request_no_gpu_when_cpu_dev() -> None:
    for container in all_containers("cpu-dev"):
        for kind in ("requests", "limits"):
            assert "nvidia.com/gpu" not in container["resources"][kind], container["name"]
    assert "nodeSelector" not in pod_spec("cpu-dev")


# --------------------------------------------------------------------------- model repository


@pytest.mark.parametrize("overlay", LOCAL_REPOSITORY_OVERLAYS)
def test_model_repository_flag_is_read_only_mount_when_local(overlay: str) -> None:
    mount = mount_at(server(overlay), flag(server(overlay)["args"], "--model-repository"))

    assert mount["readOnly"] is True


def test_model_repository_is_claimed_volume_when_gpu() -> None:
    mount = mount_at(server("gpu"), MODEL_REPOSITORY["gpu"])
    claim = volume("gpu", mount["name"])["persistentVolumeClaim"]["claimName"]

    assert claim in names("gpu", "PersistentVolumeClaim")


def test_model_repository_is_per_pod_empty_dir_when_cpu_dev() -> None:
    mount = mount_at(server("cpu-dev"), MODEL_REPOSITORY["cpu-dev"])

    assert set(volume("cpu-dev", mount["name"])) == {"name", "emptyDir"}
    assert objects("cpu-dev", "PersistentVolumeClaim") == []


@pytest.mark.parametrize("overlay", OBJECT_STORE_OVERLAYS)
def test_model_repository_is_object_store_url_when_object_store(overlay: str) -> None:
    assert re.fullmatch(r"(s3|gs)://[^/]+/.+", flag(server(overlay)["args"], "--model-repository"))


@pytest.mark.parametrize("overlay", OBJECT_STORE_OVERLAYS)
def test_no_model_volume_is_mounted_when_object_store(overlay: str) -> None:
    assert "/models" not in {m["mountPath"] for m in server(overlay)["volumeMounts"]}
    assert objects(overlay, "PersistentVolumeClaim") == []


@pytest.mark.parametrize("overlay", OBJECT_STORE_OVERLAYS)
def test_download_folder_is_disk_backed_when_object_store(overlay: str) -> None:
    (path,) = {e["value"] for e in server(overlay)["env"] if e["name"].endswith("_MOUNT_DIRECTORY")}

    assert "medium" not in volume(overlay, mount_at(server(overlay), path)["name"])["emptyDir"]


@pytest.mark.parametrize("overlay", OBJECT_STORE_OVERLAYS)
def test_no_init_container_when_repository_is_in_object_store(overlay: str) -> None:
    assert not pod_spec(overlay).get("initContainers")


# --------------------------------------------------------------------------- availability and autoscaling


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pdb_selects_server_pods_when_rendered(overlay: str) -> None:
    assert selects(single(overlay, "PodDisruptionBudget")["spec"]["selector"], pod_labels(overlay))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pdb_lets_a_drain_proceed_when_replicas_are_minimal(overlay: str) -> None:
    hpas = objects(overlay, "HorizontalPodAutoscaler")
    replicas = hpas[0]["spec"]["minReplicas"] if hpas else single(overlay, "Deployment")["spec"]["replicas"]
    spec = single(overlay, "PodDisruptionBudget")["spec"]

    allowed = spec["maxUnavailable"] if "maxUnavailable" in spec else replicas - spec["minAvailable"]
    assert allowed >= 1


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_hpa_targets_server_deployment_when_autoscaled(overlay: str) -> None:
    target = single(overlay, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]

    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT}


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_deployment_omits_replicas_when_autoscaled(overlay: str) -> None:
    assert "replicas" not in single(overlay, "Deployment")["spec"]


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_hpa_metric_name_matches_adapter_rule_when_autoscaled(overlay: str) -> None:
    assert adapter_rule(hpa_metric_name(overlay))["name"]["as"] == hpa_metric_name(overlay)


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_hpa_metric_is_per_pod_when_adapter_maps_pods(overlay: str) -> None:
    (metric,) = single(overlay, "HorizontalPodAutoscaler")["spec"]["metrics"]
    overrides = adapter_rule(hpa_metric_name(overlay))["resources"]["overrides"]

    assert metric["type"] == "Pods"
    assert overrides == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}


def test_adapter_rule_sums_pending_requests_of_entry_models_when_queried() -> None:
    rule = adapter_rule(hpa_metric_name("gpu"))
    query = squash(rule["metricsQuery"])

    assert "nv_inference_pending_request_count" in rule["seriesQuery"]
    assert query.startswith("sumby(<<.GroupBy>>)(avg_over_time(nv_inference_pending_request_count{<<.LabelMatchers>>,")
    (models,) = re.findall(r'model=~"([^"]+)"', query)
    assert set(models.split("|")) == {"speech_to_image", "speech_to_image_stream", "diffusion"}


def test_adapter_helm_values_use_rendered_config_map_when_installed() -> None:
    values = yaml.safe_load((K8S_DIR / "monitoring" / "prometheus-adapter" / "values.yaml").read_text())
    rendered = {obj["metadata"]["name"] for obj in render("monitoring") if obj["kind"] == "ConfigMap"}

    assert values["rules"]["existing"] in rendered


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_servicemonitor_scrapes_metrics_flag_port_when_autoscaled(overlay: str) -> None:
    (endpoint,) = single(overlay, "ServiceMonitor")["spec"]["endpoints"]
    (port,) = [p for p in single(overlay, "Service")["spec"]["ports"] if p["name"] == endpoint["port"]]

    assert container_port(server(overlay), port["targetPort"]) == server_port(overlay, "metrics")
    assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_servicemonitor_selects_service_when_autoscaled(overlay: str) -> None:
    service = single(overlay, "Service")

    assert selects(single(overlay, "ServiceMonitor")["spec"]["selector"], service["metadata"]["labels"])


def test_servicemonitor_is_absent_when_cpu_dev() -> None:
    assert objects("cpu-dev", "ServiceMonitor") == []
    assert objects("cpu-dev", "HorizontalPodAutoscaler") == []


# --------------------------------------------------------------------------- network


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_every_service_port_when_rendered(overlay: str) -> None:
    (policy,) = [
        p
        for p in objects(overlay, "NetworkPolicy")
        if "Ingress" in p["spec"]["policyTypes"] and p["spec"].get("ingress")
    ]
    assert selects(policy["spec"]["podSelector"], pod_labels(overlay))
    admitted = {container_port(server(overlay), p["port"]) for rule in policy["spec"]["ingress"] for p in rule["ports"]}

    assert admitted == {server_port(overlay, name) for name in PORT_FLAGS}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_metrics_only_from_monitoring_when_rendered(overlay: str) -> None:
    (policy,) = [
        p
        for p in objects(overlay, "NetworkPolicy")
        if "Ingress" in p["spec"]["policyTypes"] and p["spec"].get("ingress")
    ]
    metrics_port = server_port(overlay, "metrics")
    rules = [
        rule
        for rule in policy["spec"]["ingress"]
        if metrics_port in {container_port(server(overlay), p["port"]) for p in rule["ports"]}
    ]

    assert [rule["from"] for rule in rules] == [
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    ]


def server_egress_ports(overlay: str) -> set[int]:
    policies = [p for p in objects(overlay, "NetworkPolicy") if selects(p["spec"]["podSelector"], pod_labels(overlay))]
    return {port["port"] for p in policies for rule in p["spec"].get("egress", []) for port in rule["ports"]}


def job_pod_labels(overlay: str) -> list[dict[str, str]]:
    return [job["spec"]["template"]["metadata"]["labels"] for job in objects(overlay, "Job")]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_select_server_or_conversion_pods_when_rendered(overlay: str) -> None:
    for policy in objects(overlay, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        assert any(selects(selector, labels) for labels in [pod_labels(overlay), *job_pod_labels(overlay)]), policy


@pytest.mark.parametrize("overlay", ["gpu", "gpu-tensorrt", "cpu-dev"])
def test_network_policy_allows_server_only_dns_egress_when_repository_is_local(overlay: str) -> None:
    # cpu-dev builds its checkpoints itself; gpu's conversion Job has its own policy.
    assert server_egress_ports(overlay) == {53}


@pytest.mark.parametrize("overlay", OBJECT_STORE_OVERLAYS)
def test_network_policy_allows_https_egress_when_server_downloads(overlay: str) -> None:
    assert 443 in server_egress_ports(overlay)


# --------------------------------------------------------------------------- Grafana


@pytest.mark.parametrize("metric", DASHBOARD_METRICS)
def test_dashboard_queries_pipeline_metric_when_loaded(metric: str) -> None:
    assert any(re.search(rf"\b{metric}\{{", expr) for expr in dashboard_exprs())


def test_dashboard_panels_have_unique_ids_when_loaded() -> None:
    ids = [panel["id"] for panel in dashboard()["panels"]]

    assert len(ids) == len(set(ids)) == len(dashboard()["panels"])


def test_dashboard_queries_use_selected_namespace_and_pods_when_loaded() -> None:
    for expr in dashboard_exprs():
        for selector in re.findall(r"\b(?:nv|s2i)_\w+\{([^}]*)\}", expr):
            assert selector.startswith(DASHBOARD_SELECTION), expr


def test_dashboard_offers_pod_variable_of_selected_namespace_when_loaded() -> None:
    (pod,) = [variable for variable in dashboard()["templating"]["list"] if variable["name"] == "pod"]

    assert pod["multi"] and pod["includeAll"] and pod["allValue"] == ".*"
    assert 'namespace="$namespace"' in pod["definition"]


def test_dashboard_autoscaling_panel_matches_adapter_query_when_loaded() -> None:
    query = adapter_rule(hpa_metric_name("gpu"))["metricsQuery"]
    expected = query.replace("<<.GroupBy>>", "pod").replace("<<.LabelMatchers>>", DASHBOARD_SELECTION)

    assert squash(expected) in {squash(expr) for expr in dashboard_exprs()}


def test_dashboard_config_map_is_labelled_for_grafana_sidecar_when_rendered() -> None:
    (config_map,) = [obj for obj in render("monitoring") if obj["metadata"]["name"] == "speech2image-grafana-dashboard"]

    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["speech2image-pipeline.json"]) == dashboard()
