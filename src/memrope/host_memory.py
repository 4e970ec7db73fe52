"""The process's own peak resident memory.

``getrusage(RUSAGE_SELF).ru_maxrss`` is not the process's own peak on Linux: the kernel keeps the
high-water mark across ``fork`` and ``execve`` (it lives in the signal struct), so a process
started from a large parent (a test runner that loaded a 1.3B model, a notebook) reports the
parent's peak however little it uses itself. The memory map's own high-water mark, ``VmHWM`` in
``/proc/self/status`` (proc(5)), starts afresh with the new address space of ``execve``;
``ru_maxrss`` is the fallback where there is no ``/proc`` (macOS reports it in bytes, Linux in KiB).
"""

from __future__ import annotations

import sys
from pathlib import Path

STATUS = Path("/proc/self/status")
KIB = 1024


def peak_rss_bytes() -> int:
    """Peak resident set size of this process's address space, in bytes."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                value, unit = line.split()[1:3]
                if unit != "kB":
                    raise ValueError(f"unexpected unit {unit!r} in {STATUS}")
                return int(value) * KIB
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * KIB


def peak_rss_mb() -> float:
    return peak_rss_bytes() / 2**20
