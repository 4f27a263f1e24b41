"""A circuit breaker for the device's cloud calls: closed, open, half-open.

    closed ──(`failures` in a row)──> open ──(reset time passed)──> half_open
      ^                                ^                                  │
      └────────(a call or probe succeeds)──────────┴──(the probe fails)───┘

While open, the Predictor does not try the cloud at all: a dead endpoint is not hammered,
and requests do not wait on it. Once the reset time has passed, the breaker is half-open:
one trial (the Predictor's health probe, or a single request) may go; its success closes
the breaker, its failure opens it again for twice as long (up to `max_reset_s`), so a
cloud that stays down costs fewer and fewer probes, and one that comes back is noticed
within `max_reset_s`.

Library breakers (pybreaker, circuitbreaker) let the next *user call* through when
half-open; a device would then spend a real request, its deadline included, on a cloud
that may still be a black hole. Here the trial is usually a cheap health probe from the
Predictor's prober thread, hence this small class of its own.

    >>> clock = [0.0]
    >>> breaker = CircuitBreaker(failures=2, reset_s=1.0, clock=lambda: clock[0])
    >>> breaker.record_failure(), breaker.state
    (False, 'closed')
    >>> breaker.record_failure(), breaker.state, breaker.allow()
    (True, 'open', False)
    >>> clock[0] = 1.5; breaker.state, breaker.allow(), breaker.allow()
    ('half_open', True, False)
    >>> breaker.record_success(), breaker.state
    (True, 'closed')
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    """Thread-safe; `clock` is injectable for tests (monotonic seconds)."""

    def __init__(self, *, failures: int = 3, reset_s: float = 1.0, max_reset_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or not reset_s > 0:
            raise ValueError(f"need failures >= 1 and reset_s > 0, got {failures}, {reset_s}")
        self.failures = failures
        self.reset_s = float(reset_s)
        self.max_reset_s = float(max_reset_s if max_reset_s is not None else 4 * reset_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at: float | None = None
        self._open_for = self.reset_s
        self._trial_out: float | None = None  # when the half-open trial went out
        self.opened = 0  # times it opened, for statistics

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self._open_for:
            return "open"
        return "half_open"

    def allow(self) -> bool:
        """Whether a cloud call may go now; when half-open, only one trial at a time."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            now = self._clock()
            # A trial whose outcome never came (its caller died) does not block the next.
            if state == "half_open" and (self._trial_out is None
                                         or now - self._trial_out > self.max_reset_s):
                self._trial_out = now
                return True
            return False

    def record_success(self) -> bool:
        """A call succeeded; True when that closed an open or half-open breaker."""
        with self._lock:
            was_open = self._opened_at is not None
            self._consecutive = 0
            self._opened_at = None
            self._open_for = self.reset_s
            self._trial_out = None
            return was_open

    def release(self) -> None:
        """The trial that `allow` let out was not used: let the next one go."""
        with self._lock:
            self._trial_out = None

    def record_failure(self) -> bool:
        """A call failed; True when that opened a closed breaker. A failed half-open trial
        opens it again, for twice as long, and returns False (it was not closed)."""
        with self._lock:
            state = self._state()
            self._trial_out = None
            if state == "half_open":
                self._open_for = min(self._open_for * 2, self.max_reset_s)
                self._opened_at = self._clock()
                return False
            if state == "open":
                return False
            self._consecutive += 1
            if self._consecutive >= self.failures:
                self._opened_at = self._clock()
                self._open_for = self.reset_s
                self.opened += 1
                return True
            return False
