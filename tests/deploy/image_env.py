"""Image-equivalent virtual environments, built without Docker and cached per machine (``~/.cache/s2i``).

An environment for a Dockerfile stage is a venv of the base image's Python
(pyenv's build of the version :func:`dockerfile.ngc_python` derives from the
base tag) holding exactly the packages that stage's ``pip install`` lines
name, run as those lines run them, plus the project installed the way the
image installs it (``pip install --no-deps .``). A stage built FROM another
one reuses the other's environment through a ``.pth`` file, as the image
reuses the layer.

Declared stand-ins, because this machine has neither the NGC image nor Docker:

- the NGC image's ``tritonserver`` binary: the embedded server of
  ``nvidia-pytriton`` (:data:`SERVER_STAND_IN`), installed **without its
  dependencies**, so the environment holds exactly the stage's packages;
- Triton's native ``onnxruntime`` backend, which serves the stage graphs in the
  image and which the embedded server lacks: the environment serves the
  ``python-onnxruntime`` target instead, whose stage graphs run in ONNX Runtime
  for Python (:data:`ONNXRUNTIME_STAND_IN`, pyproject's pin);
- package indexes this machine cannot reach (:data:`UNREACHABLE_INDEXES`): the
  same pinned version comes from the configured indexes. For torch that is the
  PyPI build of 2.13.0 instead of the CPU build of 2.13.0: the same Python API.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement

from tests.deploy import dockerfile

LOGGER = logging.getLogger(__name__)

ROOT = dockerfile.ROOT
# Outside the checkout: the environments are several GB (torch) and every clone on this machine
# (CI's included) can reuse them.
CACHE_DIR = Path(os.environ.get("S2I_IMAGE_ENV_DIR", Path.home() / ".cache" / "s2i" / "image-env"))
SERVER_STAND_IN = "nvidia-pytriton==0.7.0"
# Bump when the way environments are built changes (the cache key does not hash this file).
ENV_LAYOUT_VERSION = "1"
UNREACHABLE_INDEXES = ("https://download.pytorch.org/",)


def pyproject_pin(name: str) -> str:
    """``name==version`` as pyproject.toml pins it."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [text for text in dependencies if Requirement(text).name == name]
    return pin


ONNXRUNTIME_STAND_IN = pyproject_pin("onnxruntime")


