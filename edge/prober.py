"""The Predictor's background prober: it checks a cloud the breaker stopped using, and
keeps the link estimate fresh while no request crosses the link.

Two jobs, on one daemon thread, every `tick_s`:

- While the circuit breaker is half-open (its reset time passed), a health probe
  (ServerReady, with a short deadline) decides whether it closes: the device finds a cloud
  that came back within about a second of its reset time, without spending a request.
- While the breaker is closed and the link has been idle `interval_s` (the device running
  locally, or no requests), a round-trip probe and an uplink probe (a ServerLive padded
  with bytes the server skips) measure the link, sized so that probing takes at most
  `max_share` of the estimated uplink, after a small scout that checks the estimate still
  holds. A failed probe counts as a cloud failure: a cloud that died while nobody was
  calling is noticed before the next request pays for it; an uplink probe that runs out of
  time after the round trip answered is a slow link instead, a sample at the bound it proves.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable

from edgecut.errors import DeadlineExceededError, EdgecutError

from .breaker import CircuitBreaker
from .client import CloudClient
from .monitors import LinkEstimator

__all__ = ["Prober"]

_MIN_PROBE_BYTES = 16 * 1024
_MAX_PROBE_BYTES = 1 << 20
_FIRST_PROBE_BYTES = 64 * 1024
_HEALTH_TIMEOUT_S = 1.0
# A scout slower than twice its expected transfer and this says the estimate is stale; below
# it, round-trip jitter alone could explain the difference.
_SCOUT_SLACK_MS = 10.0
# Probers still running when the interpreter exits are stopped first: a daemon thread inside
# a gRPC call while Python finalises can crash the process.
_RUNNING: weakref.WeakSet[Prober] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for prober in list(_RUNNING):
        prober.stop()


class Prober:
    """Starts at once; `stop()` ends it (within one tick)."""

    def __init__(self, client: CloudClient, breaker: CircuitBreaker, link: LinkEstimator, *,
                 interval_s: float, max_share: float, tick_s: float,
                 on_open: Callable[[str], None], on_close: Callable[[str], None]) -> None:
        self._client = client
        self._breaker = breaker
        self._link = link
        self.interval_s = interval_s
        self.max_share = max_share
        self.tick_s = tick_s
        self._on_open = on_open
        self._on_close = on_close
        self._stop = threading.Event()
        self.probes = 0
        self.probe_bytes = 0
        self._thread = threading.Thread(target=self._loop, name="edgecut-prober", daemon=True)
        _RUNNING.add(self)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        _RUNNING.discard(self)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=self.tick_s + _HEALTH_TIMEOUT_S + 1.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception:  # a prober that died would leave the breaker open for good
                continue

    def tick(self) -> None:
        """One round: a health probe when half-open, link probes when idle."""
        state = self._breaker.state
        if state == "half_open" and self._breaker.allow():
            try:
                ready = self._client.server_ready(timeout_s=_HEALTH_TIMEOUT_S)
            except EdgecutError:
                ready = False
            if not ready:
                self._breaker.record_failure()  # still down: open again, for longer
            elif self._breaker.record_success():
                self._on_close("health probe: the endpoint is ready again")
            return
        if state == "closed" and self._link.idle_s() >= self.interval_s:
            self.probe_link()

    def probe_link(self) -> None:
        """A round-trip probe, a small scout, then an uplink probe within the share allowed.

        The uplink probe is sized from the estimate, which may be stale: sized for a link
        that has since fallen from 100 to 1 Mbit/s, it would take seconds to cross and hold
        the device's own requests behind it all that time (the sockets keep what was written
        even after the call is given up). The scout, at the smallest size that is a sample,
        finds such a fall first; the large probe goes only where the scout crossed about as
        fast as the estimate says.
        """
        uplink = self._link.uplink_mbps()
        budget = (_FIRST_PROBE_BYTES if uplink is None
                  else self.max_share * uplink * 1e6 / 8 * self.interval_s)
        size = int(min(max(budget, _MIN_PROBE_BYTES), _MAX_PROBE_BYTES))
        try:
            rtt_ms = self._client.probe_uplink(0, timeout_s=_HEALTH_TIMEOUT_S)
            self._link.observe_rtt(rtt_ms)
            self.probes += 1
            scout_says_stale = (uplink is not None and size >= 2 * _MIN_PROBE_BYTES
                                and not self._send(_MIN_PROBE_BYTES, uplink, rtt_ms))
            if not scout_says_stale:
                self._send(size, uplink, rtt_ms)
        except EdgecutError as exc:
            if self._breaker.record_failure():
                self._on_open(f"cloud unavailable: link probes failed ({type(exc).__name__})")

    def _send(self, size: int, uplink: float | None, rtt_ms: float) -> bool:
        """One uplink probe of `size` bytes, observed; whether it crossed at about `uplink`.

        One that runs out of time just after the round trip answered is a slow link, not a
        dead cloud: the link carried fewer than `size` bytes in the whole deadline, and a
        sample at that bound moves the estimate down.
        """
        expected_ms = size * 8 / (uplink * 1e3) if uplink else None
        timeout_s = _HEALTH_TIMEOUT_S + (expected_ms * 4 / 1e3 if expected_ms else 2.0)
        try:
            ms = self._client.probe_uplink(size, timeout_s=timeout_s)
        except DeadlineExceededError:
            ms = timeout_s * 1e3
        self.probes += 1
        self.probe_bytes += size
        self._link.observe_call(up_bytes=size, down_bytes=0, rpc_ms=ms, server_ms=0.0)
        return expected_ms is None or ms - rtt_ms <= max(2 * expected_ms, _SCOUT_SLACK_MS)
