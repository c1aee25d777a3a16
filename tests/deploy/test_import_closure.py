"""Every served Python model imports only what the Dockerfile's `server` stage installs.

Static and transitive: from each ``python_models/<model>.py`` the repository of
the image's target serves, every ``s2i`` module it reaches (module-level and
function-local imports) is read, and each third-party module must come from a
distribution the server stage's ``pip install`` lines install (with their
dependencies, as pip installs them). The dynamic counterpart, which loads the
models in an environment with exactly those packages, is
``test_image_environment.py``.
"""

from __future__ import annotations

import functools
import shutil
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from s2i.conversion.convert import convert
from tests.conftest import BUILD_DIR, ROOT
from tests.deploy import dockerfile
from tests.deploy.import_closure import (
    PYTHON_MODELS_DIR,
    Closure,
    distribution_closure,
    import_closure,
    missing_imports,
    package_dirs,
    served_model_files,
)

# What the image serves: the `gpu` overlay's conversion job writes this target (tests/k8s checks the job).
IMAGE_TARGET = "onnxruntime-gpu"
ALL_PYTHON_MODELS = sorted(path.stem for path in PYTHON_MODELS_DIR.glob("*.py") if path.stem != "__init__")
# Stage graphs as Python models: only the `python-onnxruntime` target (tests, demo) uses it.
PYTHON_ONNXRUNTIME_ONLY = {"onnx_stage"}
IMAGE_PYTHON_MODELS = [model for model in ALL_PYTHON_MODELS if model not in PYTHON_ONNXRUNTIME_ONLY]
# Stage graphs run by PyTorch (`python-torch`): the image can serve them with the torch it has,
# but IMAGE_TARGET does not write them.
PYTHON_TORCH_ONLY = {"torch_stage"}
# The runners `torch_stage` loads by name from its config (an import the static closure cannot see).
TORCH_RUNNERS = sorted((ROOT / "src" / "s2i" / "stages").glob("*/torch_runner.py"))


@functools.cache
def server_stage_distributions() -> frozenset[str]:
    """Distributions the `server` stage ends up with: its pins and, unless ``--no-deps``, their dependencies."""
    installed: set[str] = set()
    for install in dockerfile.stage_installs("server"):
        if install.no_deps:
            installed |= {Requirement(text).name.lower() for text in install.requirements}
        else:
            installed |= distribution_closure(install.requirements)
    return frozenset(installed)


@pytest.fixture(scope="module")
def image_repository(checkpoints) -> Path:
    output = BUILD_DIR / "deploy" / f"repository-{IMAGE_TARGET}"
    return convert(checkpoints, output, target=IMAGE_TARGET, work_dir=BUILD_DIR / "onnx").repository


@pytest.fixture(scope="module")
def served_sources(image_repository) -> dict[str, str]:
    """Model name -> the ``python_models`` source its ``1/model.py`` is a copy of."""
    sources = {path.stem: path.read_text() for path in served_model_files(ALL_PYTHON_MODELS)}
    served = {}
    for model_py in sorted(image_repository.glob("*/1/model.py")):
        (stem,) = [stem for stem, text in sources.items() if text == model_py.read_text()]
        served[model_py.parent.parent.name] = stem
    return served


def test_image_target_serves_every_python_model_but_the_python_stage_runners_when_converted(served_sources):
    assert set(served_sources.values()) == set(IMAGE_PYTHON_MODELS) - PYTHON_TORCH_ONLY


@pytest.mark.parametrize("model", IMAGE_PYTHON_MODELS)
def test_served_model_imports_only_server_stage_packages_when_closure_is_followed(model):
    closure = import_closure(served_model_files([model]) + (TORCH_RUNNERS if model in PYTHON_TORCH_ONLY else []))

    assert closure.external, "the closure found no imports at all: the checker is broken"
    assert missing_imports(closure, server_stage_distributions()) == []


def test_server_stage_distributions_exclude_conversion_packages_when_parsed():
    installed = server_stage_distributions()

    assert {"torch", "transformers", "diffusers", "numpy", "pillow", "tritonclient"} <= installed
    assert not {"optimum", "onnx", "onnxruntime", "tensorrt-cu13"} & installed


def _copy_served_model(tmp_path: Path, model: str, extra: str) -> Path:
    copy = tmp_path / f"{model}.py"
    shutil.copy2(PYTHON_MODELS_DIR / f"{model}.py", copy)
    copy.write_text(copy.read_text() + textwrap.dedent(extra))
    return copy


def test_checker_passes_unmodified_copy_when_model_is_clean(tmp_path):
    copy = _copy_served_model(tmp_path, "prompt_composer", "")

    assert missing_imports(import_closure([copy]), server_stage_distributions()) == []


@pytest.mark.parametrize("package", ["tritonclient.grpc", "optimum.exporters.onnx", "onnx"])
def test_checker_reports_import_when_function_adds_uninstalled_package(tmp_path, package):
    extra = f"""

    def _late():
        import {package}
    """
    copy = _copy_served_model(tmp_path, "prompt_composer", extra)

    (problem,) = missing_imports(import_closure([copy]), server_stage_distributions())
    assert f"imports {package}" in problem
    assert ("served models must not import" if package.startswith("tritonclient") else "does not install") in problem


def test_checker_follows_project_modules_when_uninstalled_import_is_two_modules_away(tmp_path):
    # A fake `s2i` tree: model -> s2i.a (module level) -> s2i.b (inside a function) -> tritonclient.
    package = tmp_path / "s2i"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from s2i import b\n")
    (package / "b.py").write_text("def load():\n    from tritonclient.grpc import model_config_pb2\n")
    model = tmp_path / "model.py"
    model.write_text("import numpy as np\nfrom s2i.a import b\n")

    closure = import_closure([model], {"s2i": package})

    assert closure.project_modules == {"s2i", "s2i.a", "s2i.b"}
    (problem,) = missing_imports(closure, server_stage_distributions())
    assert problem.startswith("s2i.b:2 imports tritonclient.grpc")


def test_checker_ignores_import_when_guarded_by_type_checking(tmp_path):
    model = tmp_path / "model.py"
    model.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tritonclient\nimport json\n")

    closure = import_closure([model], package_dirs())

    assert missing_imports(closure, set()) == []
    assert isinstance(closure, Closure)
