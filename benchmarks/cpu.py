"""CPU-seconds a server used: the tritonserver process and its Python-backend stubs, from ``/proc``.

The machines are shared, so wall time depends on what else runs; CPU-seconds per
request (and cores obtained = CPU-seconds / wall seconds) do much less.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces; fields after its closing parenthesis are fixed.
    return text[text.rindex(")") + 2 :].split()


def process_tree_cpu_s(root_pid: int) -> float | None:
    """User + system CPU-seconds of ``root_pid`` and every live descendant; ``None`` off Linux or when gone."""
    if _stat(root_pid) is None:
        return None
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, pending = 0.0, [root_pid]
    while pending:
        pid = pending.pop()
        fields = _stat(pid)
        if fields is not None:
            # utime, stime are fields 14 and 15 of stat (indices 11, 12 after the name).
            total += (int(fields[11]) + int(fields[12])) / _TICKS
        pending.extend(children.get(pid, ()))
    return total
