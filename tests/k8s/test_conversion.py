"""The conversion each overlay renders is consistent with the server it feeds.

For every overlay: the conversion (the `gpu` overlays' Job, `cpu-dev`'s init
containers) runs the converter image of the server's release, converts for a
target the server's image and device can serve, writes exactly the folder the
server reads, finds every checkpoint path on a mount, gets a GPU only for
TensorRT (on the servers' kind of node), and its arguments are ones `s2i
convert` accepts. Arguments are resolved as the kubelet does: ``$(VAR)`` from
the container's env, values from the rendered ConfigMaps.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import PurePosixPath
from typing import Any

import pytest

from s2i.cli import build_parser
from s2i.conversion.repository import PYTHON_ONNXRUNTIME, TARGETS, TENSORRT, device_of
from tests.deploy import dockerfile
from tests.k8s.test_manifests import (
    K8S_DIR,
    KUBECTL,
    SERVING_IMAGE,
    flag,
    mount_at,
    objects,
    parse_quantity,
    pod_spec,
    server,
    volume,
)

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="`kubectl` renders the kustomizations offline")

# Overlay -> (where it converts, the target its servers need).
CONVERSION = {
    "gpu": ("job", "onnxruntime-gpu"),
    "gpu-tensorrt": ("job", TENSORRT),
    "cpu-dev": ("init", "onnxruntime"),
}
CONVERTING = sorted(CONVERSION)
CONVERTER_IMAGE = {TENSORRT: "speech2image-triton-converter-tensorrt"}
CONVERT_CONTAINER = "convert-model-repository"
BUILD_TINY_CONTAINER = "build-tiny-checkpoints"
WAIT_CONTAINER = "wait-for-model-repository"
STAGES = ("whisper", "emotion", "diffusion")
# A laptop's kind/minikube cluster.
LAPTOP_CPU, LAPTOP_MEMORY = 4, 8 * 2**30


def conversion_pod(overlay: str) -> dict[str, Any]:
    kind, _ = CONVERSION[overlay]
    if kind == "init":
        return pod_spec(overlay)
    (job,) = objects(overlay, "Job")
    return job["spec"]["template"]["spec"]


def converter(overlay: str) -> dict[str, Any]:
    spec = conversion_pod(overlay)
    (container,) = [c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == CONVERT_CONTAINER]
    return container


def config_map_value(overlay: str, ref: dict[str, str]) -> str:
    (config_map,) = [c for c in objects(overlay, "ConfigMap") if c["metadata"]["name"] == ref["name"]]
    return config_map["data"][ref["key"]]


def env_values(overlay: str, container: dict[str, Any]) -> dict[str, str]:
    values = {}
    for env in container.get("env", []):
        if "value" in env:
            values[env["name"]] = env["value"]
        elif "configMapKeyRef" in env.get("valueFrom", {}):
            values[env["name"]] = config_map_value(overlay, env["valueFrom"]["configMapKeyRef"])
    return values


def s2i_convert_args(overlay: str) -> list[str]:
    """The `s2i convert` arguments the conversion runs, with $(VAR) expanded as the kubelet does."""
    container = converter(overlay)
    values = env_values(overlay, container)
    args = [re.sub(r"\$\((\w+)\)", lambda m: values[m[1]], arg) for arg in container["args"]]
    if container["command"] == ["s2i", "convert"]:
        return args
    # The Job's `sh -c 'script' name args...`: the script appends --output "$S2I_REPOSITORY".
    assert container["command"][:2] == ["sh", "-c"]
    assert 's2i convert "$@" --output "$S2I_REPOSITORY"' in container["command"][2]
    return [*args, "--output", values["S2I_REPOSITORY"]]


def parsed(overlay: str):
    return build_parser().parse_args(["convert", *s2i_convert_args(overlay)])


def checkpoints(overlay: str) -> dict[str, str]:
    arguments = parsed(overlay)
    return {stage: getattr(arguments, stage) for stage in STAGES}


def mount_containing(container: dict[str, Any], path: str) -> dict[str, Any] | None:
    for mount in container.get("volumeMounts", []):
        if PurePosixPath(path).is_relative_to(mount["mountPath"]):
            return mount
    return None


def volume_identity(overlay: str, spec: dict[str, Any], name: str) -> tuple[str, str]:
    """What a pod volume is: a claim (shared between pods) or a volume of this very pod."""
    (found,) = [v for v in spec["volumes"] if v["name"] == name]
    if "persistentVolumeClaim" in found:
        return ("claim", found["persistentVolumeClaim"]["claimName"])
    assert spec is pod_spec(overlay), f"volume `{name}` of another pod is not shared with the server"
    return ("pod", name)


def location(overlay: str, spec: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str, str]:
    """(volume identity..., path inside the volume) of ``path`` in ``container``."""
    mount = mount_containing(container, path)
    assert mount is not None, f"{path} is on no mount of `{container['name']}`"
    inside = PurePosixPath(mount.get("subPath", "")) / PurePosixPath(path).relative_to(mount["mountPath"])
    return (*volume_identity(overlay, spec, mount["name"]), str(inside))


def hub_ids(overlay: str) -> list[str]:
    return [value for value in checkpoints(overlay).values() if not value.startswith("/")]


def image_name_and_tag(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    return name, tag


def gpu_request(container: dict[str, Any]) -> str | None:
    return container["resources"].get("limits", {}).get("nvidia.com/gpu")


@pytest.mark.parametrize("overlay", CONVERTING)
def test_conversion_runs_converter_image_of_server_release_when_rendered(overlay):
    target = CONVERSION[overlay][1]
    name, tag = image_name_and_tag(converter(overlay)["image"])

    assert name == CONVERTER_IMAGE.get(target, "speech2image-triton-converter")
    assert tag == image_name_and_tag(SERVING_IMAGE)[1] == image_name_and_tag(server(overlay)["image"])[1]


@pytest.mark.parametrize("overlay", CONVERTING)
def test_conversion_args_are_accepted_by_s2i_convert_when_resolved(overlay):
    arguments = parsed(overlay)

    assert arguments.target in TARGETS
    assert all(checkpoints(overlay).values())


@pytest.mark.parametrize("overlay", CONVERTING)
def test_conversion_target_fits_server_device_and_image_when_rendered(overlay):
    target = parsed(overlay).target
    server_has_gpu = gpu_request(server(overlay)) is not None
    server_stage = {r.split("==")[0] for i in dockerfile.stage_installs("server") for r in i.requirements}

    assert target == CONVERSION[overlay][1]
    assert (device_of(target) == "gpu") == server_has_gpu
    # python-onnxruntime runs the graphs in ONNX Runtime for Python, which the server image leaves out.
    assert target != PYTHON_ONNXRUNTIME or "onnxruntime" in server_stage


@pytest.mark.parametrize("overlay", CONVERTING)
def test_conversion_writes_the_folder_the_server_reads_when_rendered(overlay):
    repository = flag(server(overlay)["args"], "--model-repository")
    served = location(overlay, pod_spec(overlay), server(overlay), repository)
    output = parsed(overlay).output

    assert location(overlay, conversion_pod(overlay), converter(overlay), str(output)) == served
    assert not mount_containing(converter(overlay), str(output)).get("readOnly")
    assert mount_at(server(overlay), repository)["readOnly"] is True


@pytest.mark.parametrize("overlay", CONVERTING)
def test_conversion_finds_every_checkpoint_path_on_a_mount_when_rendered(overlay):
    for stage, value in checkpoints(overlay).items():
        if value.startswith("/"):
            assert mount_containing(converter(overlay), value), f"{stage} checkpoint {value} is not mounted"


@pytest.mark.parametrize("overlay", CONVERTING)
def test_conversion_may_download_only_hub_ids_when_egress_allows_https(overlay):
    spec = conversion_pod(overlay)
    labels = spec is pod_spec(overlay) and objects(overlay, "Deployment")[0]["spec"]["template"]["metadata"]["labels"]
    labels = labels or objects(overlay, "Job")[0]["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in objects(overlay, "NetworkPolicy")
        if all(labels.get(k) == v for k, v in p["spec"]["podSelector"]["matchLabels"].items())
    ]
    https = 443 in {port["port"] for p in policies for rule in p["spec"].get("egress", []) for port in rule["ports"]}
    offline = env_values(overlay, converter(overlay)).get("HF_HUB_OFFLINE", "1") == "1"

    if hub_ids(overlay):
        assert https and not offline, f"hub ids {hub_ids(overlay)} but no way to download them"


@pytest.mark.parametrize("overlay", CONVERTING)
def test_conversion_gets_gpu_only_when_target_is_tensorrt(overlay):
    container = converter(overlay)
    visible = env_values(overlay, container).get("NVIDIA_VISIBLE_DEVICES")

    if parsed(overlay).target == TENSORRT:
        assert gpu_request(container) == container["resources"]["requests"]["nvidia.com/gpu"] == "1"
        assert visible != "void"
    else:
        assert gpu_request(container) is None
        # NGC images default to all GPUs; a GPU-less container must not see the node's.
        assert visible == "void"


@pytest.mark.parametrize("overlay", [o for o in CONVERTING if CONVERSION[o][1] == TENSORRT])
def test_tensorrt_conversion_runs_on_servers_gpu_kind_when_rendered(overlay):
    job, servers = conversion_pod(overlay), pod_spec(overlay)

    assert job.get("nodeSelector") and job.get("nodeSelector") == servers.get("nodeSelector")
    assert all(toleration in job["tolerations"] for toleration in servers["tolerations"])


@pytest.mark.parametrize("overlay", CONVERTING)
def test_conversion_memory_request_equals_limit_when_rendered(overlay):
    resources = converter(overlay)["resources"]

    assert parse_quantity(resources["requests"]["memory"]) == parse_quantity(resources["limits"]["memory"])
    assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"])


@pytest.mark.parametrize("overlay", [o for o in CONVERTING if CONVERSION[o][0] == "job"])
def test_conversion_job_meets_restricted_pod_security_when_rendered(overlay):
    spec = conversion_pod(overlay)
    container = converter(overlay)
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]

    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for name in ("HOME", "HF_HOME"):
        assert any(env_values(overlay, container)[name].startswith(path) for path in writable), name


@pytest.mark.parametrize("overlay", [o for o in CONVERTING if CONVERSION[o][0] == "job"])
def test_gpu_job_memory_holds_sd15_export_when_rendered(overlay):
    assert parse_quantity(converter(overlay)["resources"]["limits"]["memory"]) >= 16 * 2**30


@pytest.mark.parametrize("overlay", [o for o in CONVERTING if CONVERSION[o][0] == "job"])
def test_server_waits_for_conversion_marker_when_job_converts(overlay):
    (wait,) = [c for c in pod_spec(overlay)["initContainers"] if c["name"] == WAIT_CONTAINER]
    script = " ".join(wait["command"])
    marker = env_values(overlay, wait)["S2I_REPOSITORY"] + ".complete"
    job_marker = env_values(overlay, converter(overlay))["S2I_REPOSITORY"] + ".complete"

    assert (
        '-f "$S2I_REPOSITORY.complete"' in script
        and 'touch "$S2I_REPOSITORY.complete"' in converter(overlay)["command"][2]
    )
    assert location(overlay, pod_spec(overlay), wait, marker) == location(
        overlay, conversion_pod(overlay), converter(overlay), job_marker
    )
    assert mount_containing(wait, marker)["readOnly"] is True


def test_cpu_dev_converts_tiny_checkpoints_it_builds_when_rendered():
    first, second = pod_spec("cpu-dev")["initContainers"]
    built = PurePosixPath(first["args"][first["args"].index("--output") + 1])

    assert (first["name"], second["name"]) == (BUILD_TINY_CONTAINER, CONVERT_CONTAINER)
    assert first["command"] == ["s2i", "build-tiny"] and build_parser().parse_args(["build-tiny", *first["args"]])
    assert checkpoints("cpu-dev") == {stage: str(built / "tiny" / stage) for stage in STAGES}
    for stage_path in checkpoints("cpu-dev").values():
        assert (
            location("cpu-dev", pod_spec("cpu-dev"), second, stage_path)[:2]
            == location("cpu-dev", pod_spec("cpu-dev"), first, stage_path)[:2]
        )
    assert hub_ids("cpu-dev") == []


def test_cpu_dev_fits_laptop_cluster_when_rendered():
    spec = pod_spec("cpu-dev")
    running = sum(parse_quantity(c["resources"]["limits"]["memory"]) for c in spec["containers"])
    init = max(parse_quantity(c["resources"]["limits"]["memory"]) for c in spec["initContainers"])
    cpu = max(parse_quantity(c["resources"]["limits"]["cpu"]) for c in [*spec["containers"], *spec["initContainers"]])

    assert max(running, init) <= LAPTOP_MEMORY and cpu <= LAPTOP_CPU
    assert parse_quantity(volume("cpu-dev", "model-repository")["emptyDir"]["sizeLimit"]) <= 4 * 2**30


def test_object_store_overlay_converts_nothing_in_cluster_when_rendered():
    assert objects("gpu-object-store", "Job") == [] and not pod_spec("gpu-object-store").get("initContainers")


def test_manifests_and_docs_use_maintained_sd15_hub_id_when_read():
    documents = [*K8S_DIR.rglob("*.yaml"), K8S_DIR / "README.md", K8S_DIR.parent / "README.md"]

    for path in documents:
        assert "runwayml/stable-diffusion" not in path.read_text(), path
    assert checkpoints("gpu")["diffusion"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"


@pytest.mark.parametrize("container", [CONVERT_CONTAINER, WAIT_CONTAINER])
def test_shell_script_parses_when_rendered(container):
    spec = conversion_pod("gpu") if container == CONVERT_CONTAINER else pod_spec("gpu")
    (found,) = [c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == container]

    completed = subprocess.run(["sh", "-n", "-c", found["command"][2]], capture_output=True, text=True)
    assert found["command"][:2] == ["sh", "-c"] and completed.returncode == 0, completed.stderr
