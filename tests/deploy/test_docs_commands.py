"""The deployment commands in README.md and k8s/README.md are ones the tests run or check.

Every ``bash`` block is read: ``kubectl kustomize``/``apply -k`` must name a
kustomization the k8s tests render, ``docker build --target`` a stage of the
Dockerfile the deploy tests parse, ``docker run`` one of the project's images,
and every ``s2i`` command line must parse with the real CLI.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from s2i.cli import build_parser
from tests.deploy import dockerfile
from tests.k8s.test_manifests import OVERLAYS

ROOT = dockerfile.ROOT
DOCS = [ROOT / "README.md", ROOT / "k8s" / "README.md"]
RENDERED = {f"k8s/overlays/{overlay}" for overlay in OVERLAYS} | {"k8s/monitoring"}
IMAGES = {"server": "speech2image-triton-server", "converter": "speech2image-triton-converter"}
IMAGES |= {"converter-tensorrt": "speech2image-triton-converter-tensorrt"}


def commands(path: Path) -> list[str]:
    """Command lines of the file's bash blocks, continuations joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.DOTALL)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def all_commands() -> list[tuple[str, str]]:
    return [(path.relative_to(ROOT).as_posix(), line) for path in DOCS for line in commands(path)]


def words(line: str) -> list[str]:
    return shlex.split(line.replace("$(", "(").replace("`", ""), posix=True)


def test_docs_have_deployment_commands_when_read():
    lines = [line for _, line in all_commands()]

    assert any("kubectl apply -k" in line for line in lines)
    assert any("docker build --target converter" in line for line in lines)


@pytest.mark.parametrize(
    ("doc", "line"), [c for c in all_commands() if re.search(r"kubectl (kustomize|apply -k) ", c[1])]
)
def test_kubectl_command_names_rendered_kustomization_when_documented(doc, line):
    target = re.search(r"kubectl (?:kustomize|apply -k) (\S+)", line)[1]

    assert target.rstrip("/") in RENDERED, f"{doc}: `{line}` names a kustomization the tests do not render"


@pytest.mark.parametrize(("doc", "line"), [c for c in all_commands() if c[1].startswith("docker build")])
def test_docker_build_names_dockerfile_stage_when_documented(doc, line):
    target = re.search(r"--target (\S+)", line)
    stages = dockerfile.parse()[1]

    assert target and target[1] in stages, f"{doc}: `{line}`"
    tag = re.search(r"-t (\S+?):", line)
    if target[1] in IMAGES:
        assert tag and tag[1] == IMAGES[target[1]], f"{doc}: `{line}` tags another image name"


@pytest.mark.parametrize(("doc", "line"), [c for c in all_commands() if c[1].startswith("docker run")])
def test_docker_run_uses_project_image_when_documented(doc, line):
    images = [word for word in words(line) if word.startswith("speech2image-triton-")]

    assert images and images[0].split(":")[0] in IMAGES.values(), f"{doc}: `{line}`"
    if images[0].startswith(IMAGES["converter"] + ":"):
        after = words(line)[words(line).index(images[0]) + 1 :]
        build_parser().parse_args(after)  # the converter's entry point is `s2i`


@pytest.mark.parametrize(("doc", "line"), [c for c in all_commands() if re.match(r"(\.venv/bin/)?s2i ", c[1])])
def test_s2i_command_parses_when_documented(doc, line):
    argv = words(line)[1:]

    try:
        build_parser().parse_args(argv)
    except SystemExit as e:  # argparse exits on an unknown flag or value
        pytest.fail(f"{doc}: `{line}` does not parse ({e})")


def test_docs_name_each_protocols_admin_header_when_key_is_restricted():
    from s2i.server import ServerOptions, tritonserver_args

    args = tritonserver_args(ServerOptions(model_repository="/models", restricted_api_key="KEY"))
    (grpc,) = [arg for arg in args if arg.startswith("--grpc-restricted-protocol=")]
    (http,) = [arg for arg in args if arg.startswith("--http-restricted-api=")]
    key_name = grpc.rsplit(":", 1)[1].split("=")[0]
    # Triton's gRPC frontend prefixes the key name (HTTP/2 headers are lowercase); HTTP uses it as is.
    grpc_header, http_header = f"triton-grpc-protocol-{key_name}", http.rsplit(":", 1)[1].split("=")[0]

    for path in [*DOCS, ROOT / "src" / "s2i" / "server.py", ROOT / "k8s" / "base" / "deployment.yaml"]:
        text = path.read_text()
        assert grpc_header in text and f"`{http_header}" in text, path
