"""The engines: the event loop and the vectorised tandem agree; runs are deterministic."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edgecut.simulations.run import prepare, run_strategy, simulate
from edgecut.simulations.scenario import scenario_from_dict

from .conftest import assert_same_times


def _two_tails(data: dict[str, Any]) -> dict[str, Any]:
    """Pis on Wi-Fi (the bottleneck cut) and on Ethernet (cloud-only): two tails to batch."""
    data["devices"].append({"name": "wired", "count": 10, "profile": "raspberry-pi-4",
                            "network": "ethernet", "arrival": {"rate_per_s": 2.0}})
    data["cloud"].update(replicas=1, max_batch_size=4, max_queue_delay_ms=5.0)
    return data


@pytest.mark.parametrize("strategy", ["edge-only", "cloud-only", "neurosurgeon", "dads"])
def test_the_event_engine_and_the_tandem_agree(strategy: str, scenario_data: dict[str, Any]) -> None:
    scenario = scenario_from_dict(_two_tails(scenario_data), label="t.toml")
    prepared = prepare(scenario)
    fast = run_strategy(scenario, prepared, strategy)
    slow = run_strategy(scenario, prepared, strategy, engine="events")
    np.testing.assert_array_equal(fast.services.cut, slow.services.cut)
    assert_same_times(fast, slow, ("head_start_s", "head_end_s", "up_end_s", "cloud_start_s",
                                   "done_s"), atol=1e-6)
    assert sorted(fast.batches.batch_size.tolist()) == sorted(slow.batches.batch_size.tolist())


def test_the_mixed_fleet_batches_two_tails(scenario_data: dict[str, Any]) -> None:
    scenario = scenario_from_dict(_two_tails(scenario_data), label="t.toml")
    prepared = prepare(scenario)
    outcome = run_strategy(scenario, prepared, "neurosurgeon")
    assert len(set(outcome.services.tail[outcome.services.uses_cloud].tolist())) == 2
    assert outcome.batches.batch_size.max() > 1


@pytest.mark.parametrize("strategy", ["dads", "edgecut", "cascade"])
def test_requests_are_conserved_and_times_are_ordered(strategy: str,
                                                      scenario_data: dict[str, Any]) -> None:
    scenario_data["strategies"]["cascade_escalation_rate"] = 0.3
    scenario = scenario_from_dict(_two_tails(scenario_data), label="t.toml")
    prepared = prepare(scenario)
    o = run_strategy(scenario, prepared, strategy)
    w = prepared.workload
    assert w.size > 100 and np.all(np.isfinite(o.done_s))               # every request done
    assert np.all(o.head_start_s >= w.arrival_s) and np.all(o.done_s >= o.head_end_s)
    cloud = o.services.uses_cloud
    assert np.all(o.up_start_s[cloud] >= o.head_end_s[cloud] - 1e-9)
    assert np.all(o.cloud_start_s[cloud] >= o.cloud_arrival_s[cloud])
    assert np.all(o.done_s[cloud] >= o.cloud_end_s[cloud])
    assert o.batches.batch_size.sum() == np.count_nonzero(cloud)
    for d in np.unique(w.device)[:10]:                                   # each device: FIFO,
        rows = np.flatnonzero(w.device == d)                             # one at a time
        assert np.all(o.head_start_s[rows][1:] >= o.head_end_s[rows][:-1] - 1e-9)
    summary = simulate(scenario, strategies=[strategy]).summary["strategies"][strategy]
    assert 0.0 <= summary["cloud_utilisation"] <= 1.0
    assert summary["requests"] == int(np.count_nonzero(w.arrival_s >= 2.0))


def test_a_seed_gives_the_same_summary_and_another_seed_another(scenario_data: dict[str, Any]
                                                                  ) -> None:
    first = simulate(scenario_from_dict(scenario_data, label="t.toml")).summary
    again = simulate(scenario_from_dict(scenario_data, label="t.toml")).summary
    assert json.dumps(first) == json.dumps(again)
    scenario_data["simulation"]["seed"] = 2
    other = simulate(scenario_from_dict(scenario_data, label="t.toml")).summary
    assert other["requests_simulated"] != first["requests_simulated"] or \
        other["strategies"]["dads"]["latency_ms"] != first["strategies"]["dads"]["latency_ms"]


def test_adding_a_class_leaves_the_others_draws_alone(scenario_data: dict[str, Any]) -> None:
    alone = prepare(scenario_from_dict(scenario_data, label="t.toml")).workload
    mixed = prepare(scenario_from_dict(_two_tails(scenario_data), label="t.toml")).workload
    np.testing.assert_array_equal(alone.arrival_s, mixed.arrival_s[mixed.group == 0])


def test_edgecut_by_ranks_is_the_event_engines_result(scenario_data: dict[str, Any]) -> None:
    from edgecut.simulations import example_path
    from edgecut.simulations.ranks import run_ranks

    examples = example_path("phones-lte").parent
    scenario_data["devices"][0].update(
        count=300, profile=str(examples / "budget-phone.toml"), network="lte",
        bandwidth_trace=str(examples / "lte-commute.txt"))
    scenario_data["simulation"]["duration_s"] = 40.0
    scenario = scenario_from_dict(scenario_data, label="t.toml")
    prepared = prepare(scenario)
    fast = run_ranks(prepared.workload, prepared.tables, prepared.tails,
                     scenario.strategies.edgecut, scenario.cloud, has_cells=False)
    assert fast is not None
    slow = run_strategy(scenario, prepared, "edgecut", engine="events")
    assert len(np.unique(fast.services.cut)) == 2       # it does switch between cuts
    np.testing.assert_array_equal(fast.services.cut, slow.services.cut)
    assert_same_times(fast, slow, ("head_start_s", "up_end_s", "cloud_start_s", "done_s"))
    # A cell couples the devices' uplinks: only the event engine is exact there.
    assert run_ranks(prepared.workload, prepared.tables, prepared.tails,
                     scenario.strategies.edgecut, scenario.cloud, has_cells=True) is None
