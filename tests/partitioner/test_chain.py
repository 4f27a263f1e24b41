"""The k-hop chain planner: the programme against brute force and nested down-sets on random
DAGs, memory limits, throughput, and the slices of real models chained equal the full model."""

from __future__ import annotations

import doctest
import importlib
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecut.errors import NoFeasibleCutError, UserInputError
from edgecut.partitioner.chain import Hop, Link, _Model, best_chain, estimate_chain
from edgecut.partitioner.chain_downsets import cost_of_parts, position_sets
from edgecut.partitioner.costgraph import CostGraph, CostNode, CostTensor, chain_costgraph

REL = 1e-7


@st.composite
def random_dag(draw: Any, max_nodes: int = 9) -> CostGraph:
    """Nodes under a shuffled numbering, 1-2 inputs, tensors with 0..3 readers, outputs."""
    n = draw(st.integers(1, max_nodes))
    label = draw(st.permutations(range(n)))
    size = st.one_of(st.just(0), st.integers(1, 2_000_000))
    nodes = tuple(CostNode(index=i, name=f"n{i}", device_ms=1.0, cloud_ms=1.0,
                           weight_bytes=draw(st.integers(0, 100_000))) for i in range(n))
    tensors: list[CostTensor] = []
    for j in range(draw(st.integers(1, 2))):
        readers = draw(st.lists(st.integers(0, n - 1), max_size=3, unique=True))
        tensors.append(CostTensor(name=f"in{j}", bytes=draw(size), producer=None,
                                  consumers=tuple(label[k] for k in readers)))
    for k in range(n):
        later = (st.lists(st.integers(k + 1, n - 1), max_size=3, unique=True) if k + 1 < n
                 else st.just([]))
        readers = draw(later)
        tensors.append(CostTensor(name=f"t{k}", bytes=draw(size), producer=label[k],
                                  consumers=tuple(label[r] for r in readers),
                                  is_graph_output=not readers or draw(st.booleans())))
    return CostGraph(nodes=nodes, tensors=tuple(tensors), order=tuple(label))


@st.composite
def random_chain(draw: Any, graph: CostGraph, hops: int) -> tuple[list[Hop], list[Link]]:
    n = len(graph.nodes)
    ms = st.one_of(st.just(0.0), st.floats(0.01, 50, allow_nan=False))
    memory = st.one_of(st.none(), st.integers(0, 6_000_000))
    kinds = ["device", *["helper"] * (hops - 2), "cloud"][:hops]
    made = [Hop(name=f"h{j}", kind=kinds[j], node_ms=tuple(draw(ms) for _ in range(n)),
                memory_bytes=None if j == hops - 1 else draw(memory),
                run_overhead_ms=draw(st.floats(0, 3))) for j in range(hops)]
    speed = st.floats(0.5, 2000, allow_nan=False)
    links = [Link(name=f"l{i}", uplink_mbps=draw(speed), downlink_mbps=draw(speed),
                  rtt_ms=draw(st.floats(0, 50)), compression_ratio=draw(st.floats(1, 3)))
             for i in range(hops - 1)]
    return made, links


@st.composite
def problems(draw: Any, max_nodes: int = 9) -> tuple[CostGraph, list[Hop], list[Link]]:
    graph = draw(random_dag(max_nodes))
    hops, links = draw(random_chain(graph, draw(st.integers(1, 4))))
    return graph, hops, links


def _value(graph: CostGraph, hops: list[Hop], links: list[Link], objective: str,
           solver: str) -> float | None:
    try:
        result = best_chain(graph, hops, links, objective=objective, solver=solver)
    except NoFeasibleCutError:
        return None
    cost = result.cost
    assert cost.feasible
    return cost.latency_ms if objective == "latency" else cost.bottleneck_ms


@pytest.mark.parametrize("name", ["edgecut.partitioner.chain", "edgecut.partitioner.chain_downsets",
                                  "edgecut.partitioner.chain_extract"])
def test_docstring_examples_run(name: str) -> None:
    assert doctest.testmod(importlib.import_module(name)).failed == 0


@settings(max_examples=120, deadline=None)
@given(problems(), st.sampled_from(["latency", "throughput"]))
def test_programme_equals_brute_force_on_random_dags(problem: Any, objective: str) -> None:
    graph, hops, links = problem
    dp = _value(graph, hops, links, objective, "dp")
    brute = _value(graph, hops, links, objective, "bruteforce")
    assert (dp is None) == (brute is None)
    if dp is not None and brute is not None:
        assert math.isclose(dp, brute, rel_tol=REL, abs_tol=1e-9)


