"""The chain's oracles and its down-set solvers: any DAG cuts, not only positions.

`cost_of_parts` costs any assignment of nodes to hops (edges going forward) from the sets
themselves, independently of the programme's tables in `edgecut.partitioner.chain`, which
the tests hold to it. `best_nested_downsets` enumerates nested down-sets D_1 ⊆ ... ⊆ D_{k-1}
on small graphs. `min_cut_chain` is the exact optimum of the latency over all nested
down-sets, where the min-cut formulation applies: no hop has a memory limit (peak memory is
a max, not a sum). One layer of the graph per cut (a layered, Ishikawa-style network): v_i on
the source side means v is in D_i; v_i -> v_{i+1} and (reader)_i -> (maker)_i are infinite,
so the sets nest and are down-sets; v's compute telescopes into a charge c_i(v) - c_{i+1}(v)
for being in D_i; each layer carries the single cut's tensor gadget (`search/mincut.py`) for
what crosses link i, and an output made outside D_i comes down it. Round trips (a fixed
charge while anything runs past link i) are exact by trying each count of used links, D_i = V
forced for the rest: at most k min-cuts. The serving terms fit the same way: a used link's
bytes are (de)serialised at both its ends (a per-tensor charge on its gadget), and the fixed
`call_ms` and `serve_ms` of its two ends come with its round trip. Capacities are rounded
to 1e-6 ms.

Example:
    >>> from edgecut.partitioner.costgraph import chain_costgraph
    >>> g = chain_costgraph(device_ms=[1, 9], cloud_ms=[1, 1], tensor_bytes=[8000, 8, 8])
    >>> hops = [Hop(name="d", node_ms=(1, 9)), Hop(name="c", node_ms=(1, 1))]
    >>> min_cut_chain(g, hops, [Link(name="l", uplink_mbps=1, downlink_mbps=1)], "latency").cuts
    (1,)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from edgecut.errors import UserInputError
from edgecut.partitioner.chain import (
    ChainCost,
    ChainResult,
    Hop,
    HopCost,
    Link,
    LinkCost,
    _checked,
    _infeasible,
    _key,
    _Model,
    _round,
    estimate_serve_ms,
    serialised_bytes,
)
from edgecut.partitioner.cost import transfer_ms
from edgecut.partitioner.costgraph import CostGraph

__all__ = ["MAX_DOWNSET_NODES", "best_nested_downsets", "cost_of_parts", "min_cut_chain",
           "order_of_sets", "position_sets"]

MAX_DOWNSET_NODES = 12

def position_sets(graph: CostGraph, cuts: Sequence[int]) -> list[frozenset[int]]:
    """The node set of each hop for cuts along the order."""
    bounds = [0, *cuts, len(graph.order)]
    return [frozenset(graph.order[bounds[j]:bounds[j + 1]]) for j in range(len(bounds) - 1)]


def order_of_sets(graph: CostGraph, sets: Sequence[frozenset[int]]
                  ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A topological order of which nested down-sets D_1 ⊆ ... ⊆ D_{k-1} are prefixes, and
    the cut positions along it (their sizes): D_1's nodes in the graph's order, then
    D_2 \\ D_1's, ..., then the rest. Each block is valid in the graph's relative order
    because every set is a down-set. Prefixes of the graph's order give the order itself.

    Example:
        >>> from edgecut.partitioner.costgraph import CostGraph, CostNode, CostTensor
        >>> g = CostGraph(nodes=[CostNode(index=i, name=n, device_ms=1, cloud_ms=1)
        ...                      for i, n in enumerate("abc")], order=(0, 1, 2),
        ...               tensors=[CostTensor(name="x", bytes=4, producer=None, consumers=(0, 1))])
        >>> order_of_sets(g, [frozenset({1})])
        ((1, 0, 2), (1,))
    """
    placed: set[int] = set()
    order: list[int] = []
    for d in (*sets, frozenset(range(len(graph.nodes)))):
        if not placed <= d or not graph.is_down_set(d):
            raise UserInputError("chain device sets must be nested down-sets of the graph, "
                                 f"got {[sorted(s) for s in sets]}")
        order += [v for v in graph.order if v in d and v not in placed]
        placed |= d
    return tuple(order), tuple(len(d) for d in sets)


