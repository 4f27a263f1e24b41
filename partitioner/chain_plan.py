"""Plan a chain (the device, helpers, the cloud) from profiles, and write its plan folder.

The shell around `edgecut.partitioner.chain`: per-node times of every hop from its profile
(`planner.node_times`: a measured table for this very file, else the calibration), one link
per hop after the device (the link that reaches it; the cloud's is `network`, as in a
single-cut plan), each hop's memory from its profile (`memory_mib`; the cloud unlimited).
Each hop's serving CPU (`edgecut.partitioner.chain`, module docstring) comes from its
profile too: `serve_ms` and `serialise_mbps` where the profile gives them, else this class
of machine's figures scaled to the profile's `memory_gbps` (`serve_ms_of`,
`serialise_mbps_of`); a call to the next hop costs `CALL_SHARE` of `serve_ms`.
The same run costs the best single cut (device and cloud over `network`) and device-only
with the same figures, so the chain is compared with them in one table.

The plan folder is a single-cut plan (docs/plan-format.md) whose one cut is the device's
(head = the device's slice, tail = everything after it: where requests go when the helpers
are skipped) plus `stages/<j>/model.onnx` and two keys, `stages` and `chain`. Every slice
passes the ONNX checker and the slices chained equal the full model on a sample input
before anything is written.

    >>> planned = plan_chain("m.onnx", device=pi4, network=lte, cloud=gpu,
    ...                      helpers=[(jetson, wifi)])                       # doctest: +SKIP
    >>> write_chain_plan(planned, "plan/")["chain"]["cuts"]                 # doctest: +SKIP
    [4, 15]
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgecut.errors import UserInputError
from edgecut.partitioner.chain import ChainCost, ChainResult, Hop, Link, best_chain, estimate_chain
from edgecut.partitioner.chain_extract import along, chain_slices, verify_chain
from edgecut.partitioner.costgraph import CostGraph, costgraph_from_model
from edgecut.partitioner.cuts import cut_from_device_set, list_cuts
from edgecut.partitioner.graph import analyse_graph
from edgecut.partitioner.planner import REFERENCE_MEMORY_GBPS, cost_parameters, node_times
from edgecut.partitioner.shapes import (
    concrete_input_shapes,
    resolve_tensors,
    run_on_samples,
    shapes_from_values,
)
from edgecut.profiles.schema import CloudProfile, DeviceProfile, NetworkProfile

__all__ = ["CALL_SHARE", "PLAN_SOLVERS", "SERIALISE_MBPS", "SERVE_MS", "ChainPlanned",
           "plan_chain", "serialise_mbps_of", "serve_ms_of", "write_chain_plan"]

PLAN_SOLVERS = ("dp", "mincut")

# The serving figures of a hop whose profile does not give them, measured on this project's
# 2-core x86 VM (the class of `REFERENCE_MEMORY_GBPS`, catalogue laptop.toml), `edgecut
# serve` over grpcio with TLS:
# - SERVE_MS: benchmarks/results/http_vs_grpc-2026-12-02-a.json, 16 floats in and 4 out:
#   0.70 ms of server CPU per request from one client, 0.53 ms from 16; their middle.
# - CALL_SHARE: the same run, one client: 937 req/s is 1.07 ms a call, 0.70 of it the server's
#   CPU, so the client's side of a call is at most 0.37 ms: about half the server's.
# - SERIALISE_MBPS: one 4 MiB ModelInfer goes from an edgecut client to `edgecut serve` at
#   500-720 MB/s (serving-full-2026-11-25-b to -26-k.json, channel, edgecut/default_malloc),
#   the client's serialisation and the server's parsing together: about 1 GB/s at each end.
# A slower machine pays more, in proportion to its memory bandwidth (as the codec in
# planner.cost_parameters); a faster one pays the same (Python and grpcio, not the memory,
# set the pace there).
SERVE_MS = 0.6
CALL_SHARE = 0.5
SERIALISE_MBPS = 8000.0


def serve_ms_of(profile: DeviceProfile) -> float:
    """The fixed CPU of one request through an endpoint on this device (ms).

    Example:
        >>> from edgecut.profiles import load_device
        >>> round(serve_ms_of(load_device("raspberry-pi-4")), 3), serve_ms_of(load_device("laptop"))
        (3.188, 0.6)
    """
    if profile.serve_ms is not None:
        return float(profile.serve_ms)
    return SERVE_MS * max(1.0, REFERENCE_MEMORY_GBPS / profile.memory_gbps)


def serialise_mbps_of(profile: DeviceProfile) -> float:
    """The rate at which this device (de)serialises tensors it receives or sends (Mbps).

    Example:
        >>> from edgecut.profiles import load_device
        >>> pi, gpu = load_device("raspberry-pi-4"), load_device("gpu-server")
        >>> round(serialise_mbps_of(pi)), serialise_mbps_of(gpu)
        (1506, 8000.0)
    """
    if profile.serialise_mbps is not None:
        return float(profile.serialise_mbps)
    return SERIALISE_MBPS * min(1.0, profile.memory_gbps / REFERENCE_MEMORY_GBPS)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainPlanned:
    """What the chain planner decided, and the baselines costed in the same run."""

    model_path: Path
    input_shapes: dict[str, tuple[int, ...]]
    objective: str
    graph: CostGraph = field(repr=False)
    hops: tuple[Hop, ...]
    links: tuple[Link, ...]
    profiles: tuple[str, ...]  # each hop's profile name
    result: ChainResult
    single_cut: ChainResult  # device + cloud over `network`, the same cost model
    device_only: ChainCost
    input_values: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False)
    # The order `result.cuts` are positions of (CostGraph node indices), None: `graph.order`.
    order: tuple[int, ...] | None = None

    def explain(self) -> list[dict[str, Any]]:
        """One row per hop and per link of the chosen chain (`edgecut chain plan --explain`)."""
        rows: list[dict[str, Any]] = []
        cost = self.result.cost
        for j, h in enumerate(cost.hops):
            rows.append({"kind": "hop", "name": h.name, "profile": self.profiles[j],
                         "nodes": h.nodes, "compute_ms": h.compute_ms, "serve_ms": h.serve_ms,
                         "serialised_bytes": h.serialised_bytes, "stage_ms": h.stage_ms,
                         "memory_bytes": h.memory_bytes, "memory_limit_bytes":
                         self.hops[j].memory_bytes, "fits": h.fits})
            if j < len(cost.links):
                c = cost.links[j]
                rows.append({"kind": "link", "name": c.name, "used": c.used,
                             "up_bytes": c.up_bytes, "down_bytes": c.down_bytes,
                             "up_ms": c.up_ms, "down_ms": c.down_ms, "rtt_ms": c.rtt_ms})
        return rows

    def summary(self) -> dict[str, Any]:
        """Chain against the best single cut and device-only: latency and throughput."""
        def row(cost: ChainCost) -> dict[str, float]:
            return {"latency_ms": cost.latency_ms, "bottleneck_ms": cost.bottleneck_ms,
                    "throughput_rps": cost.throughput_rps}
        return {"chain": row(self.result.cost), "single_cut": row(self.single_cut.cost),
                "device_only": row(self.device_only)}


def _link(sender: DeviceProfile, network: NetworkProfile, cloud: CloudProfile) -> Link:
    p = cost_parameters(sender, network, cloud)
    return Link(name=network.name, uplink_mbps=p.uplink_mbps,
                downlink_mbps=float(network.downlink_mbps), rtt_ms=float(network.rtt_ms),
                compression_ratio=p.compression_ratio, encode_mbps=p.encode_mbps)


def plan_chain(
    model_path: str | os.PathLike[str],
    *,
    device: DeviceProfile,
    network: NetworkProfile,
    cloud: CloudProfile | None,
    helpers: Sequence[tuple[DeviceProfile, NetworkProfile]] = (),
    objective: str = "latency",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    input_values: Mapping[str, np.ndarray] | None = None,
    cloud_reference: DeviceProfile | None = None,
    device_memory_bytes: int | None = None,
    cuts: Sequence[int] | None = None,
    solver: str = "dp",
) -> ChainPlanned:
    """Cost the chain device -> helpers -> cloud and choose its cuts (module docstring).

    `cloud=None` ends the chain at the last helper (a local cluster with no cloud); then
    `network` is not used. `device_memory_bytes` overrides the device profile's memory.
    `cuts` (k - 1 positions of the order) are costed and kept instead of chosen, as
    `edgecut plan --cut` writes given cuts. `solver` "dp" cuts the default order; "mincut"
    (latency only) takes any nested down-sets, memory checked afterwards, and cuts along an
    order of which they are prefixes (`ChainPlanned.order`).
    """
    if solver not in PLAN_SOLVERS:
        raise UserInputError(f"solver must be one of {', '.join(PLAN_SOLVERS)}, got {solver!r}")
    if solver == "mincut" and objective != "latency":
        raise UserInputError("--solver mincut minimises latency only; use --solver dp for "
                             f"--objective {objective}")
    if solver != "dp" and cuts is not None:
        raise UserInputError("--cuts are positions of the default order: they go with "
                             "--solver dp")
    from edgecut.partitioner.plan import load_model

    path = Path(model_path)
    model = load_model(path)
    info = analyse_graph(model)
    shapes = concrete_input_shapes(model, shapes_from_values(model, input_values, input_shapes))
    tensors = resolve_tensors(model, shapes, values=input_values)
    profiles: list[DeviceProfile] = [device, *(h for h, _ in helpers)]
    kinds = ["device", *["helper"] * len(helpers)]
    names = ["device", *(f"helper{i + 1}" for i in range(len(helpers)))]
    senders = [device, *(h for h, _ in helpers)]
    links = [_link(senders[i], net, cloud or CloudProfile(name="none", speedup=1.0))
             for i, (_, net) in enumerate(helpers)]
    if cloud is not None:
        cloud_device = cloud.as_device(cloud_reference or device)
        profiles.append(cloud_device)
        kinds.append("cloud")
        names.append("cloud")
        links.append(_link(senders[-1], network, cloud))
    tables = node_times(model, path, shapes, info, profiles)
    graph = costgraph_from_model(model, shapes, tables[0], tables[-1], tensors=tensors)

    def hop(j: int) -> Hop:
        limit = None if kinds[j] == "cloud" else int(profiles[j].memory_mib * 2**20)
        if j == 0 and device_memory_bytes is not None:
            limit = int(device_memory_bytes)
        overhead = profiles[j].run_overhead_ms + (cloud.queue_ms if kinds[j] == "cloud"
                                                  and cloud is not None else 0.0)
        serve = serve_ms_of(profiles[j])
        return Hop(name=names[j], kind=kinds[j], memory_bytes=limit, run_overhead_ms=overhead,
                   node_ms=tuple(tables[j][node.name] for node in graph.nodes),
                   serve_ms=serve, call_ms=CALL_SHARE * serve,
                   serialise_mbps=serialise_mbps_of(profiles[j]))

    hops = [hop(j) for j in range(len(profiles))]
    order = None
    if solver == "mincut":
        result, order = _min_cut(graph, hops, links)
    elif cuts is None:
        result = best_chain(graph, hops, links, objective=objective)
    else:
        given = estimate_chain(graph, hops, links, cuts)
        result = ChainResult(cuts=given.cuts, cost=given, solver="given", objective=objective)
    if cloud is not None:
        single = best_chain(graph, [hops[0], hops[-1]], [_link(device, network, cloud)],
                            objective=objective)
    else:
        single = best_chain(graph, hops[:1], [], objective=objective)
    device_only = estimate_chain(graph, [hops[0]], [], [])
    return ChainPlanned(
        model_path=path, input_shapes=dict(shapes), objective=objective, graph=graph,
        hops=tuple(hops), links=tuple(links),
        profiles=tuple(p.name for p in profiles[:-1]) + (
            (cloud.name,) if cloud is not None else (profiles[-1].name,)),
        result=result, single_cut=single, device_only=device_only,
        input_values=dict(input_values or {}), order=order)


def _min_cut(graph: CostGraph, hops: Sequence[Hop], links: Sequence[Link]
             ) -> tuple[ChainResult, tuple[int, ...] | None]:
    """The min-cut chain (no memory limits), its memory checked, as positions of an order."""
    from edgecut.partitioner.chain_downsets import _parts, cost_of_parts, order_of_sets

    free = [dataclasses.replace(h, memory_bytes=None) for h in hops]
    found = best_chain(graph, free, links, objective="latency", solver="mincut")
    assert found.device_sets is not None
    cost = cost_of_parts(graph, hops, links, _parts(found.device_sets, len(graph.nodes)))
    if cost is None:
        raise UserInputError("the min-cut chain (which ignores memory limits) does not fit a "
                             "hop's memory; use --solver dp")
    order, cuts = order_of_sets(graph, found.device_sets)
    result = ChainResult(cuts=cuts, cost=dataclasses.replace(cost, cuts=cuts), solver="mincut",
                         objective="latency", device_sets=found.device_sets)
    return result, (None if order == tuple(graph.order) else order)


def write_chain_plan(planned: ChainPlanned, out_dir: str | os.PathLike[str], *,
                     name: str | None = None) -> dict[str, Any]:
    """Write the plan folder (module docstring) and return plan.json's dict."""
    from edgecut.partitioner.plan import check_model, load_model, model_name, write_plan

    model = load_model(planned.model_path)
    info = analyse_graph(model)
    # Cost node v is model node info.order[v]; the chain is cut along `cut_info.order`.
    cut_info = info if planned.order is None else along(
        info, [info.order[v] for v in planned.order])
    shapes = planned.input_shapes
    values = planned.input_values or None
    tensors = resolve_tensors(model, shapes, values=values)
    cuts = planned.result.cuts
    n = len(info.order)
    device_end = cuts[0] if cuts else n

    listed = list_cuts(model, shapes, graph=info, tensors=tensors)
    device_cut = cut_from_device_set(model, cut_info.order[:device_end], shapes,
                                     cut_id=len(listed), graph=info, tensors=tensors)
    prefix = set(info.order[:device_end]) == set(cut_info.order[:device_end])
    same = next((c for c in listed if prefix and c.position == device_end
                 and c.crossing == device_cut.crossing), None)
    extra = [] if same is not None else [device_cut]
    skip_id = same.id if same is not None else device_cut.id

    slices = chain_slices(model, cuts, graph=cut_info, tensors=tensors)
    for j, s in enumerate(slices):
        if s.model is not None:
            check_model(s.model, f"{planned.model_path}: chain slice {j}")
    feeds, _ = run_on_samples(model, shapes, values, where=f"{planned.model_path}: the chain")
    diff = verify_chain(model, [s.model for s in slices], feeds=feeds,
                        where=f"{planned.model_path}: chain at cuts {list(cuts)}")

    plan = write_plan(planned.model_path, out_dir, cut_ids=[skip_id] if same else [],
                      input_shapes=shapes, chosen=skip_id, name=name, extra_cuts=extra,
                      input_values=values)
    out = Path(out_dir)
    endpoint = name if name is not None else model_name(planned.model_path)
    stages = []
    for j, s in enumerate(slices):
        if s.model is None:
            break  # nothing runs from here on: the chain ends at the previous hop
        hop = planned.hops[j]
        relative = f"stages/{j}/model.onnx"
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(s.model, str(target))
        stages.append({
            "index": j, "hop": hop.name, "where": hop.kind, "profile": planned.profiles[j],
            "link": planned.links[j - 1].name if j else None, "model": relative,
            "receives": list(s.receives), "sends": list(s.sends), "returns": list(s.returns),
            "nodes": s.nodes,
            "endpoint_model": None if j == 0 else f"{endpoint}.stage{j}",
        })
    if stages:
        stages[-1]["sends"] = []
    cost = planned.result.cost
    plan["stages"] = stages
    plan["chain"] = {
        "objective": planned.objective, "solver": planned.result.solver, "cuts": list(cuts),
        **({} if planned.order is None else {"order": list(cut_info.order)}),
        "skip_cut": skip_id, "max_abs_diff": diff, "predicted": cost.to_json(),
        "single_cut": planned.single_cut.cost.to_json(),
        "device_only": planned.device_only.to_json(),
        "profiles": {h.name: {"profile": p} for h, p in zip(planned.hops, planned.profiles,
                                                            strict=True)},
    }
    (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    return plan


