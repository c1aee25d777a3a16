"""Static import closure of the served Python models, and the distributions it needs.

Starting from ``model_repository/python_models/<model>.py`` it follows every
``import`` of an ``s2i`` module transitively — module level *and* inside
functions, since a function-local import runs as soon as that code path does
(``initialize``, a rare branch) — and collects the third-party modules they
import. Imports under ``if TYPE_CHECKING:`` never run and are skipped.
Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first, so
parent packages are part of the closure too.

The ``s2i`` packages are found through pyproject's ``package-dir`` table
(the layout the wheel installs), not through ``sys.path``, so the checker reads
exactly the sources the image gets.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYTHON_MODELS_DIR = ROOT / "model_repository" / "python_models"
PROJECT_PACKAGE = "s2i"
# Provided by Triton's Python backend itself (next to the stub), not by pip.
BACKEND_MODULES = frozenset({"triton_python_backend_utils"})


@dataclasses.dataclass(frozen=True)
class ImportSite:
    """One ``import`` statement: who imports what, where."""

    importer: str
    line: int
    module: str

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.module}"


@dataclasses.dataclass(frozen=True)
class Closure:
    """The ``s2i`` modules a served model runs, and the third-party imports among them."""

    project_modules: frozenset[str]
    external: tuple[ImportSite, ...]

    def top_level_names(self) -> set[str]:
        """Top-level names of every third-party module imported (``numpy``, ``google``...)."""
        return {site.module.split(".")[0] for site in self.external}


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """Import package -> source folder, from pyproject's ``[tool.setuptools] package-dir``."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {package: root / folder for package, folder in setuptools["package-dir"].items()}


def module_file(module: str, dirs: Mapping[str, Path]) -> Path | None:
    """Source file of an ``s2i`` module (``s2i.stages.emotion.runtime``), or ``None`` if there is none."""
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        package = ".".join(parts[:cut])
        if package in dirs:
            base = dirs[package].joinpath(*parts[cut:])
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
            return None
    return None


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (never executed)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                for child in node.body:
                    lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, module] if module else base)


def imported_modules(path: Path, importer: str, dirs: Mapping[str, Path]) -> Iterator[ImportSite]:
    """Every module ``path`` imports, anywhere in the file (functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_lines(tree)
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield ImportSite(importer, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = _resolve_relative(importer, is_package, node.level, node.module)
            if module == "__future__":
                continue
            yield ImportSite(importer, node.lineno, module)
            # `from s2i.stages import registry` imports the submodule `s2i.stages.registry`.
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                if module.split(".")[0] == PROJECT_PACKAGE and module_file(submodule, dirs):
                    yield ImportSite(importer, node.lineno, submodule)


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:cut]) for cut in range(1, len(parts) + 1)]


def import_closure(roots: Iterable[Path], dirs: Mapping[str, Path] | None = None) -> Closure:
    """Follow ``s2i`` imports from the ``roots`` files; return the modules visited and third-party imports."""
    dirs = package_dirs() if dirs is None else dirs
    pending: list[tuple[str, Path]] = [(f"<{path.stem}>", path) for path in roots]
    visited: set[str] = set()
    external: list[ImportSite] = []
    while pending:
        name, path = pending.pop()
        for site in imported_modules(path, name, dirs):
            if site.module.split(".")[0] != PROJECT_PACKAGE:
                external.append(site)
                continue
            for module in _with_parents(site.module):
                source = module_file(module, dirs)
                if source is not None and module not in visited:
                    visited.add(module)
                    pending.append((module, source))
    return Closure(frozenset(visited), tuple(sorted(set(external), key=lambda s: (s.module, s.importer, s.line))))


def served_model_files(models: Iterable[str]) -> list[Path]:
    """The Python-backend sources of ``models`` (names of files in ``python_models/``)."""
    return [PYTHON_MODELS_DIR / f"{model}.py" for model in models]


def distribution_closure(requirements: Iterable[str]) -> set[str]:
    """Canonical names of ``requirements`` and everything they require, from installed metadata.

    Markers are evaluated for this interpreter with no extras requested, which
    is what ``pip install name==version`` gets.
    """
    seen: set[str] = set()
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(requirement.name) or []:
            child = Requirement(text)
            if child.marker is None or child.marker.evaluate({"extra": ""}):
                pending.append(child)
    return seen


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    # Scans every installed distribution: once per session, not once per import site.
    return metadata.packages_distributions()


def providing_distributions(top_level: str) -> set[str]:
    """Canonical names of the installed distributions that provide import name ``top_level``."""
    return {canonicalize_name(name) for name in _packages_distributions().get(top_level, [])}


# Installed in the server image for the pods' probes (`s2i health --deep` is a gRPC client),
# but never what a served model may import: serving must not depend on the client.
CLIENT_ONLY_MODULES = frozenset({"tritonclient", "grpc"})
# Imports that run only on the `python-onnxruntime` target (stage graphs in ONNX Runtime for
# Python), never on the image's native-backend targets: (importer, top-level module). Both
# sit inside functions that only that target's configs reach (`OnnxStage`, the whisper loop's
# in-process decoder, enabled by its `decoder_onnx_dir` parameter).
PYTHON_ONNXRUNTIME_TARGET_ONLY = frozenset(
    {("s2i.model_repository.onnx_stage", "onnxruntime"), ("s2i.stages.whisper.runtime", "onnxruntime")}
)


def missing_imports(closure: Closure, installed: AbstractSet[str]) -> list[str]:
    """Import sites whose module is neither stdlib, the backend's, the project's, nor in ``installed``.

    Client-only modules (:data:`CLIENT_ONLY_MODULES`) are reported even where installed.
    """
    problems = []
    for site in closure.external:
        top = site.module.split(".")[0]
        if top in sys.stdlib_module_names or top in BACKEND_MODULES:
            continue
        if (site.importer, top) in PYTHON_ONNXRUNTIME_TARGET_ONLY:
            continue
        if top in CLIENT_ONLY_MODULES:
            problems.append(f"{site} (a client package), which served models must not import")
            continue
        providers = providing_distributions(top)
        if not providers & installed:
            where = f"provided by {sorted(providers)}" if providers else "installed nowhere here"
            problems.append(f"{site} ({where}), which the server stage does not install")
    return problems
