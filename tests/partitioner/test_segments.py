"""Cut vertices and the segmented min-cut: the decomposition against its definition, and the
segmented min-cut against brute force and against one min-cut of the whole graph."""

from __future__ import annotations

import dataclasses
import doctest
import math
import random
import time
from typing import Any

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecut.partitioner.cost import CostParameters, evaluate_linear, linear_weights, objective_key
from edgecut.partitioner.costgraph import CostGraph, CostNode, CostTensor, chain_costgraph
from edgecut.partitioner.search import best_cut, segments
from edgecut.partitioner.search.bruteforce import all_cuts, down_sets
from edgecut.partitioner.search.mincut import min_cut, min_linear_cut
from edgecut.partitioner.search.scan import scan_prefixes
from edgecut.partitioner.search.segments import cut_vertices, segment_graph

REL = 1e-9
PARAMS = CostParameters(uplink_mbps=10, downlink_mbps=50, rtt_ms=30, compute_w=3, idle_w=0.5,
                        transmit_w=1.5, receive_w=1)


def _cost_graph(draw: Any, readers_of: list[list[set[int]]]) -> CostGraph:
    """A CostGraph from `readers_of[k]`, the reader positions of each tensor the node at
    topological position k makes; adds random costs and sizes, 1-3 graph inputs read anywhere
    (maybe pinned, maybe also returned as graph outputs), graph outputs made anywhere, and a
    shuffled numbering of the nodes."""
    n = len(readers_of)
    label = draw(st.permutations(range(n)))  # topological position -> node index
    cost = st.one_of(st.just(0.0), st.floats(0.01, 100, allow_nan=False))
    size = st.one_of(st.just(0), st.integers(1, 5_000_000))
    nodes = tuple(
        CostNode(index=i, name=f"n{i}", device_ms=draw(cost), cloud_ms=draw(cost),
                 weight_bytes=draw(st.integers(0, 10_000)))
        for i in range(n)
    )
    tensors: list[CostTensor] = []
    for j in range(draw(st.integers(1, 3))):
        readers = draw(st.lists(st.integers(0, n - 1), max_size=3, unique=True))
        tensors.append(CostTensor(name=f"in{j}", bytes=draw(size), producer=None,
                                  consumers=tuple(label[k] for k in readers),
                                  is_graph_output=draw(st.booleans()) and draw(st.booleans()),
                                  pinned_on_device=draw(st.booleans()) and draw(st.booleans())))
    for k in range(n):
        for j, readers in enumerate(readers_of[k]):
            tensors.append(CostTensor(name=f"t{k}_{j}", bytes=draw(size), producer=label[k],
                                      consumers=tuple(label[r] for r in sorted(readers)),
                                      is_graph_output=not readers or draw(st.integers(0, 4)) == 0))
    return CostGraph(nodes=nodes, tensors=tuple(tensors), order=tuple(label))


@st.composite
def local_dag(draw: Any, max_nodes: int = 13) -> CostGraph:
    """A DAG whose tensors mostly feed the next few nodes (so it has cut vertices and segments
    of every size), with some long skips and tensors with several readers."""
    n = draw(st.integers(1, max_nodes))
    window = draw(st.integers(1, 3))
    readers_of: list[list[set[int]]] = []
    for k in range(n):
        readers_of.append([])
        for _ in range(draw(st.integers(1, 2))):
            near = list(range(k + 1, min(n, k + 1 + window)))
            readers = set(draw(st.lists(st.sampled_from(near), max_size=2))) if near else set()
            if k + 1 < n and draw(st.integers(0, 5)) == 0:  # a long skip
                readers.add(draw(st.integers(k + 1, n - 1)))
            readers_of[-1].append(readers)
    for k in range(1, n):  # mostly connected, else few nodes would be comparable
        fed = any(k in r for j in range(max(0, k - window), k) for r in readers_of[j])
        if not fed and draw(st.integers(0, 7)):
            readers_of[k - 1][0].add(k)
    return _cost_graph(draw, readers_of)


