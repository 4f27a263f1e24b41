"""Cut search: every solver against brute force on random small DAGs, constraints, scale."""

from __future__ import annotations

import doctest
import importlib
import math
import random
import time
from typing import Any

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecut.errors import NoFeasibleCutError, UserInputError
from edgecut.partitioner.cost import (
    Constraints,
    CostParameters,
    CutCost,
    estimate_cut,
    evaluate_linear,
    linear_weights,
    objective_key,
)
from edgecut.partitioner.costgraph import CostGraph, CostNode, CostTensor, chain_costgraph
from edgecut.partitioner.search import best_cut
from edgecut.partitioner.search.bruteforce import all_cuts, down_sets
from edgecut.partitioner.search.mincut import min_cut
from edgecut.partitioner.search.scan import scan_prefixes

REL = 1e-9


@st.composite
def random_dag(draw: Any, max_nodes: int = 12) -> CostGraph:
    """Up to `max_nodes` nodes under a shuffled numbering; 1-2 inputs (maybe pinned), tensors
    with 0..3 readers, random graph outputs, some zero costs and sizes."""
    n = draw(st.integers(1, max_nodes))
    label = draw(st.permutations(range(n)))  # topological position -> node index
    cost = st.one_of(st.just(0.0), st.floats(0.01, 100, allow_nan=False))
    size = st.one_of(st.just(0), st.integers(1, 5_000_000))
    nodes = tuple(
        CostNode(index=i, name=f"n{i}", device_ms=draw(cost), cloud_ms=draw(cost),
                 weight_bytes=draw(st.integers(0, 10_000)))
        for i in range(n)
    )
    tensors: list[CostTensor] = []
    for j in range(draw(st.integers(1, 2))):
        readers = draw(st.lists(st.integers(0, n - 1), max_size=3, unique=True))
        tensors.append(CostTensor(name=f"in{j}", bytes=draw(size), producer=None,
                                  consumers=tuple(label[k] for k in readers),
                                  pinned_on_device=draw(st.booleans()) and draw(st.booleans())))
    for k in range(n):
        for j in range(draw(st.integers(1, 2))):
            later = st.lists(st.integers(k + 1, n - 1), max_size=3, unique=True) if k + 1 < n else st.just([])
            readers = draw(later)
            tensors.append(CostTensor(name=f"t{k}_{j}", bytes=draw(size), producer=label[k],
                                      consumers=tuple(label[r] for r in readers),
                                      is_graph_output=not readers or draw(st.booleans())))
    return CostGraph(nodes=nodes, tensors=tuple(tensors), order=tuple(label))


@st.composite
def random_params(draw: Any) -> CostParameters:
    speed = st.floats(0.05, 2000, allow_nan=False)
    watts = st.floats(0, 10, allow_nan=False)
    return CostParameters(
        uplink_mbps=draw(speed), downlink_mbps=draw(speed), rtt_ms=draw(st.floats(0, 300)),
        encode_mbps=draw(st.one_of(st.just(float("inf")), speed)),
        decode_mbps=draw(st.one_of(st.just(float("inf")), speed)),
        compression_ratio=draw(st.floats(0.5, 6)), cloud_queue_ms=draw(st.floats(0, 50)),
        idle_w=draw(watts), compute_w=draw(watts), transmit_w=draw(watts), receive_w=draw(watts),
    )


def _best(cuts: list[tuple[frozenset[int], CutCost]], objective: str) -> float:
    return min(objective_key(c, objective)[0] for _, c in cuts)


@pytest.mark.parametrize("name", ["edgecut.partitioner.search", "edgecut.partitioner.search.scan",
                                  "edgecut.partitioner.search.mincut",
                                  "edgecut.partitioner.search.bruteforce"])
def test_docstring_examples_run(name: str) -> None:
    assert doctest.testmod(importlib.import_module(name)).failed == 0


