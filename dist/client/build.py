"""Build the light ``speech2image-triton-client`` wheel from this repository's client sources.

The client imports only the ``core`` layer (checked by tests/architecture), so the wheel holds
``s2i/__init__.py``, ``s2i/names.py`` and ``client/`` as ``s2i/client/``, staged in a temporary
folder beside this folder's ``pyproject.toml``, and built offline with the running interpreter's
setuptools.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WHEEL_GLOB = "speech2image_triton_client-*.whl"
# Wheel path -> source, relative to the repository root.
FILES = {
    "s2i/__init__.py": "src/s2i/__init__.py",
    "s2i/names.py": "src/s2i/names.py",
    **{f"s2i/client/{path.name}": f"client/{path.name}" for path in sorted((ROOT / "client").glob("*.py"))},
}


def build(output: Path) -> Path:
    """Write the wheel into ``output`` and return its path."""
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        stage = Path(staging)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(HERE / name, stage / name)
        for target, source in FILES.items():
            (stage / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, stage / target)
        for old in output.glob(WHEEL_GLOB):
            old.unlink()
        pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        subprocess.run([*pip, "-w", str(output), staging], check=True)
    (wheel,) = output.glob(WHEEL_GLOB)
    return wheel


def main() -> int:
    """``python dist/client/build.py --output DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "client-dist")
    print(build(parser.parse_args().output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