@st.composite
def diamond_chain(draw: Any, max_nodes: int = 14) -> CostGraph:
    """Joins with 1-3 parallel branches of 1-2 nodes between them (several non-empty segments),
    plus a few random skips forward (which may merge segments)."""
    readers_of: list[list[set[int]]] = [[set()]]
    join = 0
    while len(readers_of) < max_nodes - 3 and draw(st.integers(0, 3)):
        ends = []
        for _ in range(draw(st.integers(1, 3))):
            prev = join
            for _ in range(draw(st.integers(1, 2))):
                readers_of.append([set()])
                readers_of[prev][0].add(len(readers_of) - 1)
                prev = len(readers_of) - 1
            ends.append(prev)
        readers_of.append([set()])
        join = len(readers_of) - 1
        for e in ends:
            readers_of[e][0].add(join)
    n = len(readers_of)
    for _ in range(draw(st.integers(0, 2)) if n > 1 else 0):
        k = draw(st.integers(0, n - 2))
        readers_of[k].append({draw(st.integers(k + 1, n - 1))})
    return _cost_graph(draw, readers_of)


def small_dags(max_nodes: int = 13) -> st.SearchStrategy[CostGraph]:
    return st.one_of(local_dag(max_nodes=max_nodes), diamond_chain(max_nodes=max_nodes + 1),
                     local_dag(max_nodes=6))


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


def _as_nx(graph: CostGraph) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(range(len(graph.nodes)))
    g.add_edges_from((u, w) for w, preds in enumerate(graph.predecessors) for u in preds)
    return g


def test_docstring_examples_run() -> None:
    assert doctest.testmod(segments).failed == 0


@settings(max_examples=200, deadline=None)
@given(st.one_of(small_dags(), local_dag(max_nodes=25), diamond_chain(max_nodes=25)))
def test_cut_vertices_are_the_nodes_comparable_with_every_other(graph: CostGraph) -> None:
    g = _as_nx(graph)
    n = len(graph.nodes)
    expected = [v for v in graph.order if len(nx.ancestors(g, v)) + len(nx.descendants(g, v)) == n - 1]
    assert list(cut_vertices(graph)) == expected
    s = segment_graph(graph)
    assert sorted(v for m in s.members for v in m) == sorted(set(range(n)) - set(expected))
    for k, members in enumerate(s.members):
        for v in members:
            assert s.level[v] == 2 * k
            assert {c for c in expected if c in nx.ancestors(g, v)} == set(s.cut_vertices[:k])
    for j, c in enumerate(s.cut_vertices, start=1):
        assert s.level[c] == 2 * j - 1


@settings(max_examples=150, deadline=None)
@given(small_dags())
def test_every_down_set_stops_inside_one_segment(graph: CostGraph) -> None:
    """The theorem the segmented min-cut rests on: a down-set holding the first k cut vertices
    holds every node of level < 2k and none of level > 2k; and each such set is a down-set."""
    s = segment_graph(graph)
    for device in down_sets(graph):
        k = sum(1 for c in s.cut_vertices if c in device)
        assert set(s.cut_vertices[:k]) <= device
        assert s.device_nodes(k) <= device
        assert all(s.level[v] <= 2 * k for v in device)
    for k in range(len(s.cut_vertices) + 1):
        assert graph.is_down_set(s.device_nodes(k))


@settings(max_examples=250, deadline=None)
@given(small_dags(), random_params(),
       st.sampled_from(["latency", "energy"]))
