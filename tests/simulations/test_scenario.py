"""Scenario files: every problem reported at once, each naming the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgecut.errors import BadProfileError
from edgecut.simulations.scenario import (
    ScenarioError,
    apply_overrides,
    load_scenario,
    parse_override,
    scenario_from_dict,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


FLEET = """
[simulation]
duration_s = 60.0
[model]
zoo = "chain_cnn"
[[devices]]
name = "phones"
count = {count}
profile = "phone"
network = "lte"
arrival = {{ process = "poisson", rate_per_s = 0.5 }}
"""


def test_a_negative_count_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "fleet.toml", FLEET.format(count=-3))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value) == f"{path}: devices[0].count must be a positive integer, got -3"
    assert isinstance(info.value, BadProfileError) and isinstance(info.value, ValueError)


def test_every_problem_is_reported_at_once(scenario_data: dict[str, Any]) -> None:
    data = scenario_data
    data["simulation"]["duration_s"] = -1
    data["simulation"]["warmup"] = 5
    data["cloud"]["replicas"] = 0
    data["devices"][0]["profile"] = "raspberry-pi-5"
    data["devices"][0]["arrival"] = {"process": "burst", "rate_per_s": 1}
    data["strategies"]["compare"] = ["edge-only", "neurosurgon"]
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(data, label="f.toml")
    lines = str(info.value).splitlines()
    assert all(line.startswith("f.toml: ") for line in lines)
    text = str(info.value)
    assert "simulation.duration_s must be > 0, got -1" in text
    assert "simulation.warmup is not a known key" in text and "did you mean simulation.warmup_s" in text
    assert "cloud.replicas must be a positive integer, got 0" in text
    assert "devices[0].profile cannot be loaded: unknown device 'raspberry-pi-5'" in text
    assert "devices[0].arrival.process must be one of poisson, periodic, trace, got 'burst'" in text
    assert "strategies.compare names an unknown strategy 'neurosurgon'" in text
    assert "did you mean 'neurosurgeon'?" in text
    assert len(lines) == 6


def test_missing_sections_and_strategy_settings(scenario_data: dict[str, Any]) -> None:
    data = scenario_data
    del data["model"]
    data["strategies"]["compare"] = ["fixed", "cascade"]
    data["devices"][0]["cell"] = {"uplink_mbps": 0, "devices": 4}
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(data, label="f.toml")
    text = str(info.value)
    assert "f.toml: model is missing (expected a table [model])" in text
    assert "strategies.fixed_cut is missing" in text
    assert "strategies.cascade_escalation_rate is missing" in text
    assert "devices[0].cell.uplink_mbps must be > 0, got 0" in text
    assert "devices[0].cell.downlink_mbps is missing" in text


def test_files_named_by_the_scenario_must_exist_and_parse(tmp_path: Path,
                                                          scenario_data: dict[str, Any]) -> None:
    _write(tmp_path / "bad-trace.txt", "0 5\n1 -2\n0.5 3\n")
    data = scenario_data
    data["devices"][0]["bandwidth_trace"] = "bad-trace.txt"
    data["model"] = {"file": "missing.onnx"}
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(data, label="f.toml", base_dir=tmp_path)
    text = str(info.value)
    assert "model.file names 'missing.onnx', but no such file exists" in text
    assert "sample 1 throughput must be > 0 Mbps, got -2" in text
    assert "sample 2 time must increase" in text


def test_a_network_given_as_a_trace_needs_a_round_trip(tmp_path: Path,
                                                       scenario_data: dict[str, Any]) -> None:
    _write(tmp_path / "up.txt", "0 5\n1 10\n")
    scenario_data["devices"][0]["network"] = "up.txt"
    with pytest.raises(ScenarioError, match=r"devices\[0\].rtt_ms is missing"):
        scenario_from_dict(scenario_data, label="f.toml", base_dir=tmp_path)
    scenario_data["devices"][0]["rtt_ms"] = 40
    group = scenario_from_dict(scenario_data, label="f.toml", base_dir=tmp_path).devices[0]
    assert group.bandwidth_trace == tmp_path / "up.txt" and group.rtt_ms == 40.0


def test_overrides_set_dotted_keys_with_list_indices(scenario_data: dict[str, Any]) -> None:
    key, values = parse_override("devices.0.count=10,20")
    assert (key, values) == ("devices.0.count", [10, 20])
    assert parse_override("cloud.profile=cpu-server,gpu-server")[1] == ["cpu-server", "gpu-server"]
    data = apply_overrides(scenario_data, {"devices.0.count": 5, "cloud.replicas": 3})
    assert data["devices"][0]["count"] == 5 and data["cloud"]["replicas"] == 3
    assert scenario_data["devices"][0]["count"] == 20  # a copy: the input is left alone
    with pytest.raises(ScenarioError, match=r"devices\.3 is not an index of devices"):
        apply_overrides(scenario_data, {"devices.3.count": 1}, label="f.toml")
    with pytest.raises(ScenarioError, match="expected KEY=v1,v2"):
        parse_override("cloud.replicas")
    bad = apply_overrides(scenario_data, {"devices.0.count": -3})
    with pytest.raises(ScenarioError, match=r"devices\[0\]\.count must be a positive integer"):
        scenario_from_dict(bad, label="f.toml")


def test_defaults_fill_the_optional_keys(scenario_data: dict[str, Any]) -> None:
    del scenario_data["cloud"]
    del scenario_data["strategies"]
    s = scenario_from_dict(scenario_data, label="f.toml")
    assert (s.cloud.replicas, s.cloud.max_batch_size, s.cloud.batch_scaling) == (1, 1, 0.5)
    assert s.strategies.compare == ("edge-only", "cloud-only", "neurosurgeon", "dads", "edgecut")
    assert s.strategies.edgecut.hysteresis == 0.25
    assert s.strategies.edgecut.max_cloud_queue_ms == 50.0


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read the scenario"):
        load_scenario(tmp_path / "nope.toml")
    bad = _write(tmp_path / "bad.toml", "[simulation\n")
    with pytest.raises(ScenarioError, match="not a valid TOML file"):
        load_scenario(bad)
