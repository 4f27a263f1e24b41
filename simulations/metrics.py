"""From an engine's `Outcome` to the figures of summary.json: pure functions over arrays.

Counted requests are those arriving in [warmup_s, duration_s); every one of them completes
(the engines drain). Throughput is counted requests over that window. Cloud utilisation is the
replicas' busy time inside the window over replicas x window.

Device energy of a request (J), from its device's power model and its simulated times:

    compute_w  x (head + encode + decode)          the device's CPU
    transmit_w x uplink transfer                   the radio sending
    receive_w  x downlink transfer                 the radio receiving
    idle_w     x (from sent to answer arriving)    waiting on the round trip and the cloud
    radio_tail_w x min(radio_tail_ms, time to the device's next transfer)   the radio's tail

which is the cost model's energy (`partitioner.cost`) with the simulated waits in place of the
predicted ones, plus the tail (LTE keeps its radio in a high-power state for a few seconds
after a transfer; Huang et al., MobiSys 2012) where the scenario gives one.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgecut.simulations.costs import CutTable
from edgecut.simulations.engine import Outcome
from edgecut.simulations.scenario import Scenario
from edgecut.simulations.workload import Workload

__all__ = ["comparison_rows", "energy_j", "figure", "summarise", "utilisation_series"]


def figure(x: float | np.floating[Any]) -> float:
    """A float as summary.json writes it: 12 significant digits (stable, readable)."""
    return float(f"{float(x):.12g}")


def energy_j(scenario: Scenario, tables: Sequence[CutTable], workload: Workload,
             outcome: Outcome) -> dict[str, np.ndarray]:
    """Per-request device energy by term (see the module docstring), in joules."""
    s = outcome.services
    g = workload.group
    power = {name: np.array([t.power_w[name] for t in tables])[g]
             for name in ("idle_w", "compute_w", "transmit_w", "receive_w")}
    tail_w = np.array([grp.radio_tail_w if grp.radio_tail_w is not None
                       else t.power_w["receive_w"] for grp, t in zip(scenario.devices, tables,
                                                                      strict=True)])[g]
    tail_s = np.array([grp.radio_tail_ms / 1000.0 for grp in scenario.devices])[g]
    used = s.uses_cloud
    wait_s = np.where(used, outcome.done_s - outcome.up_end_s
                      - (s.downlink_ms + s.decode_ms) / 1000.0, 0.0)
    tail = np.zeros(workload.size)
    rows = np.flatnonzero(used & (tail_s > 0))
    if len(rows):
        order = rows[np.lexsort((outcome.up_start_s[rows], workload.device[rows]))]
        radio_end = outcome.done_s[order] - s.decode_ms[order] / 1000.0
        gap = np.full(len(order), np.inf)
        same = workload.device[order][1:] == workload.device[order][:-1]
        gap[:-1] = np.where(same, outcome.up_start_s[order][1:] - radio_end[:-1], np.inf)
        tail[order] = tail_w[order] * np.clip(gap, 0.0, tail_s[order])
    return {
        "compute": power["compute_w"] * (s.device_ms + s.decode_ms) / 1000.0,
        "transmit": power["transmit_w"] * s.uplink_ms / 1000.0,
        "receive": power["receive_w"] * s.downlink_ms / 1000.0,
        "wait": power["idle_w"] * np.clip(wait_s, 0.0, None),
        "tail": tail,
    }


def _busy_in(starts: np.ndarray, ends: np.ndarray, low: float, high: float) -> float:
    return float(np.sum(np.clip(np.minimum(ends, high) - np.maximum(starts, low), 0.0, None)))


def utilisation_series(outcome: Outcome, replicas: int, duration_s: float,
                       bins: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(bin start times, cloud utilisation per bin) over [0, duration_s)."""
    edges = np.linspace(0.0, duration_s, bins + 1)
    b = outcome.batches
    busy = np.array([_busy_in(b.batch_start_s, b.batch_end_s, lo, hi)
                     for lo, hi in itertools.pairwise(edges)])
    return edges[:-1], busy / (replicas * np.diff(edges))


def _latency(ms: np.ndarray) -> dict[str, float]:
    if not len(ms):
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"mean": figure(np.mean(ms)), "p50": figure(p50), "p95": figure(p95),
            "p99": figure(p99), "max": figure(np.max(ms))}


