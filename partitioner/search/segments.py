"""Cut vertices of a DAG, and the segments between them that a down-set can stop inside (QDMP).

A node c is a *cut vertex* here when every other node is an ancestor or a descendant of it.
The cut vertices are then totally ordered c_1 < ... < c_m (any two are comparable), and every
other node v is comparable with each of them, so v sits in exactly one *segment*: S_0 (the
ancestors of c_1), S_j (after c_j, before c_j+1) or S_m (after c_m). A node's *level* places
it on that line: segment S_j has level 2j, cut vertex c_j has level 2j - 1.

Why it matters: a down-set D (closed under predecessors) holding c_j holds all of its ancestors,
so c_1..c_j too; one without c_j holds none of its descendants. So D holds some first k cut
vertices, every node of level < 2k, none of level > 2k, and any down-set of S_k. A search over
every down-set is then m + 1 searches, one inside each segment, with everything before it on
the device and everything after it in the cloud (QDMP, Zhang et al., IMWUT 2020: "the optimal
cut lies between two adjacent cut vertices").

Finding them in O(N + E) from one topological order (positions 0..N-1). Node v at position i
is a cut vertex exactly when

- every node after i descends from v: each node w after i has a predecessor at a position >= i.
  If so, by induction on w's position a path leads back to v; conversely the last edge of the
  path from v to w starts at v or at a descendant of v, both at positions >= i. And
- every node before i is an ancestor of v: each node u before i has a successor at a position
  <= i (the same argument, mirrored).

The descendants of v come after it in every topological order, its ancestors before, so
checking one order finds every cut vertex.

Example:
    >>> from edgecut.partitioner.costgraph import chain_costgraph
    >>> g = chain_costgraph(device_ms=[1, 1, 1], cloud_ms=[1, 1, 1], tensor_bytes=[1, 1, 1, 1])
    >>> s = segment_graph(g)
    >>> s.cut_vertices, s.level
    ((0, 1, 2), (1, 3, 5))
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecut.partitioner.costgraph import CostGraph

__all__ = ["Segments", "cut_vertices", "segment_graph"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Segments:
    """The cut vertices in order and the level of every node (see the module docstring).

    `members[k]` lists the nodes of segment S_k (k = 0..m) in the graph's order; a segment may
    be empty (two adjacent cut vertices, as in a chain).
    """

    cut_vertices: tuple[int, ...]
    level: tuple[int, ...]
    members: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.members) != len(self.cut_vertices) + 1:
            raise ValueError(
                f"segments: need one more segment than cut vertices, got {len(self.members)} "
                f"segments for {len(self.cut_vertices)} cut vertices"
            )

    def device_nodes(self, k: int) -> frozenset[int]:
        """The nodes every down-set holding exactly the first k cut vertices puts on the device
        (those of level < 2k)."""
        return frozenset(v for v, lv in enumerate(self.level) if lv < 2 * k)


def cut_vertices(graph: CostGraph) -> tuple[int, ...]:
    """The nodes every other node descends from or leads to, in the graph's order."""
    order, position = graph.order, graph.position
    n = len(order)
    last_pred = [-1] * n  # by position: the latest position of a predecessor
    first_succ = [n] * n  # by position: the earliest position of a successor
    for w in range(n):
        for u in graph.predecessors[w]:
            pu, pw = position[u], position[w]
            last_pred[pw] = max(last_pred[pw], pu)
            first_succ[pu] = min(first_succ[pu], pw)
    # after_ok[i]: every node after position i has a predecessor at a position >= i.
    after_ok = [False] * n
    least = n
    for i in range(n - 1, -1, -1):
        after_ok[i] = least >= i
        least = min(least, last_pred[i])
    found: list[int] = []
    most = -1
    for i in range(n):
        if most <= i and after_ok[i]:
            found.append(order[i])
        most = max(most, first_succ[i])
    return tuple(found)


def segment_graph(graph: CostGraph) -> Segments:
    """The cut vertices of `graph`, the level of each node and the members of each segment."""
    cuts = cut_vertices(graph)
    level = [0] * len(graph.nodes)
    members: list[list[int]] = [[]]
    seen = 0  # cut vertices met so far along the order
    for v in graph.order:
        if seen < len(cuts) and v == cuts[seen]:
            seen += 1
            level[v] = 2 * seen - 1
            members.append([])
        else:
            level[v] = 2 * seen
            members[-1].append(v)
    return Segments(cut_vertices=cuts, level=tuple(level), members=tuple(tuple(m) for m in members))
