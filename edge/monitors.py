"""What the device sees: its link (from its own transfers and probes) and its own state.

`LinkEstimator` turns each cloud call into a sample: the call's time less what the endpoint
reported spending on it (queue and compute) is the network's; less the round trip, the
transfer's. It keeps the recent samples and answers their median, so one slow call (a GC
pause, a retransmission) moves nothing; samples older than `max_age_s` are dropped, so a
link that changed is followed within a few calls. Uplink and downlink are estimated
together, in the ratio the plan's network profile gives (one call's time cannot tell
which direction was slow).

`DeviceMonitor` reads CPU load, available memory (the cgroup's limit where one is set:
containers see the host's memory in /proc/meminfo) and battery with psutil, at most every
`min_interval_s`, and says whether the device is under pressure, with hysteresis. Tests
and simulations give it their own `reader`.

    >>> link = LinkEstimator(downlink_ratio=2.0)
    >>> link.observe_rtt(20.0, now=0.0)
    >>> link.observe_call(up_bytes=1_250_000, down_bytes=0, rpc_ms=1020.0, server_ms=0.0, now=1.0)
    >>> round(link.uplink_mbps(now=1.0), 3), link.rtt_ms(now=1.0)
    (10.0, 20.0)
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DeviceMonitor", "DeviceReadings", "LinkEstimator", "RecentSamples", "read_device"]

# Transfers smaller than this say more about the round trip than about bandwidth.
MIN_BANDWIDTH_SAMPLE_BYTES = 16 * 1024
# A transfer shorter than this share of the round trip, or than this many ms, is too short
# to time: it hides in the round trip's jitter.
_MIN_TRANSFER_SHARE = 0.5
_MIN_TRANSFER_MS = 0.25


class RecentSamples:
    """The median of the last `window` samples, none older than `max_age_s`; thread-safe.

    >>> queue = RecentSamples(window=3, max_age_s=2.0)
    >>> for t, ms in enumerate((5.0, 300.0, 7.0)):
    ...     queue.add(ms, now=float(t))
    >>> queue.median(now=2.0), queue.median(now=9.0)
    (7.0, None)
    """

    def __init__(self, *, window: int, max_age_s: float) -> None:
        self.max_age_s = float(max_age_s)
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)  # (time, value)
        self._lock = threading.Lock()

    def add(self, value: float, *, now: float | None = None) -> None:
        with self._lock:
            self._samples.append((_now(now), float(value)))

    def median(self, *, now: float | None = None) -> float | None:
        """None before the first sample, and once every sample is older than `max_age_s`."""
        t = _now(now)
        with self._lock:
            while self._samples and t - self._samples[0][0] > self.max_age_s:
                self._samples.popleft()
            return statistics.median(v for _, v in self._samples) if self._samples else None


class LinkEstimator:
    """Uplink bandwidth and round trip from the device's own calls; thread-safe."""

    def __init__(self, *, downlink_ratio: float = 1.0, window: int = 7,
                 max_age_s: float = 30.0) -> None:
        if not downlink_ratio > 0:
            raise ValueError(f"downlink_ratio must be > 0, got {downlink_ratio}")
        self.downlink_ratio = float(downlink_ratio)
        self._uplink = RecentSamples(window=window, max_age_s=max_age_s)  # Mbit/s
        self._rtt = RecentSamples(window=window, max_age_s=max_age_s)  # ms
        self._last_call = -float("inf")
        self._lock = threading.Lock()

    def observe_rtt(self, ms: float, *, now: float | None = None) -> None:
        """A call that moved (almost) no bytes took `ms`."""
        if ms >= 0:
            self._rtt.add(ms, now=now)

    def observe_call(self, *, up_bytes: int, down_bytes: int, rpc_ms: float,
                     server_ms: float | None, connected: bool = True,
                     now: float | None = None) -> None:
        """One call's bytes and time; `server_ms` is what the endpoint reported spending.

        A call that had to connect first (`connected` False) also paid for TCP, TLS and
        HTTP/2 set-up: it says nothing about the link's speed and is not a sample.
        """
        t = _now(now)
        network_ms = rpc_ms - (server_ms or 0.0)
        with self._lock:
            self._last_call = t
        if network_ms <= 0 or not connected:
            return
        rtt = self._rtt.median(now=t)
        uplink = self.uplink_mbps(now=t)
        bits = up_bytes * 8 + down_bytes * 8 / self.downlink_ratio  # in uplink-equivalent bits
        if up_bytes + down_bytes < MIN_BANDWIDTH_SAMPLE_BYTES:
            transfer_ms = bits / (uplink * 1e3) if uplink else 0.0
            self.observe_rtt(max(network_ms - transfer_ms, 0.0), now=t)
            return
        transfer_ms = network_ms - (rtt or 0.0)
        if transfer_ms < max(_MIN_TRANSFER_SHARE * (rtt or 0.0), _MIN_TRANSFER_MS):
            # The transfer hid inside the round trip's noise: the call says only that the
            # link is at least bits / network time fast. That keeps a higher estimate fresh
            # (it is not contradicted) or lifts a lower one; it never inflates one.
            lower_bound = bits / (network_ms * 1e3)
            self._uplink.add(max(lower_bound, uplink or 0.0), now=t)
            return
        self._uplink.add(bits / (transfer_ms * 1e3), now=t)

    def uplink_mbps(self, *, now: float | None = None) -> float | None:
        """The median of the recent uplink samples; None before the first or when stale."""
        return self._uplink.median(now=now)

    def downlink_mbps(self, *, now: float | None = None) -> float | None:
        up = self.uplink_mbps(now=now)
        return None if up is None else up * self.downlink_ratio

    def rtt_ms(self, *, now: float | None = None) -> float | None:
        return self._rtt.median(now=now)

    def idle_s(self, *, now: float | None = None) -> float:
        """Seconds since the last cloud call (inf before the first)."""
        with self._lock:
            return _now(now) - self._last_call


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceReadings:
    """One look at the device: None where it cannot tell (no battery, say)."""

    cpu_percent: float | None = None
    available_memory_mib: float | None = None
    battery_percent: float | None = None
    power_plugged: bool | None = None


