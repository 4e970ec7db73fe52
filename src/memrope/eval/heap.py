"""Keep the C heap from growing with video length: large buffers always mapped, always returned.

glibc's malloc serves a block above its mmap threshold with its own mapping, returned to the OS when
freed; but every such free raises the threshold (up to 32 MB), after which frame-sized blocks (a
832x480 RGB frame is 1.2 MB, its float copy 4.8 MB) come from the heap, where blocks of mixed
lifetimes fragment it. Evaluating 2 minutes of 832x480 video with every metric grew the process by
~150 MB that way (RSS sampled every 2 s: 616 -> 768 MB), with every metric's own state flat; a fixed
threshold (``mallopt(M_MMAP_THRESHOLD)``, which also stops the adjustment) kept it at ~490 MB. A page
fault per 4 kB of a new mapping is the cost, small next to the decoding and the networks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc malloc.h
FIXED_MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial (default) threshold


def fix_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold (Linux only; elsewhere nothing happens). True when it was set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, FIXED_MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
