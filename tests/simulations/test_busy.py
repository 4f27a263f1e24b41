"""The busy slowdown: a request that waited for its device is served `busy_slowdown` times
slower than one that found it idle (back-to-back runs under a CPU quota), in all three
engines, which agree; without it nothing changes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgecut.simulations.queues import fifo, fifo_busy
from edgecut.simulations.ranks import run_ranks
from edgecut.simulations.run import prepare, run_strategy
from edgecut.simulations.scenario import ScenarioError, scenario_from_dict

from .conftest import assert_same_times


def test_fifo_busy_is_the_one_at_a_time_recursion() -> None:
    rng = np.random.default_rng(5)
    n = 4000
    key = rng.integers(0, 30, n)
    ready = rng.uniform(0, 100, n)
    idle = rng.exponential(0.5, n)
    busy = idle * rng.uniform(1.0, 2.0, n)
    start, end, waited = fifo_busy(key, ready, idle, busy)
    for k in range(30):
        rows = np.flatnonzero(key == k)
        rows = rows[np.argsort(ready[rows], kind="stable")]
        free = -np.inf
        for i in rows:
            queued = free > ready[i]
            expected = max(ready[i], free)
            free = expected + (busy[i] if queued else idle[i])
            assert waited[i] == queued
            assert abs(start[i] - expected) < 1e-7 and abs(end[i] - free) < 1e-7
    assert 0 < waited.sum() < n


def test_fifo_busy_at_one_is_fifo() -> None:
    rng = np.random.default_rng(6)
    key, ready, service = rng.integers(0, 5, 500), rng.uniform(0, 50, 500), rng.exponential(
        0.5, 500)
    start, end, _ = fifo_busy(key, ready, service, service)
    np.testing.assert_array_equal((start, end), fifo(key, ready, service))


def _busy(data: dict[str, Any], factor: float = 1.5) -> dict[str, Any]:
    data["devices"][0]["busy_slowdown"] = factor
    return data


@pytest.mark.parametrize("strategy", ["edge-only", "dads", "cloud-only"])
def test_with_a_busy_slowdown_the_engines_agree(strategy: str,
                                                scenario_data: dict[str, Any]) -> None:
    plain = scenario_from_dict(scenario_data, label="t.toml")
    scenario = scenario_from_dict(_busy(scenario_data), label="t.toml")
    prepared = prepare(scenario)
    fast = run_strategy(scenario, prepared, strategy)
    slow = run_strategy(scenario, prepared, strategy, engine="events")
    assert_same_times(fast, slow, ("head_end_s", "cloud_start_s", "done_s"))
    np.testing.assert_allclose(fast.services.device_ms, slow.services.device_ms, rtol=1e-12)
    base = run_strategy(plain, prepare(plain), strategy)
    ratio = fast.services.device_ms / base.services.device_ms
    queued = fast.head_start_s > prepared.workload.arrival_s + 1e-6
    # the waiting requests pay 1.5x, the others the idle time; queueing only grows
    np.testing.assert_allclose(ratio, np.where(queued, 1.5, 1.0), rtol=1e-12)
    if strategy != "cloud-only":
        assert queued.any()
    assert np.all(fast.done_s >= base.done_s - 1e-9)


def test_with_a_busy_slowdown_edgecut_by_ranks_is_the_event_engines(
        scenario_data: dict[str, Any]) -> None:
    scenario_data["devices"][0]["count"] = 100
    scenario = scenario_from_dict(_busy(scenario_data, 1.7), label="t.toml")
    prepared = prepare(scenario)
    fast = run_ranks(prepared.workload, prepared.tables, prepared.tails,
                     scenario.strategies.edgecut, scenario.cloud, has_cells=False)
    assert fast is not None
    slow = run_strategy(scenario, prepared, "edgecut", engine="events")
    np.testing.assert_array_equal(fast.services.cut, slow.services.cut)
    np.testing.assert_allclose(fast.services.device_ms, slow.services.device_ms, rtol=1e-12)
    assert_same_times(fast, slow, ("head_start_s", "head_end_s", "cloud_start_s", "done_s"))


def test_without_a_slowdown_the_workload_has_none(scenario_data: dict[str, Any]) -> None:
    assert prepare(scenario_from_dict(scenario_data, label="t.toml")).workload.busy_slowdown \
        is None


def test_a_slowdown_below_one_is_a_scenario_error(scenario_data: dict[str, Any]) -> None:
    with pytest.raises(ScenarioError, match=r"devices\[0\]\.busy_slowdown.*>= 1"):
        scenario_from_dict(_busy(scenario_data, 0.8), label="t.toml")
