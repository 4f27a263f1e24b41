"""Run a scenario: plan its cut tables, draw its requests, run each strategy, summarise.

`simulate(scenario)` is the library's entry point (the CLI and the sweeps call it). Static
strategies run on the vectorised engine, edgecut on the rank-vectorised one where it is exact
(`ranks.py`) and on the event engine (`engine.py`) otherwise; `engine="events"` forces the
event engine for every strategy but cascade (the tests compare).

Example:
    >>> from edgecut.simulations import load_scenario, simulate          # doctest: +SKIP
    >>> result = simulate(load_scenario("simulations/examples/phones-lte.toml"))  # doctest: +SKIP
    >>> result.summary["strategies"]["edgecut"]["latency_ms"]["p95"]      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecut.profiles.schema import NetworkProfile
from edgecut.simulations.costs import CutTable, build_tables
from edgecut.simulations.engine import EdgecutPolicy, Outcome, StaticPolicy, run_events, run_static
from edgecut.simulations.metrics import figure, summarise
from edgecut.simulations.scenario import Scenario
from edgecut.simulations.strategies import service_arrays, static_cuts
from edgecut.simulations.traces import BandwidthTrace, read_bandwidth_trace
from edgecut.simulations.workload import Workload, draw_workload

__all__ = ["SimulationResult", "prepare", "simulate", "tail_ids"]

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    """What every strategy of a run shares: links as planned, traces, tables, requests."""

    networks: tuple[NetworkProfile, ...]
    traces: tuple[BandwidthTrace | None, ...]
    tables: tuple[CutTable, ...]
    tails: tuple[np.ndarray, ...]
    workload: Workload


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationResult:
    scenario: Scenario
    prepared: Prepared
    outcomes: dict[str, Outcome]
    summary: dict[str, Any]


def _links(scenario: Scenario) -> tuple[list[NetworkProfile], list[BandwidthTrace | None]]:
    from edgecut.profiles import load_network

    networks, traces = [], []
    for group in scenario.devices:
        trace = read_bandwidth_trace(group.bandwidth_trace) if group.bandwidth_trace else None
        if group.bandwidth_trace is not None and group.network.lower().endswith(
                (".txt", ".csv", ".log", ".trace", ".dat")):
            mean = trace.mean_mbps  # type: ignore[union-attr]
            network = NetworkProfile(name=Path(group.network).stem, uplink_mbps=mean,
                                     downlink_mbps=mean, rtt_ms=group.rtt_ms or 0.0,
                                     source="bandwidth trace")
        else:
            network = load_network(group.network)
            if trace is not None:
                ratio = network.downlink_mbps / network.uplink_mbps
                network = dataclasses.replace(network, uplink_mbps=trace.mean_mbps,
                                              downlink_mbps=trace.mean_mbps * ratio)
            if group.rtt_ms is not None:
                network = dataclasses.replace(network, rtt_ms=group.rtt_ms)
        if group.cell is not None:
            network = dataclasses.replace(network, uplink_mbps=group.cell.uplink_mbps,
                                          downlink_mbps=group.cell.downlink_mbps)
        networks.append(network)
        traces.append(trace)
    return networks, traces


def tail_ids(tables: Sequence[CutTable]) -> list[np.ndarray]:
    """A fleet-wide id per tail model (equal device sets of the one model share it)."""
    registry: dict[frozenset[int], int] = {}
    out = []
    for table in tables:
        ids = []
        for device_set, used in zip(table.tails, table.uses_cloud, strict=True):
            ids.append(registry.setdefault(device_set, len(registry)) if used else -1)
        out.append(np.array(ids, dtype=np.int64))
    return out


def prepare(scenario: Scenario) -> Prepared:
    """Plan the tables and draw the requests (the part every strategy shares)."""
    networks, traces = _links(scenario)
    tables = build_tables(scenario, networks)
    workload = draw_workload(scenario, networks, traces)
    return Prepared(networks=tuple(networks), traces=tuple(traces), tables=tuple(tables),
                    tails=tuple(tail_ids(tables)), workload=workload)


def run_strategy(scenario: Scenario, prepared: Prepared, strategy: str, *,
                 engine: str = "auto", progress: Progress | None = None) -> Outcome:
    """One strategy's Outcome over the prepared requests."""
    w, tables = prepared.workload, prepared.tables
    if strategy == "edgecut":
        if engine != "events":
            from edgecut.simulations.ranks import run_ranks

            fast = run_ranks(w, tables, prepared.tails, scenario.strategies.edgecut,
                             scenario.cloud, has_cells=any(g.cell for g in scenario.devices))
            if fast is not None:
                return fast
        policy = EdgecutPolicy(tables, w, scenario.strategies.edgecut)
        return run_events(w, tables, prepared.tails, policy, scenario.cloud, progress)
    means = [n.uplink_mbps for n in prepared.networks]
    per_class = np.array(static_cuts(strategy, scenario, tables, means), dtype=np.int64)
    cut = per_class[w.group] if w.size else np.zeros(0, dtype=np.int64)
    if engine == "events" and strategy != "cascade":
        return run_events(w, tables, prepared.tails, StaticPolicy(cut), scenario.cloud, progress)
    escalate = w.escalate if strategy == "cascade" else None
    services = service_arrays(tables, w, cut, prepared.tails, escalate=escalate)
    return run_static(w, services, scenario.cloud, progress)


def simulate(scenario: Scenario, *, strategies: Sequence[str] | None = None,
             engine: str = "auto", progress: Progress | None = None) -> SimulationResult:
    """Every strategy of the scenario (or `strategies`) over the same requests."""
    names = tuple(strategies or scenario.strategies.compare)
    say = progress or (lambda _s, _d, _t: None)
    say("planning cuts", 0, len(names) + 1)
    prepared = prepare(scenario)
    outcomes: dict[str, Outcome] = {}
    summaries: dict[str, Any] = {}
    for i, name in enumerate(names):
        def inner(step: str, done: int, total: int, _i: int = i, _name: str = name) -> None:
            say(f"{_name}: {step}", _i * 1000 + (1000 * done) // max(total, 1),
                len(names) * 1000)
        outcomes[name] = run_strategy(scenario, prepared, name, engine=engine, progress=inner)
        summaries[name] = summarise(scenario, prepared.tables, prepared.workload, outcomes[name])
    sim = scenario.simulation
    summary = {
        "scenario": Path(scenario.label).name,
        "seed": sim.seed,
        "duration_s": figure(sim.duration_s),
        "warmup_s": figure(sim.warmup_s),
        "sla_ms": figure(sim.sla_ms),
        "devices": {g.name: g.count for g in scenario.devices},
        "requests_simulated": prepared.workload.size,
        "cloud": {"profile": Path(scenario.cloud.profile).name, "replicas": scenario.cloud.replicas,
                  "max_batch_size": scenario.cloud.max_batch_size,
                  "max_queue_delay_ms": figure(scenario.cloud.max_queue_delay_ms)},
        "plans": {g.name: {"device": t.meta["device"], "network": t.meta["network"],
                           "uplink_mbps": figure(t.uplink_mbps),
                           "envelope": [{"cut": int(t.cut_ids[k]), "min_mbps": figure(lo),
                                         "max_mbps": None if hi == float("inf") else figure(hi)}
                                        for k, lo, hi in t.envelope]}
                  for g, t in zip(scenario.devices, prepared.tables, strict=True)},
        "strategies": summaries,
    }
    return SimulationResult(scenario=scenario, prepared=prepared, outcomes=outcomes,
                            summary=summary)
