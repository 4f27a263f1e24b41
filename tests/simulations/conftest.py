"""Tiny scenarios and hand-made cut tables for the simulator's tests."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from edgecut.simulations.costs import CutTable

BASE: dict[str, Any] = {
    "simulation": {"duration_s": 20.0, "warmup_s": 2.0, "seed": 1, "sla_ms": 300.0},
    "model": {"zoo": "vision_cnn"},
    "cloud": {"profile": "gpu-server", "replicas": 2, "max_batch_size": 4,
              "max_queue_delay_ms": 2.0},
    "devices": [{"name": "pis", "count": 20, "profile": "raspberry-pi-4", "network": "wifi",
                 "arrival": {"process": "poisson", "rate_per_s": 1.0}}],
    "strategies": {"compare": ["edge-only", "cloud-only", "neurosurgeon", "dads", "edgecut"]},
}


def assert_same_times(fast: Any, slow: Any, names: tuple[str, ...], *, atol: float = 1e-9
                      ) -> None:
    """Two engines' Outcomes give the same times in each of `names` (nan where neither has
    the stage)."""
    for name in names:
        np.testing.assert_allclose(getattr(fast, name), getattr(slow, name), atol=atol,
                                   equal_nan=True, err_msg=name)


@pytest.fixture
def scenario_data() -> dict[str, Any]:
    """A fresh copy of a small scenario (20 Raspberry Pis on Wi-Fi, ~400 requests)."""
    return copy.deepcopy(BASE)


def make_table(*, device_ms: list[float], up_bytes: list[float], cloud_ms: list[float],
               rtt_ms: float = 20.0, uplink_mbps: float = 10.0,
               envelope: tuple[tuple[int, float, float], ...] = ()) -> CutTable:
    """A CutTable by hand: cut k = k device nodes; the last cut runs everything locally."""
    n = len(device_ms)
    uses = np.array([k < n - 1 for k in range(n)])
    up = np.array(up_bytes, dtype=float)
    return CutTable(
        cut_ids=np.arange(n), kinds=("prefix",) * n,
        tails=tuple(frozenset(range(k)) for k in range(n)),
        device_ms=np.array(device_ms, dtype=float), encode_ms=np.zeros((2, n)),
        up_wire_bytes=np.array([up, up]), up_bytes=up.astype(np.int64),
        down_bytes=np.where(uses, 40, 0).astype(np.int64), cloud_ms=np.array(cloud_ms, dtype=float),
        decode_ms=np.zeros(n), uses_cloud=uses, rtt_ms=rtt_ms, uplink_mbps=uplink_mbps,
        downlink_per_uplink=2.0,
        power_w={"idle_w": 1.0, "compute_w": 5.0, "transmit_w": 3.0, "receive_w": 2.0},
        envelope=envelope, planned_latency_ms=np.zeros(n))
