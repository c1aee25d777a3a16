"""The import contract: which layer each module of ``s2i`` is in, and what it may import.

Layers, lowest first (a module imports its own layer or lower ones):

0. ``core``: names, audio checks — what every layer shares.
1. ``runtime``: what runs inside Triton — request parsing, stage runners, the
   decoding and denoising loops, features, prompts, the Python-backend models.
2. ``description``: typed model descriptions and the deployment table, rendered
   to ``config.pbtxt`` (``tritonclient``'s protobuf lives here, never in the runtime).
3. ``build``: stage plugins (export, tiny checkpoints, references), conversion.
4. ``app``: the CLI, the embedded server, benchmarks, training, the web app.

The client is a column of its own: it imports only ``core`` (a client install has no
torch and no conversion), and only ``app`` modules import it.

Every import counts, including function-local ones, so a local import cannot hide
an upward edge or a cycle.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

CORE, RUNTIME, DESCRIPTION, BUILD, APP = "core", "runtime", "description", "build", "app"
CLIENT = "client"
RANK = {CORE: 0, RUNTIME: 1, DESCRIPTION: 2, BUILD: 3, APP: 4}

# First match wins; patterns are fnmatch patterns over dotted module names.
LAYER_OF: tuple[tuple[str, str], ...] = (
    ("s2i", CORE),
    ("s2i.names", CORE),
    ("s2i.audio", CORE),
    ("s2i.errors", CORE),
    ("s2i.stages", RUNTIME),
    ("s2i.stages.runner", RUNTIME),
    # The python-torch runners and the networks they run (emotion's own classifier).
    ("s2i.stages.torch_runner", RUNTIME),
    ("s2i.stages.*.torch_runner", RUNTIME),
    ("s2i.stages.*.modeling", RUNTIME),
    ("s2i.stages.*.config", RUNTIME),
    ("s2i.stages.*.features", RUNTIME),
    ("s2i.stages.*.decoding", RUNTIME),
    ("s2i.stages.*.sampling", RUNTIME),
    ("s2i.stages.*.runtime", RUNTIME),
    ("s2i.stages.*.static_decoding", RUNTIME),
    ("s2i.pipeline", RUNTIME),
    ("s2i.pipeline.dag", RUNTIME),
    ("s2i.pipeline.prompt", RUNTIME),
    ("s2i.pipeline.steps", RUNTIME),
    ("s2i.pipeline.streaming", RUNTIME),
    ("s2i.model_repository", RUNTIME),
    ("s2i.model_repository.triton_io", RUNTIME),
    ("s2i.model_repository.observability", RUNTIME),
    ("s2i.model_repository.onnx_stage", RUNTIME),
    ("s2i.model_repository.python_models", RUNTIME),
    ("s2i.model_repository.python_models.*", RUNTIME),
    ("s2i.model_repository.config", DESCRIPTION),
    ("s2i.model_repository.components", DESCRIPTION),
    ("s2i.model_repository.deployment", DESCRIPTION),
    ("s2i.stages.*.specs", DESCRIPTION),
    ("s2i.stages.base", BUILD),
    ("s2i.stages.registry", BUILD),
    ("s2i.stages.bpe", BUILD),
    ("s2i.stages.*", BUILD),
    ("s2i.stages.*.*", BUILD),
    ("s2i.pipeline.specs", BUILD),
    ("s2i.conversion", BUILD),
    ("s2i.conversion.*", BUILD),
    ("s2i.tiny", BUILD),
    ("s2i.speech", BUILD),
    ("s2i.contract", BUILD),
    ("s2i.client", CLIENT),
    ("s2i.client.*", CLIENT),
    ("s2i.pipeline.reference", APP),
    ("s2i.server", APP),
    ("s2i.health", APP),
    ("s2i.shm_reaper", APP),
    ("s2i.demo", APP),
    ("s2i.cli", APP),
    ("s2i.training", APP),
    ("s2i.training.*", APP),
    ("s2i.benchmarks", APP),
    ("s2i.benchmarks.*", APP),
    ("s2i.web", APP),
    ("s2i.web.*", APP),
)


def layer_of(module: str) -> str | None:
    """The layer of ``module``, or ``None`` when the table does not place it."""
    for pattern, layer in LAYER_OF:
        if fnmatch.fnmatchcase(module, pattern):
            return layer
    return None


def package_dirs(root: Path) -> dict[str, Path]:
    """``s2i`` subpackage -> folder, from pyproject's ``[tool.setuptools] package-dir``."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    return {package: root / folder for package, folder in pyproject["tool"]["setuptools"]["package-dir"].items()}


def modules(dirs: Mapping[str, Path]) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` under the mapped folders."""
    found: dict[str, Path] = {}
    # Deepest mapping first, so `s2i.conversion` claims conversion/ even if src/s2i had one too.
    for package, folder in sorted(dirs.items(), key=lambda item: -item[0].count(".")):
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.setdefault(".".join([package, *parts]), path)
    return found


def imported_modules(path: Path, known: Iterable[str]) -> set[str]:
    """The ``s2i`` modules ``path`` imports anywhere in its body (resolved to known modules)."""
    known = set(known)

    def resolve(name: str) -> str | None:
        while name:
            if name in known:
                return name
            name = name.rpartition(".")[0]
        return None

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from s2i import names` imports the module s2i.names; `from s2i.x import f` imports s2i.x.
            candidates = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            if candidate.split(".")[0] == "s2i" and (target := resolve(candidate)):
                found.add(target)
    return found


def import_graph(dirs: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the ``s2i`` modules it imports (itself excluded)."""
    sources = modules(dirs)
    return {name: imported_modules(path, sources) - {name} for name, path in sources.items()}


def allowed(importer_layer: str, imported_layer: str) -> bool:
    """Whether a module of ``importer_layer`` may import one of ``imported_layer``."""
    if importer_layer == CLIENT:
        return imported_layer in (CORE, CLIENT)
    if imported_layer == CLIENT:
        return importer_layer == APP
    return RANK[imported_layer] <= RANK[importer_layer]


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Every unplaced module, upward import and import cycle, as one line each."""
    problems = [f"{module}: not placed in a layer (add it to LAYER_OF)" for module in graph if not layer_of(module)]
    for module, targets in sorted(graph.items()):
        source_layer = layer_of(module)
        for target in sorted(targets):
            target_layer = layer_of(target)
            if source_layer and target_layer and not allowed(source_layer, target_layer):
                problems.append(f"{module} ({source_layer}) imports {target} ({target_layer})")
    problems += [f"import cycle: {' -> '.join(component)}" for component in cycles(graph)]
    return problems