@dataclasses.dataclass(frozen=True)
class ImageEnv:
    """A built environment."""

    path: Path
    stage: str
    python_version: str

    @property
    def python(self) -> Path:
        """Its interpreter."""
        return self.path / "bin" / "python"

    def environment(self) -> dict[str, str]:
        """Process environment with this environment's ``bin/`` first on PATH (as in the image)."""
        env = {**os.environ, "PATH": f"{self.path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("PYTHONPATH", None)
        env["HF_HUB_OFFLINE"] = "1"
        return env

    def run(self, *args: str, timeout_s: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in this environment, from its own folder (not the worktree, whose sources would shadow)."""
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            env=self.environment(),
            timeout=timeout_s,
            check=check,
            cwd=self.path,
        )

    def site_packages(self) -> Path:
        """Its ``site-packages`` folder."""
        return self.path / "lib" / f"python{self.python_version}" / "site-packages"


def pyenv_python(version: str) -> Path:
    """pyenv's newest CPython ``version.x`` interpreter (built with a shared libpython, which the stub needs)."""
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False).stdout.strip()
    candidates = sorted(Path(root or Path.home() / ".pyenv").glob(f"versions/{version}.*/bin/python{version}"))
    if not candidates:
        raise RuntimeError(f"No pyenv Python {version} here; `pyenv install {version}` (the base image's Python).")
    return candidates[-1]


def _pip_args(install: dockerfile.PipInstall) -> list[str]:
    """The pip arguments of a Dockerfile line, with unreachable indexes replaced by the configured ones."""
    options = list(install.options)
    index = install.index_url
    if index and index.startswith(UNREACHABLE_INDEXES):
        at = options.index("--index-url") if "--index-url" in options else options.index("-i")
        del options[at : at + 2]
        LOGGER.info("Stand-in: %s from the configured indexes instead of %s", install.requirements, index)
    return [option for option in options if option != "--no-cache-dir"] + list(install.requirements)


def _digest(paths: Iterable[Path], *extra: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    for text in extra:
        digest.update(text.encode())
    return digest.hexdigest()[:16]


def _project_digest() -> str:
    """Hash of what the wheel is built from (pyproject's package folders), so edits reinstall it."""
    folders = {Path(folder).parts[0] for folder in dockerfile_package_dirs().values()}
    sources = {path for folder in folders for path in (ROOT / folder).rglob("*") if path.suffix in (".py", ".toml")}
    return _digest(sources | {ROOT / "pyproject.toml", ROOT / "setup.py", ROOT / "README.md"})


def _pip(env: ImageEnv, *args: str) -> None:
    command = [str(env.python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
    LOGGER.info("%s", " ".join(command))
    completed = subprocess.run(command, capture_output=True, text=True, check=False, timeout=3600)
    if completed.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed:\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}")


def build_stage_env(
    stage: str, *, base: ImageEnv | None = None, extra: Iterable[tuple[str, ...]] = (), cache_dir: Path = CACHE_DIR
) -> ImageEnv:
    """The environment of Dockerfile stage ``stage``, cached by a hash of what the stage installs.

    Args:
        stage: Stage name.
        base: The environment of the stage ``stage`` is built FROM; when given,
            only ``stage``'s own lines are installed on top of it.
        extra: Further ``pip install`` argument lists (the declared stand-ins).
        cache_dir: Where environments live.
    """
    python_version = dockerfile.ngc_python(dockerfile.base_image(stage))
    extra = [tuple(args) for args in extra]
    # Keyed by what the stage installs as parsed (base image, pip lines), not the raw text: a
    # comment or layout change of the Dockerfile keeps the (multi-GB) environment.
    installed = repr(
        [dockerfile.base_image(stage), *(dataclasses.astuple(i) for i in dockerfile.stage_installs(stage))]
    )
    key = _digest([], ENV_LAYOUT_VERSION, installed, repr(extra), str(base))
    env = ImageEnv(cache_dir / f"{stage}-py{python_version}-{key}", stage, python_version)
    if not (env.path / ".complete").is_file():
        _create(env, stage, base, extra)
    _install_project(env)
    return env


def _create(env: ImageEnv, stage: str, base: ImageEnv | None, extra: list[tuple[str, ...]]) -> None:
    shutil.rmtree(env.path, ignore_errors=True)
    subprocess.run([str(pyenv_python(env.python_version)), "-m", "venv", str(env.path)], check=True)
    if base is not None:
        # Like a `FROM base` layer: the base stage's packages are visible and pip counts them as installed.
        (env.site_packages() / "_image_base.pth").write_text(f"{base.site_packages()}\n")
        installs = list(dockerfile.lineage(stage)[-1].installs)
    else:
        installs = dockerfile.stage_installs(stage)
    for install in installs:
        if install.requirements:
            _pip(env, *_pip_args(install))
    for args in extra:
        _pip(env, *args)
    (env.path / ".complete").write_text("ok\n")


def _install_project(env: ImageEnv) -> None:
    """``pip install --no-deps .`` as the image does; again whenever the sources changed."""
    marker = env.path / ".project"
    digest = _project_digest()
    if marker.is_file() and marker.read_text() == digest:
        return
    with tempfile.TemporaryDirectory(prefix="s2i-context-") as context:
        # What `COPY . /opt/speech2image-triton` brings that the wheel reads: a copy, so
        # setuptools' build/ folder never mixes with the worktree's build/.
        source = Path(context) / "speech2image-triton"
        source.mkdir()
        for name in ("pyproject.toml", "setup.py", "README.md"):
            shutil.copy2(ROOT / name, source / name)
        for folder in {Path(path).parts[0] for path in dockerfile_package_dirs().values()}:
            shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
        _pip(env, "--no-deps", "--force-reinstall", str(source))
    marker.write_text(digest)


def dockerfile_package_dirs() -> dict[str, str]:
    """pyproject's ``package-dir`` table (package -> folder relative to the root)."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
