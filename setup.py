"""Packages are discovered under pyproject's ``package-dir`` folders, so no hand-kept list can miss one.

Everything else about the build is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent


def discovered_packages() -> list[str]:
    """Every folder with an ``__init__.py`` under a mapped folder, named in the ``s2i`` namespace."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    packages = set()
    for package, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            packages.add(".".join((package, *init.parent.relative_to(ROOT / folder).parts)))
    return sorted(packages)


setup(packages=discovered_packages())
