"""The requests of a scenario, drawn once per seed and shared by every strategy.

Everything random is drawn here, up front, from one numpy Generator per device class (seeded
by the scenario's seed and the class's name, so adding a class leaves the others' draws
alone): arrival times and devices, each device's phase in a bandwidth or arrival trace, the
round trip of each request (jitter), the cascade's escalation draw. The engines are then
deterministic functions of the workload, and every strategy sees the same requests (common
random numbers: differences between strategies are not sampling noise).

Per device class, over [0, duration_s):
- poisson: Poisson(count * rate * duration) arrivals, uniform in time and over the devices,
  i.e. an independent Poisson process of `rate_per_s` on each device;
- periodic: each device every 1 / rate_per_s seconds from a uniform random phase;
- trace: each device replays the file's arrival times from its own phase, repeated.

A request's link bandwidth is the link's at its arrival time (a bandwidth trace steps every
second or so; a request takes milliseconds); the downlink keeps the profile's ratio.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgecut.profiles.schema import NetworkProfile
from edgecut.simulations.scenario import DeviceGroup, Scenario
from edgecut.simulations.traces import BandwidthTrace, read_arrival_trace

__all__ = ["Workload", "class_rng", "draw_workload"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """Requests sorted by arrival time; arrays of one length, one entry per request.

    `device` is a fleet-wide device index (class offsets in `device_offsets`); `link` the
    uplink each request queues on: its device's own, or its cell's (a shared server).
    """

    arrival_s: np.ndarray
    device: np.ndarray
    group: np.ndarray
    link: np.ndarray
    uplink_mbps: np.ndarray
    downlink_mbps: np.ndarray
    rtt_ms: np.ndarray
    escalate: np.ndarray
    device_offsets: tuple[int, ...]
    device_count: int
    device_factor: np.ndarray | None = None   # per request: its device time / the mean
    cloud_factor: np.ndarray | None = None    # per request: its cloud time / the mean
    busy_slowdown: np.ndarray | None = None   # per request: its device time's factor if waiting

    @property
    def size(self) -> int:
        return len(self.arrival_s)


def lognormal_factors(cv: float, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """`n` service-time multipliers of mean 1 and coefficient of variation `cv` (lognormal),
    or None where `cv` is 0 (every service its mean: the M/D/c forms hold exactly)."""
    if cv <= 0:
        return None
    sigma2 = math.log1p(cv * cv)
    return rng.lognormal(-sigma2 / 2.0, math.sqrt(sigma2), n)


def cv_from_quantiles(p50: float, p95: float) -> float:
    """The coefficient of variation of the lognormal whose median is `p50` and 95th
    percentile `p95` (what a profile of repeated runs gives): sigma = ln(p95/p50) / 1.645."""
    if p95 <= p50 or p50 <= 0:
        return 0.0
    sigma = math.log(p95 / p50) / 1.6448536269514722
    return math.sqrt(math.expm1(sigma * sigma))


def class_rng(seed: int, name: str) -> np.random.Generator:
    """The stream of one device class: the seed and a hash of the class name."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        seed, spawn_key=(zlib.crc32(name.encode()),))))


