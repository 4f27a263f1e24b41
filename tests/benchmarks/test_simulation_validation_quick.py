"""benchmarks/simulation_validation.py end to end on one tiny configuration, and its argument
errors. No latency is asserted (the machine is shared): the table is written, every strategy
has its requests and both simulations, and no cgroup or namespace is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.simulation_validation import Configuration  # noqa: E402


def test_configurations_parse_and_name_the_bad_one() -> None:
    assert Configuration.parse("vision_cnn:0.5:50") == Configuration("vision_cnn", 0.5, 50.0)
    with pytest.raises(SystemExit, match="MODEL:CPU_SHARE:MBPS"):
        Configuration.parse("vision_cnn:0.5")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroup cpu quota, ip netns, tc)")
def test_one_configuration_writes_table_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "validation.json"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "simulation_validation.py"), "--configs",
         "fpn:0.5:50", "--requests", "6", "--quick", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    doc = json.loads(out.read_text())
    (conf,) = doc["configurations"]
    assert conf["model"] == "fpn" and conf["cpu_share"] == 0.5
    assert [r["strategy"] for r in conf["rows"]] == ["edge-only", "cloud-only", "fixed"]
    for row in conf["rows"]:
        assert row["requests"] == 6 and row["errors"] == 0, row["error_examples"]
        for label in ("profiled", "corrected"):
            assert row[label]["p50_ms"] > 0 and row[label]["ratio_p95"] > 0
    assert conf["one_byte_infer_ms"] > 0 and conf["device_profile"]["scale"] > 0
    assert Path(conf["plot"]).exists()
    assert "p50 ratio" in stdout
    groups = Path("/sys/fs/cgroup/cpu")
    assert not [g for g in groups.glob(f"edgecut-bench-{proc.pid}-*")]
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=False).stdout
    slot = 1 + proc.pid % 250  # the script's link slot (shaper.default_slot in its process)
    assert f"ecfault{slot}" not in namespaces.split()
