"""What a model's worker thread sets for itself in the kernel, whoever started it.

A new thread inherits its starter's kernel name and scheduling policy. The model workers are
started by whichever thread brings a model its first request: over the native transport,
its dispatcher, which runs under SCHED_BATCH (cloud/native/frontend.cc, yield_to_models)
and is named `edgecut-handoff`. A worker takes the default policy back, so that the
transport's threads are the only ones that yield, and a name of its own (top -H, perf,
/proc/PID/task/*/comm), so that a profile does not blame the transport for a model's time.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

_PR_SET_NAME = 15  # prctl option, linux/prctl.h
_MAX_NAME_BYTES = 15  # the kernel keeps 16 bytes, with the terminating NUL

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None


def name_this_thread(name: str) -> bool:
    """Give the calling thread `name` (cut to 15 bytes) in the kernel; False where it cannot."""
    if _prctl is None:
        return False
    raw = name.encode(errors="replace")[:_MAX_NAME_BYTES]
    return _prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0) == 0


def default_scheduling() -> None:
    """Put the calling thread back under the default policy (SCHED_OTHER); best effort."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def yield_to_models(tid: int = 0) -> bool:
    """Put the calling thread (or thread `tid` of this process) under SCHED_BATCH: its
    wake-ups then never preempt a running thread (a model run), as the native transport's
    threads do; False where it cannot."""
    try:
        os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True
