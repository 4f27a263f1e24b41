"""benchmarks/faults.py runs end to end on a few rows and writes its table as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_faults_benchmark_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "faults.py"), "--rows", "unparseable,silent_tcp",
         "--devices", "2", "--requests", "5", "--out", str(out)],
        capture_output=True, text=True, timeout=240, check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [r["row"] for r in doc["rows"]] == ["unparseable", "silent_tcp"]
    for row in doc["rows"]:
        assert row["requests"] == 10
        assert row["cloud"] + row["local"] + row["typed"] + row["lost"] == row["requests"]
    assert doc["lost_total"] == sum(r["lost"] for r in doc["rows"])
    assert "lost" in result.stdout and "p99 ms" in result.stdout