def _arrivals(group: DeviceGroup, duration: float, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    a = group.arrival
    if a.process == "poisson":
        n = int(rng.poisson(group.count * a.rate_per_s * duration))
        return rng.uniform(0.0, duration, n), rng.integers(0, group.count, n)
    if a.process == "periodic":
        period = 1.0 / a.rate_per_s
        phase = rng.uniform(0.0, period, group.count)
        per = np.ceil((duration - phase) / period).astype(np.int64).clip(min=0)
        device = np.repeat(np.arange(group.count), per)
        starts = np.cumsum(per) - per
        j = np.arange(len(device)) - np.repeat(starts, per)
        times = phase[device] + j * period
        keep = times < duration
        return times[keep], device[keep]
    trace = read_arrival_trace(a.file)
    step = float(np.mean(np.diff(trace))) if len(trace) > 1 else 1.0
    period = float(trace[-1] + step)
    phase = rng.uniform(0.0, period, group.count)
    repeats = int(np.ceil(duration / period)) + 1
    shifts = (np.arange(-1, repeats) * period)[:, None] + trace[None, :]
    times = (phase[:, None, None] + shifts[None, :, :]).reshape(group.count, -1)
    device = np.repeat(np.arange(group.count), times.shape[1])
    times = times.ravel()
    keep = (times >= 0) & (times < duration)
    return times[keep], device[keep]


def draw_workload(scenario: Scenario, networks: Sequence[NetworkProfile],
                  traces: Sequence[BandwidthTrace | None]) -> Workload:
    """Every request of the scenario (see the module docstring for what is drawn how)."""
    duration = scenario.simulation.duration_s
    parts = []
    offset = 0
    link_offset = 0
    offsets = []
    for g, (group, network, trace) in enumerate(zip(scenario.devices, networks, traces,
                                                    strict=True)):
        rng = class_rng(scenario.simulation.seed, group.name)
        times, local = _arrivals(group, duration, rng)
        n = len(times)
        ratio = network.downlink_mbps / network.uplink_mbps
        if group.cell is not None:
            up = np.full(n, group.cell.uplink_mbps)
            down = np.full(n, group.cell.downlink_mbps)
            link = link_offset + local // group.cell.devices
            links = -(-group.count // group.cell.devices)
        else:
            if trace is not None:
                phase = rng.uniform(0.0, trace.period_s, group.count)
                up = trace.mbps_at(times + phase[local])
            elif network.trace:
                rows = np.array(network.trace)
                i = np.searchsorted(rows[:, 0], times, side="right") - 1
                up = np.where(i >= 0, rows[np.clip(i, 0, None), 1], network.uplink_mbps)
                ratio_t = np.where(i >= 0, rows[np.clip(i, 0, None), 2] / rows[np.clip(i, 0, None), 1],
                                   ratio)
                ratio = ratio_t  # type: ignore[assignment]
            else:
                up = np.full(n, float(network.uplink_mbps))
            down = up * ratio
            link = link_offset + local
            links = group.count
        jitter = float(network.jitter_ms)
        rtt = float(network.rtt_ms)
        rtts = (np.clip(rng.uniform(rtt - jitter, rtt + jitter, n), 0.0, None) if jitter
                else np.full(n, rtt))
        escalate = rng.random(n) < (scenario.strategies.cascade_escalation_rate or 0.0)
        spread = lognormal_factors(group.service_cv,  n,
                                   class_rng(scenario.simulation.seed, group.name + "/service"))
        factor = np.ones(n) if spread is None else spread
        parts.append((times, offset + local, np.full(n, g), link, up, down, rtts, escalate,
                      factor, np.full(n, group.busy_slowdown)))
        offsets.append(offset)
        offset += group.count
        link_offset += links
    columns = [np.concatenate([p[i] for p in parts]) for i in range(10)]
    order = np.argsort(columns[0], kind="stable")
    times, device, group_ix, link, up, down, rtts, escalate, factor, busy = (
        c[order] for c in columns)
    any_spread = any(g.service_cv > 0 for g in scenario.devices)
    cloud_factor = lognormal_factors(scenario.cloud.service_cv, len(times),
                                     class_rng(scenario.simulation.seed, "cloud/service"))
    return Workload(arrival_s=times.astype(float), device=device.astype(np.int64),
                    group=group_ix.astype(np.int64), link=link.astype(np.int64),
                    uplink_mbps=up.astype(float), downlink_mbps=down.astype(float),
                    rtt_ms=rtts.astype(float), escalate=escalate.astype(bool),
                    device_offsets=tuple(offsets), device_count=offset,
                    device_factor=factor.astype(float) if any_spread else None,
                    cloud_factor=cloud_factor,
                    busy_slowdown=busy.astype(float) if np.any(busy != 1.0) else None)