@settings(max_examples=80, deadline=None)
@given(problems())
def test_tables_equal_the_set_based_cost_at_every_tuple(problem: Any) -> None:
    import itertools

    graph, hops, links = problem
    model = _Model(graph, hops, links)
    n = len(graph.nodes)
    for cuts in itertools.islice(itertools.combinations_with_replacement(range(n + 1),
                                                                         len(hops) - 1), 60):
        fast = model.cost(cuts)
        unlimited = [Hop(name=h.name, node_ms=h.node_ms, run_overhead_ms=h.run_overhead_ms)
                     for h in hops]
        slow = cost_of_parts(graph, unlimited, links, position_sets(graph, cuts))
        assert slow is not None
        assert math.isclose(fast.latency_ms, slow.latency_ms, rel_tol=REL, abs_tol=1e-9)
        assert math.isclose(fast.bottleneck_ms, slow.bottleneck_ms, rel_tol=REL, abs_tol=1e-9)
        assert [h.memory_bytes for h in fast.hops] == [h.memory_bytes for h in slow.hops]
        assert [(c.up_bytes, c.down_bytes) for c in fast.links] == \
               [(c.up_bytes, c.down_bytes) for c in slow.links]


@settings(max_examples=40, deadline=None)
@given(problems(max_nodes=6))
def test_down_sets_are_never_worse_than_positions(problem: Any) -> None:
    graph, hops, links = problem
    hops = [Hop(name=h.name, node_ms=h.node_ms, run_overhead_ms=h.run_overhead_ms)
            for h in hops]  # memory follows the run order, which differs for down-sets
    if len(hops) > 3:
        hops, links = hops[:3], links[:2]
    dp = _value(graph, hops, links, "latency", "dp")
    downset = _value(graph, hops, links, "latency", "downset")
    assert dp is not None and downset is not None
    assert downset <= dp * (1 + REL) + 1e-9


def test_three_hops_put_each_node_where_it_is_fast() -> None:
    g = chain_costgraph(device_ms=[1] * 6, cloud_ms=[1] * 6, tensor_bytes=[10**6] + [100] * 6)
    hops = [Hop(name="device", node_ms=(1, 1, 50, 50, 50, 50)),
            Hop(name="helper", node_ms=(50, 50, 1, 1, 50, 50)),
            Hop(name="cloud", node_ms=(50, 50, 50, 50, 1, 1))]
    links = [Link(name="wifi", uplink_mbps=100, downlink_mbps=100, rtt_ms=1),
             Link(name="wan", uplink_mbps=10, downlink_mbps=10, rtt_ms=20)]
    result = best_chain(g, hops, links)
    assert result.cuts == (2, 4)
    assert [h.nodes for h in result.cost.hops] == [2, 2, 2]
    assert result.cost.links[1].up_bytes == 100


def test_memory_limit_moves_work_to_the_next_hop() -> None:
    g = chain_costgraph(device_ms=[1] * 3, cloud_ms=[1] * 3, tensor_bytes=[1000, 10, 10, 10])
    heavy = CostGraph(nodes=tuple(CostNode(index=i, name=f"n{i}", device_ms=1, cloud_ms=1,
                                           weight_bytes=10**6 if i == 1 else 0) for i in range(3)),
                      tensors=g.tensors, order=g.order)
    hops = [Hop(name="device", node_ms=(1, 1, 1), memory_bytes=10**5),
            Hop(name="cloud", node_ms=(5, 5, 5))]
    links = [Link(name="lan", uplink_mbps=1000, downlink_mbps=1000)]
    assert best_chain(g, hops, links).cuts == (3,)
    assert best_chain(heavy, hops, links).cuts == (1,)
    tiny = [Hop(name="device", node_ms=(1, 1, 1), memory_bytes=0), hops[1]]
    assert best_chain(heavy, tiny, links).cuts == (0,)
    with pytest.raises(NoFeasibleCutError, match="memory"):
        best_chain(heavy, [tiny[0], Hop(name="c", node_ms=(1, 1, 1), memory_bytes=10)], links)


