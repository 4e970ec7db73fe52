"""A process's reported peak memory is its own, not a larger parent's (ru_maxrss survives exec)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from memrope.host_memory import peak_rss_bytes

PARENT_MB = 600  # well above what a bare interpreter that imports memrope.host_memory touches


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_a_child_of_a_large_parent_reports_its_own_peak():
    held = bytearray(PARENT_MB * 2**20)
    held[::4096] = b"\x01" * len(held[::4096])  # touch every page: resident
    assert peak_rss_bytes() >= PARENT_MB * 2**20
    code = "from memrope.host_memory import peak_rss_bytes; print(peak_rss_bytes())"
    own = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert own < PARENT_MB * 2**20 / 4  # (Linux's ru_maxrss here reports the parent's >= 600 MB)
    del held
