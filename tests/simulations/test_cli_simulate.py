"""`edgecut simulate` end to end on a shipped example scenario."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from edgecut.cli import main
from edgecut.simulations import example_names, example_path, load_scenario


def test_the_examples_ship_and_load() -> None:
    assert example_names() == ["city-cameras-wifi", "phones-lte", "rush-hour-3g"]
    for name in example_names():
        assert load_scenario(example_path(name)).device_count >= 1000


def test_an_example_runs_and_writes_the_same_files_twice(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", "example:phones-lte", "--strategy", "edge-only", "--strategy", "edgecut"]
    assert main([*args, "--out", str(tmp_path / "a"), "--requests"]) == 0
    out = capsys.readouterr().out
    assert "phones-lte.toml: 10000 devices" in out and "events/s" in out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    edgecut = summary["strategies"]["edgecut"]
    for key in ("requests", "latency_ms", "sla_violation_rate", "throughput_rps",
                "device_energy_j_per_request", "cloud_utilisation", "bytes_up", "bytes_down"):
        assert key in edgecut
    assert set(edgecut["latency_ms"]) >= {"mean", "p50", "p95", "p99"}
    assert edgecut["requests"] > 50_000
    for png in ("latency_cdf.png", "energy.png", "cloud_utilisation.png"):
        assert (tmp_path / "a" / png).read_bytes()[:4] == b"\x89PNG"
    with (tmp_path / "a" / "requests.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * edgecut["requests"]
    assert {r["strategy"] for r in rows} == {"edge-only", "edgecut"}
    assert main([*args, "--out", str(tmp_path / "b"), "--no-plots"]) == 0
    assert (tmp_path / "a" / "summary.json").read_bytes() == (tmp_path / "b" / "summary.json").read_bytes()
    assert main([*args, "--out", str(tmp_path / "c"), "--no-plots", "--seed", "2"]) == 0
    assert (tmp_path / "c" / "summary.json").read_bytes() != (tmp_path / "a" / "summary.json").read_bytes()


def test_a_sweep_writes_sweep_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "example:rush-hour-3g", "--out", str(tmp_path), "--strategy", "dads",
                 "--sweep", "devices.0.count=50,100", "--sweep", "simulation.duration_s=40",
                 "--executor", "threads"]) == 0
    lines = (tmp_path / "sweep.csv").read_text().splitlines()
    assert lines[0].startswith("devices.0.count,simulation.duration_s,strategy,")
    assert [line.split(",")[:3] for line in lines[1:]] == [["50", "40", "dads"],
                                                          ["100", "40", "dads"]]


def test_a_bad_scenario_prints_every_problem_and_exits_2(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    text = example_path("phones-lte").read_text().replace("count = 8000", "count = -3")
    bad = tmp_path / "fleet.toml"
    bad.write_text(text.replace('bandwidth_trace = "lte-commute.txt"\n', "", 1))
    assert main(["simulate", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: devices[0].count must be a positive integer, got -3" in err
    assert "Traceback" not in err
    assert main(["simulate", "example:nope", "--out", str(tmp_path / "out")]) == 2
    assert "no example scenario 'nope'" in capsys.readouterr().err
