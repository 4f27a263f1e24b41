"""The simulator's service times are the cost model's: they equal `edgecut plan --explain`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecut.cli import main
from edgecut.simulations.costs import model_file
from edgecut.simulations.run import prepare
from edgecut.simulations.scenario import scenario_from_dict

COMPONENTS = ("device_ms", "encode_ms", "uplink_ms", "rtt_ms", "cloud_ms", "downlink_ms",
              "decode_ms")


@pytest.mark.parametrize("device,network", [("raspberry-pi-4", "wifi"), ("phone", "lte")])
def test_components_equal_the_planners_explain_json(device: str, network: str, scenario_data,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    scenario_data["devices"][0].update(profile=device, network=network)
    scenario = scenario_from_dict(scenario_data, label="t.toml")
    table = prepare(scenario).tables[0]
    assert main(["plan", str(model_file(scenario)), "--device", device, "--network", network,
                 "--explain", "--json", "--no-measure"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["id"] for r in rows) == table.cut_ids.tolist()
    for row in rows:
        k = table.position(row["id"])
        got = table.components(k, table.uplink_mbps)
        for name in COMPONENTS:
            assert float(got[name]) == pytest.approx(row[name], rel=1e-9, abs=1e-9), name
        assert float(table.latency_ms(table.uplink_mbps)[k]) == pytest.approx(row["latency_ms"],
                                                                             rel=1e-9)


def test_a_plan_folder_is_planned_from_its_full_model(tmp_path: Path, scenario_data) -> None:
    scenario = scenario_from_dict(scenario_data, label="t.toml")
    path = model_file(scenario)
    assert main(["plan", str(path), "--device", "raspberry-pi-4", "--network", "wifi",
                 "--no-measure", "--out", str(tmp_path / "plan")]) == 0
    scenario_data["model"] = {"plan": str(tmp_path / "plan")}
    from_plan = prepare(scenario_from_dict(scenario_data, label="t.toml")).tables[0]
    from_file = prepare(scenario).tables[0]
    np.testing.assert_allclose(from_plan.planned_latency_ms, from_file.planned_latency_ms)