@settings(max_examples=60, deadline=None)
@given(random_dag(), random_params())
def test_linear_weights_reproduce_latency_and_energy(graph: CostGraph, params: CostParameters) -> None:
    lat = linear_weights(graph, params, "latency")
    energy = linear_weights(graph, params, "energy")
    for device in down_sets(graph):
        try:
            cost = estimate_cut(graph, device, params)
        except NoFeasibleCutError:
            assert evaluate_linear(graph, lat, device) == math.inf
            continue
        assert evaluate_linear(graph, lat, device) == pytest.approx(cost.latency_ms, rel=1e-9, abs=1e-9)
        assert evaluate_linear(graph, energy, device) == pytest.approx(cost.energy_j, rel=1e-9, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(random_dag(), random_params(), st.sampled_from(["latency", "energy"]))
def test_mincut_equals_bruteforce(graph: CostGraph, params: CostParameters, objective: str) -> None:
    device, cost = min_cut(graph, params, objective)
    assert graph.is_down_set(device)
    assert estimate_cut(graph, device, params) == cost
    oracle = _best(all_cuts(graph, params), objective)
    assert objective_key(cost, objective)[0] == pytest.approx(oracle, rel=REL, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(random_dag(max_nodes=8), random_params(), st.sampled_from(["latency", "energy"]))
def test_every_flow_func_agrees(graph: CostGraph, params: CostParameters, objective: str) -> None:
    ours = min_cut(graph, params, objective)[1]  # default: preflow-push
    for flow in (nx.algorithms.flow.edmonds_karp, nx.algorithms.flow.shortest_augmenting_path):
        theirs = min_cut(graph, params, objective, flow_func=flow)[1]
        assert objective_key(theirs, objective)[0] == pytest.approx(objective_key(ours, objective)[0],
                                                                    rel=REL, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(random_dag(), random_params())
def test_scan_is_exact_over_prefixes(graph: CostGraph, params: CostParameters) -> None:
    scanned = dict(scan_prefixes(graph, params))
    for k in range(len(graph.nodes) + 1):
        try:
            direct = estimate_cut(graph, graph.prefix(k), params)
        except NoFeasibleCutError:
            assert k not in scanned
            continue
        got = scanned[k]
        for field in ("latency_ms", "energy_j", "bottleneck_ms", "uplink_ms", "cloud_ms"):
            assert getattr(got, field) == pytest.approx(getattr(direct, field), rel=REL, abs=1e-12)
        assert (got.up_bytes, got.down_bytes, got.device_memory_bytes) == (
            direct.up_bytes, direct.down_bytes, direct.device_memory_bytes)
    for objective in ("latency", "energy"):
        scan = best_cut(graph, params, objective=objective, solver="scan").cost
        exact = best_cut(graph, params, objective=objective).cost
        assert objective_key(scan, objective)[0] >= objective_key(exact, objective)[0] * (1 - REL) - 1e-12


@settings(max_examples=80, deadline=None)
@given(random_dag(max_nodes=9), random_params())
def test_throughput_minimises_the_slowest_stage(graph: CostGraph, params: CostParameters) -> None:
    scan = best_cut(graph, params, objective="throughput")
    assert scan.solver == "scan"
    assert scan.cost.bottleneck_ms == min(c.bottleneck_ms for _, c in scan_prefixes(graph, params))
    brute = best_cut(graph, params, objective="throughput", solver="bruteforce")
    assert brute.cost.bottleneck_ms == min(c.bottleneck_ms for _, c in all_cuts(graph, params))
    assert brute.cost.bottleneck_ms <= scan.cost.bottleneck_ms * (1 + REL)
    with pytest.raises(UserInputError, match="cannot maximise throughput"):
        best_cut(graph, params, objective="throughput", solver="mincut")


@settings(max_examples=120, deadline=None)
@given(random_dag(max_nodes=9), random_params(), st.sampled_from(["latency", "energy"]),
       st.floats(0, 1), st.floats(0, 1), st.booleans(), st.booleans())
def test_constrained_search_is_feasible_and_never_beats_the_oracle(
    graph: CostGraph, params: CostParameters, objective: str, mem_q: float, energy_q: float,
    limit_memory: bool, limit_energy: bool,
) -> None:
    cuts = all_cuts(graph, params)
    memories = sorted(c.device_memory_bytes for _, c in cuts)
    energies = sorted(c.energy_j for _, c in cuts)
    constraints = Constraints(
        device_memory_bytes=memories[int(mem_q * (len(memories) - 1))] if limit_memory else None,
        energy_budget_j=energies[int(energy_q * (len(energies) - 1))] if limit_energy else None,
    )
    feasible = [c for _, c in cuts if constraints.admits(c)]
    if not feasible:
        for solver in ("auto", "mincut", "scan", "bruteforce"):
            with pytest.raises(NoFeasibleCutError):
                best_cut(graph, params, objective=objective, constraints=constraints, solver=solver)
        return
    oracle = min(objective_key(c, objective)[0] for c in feasible)
    # solver="auto" enumerates small graphs when a limit binds: exact.
    auto = best_cut(graph, params, objective=objective, constraints=constraints)
    assert auto.exact and constraints.admits(auto.cost)
    assert objective_key(auto.cost, objective)[0] == pytest.approx(oracle, rel=REL, abs=1e-12)
    # solver="mincut" falls back to Lagrangian cuts and prefixes: feasible, and it finds a
    # cut whenever some prefix is feasible.
    prefix_ok = [c for _, c in scan_prefixes(graph, params) if constraints.admits(c)]
    try:
        result = best_cut(graph, params, objective=objective, constraints=constraints, solver="mincut")
    except NoFeasibleCutError:
        assert not prefix_ok
        return
    assert constraints.admits(result.cost)
    assert objective_key(result.cost, objective)[0] >= oracle * (1 - REL) - 1e-12
    if prefix_ok:
        best_prefix = min(objective_key(c, objective)[0] for c in prefix_ok)
        assert objective_key(result.cost, objective)[0] <= best_prefix * (1 + REL) + 1e-12
    if result.exact:
        assert objective_key(result.cost, objective)[0] == pytest.approx(oracle, rel=REL, abs=1e-12)


def _wide_then_narrow() -> CostGraph:
    """x (1 MB) -> n0 -> n1 -> n2 -> n3 (tiny output): n0..n2 hold big weights."""
    g = chain_costgraph(device_ms=[1, 1, 1, 50], cloud_ms=[0.1, 0.1, 0.1, 0.5],
                        tensor_bytes=[1_000_000, 400_000, 100_000, 1_000, 10])
    nodes = tuple(CostNode(index=n.index, name=n.name, device_ms=n.device_ms, cloud_ms=n.cloud_ms,
                           weight_bytes=w) for n, w in zip(g.nodes, [10_000, 20_000, 4_000_000, 0],
                                                            strict=True))
    return CostGraph(nodes=nodes, tensors=g.tensors, order=g.order)


def test_memory_limit_forces_a_smaller_head() -> None:
    g = _wide_then_narrow()
    params = CostParameters(uplink_mbps=10, downlink_mbps=10, rtt_ms=10)
    free = best_cut(g, params)
    assert free.device_nodes == {0, 1, 2} and free.exact
    limit = free.cost.device_memory_bytes - 1
    small = best_cut(g, params, constraints=Constraints(device_memory_bytes=limit), solver="mincut")
    assert small.device_nodes == {0, 1} and small.cost.device_memory_bytes <= limit
    assert small.solver == "mincut+fallback" and not small.exact
    assert small.cost.latency_ms > free.cost.latency_ms


def test_impossible_limits_name_the_constraint_and_the_least_value() -> None:
    g = _wide_then_narrow()
    params = CostParameters(uplink_mbps=10, downlink_mbps=10, rtt_ms=10, compute_w=2, transmit_w=1)
    with pytest.raises(NoFeasibleCutError, match=r"\(10 bytes\): .* is 0.954 MiB \(1000000 bytes\); "
                                                 r"allow at least that \(--device-memory-mib 0.954\)"):
        best_cut(g, params, constraints=Constraints(device_memory_bytes=10))
    least = min(c.energy_j for _, c in all_cuts(g, params))
    with pytest.raises(NoFeasibleCutError, match=f"energy_budget_j=0.0001: .* is {least:.6g} J"):
        best_cut(g, params, constraints=Constraints(energy_budget_j=0.0001))


def test_unknown_solver_objective_and_big_bruteforce_are_refused() -> None:
    g = chain_costgraph(device_ms=[1] * 21, cloud_ms=[1] * 21, tensor_bytes=[1] * 22)
    params = CostParameters(uplink_mbps=1, downlink_mbps=1)
    with pytest.raises(UserInputError, match="solver must be one of"):
        best_cut(g, params, solver="magic")  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="objective must be one of"):
        best_cut(g, params, objective="accuracy")  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="at most 20 nodes"):
        list(down_sets(g))


def random_big_dag(n: int, seed: int = 0) -> CostGraph:
    """A layered network-like DAG: mostly chains with skip connections and fan-out."""
    rng = random.Random(seed)
    nodes = tuple(CostNode(index=i, name=f"n{i}", device_ms=rng.uniform(0.05, 0.2),
                           cloud_ms=rng.uniform(0.001, 0.01), weight_bytes=rng.randint(0, 10**6))
                  for i in range(n))
    readers: list[list[int]] = [[] for _ in range(n)]
    for k in range(1, n):
        for src in {k - 1, *(max(0, k - rng.randint(2, 30)) for _ in range(rng.randint(0, 2)))}:
            readers[src].append(k)
    # Activations shrink with depth (as in a CNN), so the best head is neither empty nor full.
    tensors = [CostTensor(name="x", bytes=3_000_000, producer=None, consumers=(0,))]
    tensors += [CostTensor(name=f"t{k}", bytes=int(rng.uniform(0.5, 2) * 3_000_000 * 0.998**k),
                           producer=k,
                           consumers=tuple(sorted(readers[k])), is_graph_output=k == n - 1)
                for k in range(n)]
    return CostGraph(nodes=nodes, tensors=tuple(tensors), order=tuple(range(n)))


def test_five_thousand_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    graph = random_big_dag(5000)
    params = CostParameters(uplink_mbps=10, downlink_mbps=50, rtt_ms=30, compute_w=3, idle_w=0.5,
                            transmit_w=1.5, receive_w=1)
    for objective in ("latency", "energy"):
        start = time.perf_counter()
        result = best_cut(graph, params, objective=objective, solver="mincut")
        took = time.perf_counter() - start
        scan = best_cut(graph, params, objective=objective, solver="scan")
        assert objective_key(result.cost, objective) <= objective_key(scan.cost, objective)
        with capsys.disabled():
            print(f"\n5000-node DAG, {objective}: best_cut(solver='mincut') {took:.2f} s, "
                  f"{len(result.device_nodes)} device nodes")


@pytest.mark.parametrize("name", ["chain_cnn", "residual_dag", "multi_branch", "fpn", "transformer_block",
                                  "if_model", "loop_model"])
def test_zoo_models_mincut_never_loses_to_prefixes_or_enumeration(name: str) -> None:
    from edgecut import zoo
    from edgecut.partitioner.costgraph import costgraph_from_model, node_names

    model = getattr(zoo, name)()
    rng = random.Random(name)
    names = node_names(model)
    device = {n: rng.uniform(0.1, 3) for n in names}
    cloud = {n: device[n] * rng.uniform(0.02, 0.2) for n in names}
    graph = costgraph_from_model(model, None, device, cloud)
    for mbps in (0.5, 5, 50, 500):
        params = CostParameters(uplink_mbps=mbps, downlink_mbps=4 * mbps, rtt_ms=20, compute_w=3,
                                idle_w=0.4, transmit_w=1.2, receive_w=0.8)
        for objective in ("latency", "energy"):
            exact = best_cut(graph, params, objective=objective)
            scan = best_cut(graph, params, objective=objective, solver="scan")
            best, prefix = objective_key(exact.cost, objective)[0], objective_key(scan.cost, objective)[0]
            assert best <= prefix * (1 + REL)
            if len(graph.nodes) <= 20:
                oracle = best_cut(graph, params, objective=objective, solver="bruteforce")
                assert objective_key(exact.cost, objective)[0] == pytest.approx(
                    objective_key(oracle.cost, objective)[0], rel=REL)
