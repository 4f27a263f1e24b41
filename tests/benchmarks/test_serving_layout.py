"""benchmarks/serving's CPU layout: CPU lists, disjoint server and client sets, and the merge
of load generators that ran side by side (the parts a 2-core machine cannot run for real)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.serving.loadgen import LoadResult  # noqa: E402
from benchmarks.serving.processes import CpuLayout, merge_loads, parse_cpus  # noqa: E402


def test_cpu_lists_read_like_taskset() -> None:
    assert parse_cpus("0") == (0,)
    assert parse_cpus("0-3") == (0, 1, 2, 3)
    assert parse_cpus("4-6,9,5") == (4, 5, 6, 9)
    for bad in ("", "a", "1-", "3-x", "-2"):
        with pytest.raises(ValueError, match="CPU list"):
            parse_cpus(bad)


def test_server_and_client_cpus_must_not_overlap() -> None:
    assert CpuLayout(server=(0, 1), clients=(2, 3)).describe() == (
        "server on cores 0,1, clients on cores 2,3")
    assert CpuLayout().describe() == "server on core 0, clients on core 1"
    with pytest.raises(ValueError, match="overlap"):
        CpuLayout(server=(0, 1), clients=(1, 2))
    with pytest.raises(ValueError, match="at least one"):
        CpuLayout(server=(), clients=(1,))


def _part(latencies: list[float], **fields: object) -> LoadResult:
    base: dict = {"requests": len(latencies), "failures": 0,
                  "throughput_rps": len(latencies) / 2.0, "p50_ms": 0.0, "p99_ms": 0.0,
                  "mean_ms": 0.0, "window_s": 2.0, "latencies_ms": latencies}
    base.update(fields)
    return LoadResult(**base)


def test_merged_load_sums_counts_and_takes_percentiles_over_all_latencies() -> None:
    fast = [1.0] * 90
    slow = [10.0] * 10
    merged = merge_loads([_part(fast), _part(slow, failures=2, errors=["E: boom"],
                                             p99_from_schedule_ms=7.0)])
    assert merged.requests == 100
    assert merged.failures == 2
    assert merged.throughput_rps == pytest.approx(50.0)
    assert merged.p50_ms == pytest.approx(1.0)
    assert merged.p99_ms == pytest.approx(np.percentile(fast + slow, 99))
    assert merged.mean_ms == pytest.approx(1.9)
    assert merged.errors == ["E: boom"]
    assert merged.p99_from_schedule_ms == 7.0
    assert merged.processes == 2
    assert merged.latencies_ms is None  # the raw samples are not carried into the JSON
