"""Placement 4: a model sliced along a chain of hops (the device, helpers, then the cloud).

A chain of k hops takes k - 1 cuts. Along one topological order (the order of
`CostGraph.order`), cut i is a position p_i with 0 <= p_1 <= ... <= p_{k-1} <= N: hop j runs
the nodes at positions [p_{j-1}, p_j) (p_0 = 0, p_k = N). What crosses link i (hop i to hop
i + 1) depends on p_i alone: every tensor made before p_i (graph inputs included) that a node
at p_i or later reads goes up, whichever earlier hop made it (a helper forwards what it
received and the next hops need); every graph output made at p_i or later comes back down.

Every hop after the device is a served hop (an `edgecut serve` endpoint): per request it
takes a ModelInfer (parses it, decodes its tensors, schedules it), runs its slice, calls the
next hop if link j is used, and answers. That CPU is charged to the hop as `serve_j`:

    serve_j = [j >= 1 and p_{j-1} < N] * (serve_ms_j + (up_bytes_{j-1} + down_bytes_{j-1}) / ser_j)
            + [j < k - 1 and p_j < N]  * (call_ms_j  + (up_bytes_j + down_bytes_j) / ser_j)

(`Hop.serve_ms`, `Hop.call_ms`, `ser_j` = `Hop.serialise_mbps`; raw bytes; the device pays
only the second line: it calls but is not served). serve_j depends on hop j's two boundaries
alone, like its compute, so the chain's cost splits into terms of one segment or one
position, and the best cuts are an exact dynamic programme over positions, O(k N^2):

    stage_j    = compute_j(p_{j-1}, p_j) + serve_j(p_{j-1}, p_j)
    latency    = sum_j stage_j + sum_{i: p_i < N} (up_i + rtt_i + down_i)
    bottleneck = max(stage_j, up_i, down_i)     (the slowest stage of a pipelined stream;
                                                 round trips delay requests, not the rate)

`objective="throughput"` minimises the bottleneck first (a min-max programme), then the
latency among the cuts that reach it (the same programme, restricted to terms within it):
both exact. A link is used only when something runs beyond it (p_i < N); an empty helper
(p_i == p_{i+1} < N) relays what it receives, paying its link and its serving but no compute.

Memory: hop j's segment must fit `Hop.memory_bytes`: its weights plus the peak of live
activations while it runs. A tensor is live at step s when it is available (made at or before
s, or received) and read at s or later, anywhere: whoever reads it later needs it sent, so
the live set at step s does not depend on where the segment starts or ends, except for graph
outputs, which the hop that made them holds to its end (and earlier hops never hold). So one
all-device profile plus a per-start correction gives every segment's memory in O(N^2).

`solver="bruteforce"` tries every tuple of positions and costs each with an independent,
set-based computation; `solver="downset"` enumerates nested down-sets D_1 ⊆ ... ⊆ D_{k-1}
(any DAG cuts, not only positions of the order) on small graphs, and `solver="mincut"`
finds the exact latency optimum over all of them with a layered min-cut where that
formulation applies (no memory limits): both in `edgecut.partitioner.chain_downsets`. The
tests hold the programme to brute force and the min-cut to the enumeration.

Example:
    >>> from edgecut.partitioner.costgraph import chain_costgraph
    >>> g = chain_costgraph(device_ms=[1, 1, 1], cloud_ms=[1, 1, 1], tensor_bytes=[8000, 8, 8, 8])
    >>> hops = [Hop(name="device", node_ms=(1, 9, 9)), Hop(name="helper", node_ms=(9, 1, 9)),
    ...         Hop(name="cloud", node_ms=(9, 9, 1))]
    >>> links = [Link(name="wifi", uplink_mbps=8, downlink_mbps=8),
    ...          Link(name="wan", uplink_mbps=8, downlink_mbps=8)]
    >>> best_chain(g, hops, links).cuts
    (1, 2)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from edgecut.errors import NoFeasibleCutError, UserInputError
from edgecut.partitioner.cost import transfer_ms
from edgecut.partitioner.costgraph import CostGraph

__all__ = [
    "CHAIN_OBJECTIVES",
    "CHAIN_SOLVERS",
    "ChainCost",
    "ChainResult",
    "Hop",
    "HopCost",
    "Link",
    "LinkCost",
    "best_chain",
    "estimate_chain",
    "estimate_serve_ms",
    "segment_memory_bytes",
    "serialised_bytes",
]

CHAIN_OBJECTIVES: tuple[str, ...] = ("latency", "throughput")
CHAIN_SOLVERS: tuple[str, ...] = ("dp", "bruteforce", "downset", "mincut")
MAX_BRUTEFORCE_TUPLES = 200_000
_EPS = 1e-9


@dataclass(frozen=True, slots=True, kw_only=True)
class Hop:
    """One machine of the chain: its time per CostGraph node and its memory limit (None: none).

    `run_overhead_ms` is paid once per request by a hop that runs anything (a session run,
    and for a served hop its queue). The serving terms (module docstring) are CPU the hop
    spends per request whether or not it runs anything: `serve_ms` when a request reaches it
    (every hop but the device: taking the ModelInfer and answering it), `call_ms` when it
    calls the next hop (the client side of that gRPC call), and `serialise_mbps` the rate at
    which it (de)serialises the raw bytes it receives, answers, sends on and gets back (inf:
    free). The defaults (0, 0, inf) charge nothing; `chain_plan` fills them from profiles.
    """

    name: str
    node_ms: tuple[float, ...]
    memory_bytes: int | None = None
    run_overhead_ms: float = 0.0
    kind: str = "helper"  # "device", "helper" or "cloud": where plan.json says it runs
    serve_ms: float = 0.0
    call_ms: float = 0.0
    serialise_mbps: float = math.inf

    def __post_init__(self) -> None:
        object.__setattr__(self, "node_ms", tuple(float(x) for x in self.node_ms))
        problems = [f"node_ms[{i}] = {x} is not finite and >= 0"
                    for i, x in enumerate(self.node_ms) if not (math.isfinite(x) and x >= 0)]
        if self.memory_bytes is not None and self.memory_bytes < 0:
            problems.append(f"memory_bytes must be >= 0 or None, got {self.memory_bytes}")
        for key in ("run_overhead_ms", "serve_ms", "call_ms"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{key} must be finite and >= 0, got {value}")
        if not self.serialise_mbps > 0:
            problems.append(f"serialise_mbps must be > 0 (inf: free), got {self.serialise_mbps}")
        if self.kind not in ("device", "helper", "cloud"):
            problems.append(f"kind must be 'device', 'helper' or 'cloud', got {self.kind!r}")
        if problems:
            raise UserInputError(f"hop {self.name!r}: " + "; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    """The link from one hop to the next: up is towards the cloud, down back to the device.

    `compression_ratio` and `encode_mbps` are the sender's codec (raw: 1.0 and inf).
    """

    name: str
    uplink_mbps: float
    downlink_mbps: float
    rtt_ms: float = 0.0
    compression_ratio: float = 1.0
    encode_mbps: float = math.inf

    def __post_init__(self) -> None:
        problems = []
        for key in ("uplink_mbps", "downlink_mbps", "compression_ratio", "encode_mbps"):
            value = getattr(self, key)
            if not value > 0:
                problems.append(f"{key} must be > 0, got {value}")
        if not (math.isfinite(self.rtt_ms) and self.rtt_ms >= 0):
            problems.append(f"rtt_ms must be finite and >= 0, got {self.rtt_ms}")
        if problems:
            raise UserInputError(f"link {self.name!r}: " + "; ".join(problems))

    def up_ms(self, nbytes: float) -> float:
        return transfer_ms(nbytes, self.encode_mbps) + transfer_ms(
            nbytes / self.compression_ratio, self.uplink_mbps)

    def down_ms(self, nbytes: float) -> float:
        return transfer_ms(nbytes, self.downlink_mbps)


def estimate_serve_ms(hop: Hop, received: tuple[int, int] | None, sent: tuple[int, int] | None) -> float:
    """Hop `hop`'s serving CPU per request (module docstring): `received` is (up, down) raw
    bytes of the link that reaches it when a request comes in over it, `sent` those of the link
    to the next hop when it calls it; None where that link is unused or missing."""
    served = hop.serve_ms if received is not None else 0.0
    calling = hop.call_ms if sent is not None else 0.0
    return served + calling + transfer_ms(serialised_bytes(received, sent), hop.serialise_mbps)


def serialised_bytes(received: tuple[int, int] | None, sent: tuple[int, int] | None) -> int:
    """The raw bytes a hop (de)serialises per request: both directions of the links it is
    served over (`received`) and calls over (`sent`), None where that link is not used."""
    return sum(sum(x) for x in (received, sent) if x is not None)


@dataclass(frozen=True, slots=True, kw_only=True)
class HopCost:
    """What one hop does per request: positions [start, end) of the order.

    `serve_ms` is its serving CPU (module docstring) and `serialised_bytes` the raw bytes it
    (de)serialises; `stage_ms` = compute + serving, its stage of a pipelined stream."""

    name: str
    start: int
    end: int
    compute_ms: float
    memory_bytes: int
    fits: bool
    serve_ms: float = 0.0
    serialised_bytes: int = 0

    @property
    def nodes(self) -> int:
        return self.end - self.start

    @property
    def stage_ms(self) -> float:
        return self.compute_ms + self.serve_ms


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkCost:
    """What crosses one link per request (zeros when nothing runs beyond it)."""

    name: str
    used: bool
    up_bytes: int
    down_bytes: int
    up_ms: float
    down_ms: float
    rtt_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainCost:
    """The chain's predicted cost at one tuple of cuts; times in ms, sizes in raw bytes."""

    cuts: tuple[int, ...]
    hops: tuple[HopCost, ...]
    links: tuple[LinkCost, ...]
    latency_ms: float
    bottleneck_ms: float

    @property
    def feasible(self) -> bool:
        return all(h.fits for h in self.hops)

    @property
    def throughput_rps(self) -> float:
        """Requests per second of a pipelined stream (each hop on a different request)."""
        return math.inf if self.bottleneck_ms <= 0 else 1e3 / self.bottleneck_ms

    def to_json(self) -> dict[str, object]:
        """The `--explain` rows and plan.json's `chain.predicted`: every hop and link."""
        return {
            "cuts": list(self.cuts), "latency_ms": round(self.latency_ms, 9),
            "bottleneck_ms": round(self.bottleneck_ms, 9),
            "hops": [{"name": h.name, "start": h.start, "end": h.end, "nodes": h.nodes,
                      "compute_ms": round(h.compute_ms, 9), "serve_ms": round(h.serve_ms, 9),
                      "serialised_bytes": h.serialised_bytes,
                      "stage_ms": round(h.stage_ms, 9), "memory_bytes": h.memory_bytes,
                      "fits": h.fits} for h in self.hops],
            "links": [{"name": c.name, "used": c.used, "up_bytes": c.up_bytes,
                       "down_bytes": c.down_bytes, "up_ms": round(c.up_ms, 9),
                       "down_ms": round(c.down_ms, 9), "rtt_ms": c.rtt_ms} for c in self.links],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainResult:
    """The chosen cuts and their cost. `cuts` are positions of the order, except from the
    down-set solvers, where they are the sizes of D_1..D_{k-1} and `device_sets` the sets
    (CostGraph node indices)."""

    cuts: tuple[int, ...]
    cost: ChainCost
    solver: str
    objective: str
    device_sets: tuple[frozenset[int], ...] | None = None


class _Tables:
    """Per-position and per-segment sums of one graph, shared by every hop."""

    def __init__(self, graph: CostGraph) -> None:
        n = len(graph.order)
        self.n = n
        pos = graph.position
        self.avail: list[int] = []
        self.last: list[int] = []
        up_diff = [0] * (n + 2)
        down_at = [0] * (n + 1)  # graph-output bytes made at each position
        for t in graph.tensors:
            avail = -1 if t.producer is None else pos[t.producer]
            last = max((pos[c] for c in t.consumers), default=avail)
            self.avail.append(avail)
            self.last.append(last)
            if t.consumers:  # crosses every boundary p with avail < p <= last
                up_diff[avail + 1] += t.bytes
                up_diff[last + 1] -= t.bytes
            if t.is_graph_output and t.producer is not None:
                down_at[avail] += t.bytes
        self.cross = list(itertools.accumulate(up_diff[: n + 1]))
        self.down = [0] * (n + 1)
        for p in range(n - 1, -1, -1):
            self.down[p] = self.down[p + 1] + down_at[p]
        self.weights = [0, *list(itertools.accumulate(graph.nodes[v].weight_bytes for v in graph.order))]
        # Bytes live at step s (running the node at position s) for any segment holding s.
        live_diff = [0] * (n + 2)
        for t, avail, last in zip(graph.tensors, self.avail, self.last, strict=True):
            start = max(avail, 0)
            if last >= start and (t.consumers or t.producer is not None):
                live_diff[start] += t.bytes
                live_diff[last + 1] -= t.bytes
        self.live = list(itertools.accumulate(live_diff[:n]))
        # Graph outputs whose readers (if any) end before the output's hop does.
        self.outputs = [(avail, last, t.bytes) for t, avail, last
                        in zip(graph.tensors, self.avail, self.last, strict=True)
                        if t.is_graph_output and t.producer is not None]
        self._memory: dict[int, list[int]] = {}

    def memory_row(self, a: int) -> list[int]:
        """memory(a, b) for b = a..N (index b - a); 0 for the empty segment."""
        row = self._memory.get(a)
        if row is not None:
            return row
        extra = [0] * (self.n + 2)  # held-to-end graph outputs, from the step after their last read
        for avail, last, nbytes in self.outputs:
            if avail >= a:
                extra[last + 1] += nbytes
        row = [0]
        peak = 0
        held = 0
        for s in range(a, self.n):
            held += extra[s]
            peak = max(peak, self.live[s] + held)
            row.append(self.weights[s + 1] - self.weights[a] + peak)
        self._memory[a] = row
        return row


def segment_memory_bytes(graph: CostGraph, start: int, end: int) -> int:
    """Weights plus peak live activations of positions [start, end) run on one hop."""
    return _Tables(graph).memory_row(start)[end - start]


def _checked(graph: CostGraph, hops: Sequence[Hop], links: Sequence[Link]) -> None:
    n = len(graph.nodes)
    problems = []
    if len(hops) < 1:
        problems.append("a chain needs at least one hop")
    if len(links) != max(len(hops) - 1, 0):
        problems.append(f"{len(hops)} hops need {len(hops) - 1} links, got {len(links)}")
    problems += [f"hop {h.name!r} times {len(h.node_ms)} nodes, the graph has {n}"
                 for h in hops if len(h.node_ms) != n]
    if problems:
        raise UserInputError("chain: " + "; ".join(problems))


class _Model:
    """Segment and link terms of one chain over one graph."""

    def __init__(self, graph: CostGraph, hops: Sequence[Hop], links: Sequence[Link]) -> None:
        _checked(graph, hops, links)
        self.graph, self.hops, self.links = graph, tuple(hops), tuple(links)
        self.t = _Tables(graph)
        self.prefix = [[0.0, *list(itertools.accumulate(h.node_ms[v] for v in graph.order))]
                       for h in hops]
        k, n = len(self.hops), self.t.n
        self.serve_in = [[estimate_serve_ms(h, self._boundary(p), None) if j >= 1 else 0.0
                          for p in range(n + 1)] for j, h in enumerate(self.hops)]
        self.serve_out = [[estimate_serve_ms(h, None, self._boundary(p)) if j < k - 1 else 0.0
                           for p in range(n + 1)] for j, h in enumerate(self.hops)]

    def compute(self, j: int, a: int, b: int) -> float:
        if a == b:
            return 0.0
        return self.prefix[j][b] - self.prefix[j][a] + self.hops[j].run_overhead_ms

    def _boundary(self, p: int) -> tuple[int, int] | None:
        return None if p >= self.t.n else (self.t.cross[p], self.t.down[p])

    def serve(self, j: int, a: int, b: int) -> float:
        """Hop j's serving CPU with its segment [a, b): served over link j - 1 when a < N
        (j >= 1), calling over link j when b < N (j < k - 1). A sum of a term of a and a
        term of b (the bytes are charged at one rate), tabulated once."""
        return self.serve_in[j][a] + self.serve_out[j][b]

    def stage(self, j: int, a: int, b: int) -> float:
        """Hop j's time per request on [a, b): compute and serving."""
        return self.compute(j, a, b) + self.serve(j, a, b)

    def serialised(self, j: int, a: int, b: int) -> int:
        received = self._boundary(a) if j >= 1 else None
        sent = self._boundary(b) if j < len(self.hops) - 1 else None
        return serialised_bytes(received, sent)

    def fits(self, j: int, a: int, b: int) -> bool:
        limit = self.hops[j].memory_bytes
        return limit is None or self.t.memory_row(a)[b - a] <= limit

    def link(self, i: int, p: int) -> tuple[float, float, float]:
        """(up_ms, down_ms, rtt_ms) of link i with cut i at position p."""
        if p >= self.t.n:
            return 0.0, 0.0, 0.0
        link = self.links[i]
        return link.up_ms(self.t.cross[p]), link.down_ms(self.t.down[p]), link.rtt_ms

    def cost(self, cuts: Sequence[int]) -> ChainCost:
        n, k = self.t.n, len(self.hops)
        bounds = [0, *cuts, n]
        hops = tuple(HopCost(name=h.name, start=bounds[j], end=bounds[j + 1],
                             compute_ms=self.compute(j, bounds[j], bounds[j + 1]),
                             serve_ms=self.serve(j, bounds[j], bounds[j + 1]),
                             serialised_bytes=self.serialised(j, bounds[j], bounds[j + 1]),
                             memory_bytes=self.t.memory_row(bounds[j])[bounds[j + 1] - bounds[j]],
                             fits=self.fits(j, bounds[j], bounds[j + 1]))
                     for j, h in enumerate(self.hops))
        links = []
        for i in range(k - 1):
            up, down, rtt = self.link(i, cuts[i])
            used = cuts[i] < n
            links.append(LinkCost(name=self.links[i].name, used=used,
                                  up_bytes=self.t.cross[cuts[i]] if used else 0,
                                  down_bytes=self.t.down[cuts[i]] if used else 0,
                                  up_ms=up, down_ms=down, rtt_ms=rtt))
        latency = sum(h.stage_ms for h in hops) + sum(c.up_ms + c.down_ms + c.rtt_ms
                                                       for c in links)
        bottleneck = max([h.stage_ms for h in hops] + [x for c in links
                                                       for x in (c.up_ms, c.down_ms)])
        return ChainCost(cuts=tuple(cuts), hops=hops, links=tuple(links), latency_ms=latency,
                         bottleneck_ms=bottleneck)


def estimate_chain(graph: CostGraph, hops: Sequence[Hop], links: Sequence[Link],
                   cuts: Sequence[int]) -> ChainCost:
    """The cost of the chain at `cuts` (k - 1 non-decreasing positions in 0..N)."""
    n = len(graph.nodes)
    cuts = tuple(int(c) for c in cuts)
    if len(cuts) != len(hops) - 1 or any(not 0 <= c <= n for c in cuts) or list(cuts) != sorted(cuts):
        raise UserInputError(f"chain of {len(hops)} hops: cuts must be {len(hops) - 1} "
                             f"non-decreasing positions in 0..{n}, got {list(cuts)}")
    return _Model(graph, hops, links).cost(cuts)


def best_chain(graph: CostGraph, hops: Sequence[Hop], links: Sequence[Link], *,
               objective: str = "latency", solver: str = "dp") -> ChainResult:
    """The cuts minimising `objective` under every hop's memory (module docstring).

    Exact ties go to the earlier cut (less work on the hops nearer the caller). Raises
    NoFeasibleCutError when no tuple of cuts fits every hop's memory.
    """
    if objective not in CHAIN_OBJECTIVES:
        raise UserInputError(f"objective must be one of {', '.join(CHAIN_OBJECTIVES)}, "
                             f"got {objective!r}")
    if solver not in CHAIN_SOLVERS:
        raise UserInputError(f"solver must be one of {', '.join(CHAIN_SOLVERS)}, got {solver!r}")
    model = _Model(graph, hops, links)
    if solver == "bruteforce":
        cuts = _bruteforce(model, objective)
    elif solver in ("downset", "mincut"):
        from edgecut.partitioner import chain_downsets

        solve = chain_downsets.best_nested_downsets if solver == "downset" \
            else chain_downsets.min_cut_chain
        return solve(graph, hops, links, objective)
    else:
        cuts = _dp(model, objective)
    return ChainResult(cuts=cuts, cost=model.cost(cuts), solver=solver, objective=objective)


def _key(cost: ChainCost, objective: str) -> tuple[float, float]:
    if objective == "latency":
        return (cost.latency_ms, cost.bottleneck_ms)
    return (cost.bottleneck_ms, cost.latency_ms)


def _all_tuples(n: int, k: int) -> Iterator[tuple[int, ...]]:
    return itertools.combinations_with_replacement(range(n + 1), k - 1)


def _bruteforce(model: _Model, objective: str) -> tuple[int, ...]:
    n, k = model.t.n, len(model.hops)
    if math.comb(n + k - 1, k - 1) > MAX_BRUTEFORCE_TUPLES:
        raise UserInputError(f"brute force over {n} nodes and {k} hops tries too many tuples; "
                             "use solver='dp'")
    best: tuple[tuple[float, float], tuple[int, ...]] | None = None
    from edgecut.partitioner.chain_downsets import cost_of_parts, position_sets

    for cuts in _all_tuples(n, k):
        cost = cost_of_parts(model.graph, model.hops, model.links,
                             position_sets(model.graph, cuts))
        if cost is None:
            continue
        key = (_round(_key(cost, objective)), cuts)
        if best is None or key < best:
            best = key
    if best is None:
        raise _infeasible(model)
    return best[1]


def _round(key: tuple[float, float]) -> tuple[float, float]:
    # Sums taken in different orders differ in the last bits: compare at 1e-9 relative.
    return tuple(round(x, 9 - math.floor(math.log10(abs(x))) if x else 0) if
                 math.isfinite(x) else x for x in key)  # type: ignore[return-value]


def _dp(model: _Model, objective: str) -> tuple[int, ...]:
    """Exact programme over positions; the min-max first when maximising throughput."""
    limit = math.inf
    if objective == "throughput":
        limit = _dp_run(model, bottleneck=True, limit=math.inf)[0]
        limit = limit * (1 + _EPS) + _EPS
    value, cuts = _dp_run(model, bottleneck=False, limit=limit)
    if not math.isfinite(value):
        raise _infeasible(model)
    return cuts


def _dp_run(model: _Model, *, bottleneck: bool, limit: float) -> tuple[float, tuple[int, ...]]:
    n, k = model.t.n, len(model.hops)
    combine = max if bottleneck else (lambda a, b: a + b)
    inf = math.inf
    # best[p]: the least value of hops 0..j with hop j ending at p; back[j][p]: its start.
    best = [model.stage(0, 0, p) if model.fits(0, 0, p) and model.stage(0, 0, p) <= limit
            else inf for p in range(n + 1)]
    back: list[list[int]] = [[0] * (n + 1)]
    for j in range(1, k):
        link = [model.link(j - 1, q) for q in range(n + 1)]
        link_value = []
        for up, down, rtt in link:
            if up > limit or down > limit:
                link_value.append(inf)
            else:
                link_value.append(max(up, down) if bottleneck else up + down + rtt)
        new = [inf] * (n + 1)
        arg = [0] * (n + 1)
        for p in range(n + 1):
            for q in range(p + 1):
                if best[q] == inf or link_value[q] == inf:
                    continue
                c = model.stage(j, q, p)
                if c > limit or not model.fits(j, q, p):
                    continue
                value = combine(combine(best[q], link_value[q]), c)
                # Ties: the earlier cut (less on the devices nearer the caller's battery).
                if value < new[p] - _EPS * max(1.0, abs(value)):
                    new[p], arg[p] = value, q
        best = new
        back.append(arg)
    cuts = []
    p = n
    for j in range(k - 1, 0, -1):
        p = back[j][p]
        cuts.append(p)
    return best[n], tuple(reversed(cuts))


def _infeasible(model: _Model) -> NoFeasibleCutError:
    limits = ", ".join(f"{h.name} {h.memory_bytes} bytes" for h in model.hops
                       if h.memory_bytes is not None)
    least = min(model.t.memory_row(a)[b - a] for a in range(model.t.n + 1)
                for b in range(a + 1, model.t.n + 1)) if model.t.n else 0
    return NoFeasibleCutError(
        f"no cuts of the chain fit every hop's memory ({limits}): the least any one node needs "
        f"is {least} bytes; allow more memory, or add a hop")
