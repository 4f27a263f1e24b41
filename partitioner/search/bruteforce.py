"""The oracle: every cut of a small graph, enumerated and costed one by one.

A cut is a down-set (closed under predecessors). Walking the topological order and deciding
each node in turn, a node may go to the device only when all its predecessors did; that yields
each down-set exactly once. A graph of n nodes can have 2**n of them, hence the size limit.

Example:
    >>> from edgecut.partitioner.costgraph import chain_costgraph
    >>> g = chain_costgraph(device_ms=[1, 1, 1], cloud_ms=[1, 1, 1], tensor_bytes=[1, 1, 1, 1])
    >>> sorted(sorted(d) for d in down_sets(g))
    [[], [0], [0, 1], [0, 1, 2]]
"""

from __future__ import annotations

from collections.abc import Iterator

from edgecut.errors import NoFeasibleCutError, UserInputError
from edgecut.partitioner.cost import CostParameters, CutCost, estimate_cut
from edgecut.partitioner.costgraph import CostGraph

__all__ = ["MAX_BRUTEFORCE_NODES", "all_cuts", "down_sets"]

MAX_BRUTEFORCE_NODES = 20


def down_sets(graph: CostGraph) -> Iterator[frozenset[int]]:
    """Every set of nodes closed under predecessors, the empty and the full set included."""
    n = len(graph.nodes)
    if n > MAX_BRUTEFORCE_NODES:
        raise UserInputError(
            f"brute force enumerates up to 2**n cuts and takes at most {MAX_BRUTEFORCE_NODES} "
            f"nodes, this graph has {n}; use solver='mincut' or 'scan'"
        )
    order = graph.order
    chosen: set[int] = set()

    def walk(k: int) -> Iterator[frozenset[int]]:
        if k == n:
            yield frozenset(chosen)
            return
        v = order[k]
        yield from walk(k + 1)  # v in the cloud
        if graph.predecessors[v] <= chosen:
            chosen.add(v)
            yield from walk(k + 1)
            chosen.discard(v)

    yield from walk(0)


def all_cuts(graph: CostGraph, params: CostParameters) -> list[tuple[frozenset[int], CutCost]]:
    """(device set, cost) of every feasible cut (pinned inputs kept on the device)."""
    results: list[tuple[frozenset[int], CutCost]] = []
    for device in down_sets(graph):
        try:
            results.append((device, estimate_cut(graph, device, params)))
        except NoFeasibleCutError:
            continue
    return results