def test_segmented_equals_whole_equals_bruteforce(graph: CostGraph, params: CostParameters,
                                                  objective: str) -> None:
    # The fixed charge for using the cloud is no arc of the network: min_cut adds it after.
    weights = dataclasses.replace(linear_weights(graph, params, objective), fixed=0.0)
    split = min_linear_cut(graph, weights)
    whole = min_linear_cut(graph, weights, segmented=False)
    assert graph.is_down_set(split)
    # Both are exact in integers and break ties the same way, so they are the same set.
    assert split == whole
    oracle = min(evaluate_linear(graph, weights, d) for d in down_sets(graph))
    assert evaluate_linear(graph, weights, split) == pytest.approx(oracle, rel=REL, abs=1e-12)
    assert math.isfinite(evaluate_linear(graph, weights, split))

    device, cost = min_cut(graph, params, objective)
    assert (device, cost) == min_cut(graph, params, objective, segmented=False)
    best = min(objective_key(c, objective)[0] for _, c in all_cuts(graph, params))
    assert objective_key(cost, objective)[0] == pytest.approx(best, rel=REL, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(small_dags(max_nodes=9), random_params(), st.sampled_from(["latency", "energy"]))
def test_every_flow_func_gives_the_same_segmented_cut(graph: CostGraph, params: CostParameters,
                                                      objective: str) -> None:
    ours = min_cut(graph, params, objective)
    for flow in (nx.algorithms.flow.edmonds_karp, nx.algorithms.flow.shortest_augmenting_path,
                 nx.algorithms.flow.dinitz, nx.algorithms.flow.boykov_kolmogorov):
        assert min_cut(graph, params, objective, flow_func=flow) == ours


def test_a_pinned_input_read_across_a_cut_vertex() -> None:
    """x (pinned) is read by n0 and by n2, past the cut vertex n1: no cut may stop between them,
    though n1 is a cut vertex; a graph output made before n1 never comes down."""
    nodes = tuple(CostNode(index=i, name=f"n{i}", device_ms=d, cloud_ms=0.0)
                  for i, d in enumerate([1.0, 100.0, 1.0, 100.0]))
    tensors = (
        CostTensor(name="x", bytes=10, producer=None, consumers=(0, 2), pinned_on_device=True),
        CostTensor(name="a", bytes=10, producer=0, consumers=(1,), is_graph_output=True),
        CostTensor(name="b", bytes=10, producer=1, consumers=(2,)),
        CostTensor(name="c", bytes=10, producer=2, consumers=(3,)),
        CostTensor(name="y", bytes=10, producer=3, is_graph_output=True),
    )
    graph = CostGraph(nodes=nodes, tensors=tensors, order=(0, 1, 2, 3))
    assert cut_vertices(graph) == (0, 1, 2, 3)
    params = CostParameters(uplink_mbps=1000, downlink_mbps=1000)
    device, cost = min_cut(graph, params, "latency")
    assert device == {0, 1, 2}  # n2 must stay with x; n3 goes up
    assert cost.latency_ms == pytest.approx(min(c.latency_ms for _, c in all_cuts(graph, params)))


def test_a_diamond_chain_solves_one_small_network_per_segment() -> None:
    """n0 -> {a, b} -> join -> {a, b} -> join ...: the joins are cut vertices, each diamond's
    two branches a segment."""
    blocks, nodes_per_block = 4, 3
    n = 1 + blocks * nodes_per_block
    rng = random.Random(7)
    nodes = tuple(CostNode(index=i, name=f"n{i}", device_ms=rng.uniform(0.5, 2),
                           cloud_ms=rng.uniform(0.01, 0.1)) for i in range(n))
    tensors = [CostTensor(name="x", bytes=1_000_000, producer=None, consumers=(0,))]
    for b in range(blocks):
        join, left, right, nxt = 3 * b, 3 * b + 1, 3 * b + 2, 3 * b + 3
        tensors.append(CostTensor(name=f"j{b}", bytes=rng.randint(1, 10**6), producer=join,
                                  consumers=(left, right)))
        tensors.append(CostTensor(name=f"l{b}", bytes=rng.randint(1, 10**6), producer=left,
                                  consumers=(nxt,)))
        tensors.append(CostTensor(name=f"r{b}", bytes=rng.randint(1, 10**6), producer=right,
                                  consumers=(nxt,)))
    tensors.append(CostTensor(name="y", bytes=10, producer=n - 1, is_graph_output=True))
    graph = CostGraph(nodes=nodes, tensors=tuple(tensors), order=tuple(range(n)))
    s = segment_graph(graph)
    assert s.cut_vertices == tuple(range(0, n, 3))
    assert [len(m) for m in s.members] == [0, 2, 2, 2, 2, 0]
    for bw in (0.1, 1, 10, 100, 1000):
        params = CostParameters(uplink_mbps=bw, downlink_mbps=bw, rtt_ms=5)
        for objective in ("latency", "energy"):
            assert min_cut(graph, params, objective) == min_cut(graph, params, objective,
                                                                segmented=False)


def chain_with_skips(n: int, seed: int = 0) -> CostGraph:
    """The planner's 5,000-node test model as a cost graph: a chain with a skip Add every 10
    nodes (the skip tensor is read by the next node and by the Add 10 nodes on)."""
    rng = random.Random(seed)
    nodes = tuple(CostNode(index=i, name=f"n{i}", device_ms=rng.uniform(0.05, 0.2),
                           cloud_ms=rng.uniform(0.001, 0.01)) for i in range(n))
    readers: list[list[int]] = [[] for _ in range(n + 1)]  # readers[k + 1]: of node k's output
    skip = 0  # the input x
    for i in range(n):
        readers[i].append(i)  # node i reads the previous tensor
        if i % 10 == 9:
            readers[skip].append(i)
            skip = i + 1
    tensors = [CostTensor(name="x", bytes=256, producer=None, consumers=tuple(sorted(set(readers[0]))))]
    tensors += [CostTensor(name=f"t{k}", bytes=int(rng.uniform(0.5, 2) * 3_000_000 * 0.998**k),
                           producer=k, consumers=tuple(sorted(set(readers[k + 1]))),
                           is_graph_output=k == n - 1) for k in range(n)]
    return CostGraph(nodes=nodes, tensors=tuple(tensors), order=tuple(range(n)))


def branchy_dag(n: int, seed: int = 0) -> CostGraph:
    """Inception-like blocks: a join node, then 2-4 parallel branches of 1-3 nodes, with an
    occasional skip over a whole block (which merges two segments)."""
    rng = random.Random(seed)
    readers: list[list[int]] = [[]]
    last_join = 0
    while len(readers) < n:
        branch_ends = []
        for _ in range(rng.randint(2, 4)):
            prev = last_join
            for _ in range(rng.randint(1, 3)):
                readers.append([])
                readers[prev].append(len(readers) - 1)
                prev = len(readers) - 1
            branch_ends.append(prev)
        readers.append([])
        join = len(readers) - 1
        for e in branch_ends:
            readers[e].append(join)
        if rng.random() < 0.2 and last_join:
            readers[last_join - 1].append(join)
        last_join = join
    m = len(readers)
    nodes = tuple(CostNode(index=i, name=f"n{i}", device_ms=rng.uniform(0.05, 0.2),
                           cloud_ms=rng.uniform(0.001, 0.01)) for i in range(m))
    tensors = [CostTensor(name="x", bytes=3_000_000, producer=None, consumers=(0,))]
    tensors += [CostTensor(name=f"t{k}", bytes=int(rng.uniform(0.5, 2) * 3_000_000 * 0.999**k),
                           producer=k, consumers=tuple(sorted(set(readers[k]))),
                           is_graph_output=not readers[k]) for k in range(m)]
    return CostGraph(nodes=nodes, tensors=tuple(tensors), order=tuple(range(m)))


def test_five_thousand_node_chain_with_skips_is_a_scan(capsys: pytest.CaptureFixture[str]) -> None:
    """Every node of it is a cut vertex, so its down-sets are its prefixes: the min-cut must
    equal the best prefix exactly, and needs no flow at all."""
    graph = chain_with_skips(5000)
    assert len(cut_vertices(graph)) == 5000
    for objective in ("latency", "energy"):
        start = time.perf_counter()
        _, cost = min_cut(graph, PARAMS, objective)
        took = time.perf_counter() - start
        prefix = min(objective_key(c, objective)[0] for _, c in scan_prefixes(graph, PARAMS))
        assert objective_key(cost, objective)[0] == pytest.approx(prefix, rel=REL)
        with capsys.disabled():
            print(f"\n5000-node chain with skips, {objective}: min_cut {took:.2f} s")
        assert took < 2.0  # about 0.1 s; the whole network took 6 s


def test_five_thousand_node_branchy_dag(capsys: pytest.CaptureFixture[str]) -> None:
    graph = branchy_dag(5000)
    s = segment_graph(graph)
    assert len(s.cut_vertices) > 100 and max(map(len, s.members)) < 40
    for objective in ("latency", "energy"):
        start = time.perf_counter()
        result = best_cut(graph, PARAMS, objective=objective, solver="mincut")
        took = time.perf_counter() - start
        scan = best_cut(graph, PARAMS, objective=objective, solver="scan")
        assert objective_key(result.cost, objective) <= objective_key(scan.cost, objective)
        with capsys.disabled():
            print(f"\n{len(graph.nodes)}-node branchy DAG, {objective}: best_cut(solver='mincut') "
                  f"{took:.2f} s, {len(s.cut_vertices)} cut vertices")


def test_a_chain_has_only_empty_segments() -> None:
    g = chain_costgraph(device_ms=[1, 2, 3], cloud_ms=[0.1, 0.2, 0.3], tensor_bytes=[9, 9, 9, 9])
    s = segment_graph(g)
    assert s.members == ((), (), (), ())
    assert [sorted(s.device_nodes(k)) for k in range(4)] == [[], [0], [0, 1], [0, 1, 2]]
