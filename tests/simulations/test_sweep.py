"""Sweeps give the same sweep.csv on every executor: processes, threads, dask, a Dask cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgecut.simulations.output import write_sweep
from edgecut.simulations.scenario import ScenarioError
from edgecut.simulations.sweep import run_sweep

GRID = [("cloud.replicas", [1, 2]), ("devices.0.count", [5])]


def _small(data: dict[str, Any]) -> dict[str, Any]:
    data["simulation"]["duration_s"] = 5.0
    data["simulation"]["warmup_s"] = 0.0
    data["strategies"]["compare"] = ["dads", "edgecut"]
    return data


def _csv(data: dict[str, Any], executor: str, out: Path) -> str:
    rows = run_sweep(data, "t.toml", ".", GRID, executor=executor, workers=2)
    assert [p for p, _ in rows] == [{"cloud.replicas": 1, "devices.0.count": 5},
                                    {"cloud.replicas": 2, "devices.0.count": 5}]
    return write_sweep(rows, [k for k, _ in GRID], out).read_text()


def test_threads_processes_and_dask_give_the_same_file(scenario_data: dict[str, Any],
                                                       tmp_path: Path) -> None:
    data = _small(scenario_data)
    threads = _csv(data, "threads", tmp_path / "threads")
    lines = threads.splitlines()
    assert lines[0].startswith("cloud.replicas,devices.0.count,strategy,requests,latency_mean_ms")
    assert len(lines) == 1 + 2 * 2 and lines[1].startswith("1,5,dads,")
    assert _csv(data, "processes", tmp_path / "processes") == threads
    pytest.importorskip("dask")
    assert _csv(data, "dask", tmp_path / "dask") == threads


def test_a_dask_cluster_on_loopback(scenario_data: dict[str, Any], tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    data = _small(scenario_data)
    threads = _csv(data, "threads", tmp_path / "threads")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  protocol="tcp", host="127.0.0.1", dashboard_address=None) as cluster:
        address = cluster.scheduler_address.removeprefix("tcp://")
        assert _csv(data, f"dask://{address}", tmp_path / "cluster") == threads


def test_a_bad_swept_value_fails_before_anything_runs(scenario_data: dict[str, Any]) -> None:
    with pytest.raises(ScenarioError, match=r"t\.toml: devices\[0\]\.count must be a positive "
                                            r"integer, got -3"):
        run_sweep(scenario_data, "t.toml", ".", [("devices.0.count", [10, -3])],
                  executor="threads")
    with pytest.raises(ValueError, match="--executor must be"):
        run_sweep(scenario_data, "t.toml", ".", [("cloud.replicas", [1])], executor="ray")
