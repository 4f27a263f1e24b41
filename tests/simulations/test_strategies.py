"""Each strategy's decision on small hand-checked cases."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgecut.errors import UnknownCutError
from edgecut.simulations.adaptive import choose_cut, envelope_cut, recent_median
from edgecut.simulations.run import prepare, run_strategy, simulate
from edgecut.simulations.scenario import EdgecutSettings, scenario_from_dict
from edgecut.simulations.strategies import static_cuts

from .conftest import make_table

# Three cuts: 0 sends the 100 kB input, 1 runs 30 ms and sends 10 kB, 2 runs everything (90 ms).
TABLE = make_table(device_ms=[0.0, 30.0, 90.0], up_bytes=[100_000, 10_000, 0],
                   cloud_ms=[2.0, 1.0, 0.0], rtt_ms=20.0, uplink_mbps=10.0,
                   envelope=((2, 0.0, 1.6), (1, 1.6, 40.0), (0, 40.0, float("inf"))))


def test_the_table_costs_by_hand() -> None:
    # cut 1 at 10 Mbps: 30 + 10 kB * 8 / 10 Mbps (8 ms) + 20 rtt + 1 cloud + 40 B down at 20 Mbps
    assert TABLE.latency_ms(10.0)[1] == pytest.approx(30 + 8 + 20 + 1 + 0.016)
    assert TABLE.latency_ms(10.0)[2] == 90.0
    assert TABLE.bottleneck_ms(10.0)[0] == pytest.approx(80.0)    # the uplink of 100 kB


def test_envelope_with_hysteresis() -> None:
    assert envelope_cut(TABLE, 10.0, None, 0.25) == 1
    assert envelope_cut(TABLE, 45.0, None, 0.25) == 0
    assert envelope_cut(TABLE, 45.0, 1, 0.25) == 1      # within 40 * 1.25: stays
    assert envelope_cut(TABLE, 51.0, 1, 0.25) == 0      # past it: moves
    assert envelope_cut(TABLE, 1.3, 1, 0.25) == 1       # 1.6 * 0.75 = 1.2 <= 1.3
    assert envelope_cut(TABLE, 1.1, 1, 0.25) == 2
    assert envelope_cut(TABLE, 40.0, None, 0.0) == 0    # a breakpoint: the faster-link cut


def test_the_estimate_is_the_median_of_recent_samples() -> None:
    samples = [(0.0, 10.0), (1.0, 500.0), (2.0, 12.0), (3.0, 11.0)]
    assert recent_median(samples, now=3.0, max_age_s=30.0) == 11.5    # one outlier moves little
    assert recent_median(samples, now=31.5, max_age_s=30.0) == 11.5   # the first two are stale
    assert recent_median(samples, now=40.0, max_age_s=30.0) is None


def test_a_new_cut_must_be_worth_the_switch() -> None:
    settings = EdgecutSettings()
    # At 60 Mbps the envelope says cut 0: 13.3 ms up + 20 + 2 = 35.3 ms against cut 1's
    # 30 + 1.3 + 20 + 1 = 52.3 ms, a gain of 17 ms (32 %): over 1 ms and 5 %, it moves.
    kwargs = {"queue_report_ms": None, "report_age_s": 0.0}
    assert choose_cut(TABLE, settings, estimate_mbps=60.0, current=1, **kwargs) == (0, 0)
    lazy = EdgecutSettings(min_gain_share=0.5)                 # a 50 % gain needed: it stays
    assert choose_cut(TABLE, lazy, estimate_mbps=60.0, current=1, **kwargs) == (1, 1)


def test_a_loaded_cloud_pushes_work_back_to_the_device() -> None:
    settings = EdgecutSettings()
    kwargs = {"estimate_mbps": 10.0, "current": None, "report_age_s": 1.0}
    assert choose_cut(TABLE, settings, queue_report_ms=10.0, **kwargs) == (1, 1)
    # 59 ms + 80 ms of queue > 90 ms locally: local
    assert choose_cut(TABLE, settings, queue_report_ms=80.0, **kwargs) == (1, 2)
    # 59 + 20 < 90 though the report is over 50 ms: the cloud is still faster
    assert choose_cut(TABLE, EdgecutSettings(max_cloud_queue_ms=10.0), queue_report_ms=20.0,
                      **kwargs) == (1, 1)
    stale = {**kwargs, "report_age_s": 6.0}                 # older than probe_interval_s: retry
    assert choose_cut(TABLE, settings, queue_report_ms=500.0, **stale) == (1, 1)
    off = EdgecutSettings(max_cloud_queue_ms=None)
    assert choose_cut(TABLE, off, queue_report_ms=500.0, **kwargs) == (1, 1)


def _scenario(data: dict[str, Any], **strategies: Any) -> Any:
    data["strategies"].update(strategies)
    return scenario_from_dict(data, label="t.toml")


def test_static_decisions_per_class(scenario_data: dict[str, Any]) -> None:
    scenario = _scenario(scenario_data, fixed_cut=3)
    prepared = prepare(scenario)
    table = prepared.tables[0]
    means = [n.uplink_mbps for n in prepared.networks]
    assert static_cuts("edge-only", scenario, prepared.tables, means) == [table.edge_only]
    assert table.cut_ids[static_cuts("cloud-only", scenario, prepared.tables, means)[0]] == 0
    assert table.cut_ids[static_cuts("fixed", scenario, prepared.tables, means)[0]] == 3
    latency = table.latency_ms(means[0])
    assert static_cuts("dads", scenario, prepared.tables, means) == [int(np.argmin(latency))]
    k = static_cuts("neurosurgeon", scenario, prepared.tables, means)[0]
    assert table.kinds[k] == "prefix"
    prefixes = [i for i, kind in enumerate(table.kinds) if kind == "prefix"]
    assert latency[k] == min(latency[prefixes])
    with pytest.raises(UnknownCutError, match=r"strategies\.fixed_cut 999 is not a cut"):
        static_cuts("fixed", _scenario(scenario_data, fixed_cut=999), prepared.tables, means)


def test_dads_turns_to_throughput_under_heavy_load(scenario_data: dict[str, Any]) -> None:
    light = _scenario(scenario_data)
    prepared = prepare(light)
    table = prepared.tables[0]
    means = [table.uplink_mbps]
    k_light = static_cuts("dads", light, prepared.tables, means)[0]
    bottleneck = table.bottleneck_ms(table.uplink_mbps)
    # a rate at which the latency-optimal cut's slowest stage is busy 90 % of the time
    scenario_data["devices"][0]["arrival"]["rate_per_s"] = 0.9 * 1000.0 / bottleneck[k_light]
    heavy = _scenario(scenario_data)
    k_heavy = static_cuts("dads", heavy, prepared.tables, means)[0]
    assert bottleneck[k_heavy] == bottleneck.min()
    scenario_data["strategies"]["dads_heavy_load"] = 5.0
    assert static_cuts("dads", _scenario(scenario_data), prepared.tables, means)[0] == k_light


def test_cascade_escalates_its_share_after_the_local_answer(scenario_data: dict[str, Any]) -> None:
    scenario = _scenario(scenario_data, compare=["cascade", "edge-only"],
                         cascade_escalation_rate=0.25)
    result = simulate(scenario)
    cascade = result.summary["strategies"]["cascade"]
    assert cascade["offloaded_share"] == pytest.approx(0.25, abs=0.05)
    o = result.outcomes["cascade"]
    t = result.prepared.tables[0]
    escalated = o.services.uses_cloud
    np.testing.assert_allclose(o.services.compute_ms[escalated], t.device_ms[t.edge_only])
    assert cascade["latency_ms"]["p99"] > result.summary["strategies"]["edge-only"]["latency_ms"]["p99"]


def test_edgecut_follows_the_link_and_backs_off_a_loaded_cloud(scenario_data: dict[str, Any],
                                                               tmp_path: Any) -> None:
    # Pis on a link that swings between 2 and 40 Mbps: the envelope moves between edge-only
    # (below ~8 Mbps) and the bottleneck cut; the static strategies keep one cut.
    trace = tmp_path / "swing.txt"
    trace.write_text("".join(f"{t} {2.0 if (t // 10) % 2 else 40.0}\n" for t in range(60)))
    scenario_data["devices"][0].update(bandwidth_trace=str(trace), count=10)
    scenario_data["simulation"]["duration_s"] = 60.0
    scenario = _scenario(scenario_data, compare=["dads", "edgecut"])
    result = simulate(scenario)
    cuts = result.summary["strategies"]["edgecut"]["cuts"]["pis"]
    assert len(cuts) >= 2 and len(result.summary["strategies"]["dads"]["cuts"]["pis"]) == 1
    assert (result.summary["strategies"]["edgecut"]["latency_ms"]["p95"]
            < result.summary["strategies"]["dads"]["latency_ms"]["p95"])
    # One cloud replica twice as fast as a Pi, without batching, for 200 Pis: queues build,
    # edgecut sends work back to the devices.
    slow = tmp_path / "slow-cloud.toml"
    slow.write_text("[cloud]\nname = \"slow\"\nspeedup = 2.0\nreplicas = 1\nmax_batch = 1\n")
    scenario_data["devices"][0].pop("bandwidth_trace")
    scenario_data["devices"][0].update(count=200, arrival={"rate_per_s": 2.0})
    scenario_data["cloud"] = {"profile": str(slow), "replicas": 1, "max_batch_size": 1}
    scenario_data["simulation"]["duration_s"] = 10.0
    loaded = _scenario(scenario_data, compare=["cloud-only", "edgecut"])
    prepared = prepare(loaded)
    from edgecut.simulations.ranks import run_ranks

    assert run_ranks(prepared.workload, prepared.tables, prepared.tails,
                     loaded.strategies.edgecut, loaded.cloud, has_cells=False) is None
    o = run_strategy(loaded, prepared, "edgecut")
    local = np.count_nonzero(~o.services.uses_cloud)
    assert 0 < local < prepared.workload.size