def cost_of_parts(graph: CostGraph, hops: Sequence[Hop], links: Sequence[Link],
                 parts: Sequence[frozenset[int]]) -> ChainCost | None:
    """The chain's cost for any assignment of nodes to hops (each edge going forward), from
    the sets themselves: what the programme's tables must agree with. None if over memory."""
    label = {v: j for j, part in enumerate(parts) for v in part}
    k = len(hops)
    n = len(graph.nodes)
    link_costs = []
    carried: list[tuple[int, int] | None] = []  # (up, down) bytes of each used link
    for i in range(k - 1):
        beyond = {v for v in range(n) if label[v] > i}
        if not beyond:
            link_costs.append(LinkCost(name=links[i].name, used=False, up_bytes=0, down_bytes=0,
                                       up_ms=0.0, down_ms=0.0, rtt_ms=0.0))
            carried.append(None)
            continue
        up = sum(t.bytes for t in graph.tensors
                 if (t.producer is None or label[t.producer] <= i)
                 and any(label[c] > i for c in t.consumers))
        down = sum(t.bytes for t in graph.tensors
                   if t.is_graph_output and t.producer is not None and label[t.producer] > i)
        link_costs.append(LinkCost(name=links[i].name, used=True, up_bytes=up, down_bytes=down,
                                   up_ms=links[i].up_ms(up), down_ms=links[i].down_ms(down),
                                   rtt_ms=links[i].rtt_ms))
        carried.append((up, down))
    hop_costs = []
    for j, part in enumerate(parts):
        order = [v for v in graph.order if v in part]
        compute = sum(hops[j].node_ms[v] for v in order) + (hops[j].run_overhead_ms if order else 0)
        memory = _memory_of(graph, label, j, order)
        limit = hops[j].memory_bytes
        if limit is not None and memory > limit:
            return None
        received = carried[j - 1] if j >= 1 else None  # a request reaches hop j
        sent = carried[j] if j < k - 1 else None  # hop j calls hop j + 1
        hop_costs.append(HopCost(
            name=hops[j].name, start=0, end=len(order), compute_ms=compute,
            serve_ms=estimate_serve_ms(hops[j], received, sent),
            serialised_bytes=serialised_bytes(received, sent),
            memory_bytes=memory, fits=True))
    latency = sum(h.stage_ms for h in hop_costs) + sum(c.up_ms + c.down_ms + c.rtt_ms
                                                       for c in link_costs)
    bottleneck = max([h.stage_ms for h in hop_costs]
                     + [x for c in link_costs for x in (c.up_ms, c.down_ms)])
    return ChainCost(cuts=(), hops=tuple(hop_costs), links=tuple(link_costs),
                     latency_ms=latency, bottleneck_ms=bottleneck)


def _memory_of(graph: CostGraph, label: dict[int, int], j: int, order: list[int]) -> int:
    """Weights + peak live bytes of hop j running `order`, simulated step by step."""
    if not order:
        return 0
    weights = sum(graph.nodes[v].weight_bytes for v in order)
    peak = 0
    for step, v in enumerate(order):
        live = 0
        for t in graph.tensors:
            made_here = t.producer is not None and label[t.producer] == j
            received = (t.producer is None or label[t.producer] < j)
            if made_here:
                if order.index(t.producer) > step:
                    continue
                later_here = any(label[c] == j and order.index(c) >= step for c in t.consumers)
                leaves = t.is_graph_output or any(label[c] > j for c in t.consumers)
                if later_here or leaves or t.producer == v:
                    live += t.bytes
            elif received:
                later_here = any(label[c] == j and order.index(c) >= step for c in t.consumers)
                if later_here or any(label[c] > j for c in t.consumers):
                    live += t.bytes
        peak = max(peak, live)
    return weights + peak


def best_nested_downsets(graph: CostGraph, hops: Sequence[Hop], links: Sequence[Link],
             objective: str) -> ChainResult:
    """Every nested chain of down-sets on a small graph (any DAG cuts): the exact optimum.

    Memory here follows each hop's nodes in the graph's order (as it would run them).
    The result's `cuts` are the sizes of D_1, ..., D_{k-1}.
    """
    from edgecut.partitioner.search.bruteforce import down_sets

    n = len(graph.nodes)
    if n > MAX_DOWNSET_NODES:
        raise UserInputError(f"solver='downset' enumerates nested down-sets of at most "
                             f"{MAX_DOWNSET_NODES} nodes, this graph has {n}; use solver='dp'")
    _checked(graph, hops, links)
    sets = sorted(down_sets(graph), key=lambda d: (len(d), sorted(d)))
    best: tuple[tuple[float, float], ChainCost] | None = None
    k = len(hops)

    def nested(prefix: list[frozenset[int]]) -> Iterator[list[frozenset[int]]]:
        if len(prefix) == k - 1:
            yield prefix
            return
        last = prefix[-1] if prefix else frozenset()
        for d in sets:
            if last <= d:
                yield from nested([*prefix, d])

    full = frozenset(range(n))
    for chain in nested([]):
        bounds = [frozenset(), *chain, full]
        parts = [bounds[j + 1] - bounds[j] for j in range(k)]
        cost = cost_of_parts(graph, hops, links, parts)
        if cost is None:
            continue
        key = _round(_key(cost, objective))
        if best is None or key < best[0]:
            best = (key, _with_cuts(cost, tuple(len(d) for d in chain)))
    if best is None:
        raise _infeasible(_Model(graph, hops, links))
    return ChainResult(cuts=best[1].cuts, cost=best[1], solver="downset", objective=objective)


