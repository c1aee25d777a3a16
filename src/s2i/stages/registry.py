"""The pipeline's stages, discovered: every package under :mod:`s2i.stages` with a ``stage.py``.

Adding a stage is adding a package; nothing here lists them. :func:`register`
adds a stage defined elsewhere (a plugin, or a test's toy stage).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import s2i.stages
from s2i.stages.base import Stage


def discover() -> dict[str, Stage]:
    """One instance of each :class:`Stage` subclass defined in ``s2i.stages.<package>.stage``, in stage order."""
    found = []
    for module_info in pkgutil.iter_modules(s2i.stages.__path__):
        if not module_info.ispkg:
            continue
        try:
            module = importlib.import_module(f"s2i.stages.{module_info.name}.stage")
        except ModuleNotFoundError as error:
            if error.name != f"s2i.stages.{module_info.name}.stage":
                raise
            continue
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, Stage) and not inspect.isabstract(value) and value.__module__ == module.__name__:
                found.append(value())
    return {stage.name: stage for stage in sorted(found, key=lambda stage: (stage.order, stage.name))}


STAGES: dict[str, Stage] = discover()


def register(stage: Stage) -> None:
    """Add ``stage`` to :data:`STAGES` (after the discovered ones of lower ``order``)."""
    if stage.name in STAGES:
        raise ValueError(f"A stage named `{stage.name}` is already registered.")
    ordered = sorted([*STAGES.values(), stage], key=lambda item: item.order)
    STAGES.clear()
    STAGES.update({item.name: item for item in ordered})


def unregister(name: str) -> None:
    """Remove the stage ``name`` (the reverse of :func:`register`)."""
    STAGES.pop(name)
