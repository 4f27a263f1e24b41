"""benchmarks/serving.py's building blocks, for real and tiny: one load level for 1 s per
client kind against the endpoint on core 0 (clients on core 1), onnxruntime alone at the
batch sizes formed, and the memory probe. Checks the JSON keys and that no request failed;
asserts no timing (benchmarks measure, tests check behaviour)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgecut.cloud.native_server import available as native_available

REPO = Path(__file__).resolve().parents[2]
KEYS = ("batching_gain_vs_ort_gain", "server_vs_ort", "server_vs_triton", "tails_rss_ratio_8",
        "channel_vs_bare_grpc")

pytestmark = pytest.mark.skipif(
    shutil.which("taskset") is None or (os.cpu_count() or 1) < 2,
    reason="needs taskset and 2 cores (server and load generator pinned apart)")


def test_quick_smoke_writes_the_keys_and_fails_no_request(tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serving.py"), "--quick", "--out", str(out),
         "--workdir", str(tmp_path / "work"), "--levels", "2", "--headline-clients", "2",
         "--models", "small_cnn", "--sections", "throughput,memory",
         "--memory-variants", "repository", "--no-triton", "--seconds", "2",
         "--max-attempts", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["complete"] is True
    for key in KEYS:
        assert key in result
    rows = result["throughput"]["rows"]
    # batching off and on, each driven by tritonclient and by edgecut's own client; the
    # endpoint without shared weights; over grpcio's grpc.server; the bare grpcio floor;
    # where the native transport is built (the endpoint's default then), the endpoint over
    # grpcio's core (the default elsewhere) and the bare native floor
    assert {(r["batching"], r["client"]) for r in rows if r["server"] == "edgecut"} == {
        (False, "triton"), (False, "edgecut"), (True, "triton"), (True, "edgecut")}
    native = native_available()
    assert {r["server"] for r in rows} == {
        "edgecut", "edgecut-unshared", "edgecut-grpcio", "bare-grpcio",
        *(("edgecut-core", "bare-native") if native else ())}
    assert result["throughput"]["edgecut_frontend"] == ("native" if native else "core")
    if native:
        assert set(result["throughput_summary"]["native_vs_grpcio_by_model"]) == {
            "small_cnn/off", "small_cnn/on"}
    for row in rows:
        assert row["failures"] == 0, row["errors"]
        assert row["requests"] > 0, row  # a 1 s window on a busy core once saw none
        assert row["ort_limit_rps"] > 0
    assert result["server_vs_ort"] > 0
    assert result["batching_gain_vs_ort_gain"] > 0
    assert result["server_vs_triton"] is None  # --no-triton: the column is skipped, said why
    assert result["throughput"]["triton_unavailable"] == "--no-triton"
    assert result["tails_rss_ratio_8"] > 0


def _can_limit_cpu() -> bool:
    """Whether this run may make CPU-limited cgroups (root, the v1 cpu hierarchy)."""
    return os.geteuid() == 0 and Path("/sys/fs/cgroup/cpu/cgroup.procs").exists()


def test_headline_loads_every_server_and_protocol_in_turns(tmp_path: Path) -> None:
    """The headline section without Triton: each edgecut cell (core over gRPC and HTTPS, the
    native transport where built, plain HTTP) loaded with stock tritonclient clients, gRPC
    and HTTP, every request answered."""
    out = tmp_path / "serving.json"
    # As root, every server also runs in a CPU-limited cgroup of its own (--server-cpu-quota),
    # here a whole core's worth, so the limit changes nothing but is set up and removed.
    quota = ["--server-cpu-quota", "1"] if _can_limit_cpu() else []
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serving.py"), "--quick", "--out", str(out),
         "--workdir", str(tmp_path / "work"), "--sections", "headline",
         "--headline-models", "small_cnn", "--headline-clients", "2", "--rounds", "1",
         "--no-triton", "--seconds", "1", "--max-attempts", "1", *quota],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    section = result["headline"]
    assert result["machine"]["server_cpu_quota"] == (1.0 if quota else None)
    if quota:
        assert not list(Path("/sys/fs/cgroup/cpu").glob("edgecut-bench-*")), \
            "a server's cgroup was left behind"
    cells = {("edgecut-core", "grpc"), ("edgecut-core", "https"), ("edgecut-plain", "http"),
             *((("edgecut-native", "grpc"),) if native_available() else ())}
    assert {(r["server"], r["protocol"], r["batching"]) for r in section["rows"]} == {
        (*cell, batching) for cell in cells for batching in (False, True)}
    for run in section["runs"]:
        assert run["failures"] == 0 and run["requests"] > 0, run
        assert run["mean_batch"] is not None and run["mean_batch"] >= 1, run
        assert run["server_busy"] > 0, run  # the server's CPU in the load's own window
    assert section["ratios"] == {}  # no Triton: nothing to divide by, and it says why
    assert section["triton_unavailable"] == "--no-triton"
