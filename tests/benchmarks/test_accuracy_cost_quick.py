"""benchmarks/accuracy_cost.py on a few held-out digits: every placement runs, the JSON has
its keys, and each row's accuracy is a share of the samples (figures are never asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy_cost.py"
PLACEMENTS = ["device-only", "device-only int8", "cloud-only", "split", "split + int8 codec",
              "quantised head", "cascade", "early exit"]


def test_quick_run_writes_every_placement(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("accuracy_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "ac.json"
    assert module.main(["--out", str(out), "--plot", str(tmp_path / "ac.png"),
                        "--samples", "20"]) == 0
    result = json.loads(out.read_text())
    assert [r["placement"] for r in result["rows"]] == PLACEMENTS
    for row in result["rows"]:
        assert row["samples"] == 20 and 0 <= row["accuracy"] <= 1
        assert row["energy_mj"] >= 0 and row["latency_ms"] >= 0
    by_name = {r["placement"]: r for r in result["rows"]}
    assert by_name["device-only"]["cloud_share"] == 0 and by_name["cloud-only"]["cloud_share"] == 1
    assert (tmp_path / "ac.png").stat().st_size > 1000
