"""The queues against their invariants and the closed forms of queueing theory."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecut.simulations.queues import cloud_batches, fifo
from edgecut.simulations.run import prepare, run_strategy
from edgecut.simulations.scenario import scenario_from_dict


def _poisson(rate: float, n: int, seed: int) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))


def test_fifo_serves_each_key_in_order_one_at_a_time() -> None:
    rng = np.random.default_rng(3)
    n = 5000
    key = rng.integers(0, 40, n)
    ready = rng.uniform(0, 100, n)
    service = rng.exponential(0.5, n)
    start, end = fifo(key, ready, service)
    assert np.all(start >= ready - 1e-9)
    np.testing.assert_allclose(end - start, service, atol=1e-9)
    for k in range(40):
        rows = np.flatnonzero(key == k)
        rows = rows[np.argsort(ready[rows], kind="stable")]
        assert np.all(np.diff(start[rows]) >= -1e-9)              # FIFO
        assert np.all(start[rows][1:] >= end[rows][:-1] - 1e-7)   # one at a time
        # Lindley's recursion, one request at a time, for this key
        free = 0.0
        for i in rows:
            expected = max(ready[i], free)
            assert abs(start[i] - expected) < 1e-7
            free = expected + service[i]


def test_mm1_against_its_closed_form_and_littles_law() -> None:
    lam, mu, n = 0.5, 1.0, 200_000
    arrival = _poisson(lam, n, 1)
    service = np.random.default_rng(2).exponential(1.0 / mu, n)
    start, end = fifo(np.zeros(n, dtype=np.int64), arrival, service)
    sojourn = end - arrival
    assert abs(np.mean(sojourn) / (1.0 / (mu - lam)) - 1) < 0.05       # W = 1 / (mu - lam)
    assert abs(np.mean(start - arrival) / (lam / (mu * (mu - lam))) - 1) < 0.06  # Wq
    # Little's law: the time-average number in the system equals lambda x W.
    times = np.concatenate([arrival, end])
    steps = np.concatenate([np.ones(n), -np.ones(n)])
    order = np.argsort(times, kind="stable")
    in_system = np.cumsum(steps[order])
    horizon = end.max() - arrival[0]
    area = np.sum(in_system[:-1] * np.diff(times[order]))
    observed_rate = n / horizon
    assert abs((area / horizon) / (observed_rate * np.mean(sojourn)) - 1) < 0.01
    utilisation = np.sum(service) / horizon
    assert utilisation <= 1.0 and abs(utilisation - lam / mu) < 0.02


def test_md1_on_the_device_matches_pollaczek_khinchine(scenario_data: dict[str, Any]) -> None:
    data = scenario_data
    data["devices"][0]["count"] = 1
    data["strategies"]["compare"] = ["edge-only"]
    scenario = scenario_from_dict(data, label="md1.toml")
    prepared = prepare(scenario)
    service_s = prepared.tables[0].device_ms[prepared.tables[0].edge_only] / 1000.0
    rho = 0.5
    data["devices"][0]["arrival"]["rate_per_s"] = rho / service_s
    data["simulation"]["duration_s"] = 40_000 * service_s / rho
    data["simulation"]["warmup_s"] = 0.0
    scenario = scenario_from_dict(data, label="md1.toml")
    prepared = prepare(scenario)
    outcome = run_strategy(scenario, prepared, "edge-only")
    latency = outcome.done_s - prepared.workload.arrival_s
    expected = service_s + rho * service_s / (2 * (1 - rho))     # D + Wq of M/D/1
    assert abs(np.mean(latency) / expected - 1) < 0.03


def test_cloud_batches_keep_their_invariants() -> None:
    rng = np.random.default_rng(5)
    n = 4000
    arrival = np.sort(rng.uniform(0, 10, n))
    tail = rng.integers(0, 3, n)
    work = np.array([2.0, 5.0, 9.0])[tail]
    b = cloud_batches(arrival, tail, work, replicas=3, max_batch=4, max_queue_delay_ms=3.0,
                      batch_scaling=0.5)
    assert np.all(b.start_s >= arrival)                                   # never before arrival
    assert b.batch_size.sum() == n and b.batch_size.max() <= 4            # every request, once
    for r in range(3):                                                    # a replica: one batch
        rows = np.flatnonzero(b.batch_replica == r)                       # at a time
        order = rows[np.argsort(b.batch_start_s[rows])]
        assert np.all(b.batch_start_s[order][1:] >= b.batch_end_s[order][:-1] - 1e-12)
    busy = np.sum(b.batch_end_s - b.batch_start_s)
    assert busy <= 3 * (b.batch_end_s.max() - arrival[0])                 # utilisation <= 1
    # A batch holds one tail, and requests leave in arrival order (FIFO, no overtaking).
    batches: dict[tuple[float, float], set[int]] = {}
    for s, e, t in zip(b.start_s.tolist(), b.end_s.tolist(), tail.tolist(), strict=True):
        batches.setdefault((s, e), set()).add(t)
    assert all(len(tails) == 1 for tails in batches.values())
    assert np.all(np.diff(b.start_s) >= -1e-12)


def test_one_replica_without_batching_is_a_fifo() -> None:
    arrival = _poisson(80.0, 3000, 7)
    work_ms = np.random.default_rng(8).exponential(10.0, 3000)
    b = cloud_batches(arrival, np.zeros(3000, dtype=np.int64), work_ms, replicas=1, max_batch=1,
                      max_queue_delay_ms=0.0, batch_scaling=0.5)
    start, end = fifo(np.zeros(3000, dtype=np.int64), arrival, work_ms / 1000.0)
    np.testing.assert_allclose(b.start_s, start, atol=1e-9)
    np.testing.assert_allclose(b.end_s, end, atol=1e-9)