def _with_cuts(cost: ChainCost, cuts: tuple[int, ...]) -> ChainCost:
    return dataclasses.replace(cost, cuts=cuts)


def min_cut_chain(graph: CostGraph, hops: Sequence[Hop], links: Sequence[Link],
            objective: str) -> ChainResult:
    """The layered min-cut of the module docstring: exact latency over nested down-sets."""
    import networkx as nx

    _checked(graph, hops, links)
    if objective != "latency" or any(h.memory_bytes is not None for h in hops):
        raise UserInputError("solver='mincut' minimises latency without memory limits (peak "
                             "memory and the bottleneck are no sums); use solver='dp'")
    n, k = len(graph.nodes), len(hops)
    full = frozenset(range(n))
    if k == 1 or n == 0:
        sets: tuple[frozenset[int], ...] = (full,) * (k - 1)
        cost = cost_of_parts(graph, hops, links, _parts(sets, n))
        assert cost is not None
        return ChainResult(cuts=tuple(len(d) for d in sets), cost=_with_cuts(cost, tuple(
            len(d) for d in sets)), solver="mincut", objective=objective, device_sets=sets)
    scale = 1e6
    inf = float("inf")

    def cap(x: float) -> int:
        return round(x * scale)

    best: tuple[float, tuple[frozenset[int], ...], ChainCost] | None = None
    for used in range(k):  # links 0..used-1 carry traffic; D_i = V for i >= used
        g = nx.DiGraph()
        g.add_node("s")
        g.add_node("t")
        constant = 0.0

        def edge(a: object, b: object, c: float, g: Any = g) -> None:
            old = g.get_edge_data(a, b)
            if c == inf:  # no capacity attribute: infinite for networkx
                if old is None:
                    g.add_edge(a, b)
                else:
                    old.pop("capacity", None)
            elif c > 0:
                if old is None:
                    g.add_edge(a, b, capacity=cap(c))
                elif "capacity" in old:
                    old["capacity"] += cap(c)

        for i in range(k - 1):
            for v in range(n):
                if i >= used:
                    edge("s", (v, i), inf)
                w = hops[i].node_ms[v] - hops[i + 1].node_ms[v]
                if w >= 0:
                    edge((v, i), "t", w)
                else:
                    constant += w
                    edge("s", (v, i), -w)
                if i + 1 < k - 1:
                    edge((v, i), (v, i + 1), inf)
                for u in graph.predecessors[v]:
                    edge((v, i), (u, i), inf)
            if i >= used:
                continue
            # Both ends of a used link (de)serialise what it carries, per raw byte.
            def ends(nbytes: int, i: int = i) -> float:
                return (transfer_ms(nbytes, hops[i].serialise_mbps)
                        + transfer_ms(nbytes, hops[i + 1].serialise_mbps))

            for ti, t in enumerate(graph.tensors):
                if t.consumers:
                    up = links[i].up_ms(t.bytes) + ends(t.bytes)
                    maker: object = "s" if t.producer is None else (t.producer, i)
                    edge(maker, ("x", ti, i), up)
                    for c in t.consumers:
                        edge(("x", ti, i), (c, i), inf)
                if t.is_graph_output and t.producer is not None:
                    edge("s", (t.producer, i), links[i].down_ms(t.bytes) + ends(t.bytes))
        constant += sum(hops[-1].node_ms) + sum(links[i].rtt_ms + hops[i].call_ms
                                                + hops[i + 1].serve_ms for i in range(used))
        value, (source, _) = nx.minimum_cut(g, "s", "t")
        sets = tuple(frozenset(v for v in range(n) if (v, i) in source) for i in range(k - 1))
        cost = cost_of_parts(graph, hops, links, _parts(sets, n))
        assert cost is not None
        if best is None or cost.latency_ms < best[0] - 1e-9:
            best = (cost.latency_ms, sets, cost)
        del value, constant  # the set's own cost is recomputed exactly above
    assert best is not None
    cuts = tuple(len(d) for d in best[1])
    return ChainResult(cuts=cuts, cost=_with_cuts(best[2], cuts), solver="mincut",
                       objective=objective, device_sets=best[1])


def _parts(sets: Sequence[frozenset[int]], n: int) -> list[frozenset[int]]:
    bounds = [frozenset(), *sets, frozenset(range(n))]
    return [bounds[j + 1] - bounds[j] for j in range(len(bounds) - 1)]
