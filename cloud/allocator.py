"""glibc allocator thresholds for a process that moves large tensors.

By default glibc serves any allocation above 128 KiB (rising adaptively up to 32 MiB) with a
fresh mmap and returns it with munmap when freed, so a server receiving 4 MiB tensors maps,
page-faults and unmaps every request buffer: measured here, about 2.7 ms of a 4 MiB TLS call
against 0.1 ms for the copy itself. Raising the mmap and trim thresholds keeps such buffers on
the heap for reuse: edgecut's ModelInfer of 4 MiB went from 0.38 to 0.72 of a bare grpcio call
(benchmarks/serving.py, channel section). The price is memory held after a burst, up to the
trim threshold. Process-wide, so only entry points (`edgecut serve`) call keep_large_buffers.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 64 << 20
TRIM_THRESHOLD_BYTES = 128 << 20


def keep_large_buffers() -> bool:
    """Raise glibc's mmap/trim thresholds; True when applied (Linux with glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    except (OSError, AttributeError):
        return False
    if not done:
        logger.warning("glibc refused the allocator thresholds; large tensors will be mmap'd")
    return done


def release_free_memory() -> None:
    """Give the heap that freed memory left back to the system (glibc keeps it otherwise:
    model protos read while loading are large and short-lived). Best effort; Linux/glibc."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
