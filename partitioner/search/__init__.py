"""Cut search: one interface, `best_cut`, over pluggable solvers (one module each).

| solver       | cuts it considers                     | objectives                  | cost       |
| ------------ | ------------------------------------- | --------------------------- | ---------- |
| `mincut`     | every DAG cut (down-set), exactly     | latency, energy             | max-flow   |
| `scan`       | prefixes of the topological order     | latency, energy, throughput | O(N + E)   |
| `bruteforce` | every DAG cut, one by one (<= 20 nodes) | all                       | O(2**N)    |

`solver="auto"` (the default) is `mincut` for latency and energy and `scan` for throughput:
maximising the rate of a pipelined stream over DAG cuts is NP-hard (DADS), and the scan is
exact over the prefixes `list_cuts` offers.

Constraints (device memory, energy budget) are not linear in the cut (peak memory is a max), so
the min-cut ignores them. When its optimum breaks one, the search falls back to the best
feasible cut among: the Lagrangian cuts of the limit (min-cuts of objective + lambda * limited
quantity, walking the lower convex hull between the unconstrained optimum and a feasible cut),
and every prefix of the order. That answer is feasible, but exact only over those candidates;
`SearchResult.exact` says which case you got. With `solver="auto"` a graph of at most
`AUTO_ENUMERATE_NODES` nodes is enumerated instead, which is exact. An energy budget below the
least device energy of any cut (itself a min-cut, so exact) is reported as such.

Example:
    >>> from edgecut.partitioner.cost import CostParameters
    >>> from edgecut.partitioner.costgraph import chain_costgraph
    >>> g = chain_costgraph(device_ms=[1, 9], cloud_ms=[0.1, 0.9], tensor_bytes=[8000, 80, 8])
    >>> r = best_cut(g, CostParameters(uplink_mbps=1, downlink_mbps=1))
    >>> sorted(r.device_nodes), r.solver, r.exact
    ([0], 'mincut', True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from edgecut.errors import NoFeasibleCutError, UserInputError
from edgecut.partitioner.cost import (
    OBJECTIVES,
    Constraints,
    CostParameters,
    CutCost,
    LinearWeights,
    Objective,
    combine_weights,
    estimate_cut,
    evaluate_linear,
    linear_weights,
    objective_key,
)
from edgecut.partitioner.costgraph import CostGraph
from edgecut.partitioner.search.bruteforce import all_cuts
from edgecut.partitioner.search.mincut import min_cut, min_linear_cut
from edgecut.partitioner.search.scan import scan_prefixes

__all__ = [
    "AUTO_ENUMERATE_NODES",
    "SOLVERS",
    "Constraints",
    "Objective",
    "SearchResult",
    "Solver",
    "best_cut",
]

Solver = Literal["auto", "mincut", "scan", "bruteforce"]
SOLVERS: tuple[str, ...] = ("auto", "mincut", "scan", "bruteforce")
AUTO_ENUMERATE_NODES = 12  # at most 2**12 cuts: enumerating them is cheaper than doubting
_HULL_STEPS = 24  # each step is one min-cut; the hull of real models has few corners


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchResult:
    """The chosen device set, its cost, the solver that found it, and whether it is proven
    optimal over every cut of the graph under the constraints."""

    device_nodes: frozenset[int]
    cost: CutCost
    solver: str
    exact: bool

    def __post_init__(self) -> None:
        if self.solver not in ("mincut", "scan", "bruteforce", "mincut+fallback"):
            raise ValueError(f"search result: unknown solver {self.solver!r}")


def best_cut(
    graph: CostGraph,
    params: CostParameters,
    *,
    objective: Objective = "latency",
    constraints: Constraints = Constraints(),  # noqa: B008 - frozen value, safe to share
    solver: Solver = "auto",
    flow_func: Callable[..., Any] | None = None,
) -> SearchResult:
    """The cut that minimises `objective` under `constraints` (see the module docstring).

    `flow_func` is passed to `networkx.minimum_cut` by the min-cut solver; None uses the
    built-in solver. Raises NoFeasibleCutError naming the limit that binds and the least value
    that would admit a cut.
    """
    if objective not in OBJECTIVES:
        raise UserInputError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if solver not in SOLVERS:
        raise UserInputError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if solver == "bruteforce":
        cuts = all_cuts(graph, params)
        device, cost = _pick(cuts, objective, constraints)
        return SearchResult(device_nodes=device, cost=cost, solver="bruteforce", exact=True)
    if solver == "scan" or (solver == "auto" and objective == "throughput"):
        device, cost = _pick(_prefixes(graph, params), objective, constraints)
        return SearchResult(device_nodes=device, cost=cost, solver="scan", exact=False)
    if objective == "throughput":
        raise UserInputError(
            "solver='mincut' cannot maximise throughput: the slowest stage is not a sum over "
            "nodes (and the problem is NP-hard on DAGs); use solver='scan' or 'bruteforce'"
        )

    device, cost = min_cut(graph, params, objective, flow_func=flow_func)
    if constraints.admits(cost):
        return SearchResult(device_nodes=device, cost=cost, solver="mincut", exact=True)
    if solver == "auto" and len(graph.nodes) <= AUTO_ENUMERATE_NODES:
        device, cost = _pick(all_cuts(graph, params), objective, constraints)
        return SearchResult(device_nodes=device, cost=cost, solver="bruteforce", exact=True)

    candidates: list[tuple[frozenset[int], CutCost]] = [(device, cost)]
    primary = linear_weights(graph, params, objective)
    least_energy: float | None = None
    if constraints.energy_budget_j is not None:
        energy_cut = min_cut(graph, params, "energy", flow_func=flow_func)
        least_energy = energy_cut[1].energy_j
        candidates.append(energy_cut)
        if objective == "latency" and constraints.admits(energy_cut[1]):
            candidates += _hull_walk(graph, params, primary, linear_weights(graph, params, "energy"),
                                     (device, cost), energy_cut, constraints, flow_func)
    if constraints.device_memory_bytes is not None:
        weights_only = LinearWeights(
            device=tuple(float(n.weight_bytes) for n in graph.nodes), cloud=(0.0,) * len(graph.nodes),
            up=tuple(0.0 for _ in graph.tensors), down=tuple(0.0 for _ in graph.tensors), fixed=0.0,
        )
        lightest = min_linear_cut(graph, combine_weights(primary, weights_only, 1e9),
                                  flow_func=flow_func)
        light = (lightest, estimate_cut(graph, lightest, params))
        candidates.append(light)
        if constraints.admits(light[1]):
            candidates += _hull_walk(graph, params, primary, weights_only, (device, cost), light,
                                     constraints, flow_func)
    candidates += _prefixes(graph, params)
    device, cost = _pick(candidates, objective, constraints, least_energy=least_energy)
    return SearchResult(device_nodes=device, cost=cost, solver="mincut+fallback", exact=False)


def _prefixes(graph: CostGraph, params: CostParameters) -> list[tuple[frozenset[int], CutCost]]:
    return [(graph.prefix(k), cost) for k, cost in scan_prefixes(graph, params)]


def _pick(
    candidates: Iterable[tuple[frozenset[int], CutCost]],
    objective: str,
    constraints: Constraints,
    *,
    least_energy: float | None = None,
) -> tuple[frozenset[int], CutCost]:
    pool = list(candidates)
    feasible = [c for c in pool if constraints.admits(c[1])]
    if feasible:
        # Fewer device nodes break exact ties: the same cost with less to run on the device.
        return min(feasible, key=lambda c: (objective_key(c[1], objective), len(c[0])))
    raise _no_feasible_cut(constraints, [c for _, c in pool], least_energy)


def _no_feasible_cut(
    constraints: Constraints, costs: list[CutCost], least_energy: float | None
) -> NoFeasibleCutError:
    if not costs:  # cannot happen: the all-device cut never sends a pinned input
        return NoFeasibleCutError("no cut is feasible: every cut sends a pinned input")
    memory = constraints.device_memory_bytes
    fits = costs if memory is None else [c for c in costs if c.device_memory_bytes <= memory]
    if not fits:
        need = min(c.device_memory_bytes for c in costs)
        return NoFeasibleCutError(
            f"no cut fits a device memory of {_mib(memory)} MiB ({memory} bytes): the least device "
            f"memory of any candidate cut (weights + peak activations) is {_mib(need)} MiB "
            f"({need} bytes); allow at least that (--device-memory-mib {_mib(need, up=True)}), or "
            "unpin inputs so more of the model can run in the cloud"
        )
    budget = constraints.energy_budget_j
    need_j = min(c.energy_j for c in fits)
    within = "" if memory is None else f" among the cuts within {_mib(memory)} MiB of device memory"
    if memory is None and least_energy is not None:
        need_j = min(need_j, least_energy)
    return NoFeasibleCutError(
        f"no cut fits energy_budget_j={budget}: the least device energy{within} is "
        f"{need_j:.6g} J per request; allow at least {need_j:.6g} J"
    )


def _hull_walk(
    graph: CostGraph,
    params: CostParameters,
    primary: LinearWeights,
    secondary: LinearWeights,
    infeasible: tuple[frozenset[int], CutCost],
    feasible: tuple[frozenset[int], CutCost],
    constraints: Constraints,
    flow_func: Callable[..., Any] | None,
) -> list[tuple[frozenset[int], CutCost]]:
    """Min-cuts of primary + lambda * secondary between an infeasible and a feasible cut.

    Each lambda is the slope of the segment joining the two current ends; its min-cut is
    either on that segment (the hull has no corner between: stop) or a new corner, which
    replaces the end of the same feasibility. The feasible end only improves.
    """
    def point(device: frozenset[int]) -> tuple[float, float]:
        return evaluate_linear(graph, primary, device), evaluate_linear(graph, secondary, device)

    all_device = frozenset(range(len(graph.nodes)))
    bad, good = infeasible[0], feasible[0]
    found: list[tuple[frozenset[int], CutCost]] = []
    for _ in range(_HULL_STEPS):
        (p_bad, q_bad), (p_good, q_good) = point(bad), point(good)
        if q_bad <= q_good:
            break
        lam = max(p_good - p_bad, 0.0) / (q_bad - q_good)
        mixed = combine_weights(primary, secondary, lam)
        trial = min((min_linear_cut(graph, mixed, flow_func=flow_func), all_device),
                    key=lambda d: evaluate_linear(graph, mixed, d))
        p, q = point(trial)
        tolerance = 1e-12 * max(1.0, abs(p_bad + lam * q_bad))
        if p + lam * q >= p_bad + lam * q_bad - tolerance or trial in (bad, good):
            break
        cost = estimate_cut(graph, trial, params)
        found.append((trial, cost))
        if constraints.admits(cost):
            good = trial
        else:
            bad = trial
    return found


def _mib(n: int, *, up: bool = False) -> str:
    """Bytes as MiB for messages (the CLI takes --device-memory-mib); `up` rounds so it fits."""
    mib = n / (1 << 20)
    return f"{math.ceil(mib * 1000) / 1000:.3f}" if up else f"{mib:.3f}"