def read_device() -> DeviceReadings:
    """This machine, by psutil; memory is the smaller of the system's and its cgroup's."""
    import psutil  # imported here: a Predictor in local mode with fixed choices never needs it

    memory = psutil.virtual_memory().available / 2**20
    cgroup = _cgroup_available_mib()
    if cgroup is not None:
        memory = min(memory, cgroup)
    try:
        battery = psutil.sensors_battery()
    except (AttributeError, NotImplementedError, OSError):
        battery = None
    return DeviceReadings(
        cpu_percent=psutil.cpu_percent(interval=None), available_memory_mib=memory,
        battery_percent=None if battery is None else float(battery.percent),
        power_plugged=None if battery is None else battery.power_plugged)


def _cgroup_available_mib() -> float | None:
    """Memory left under this process's cgroup limit (v2 or v1), None without a limit."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for entry in line:
        _, controllers, path = entry.split(":", 2)
        if controllers == "":  # v2
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            limit, usage = _read_int(base / "memory.max"), _read_int(base / "memory.current")
        elif "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            limit = _read_int(base / "memory.limit_in_bytes")
            usage = _read_int(base / "memory.usage_in_bytes")
        else:
            continue
        # v1 writes "no limit" as a huge number near 2**63.
        if limit is not None and usage is not None and limit < 2**60:
            return max(limit - usage, 0) / 2**20
    return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None  # "max" (no v2 limit), or no such file


class DeviceMonitor:
    """Device pressure from readings, with hysteresis; readings cached `min_interval_s`."""

    def __init__(self, reader: Callable[[], DeviceReadings] = read_device, *,
                 min_interval_s: float = 0.5) -> None:
        self._reader = reader
        self.min_interval_s = float(min_interval_s)
        self._last: DeviceReadings | None = None
        self._read_at = -float("inf")
        self._engaged: set[str] = set()
        self._lock = threading.Lock()

    def readings(self) -> DeviceReadings:
        """The latest readings, read again when older than `min_interval_s`."""
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._read_at >= self.min_interval_s:
                self._last = self._reader()
                self._read_at = now
            return self._last

    def pressure(self, *, min_free_memory_mib: float | None, max_cpu_percent: float | None,
                 min_battery_percent: float | None, recovery: float) -> str | None:
        """Why the device should not compute now, or None.

        A check engages below (or above) its threshold and releases only once the reading
        clears it by `recovery` (relative), so a reading hovering at the line does not make
        the device flap between offload and its own cuts.
        """
        r = self.readings()
        checks = {
            "memory": (r.available_memory_mib, min_free_memory_mib, "below",
                       "memory {v:.0f} MiB free"),
            "cpu": (r.cpu_percent, max_cpu_percent, "above", "CPU {v:.0f} % busy"),
            "battery": (None if r.power_plugged else r.battery_percent, min_battery_percent,
                        "below", "battery {v:.0f} %"),
        }
        reasons = []
        with self._lock:
            for name, (value, limit, side, text) in checks.items():
                if value is None or limit is None:
                    self._engaged.discard(name)
                    continue
                margin = recovery * limit if name in self._engaged else 0.0
                pressed = value < limit + margin if side == "below" else value > limit - margin
                if pressed:
                    self._engaged.add(name)
                    reasons.append(text.format(v=value))
                else:
                    self._engaged.discard(name)
        return ", ".join(reasons) or None


def _now(now: float | None) -> float:
    return time.monotonic() if now is None else now