def summarise(scenario: Scenario, tables: Sequence[CutTable], workload: Workload,
              outcome: Outcome) -> dict[str, Any]:
    """One strategy's figures for summary.json (no wall-clock field: deterministic)."""
    sim = scenario.simulation
    window = sim.duration_s - sim.warmup_s
    counted = workload.arrival_s >= sim.warmup_s
    latency = (outcome.done_s - workload.arrival_s)[counted] * 1000.0
    s = outcome.services
    energy = energy_j(scenario, tables, workload, outcome)
    total_energy = np.sum(np.stack(list(energy.values())), axis=0)
    b = outcome.batches
    busy = _busy_in(b.batch_start_s, b.batch_end_s, sim.warmup_s, sim.duration_s)
    n = int(np.count_nonzero(counted))
    cloud_rows = counted & s.uses_cloud
    waits = (outcome.cloud_start_s - outcome.cloud_arrival_s)[cloud_rows] * 1000.0
    cuts: dict[str, dict[str, float]] = {}
    per_class: dict[str, Any] = {}
    for g, (group, table) in enumerate(zip(scenario.devices, tables, strict=True)):
        rows = counted & (workload.group == g)
        m = int(np.count_nonzero(rows))
        ids, counts = np.unique(table.cut_ids[s.cut[rows]], return_counts=True)
        cuts[group.name] = {str(int(i)): figure(c / max(m, 1)) for i, c in zip(ids, counts,
                                                                               strict=True)}
        lat = (outcome.done_s - workload.arrival_s)[rows] * 1000.0
        per_request_j = float(np.mean(total_energy[rows])) if m else 0.0
        entry: dict[str, Any] = {"requests": m, "latency_ms": _latency(lat),
                                 "device_energy_j_per_request": figure(per_request_j)}
        battery = group.battery_wh or _profile_battery(group.profile)
        if battery and m:
            watts = per_request_j * m / window / group.count
            entry["battery_hours"] = figure(battery / watts) if watts > 0 else None
        per_class[group.name] = entry
    return {
        "requests": n,
        "latency_ms": _latency(latency),
        "sla_violation_rate": figure(np.mean(latency > sim.sla_ms)) if n else 0.0,
        "throughput_rps": figure(n / window),
        "device_energy_j_per_request": figure(np.mean(total_energy[counted])) if n else 0.0,
        "device_energy_j": {k: figure(np.mean(v[counted])) if n else 0.0
                            for k, v in energy.items()},
        "cloud_utilisation": figure(busy / (scenario.cloud.replicas * window)),
        "cloud_wait_ms": {"mean": figure(np.mean(waits)) if len(waits) else 0.0,
                          "p95": figure(np.percentile(waits, 95)) if len(waits) else 0.0},
        "mean_batch_size": figure(np.mean(b.batch_size)) if len(b.batch_size) else 0.0,
        "offloaded_share": figure(np.count_nonzero(cloud_rows) / n) if n else 0.0,
        "bytes_up": int(np.sum(s.up_wire_bytes[counted])),
        "bytes_down": int(np.sum(s.down_bytes[counted])),
        "cuts": cuts,
        "per_class": per_class,
        "events": int(outcome.events),
    }


_BATTERIES: dict[str, float | None] = {}


def _profile_battery(ref: str) -> float | None:
    if ref not in _BATTERIES:
        from edgecut.profiles import load_device

        _BATTERIES[ref] = load_device(ref).battery_wh
    return _BATTERIES[ref]


def comparison_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per strategy (the printed table and sweep.csv's figures)."""
    rows = []
    for name, s in summary["strategies"].items():
        rows.append({
            "strategy": name, "requests": s["requests"],
            "latency_mean_ms": s["latency_ms"]["mean"], "latency_p50_ms": s["latency_ms"]["p50"],
            "latency_p95_ms": s["latency_ms"]["p95"], "latency_p99_ms": s["latency_ms"]["p99"],
            "sla_violation_rate": s["sla_violation_rate"], "throughput_rps": s["throughput_rps"],
            "device_energy_j_per_request": s["device_energy_j_per_request"],
            "cloud_utilisation": s["cloud_utilisation"], "offloaded_share": s["offloaded_share"],
            "bytes_up": s["bytes_up"], "bytes_down": s["bytes_down"],
        })
    return rows
