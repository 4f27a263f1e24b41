"""Time one onnxruntime session among others without timing the others' threads.

Every onnxruntime session owns its intra-op thread pool, and with default options a pool's
threads spin for a while after a run before they sleep. Timing session B right after
session A therefore times B while A's threads still spin on the cores B wants: measured on
this project's 2-core VM, a one-node graph that runs in 5 us alone took 60 us timed right
after a 4 ms CNN, and the launch costs a device profile fitted from such times were 5x
what a Predictor, which runs one head session, pays.

So each visit to a session first runs it untimed until `SETTLE_MS` has passed (at least
once: the other pools go quiet and this one is awake, as in a Predictor's steady state),
then times `timed` runs and keeps their median. Interleaving visits round by round, as the
profilers and the plan's correction do, still spreads a burst of load over all sessions.

Example:
    >>> ticks = iter(range(100))
    >>> settled_ms(lambda: None, clock=lambda: next(ticks) / 1e3, timed=3)
    1.0
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["SETTLE_MS", "settled_ms"]

SETTLE_MS = 2.0  # well past the spin of the pool that ran before (tens of us measured)


def settled_ms(run: Callable[[], object], *, clock: Callable[[], float] = time.perf_counter,
               timed: int = 2) -> float:
    """Median ms of `timed` runs of `run`, after untimed runs for `SETTLE_MS` (at least one)."""
    settle_until = clock() + SETTLE_MS / 1e3
    run()
    while clock() < settle_until:
        run()
    times = []
    for _ in range(max(1, timed)):
        t0 = clock()
        run()
        times.append((clock() - t0) * 1e3)
    return statistics.median(times)