def test_throughput_balances_the_hops() -> None:
    g = chain_costgraph(device_ms=[1] * 4, cloud_ms=[1] * 4, tensor_bytes=[8] * 5)
    hops = [Hop(name=f"h{j}", node_ms=(10, 10, 10, 10)) for j in range(2)]
    links = [Link(name="lan", uplink_mbps=1000, downlink_mbps=1000, rtt_ms=100)]
    latency = best_chain(g, hops, links)
    throughput = best_chain(g, hops, links, objective="throughput")
    assert latency.cuts == (4,)  # one machine: no round trip
    assert throughput.cuts == (2,) and math.isclose(throughput.cost.bottleneck_ms, 20)
    assert throughput.cost.throughput_rps == pytest.approx(50)


def test_bad_chains_say_what_is_wrong() -> None:
    g = chain_costgraph(device_ms=[1], cloud_ms=[1], tensor_bytes=[8, 8])
    with pytest.raises(UserInputError, match="2 hops need 1 links"):
        best_chain(g, [Hop(name="a", node_ms=(1,)), Hop(name="b", node_ms=(1,))], [])
    with pytest.raises(UserInputError, match="times 2 nodes"):
        best_chain(g, [Hop(name="a", node_ms=(1, 2))], [])
    with pytest.raises(UserInputError, match="non-decreasing"):
        estimate_chain(g, [Hop(name="a", node_ms=(1,)), Hop(name="b", node_ms=(1,))],
                       [Link(name="l", uplink_mbps=1, downlink_mbps=1)], [2])
    with pytest.raises(UserInputError, match="uplink_mbps must be > 0"):
        Link(name="l", uplink_mbps=0, downlink_mbps=1)
    with pytest.raises(UserInputError, match="solver"):
        best_chain(g, [Hop(name="a", node_ms=(1,))], [], solver="magic")


def test_single_hop_is_the_whole_model() -> None:
    g = chain_costgraph(device_ms=[1, 2], cloud_ms=[1, 2], tensor_bytes=[8, 8, 8])
    result = best_chain(g, [Hop(name="device", node_ms=(1, 2))], [])
    assert result.cuts == () and result.cost.latency_ms == 3


def test_slices_of_the_trained_text_detector_chain_to_the_full_model() -> None:
    """PP-OCRv4's detector (672 nodes, an FPN: skip connections over every hop)."""
    import onnx

    from edgecut.partitioner.chain_extract import chain_slices, verify_chain
    from edgecut.partitioner.graph import analyse_graph
    from edgecut.partitioner.plan import check_model
    from edgecut.partitioner.shapes import resolve_tensors, run_on_samples
    from edgecut.zoo import find_packaged_model

    path = find_packaged_model()
    if path is None:
        pytest.skip("rapidocr-onnxruntime (the test extra) is not installed")
    model = onnx.load(str(path))
    shapes = {model.graph.input[0].name: (1, 3, 96, 96)}
    info = analyse_graph(model)
    tensors = resolve_tensors(model, shapes)
    feeds, _ = run_on_samples(model, shapes)
    n = len(info.order)
    for cuts in ((n // 4, n // 2), (n // 3, 2 * n // 3), (1, n - 1)):
        slices = chain_slices(model, cuts, graph=info, tensors=tensors)
        for s in slices:
            assert s.model is not None
            check_model(s.model, f"slice at {cuts}")
        assert len(slices[1].receives) >= 1
        assert verify_chain(model, [s.model for s in slices], feeds=feeds) <= 1e-3


@settings(max_examples=60, deadline=None)
@given(problems(max_nodes=7))
def test_layered_min_cut_equals_nested_down_sets(problem: Any) -> None:
    graph, hops, links = problem
    hops = [Hop(name=h.name, node_ms=h.node_ms, run_overhead_ms=0.0) for h in hops][:3]
    links = links[: len(hops) - 1]
    downset = _value(graph, hops, links, "latency", "downset")
    mincut = best_chain(graph, hops, links, solver="mincut")
    assert downset is not None
    assert math.isclose(mincut.cost.latency_ms, downset, rel_tol=1e-6, abs_tol=1e-4)
    assert mincut.device_sets is not None
    assert all(graph.is_down_set(d) for d in mincut.device_sets)
    assert all(a <= b for a, b in zip(mincut.device_sets, mincut.device_sets[1:], strict=False))


def test_min_cut_refuses_memory_limits() -> None:
    g = chain_costgraph(device_ms=[1], cloud_ms=[1], tensor_bytes=[8, 8])
    hops = [Hop(name="d", node_ms=(1,), memory_bytes=10), Hop(name="c", node_ms=(1,))]
    with pytest.raises(UserInputError, match="without memory limits"):
        best_chain(g, hops, [Link(name="l", uplink_mbps=1, downlink_mbps=1)], solver="mincut")
