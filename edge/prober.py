"""The Predictor's background prober: it checks a cloud the breaker stopped using, and
keeps the link estimate fresh while no request crosses the link.

Two jobs, on one daemon thread, every `tick_s`:

- While the circuit breaker is half-open (its reset time passed), a health probe
  (ServerReady, with a short deadline) decides whether it closes: the device finds a cloud
  that came back within about a second of its reset time, without spending a request.
- While the breaker is closed and the link has been idle `interval_s` (the device running
  locally, or no requests), a round-trip probe and an uplink probe (a ServerLive padded
  with bytes the server skips) measure the link, sized so that probing takes at most
  `max_share` of the estimated uplink. A failed probe counts as a cloud failure: a cloud
  that died while nobody was calling is noticed before the next request pays for it.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable

from edgecut.errors import EdgecutError

from .breaker import CircuitBreaker
from .client import CloudClient
from .monitors import LinkEstimator

__all__ = ["Prober"]

_MIN_PROBE_BYTES = 16 * 1024
_MAX_PROBE_BYTES = 1 << 20
_FIRST_PROBE_BYTES = 64 * 1024
_HEALTH_TIMEOUT_S = 1.0
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
        """A round-trip probe, then an uplink probe within the share of the link allowed."""
        uplink = self._link.uplink_mbps()
        budget = (_FIRST_PROBE_BYTES if uplink is None
                  else self.max_share * uplink * 1e6 / 8 * self.interval_s)
        size = int(min(max(budget, _MIN_PROBE_BYTES), _MAX_PROBE_BYTES))
        try:
            rtt_ms = self._client.probe_uplink(0, timeout_s=_HEALTH_TIMEOUT_S)
            self._link.observe_rtt(rtt_ms)
            timeout = _HEALTH_TIMEOUT_S + (size * 8 / (uplink * 1e3) / 1e3 * 4 if uplink else 2.0)
            ms = self._client.probe_uplink(size, timeout_s=timeout)
        except EdgecutError as exc:
            if self._breaker.record_failure():
                self._on_open(f"cloud unavailable: link probes failed ({type(exc).__name__})")
            return
        self.probes += 2
        self.probe_bytes += size
        self._link.observe_call(up_bytes=size, down_bytes=0, rpc_ms=ms, server_ms=0.0)
