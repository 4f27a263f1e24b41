"""Service-time spread: each request draws its device and cloud time around the cost model's
mean (lognormal, seeded); without a spread every service is its mean."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgecut.simulations.run import prepare, run_strategy
from edgecut.simulations.scenario import ScenarioError, scenario_from_dict
from edgecut.simulations.workload import cv_from_quantiles, lognormal_factors

from .conftest import assert_same_times


def test_the_factors_have_mean_one_and_the_asked_spread() -> None:
    f = lognormal_factors(0.3, 200_000, np.random.default_rng(1))
    assert f is not None
    assert f.mean() == pytest.approx(1.0, abs=0.005)
    assert f.std() / f.mean() == pytest.approx(0.3, abs=0.01)
    p50, p95 = np.percentile(f, [50, 95])
    assert cv_from_quantiles(p50, p95) == pytest.approx(0.3, abs=0.01)
    assert lognormal_factors(0.0, 10, np.random.default_rng(1)) is None
    assert cv_from_quantiles(10.0, 10.0) == 0.0


def test_no_spread_charges_every_request_the_mean(scenario_data: dict[str, Any]) -> None:
    scenario = scenario_from_dict(scenario_data, label="t.toml")
    prepared = prepare(scenario)
    assert prepared.workload.device_factor is None and prepared.workload.cloud_factor is None
    o = run_strategy(scenario, prepared, "edge-only")
    assert len(np.unique(o.services.device_ms)) == 1


def _spread(data: dict[str, Any]) -> dict[str, Any]:
    data["devices"][0]["service_cv"] = 0.4
    data["cloud"]["service_cv"] = 0.2
    return data


@pytest.mark.parametrize("strategy", ["edge-only", "dads"])
def test_with_spread_the_engines_agree_and_the_mean_holds(strategy: str,
                                                           scenario_data: dict[str, Any]) -> None:
    plain = scenario_from_dict(scenario_data, label="t.toml")
    scenario = scenario_from_dict(_spread(scenario_data), label="t.toml")
    prepared = prepare(scenario)
    fast = run_strategy(scenario, prepared, strategy)
    slow = run_strategy(scenario, prepared, strategy, engine="events")
    assert_same_times(fast, slow, ("head_end_s", "cloud_start_s", "done_s"))
    base = run_strategy(plain, prepare(plain), strategy)
    np.testing.assert_array_equal(base.services.cut, fast.services.cut)
    np.testing.assert_array_equal(base.head_start_s[:1], fast.head_start_s[:1])  # same arrivals
    ratio = fast.services.device_ms / base.services.device_ms
    assert len(np.unique(ratio)) > 100 and ratio.mean() == pytest.approx(1.0, abs=0.1)
    again = run_strategy(scenario, prepare(scenario), strategy)
    np.testing.assert_array_equal(fast.done_s, again.done_s)              # seeded


def test_with_spread_edgecut_by_ranks_is_the_event_engines(scenario_data: dict[str, Any]) -> None:
    from edgecut.simulations.ranks import run_ranks

    scenario_data["devices"][0]["count"] = 100
    scenario = scenario_from_dict(_spread(scenario_data), label="t.toml")
    prepared = prepare(scenario)
    fast = run_ranks(prepared.workload, prepared.tables, prepared.tails,
                     scenario.strategies.edgecut, scenario.cloud, has_cells=False)
    assert fast is not None
    slow = run_strategy(scenario, prepared, "edgecut", engine="events")
    np.testing.assert_array_equal(fast.services.cut, slow.services.cut)
    assert_same_times(fast, slow, ("head_start_s", "head_end_s", "cloud_start_s", "done_s"))


def test_a_negative_spread_is_a_scenario_error(scenario_data: dict[str, Any]) -> None:
    scenario_data["devices"][0]["service_cv"] = -0.1
    with pytest.raises(ScenarioError, match=r"devices\[0\]\.service_cv"):
        scenario_from_dict(scenario_data, label="t.toml")
