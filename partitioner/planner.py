"""Choose the cut: profiles in, costed candidates, the bandwidth envelope and the chosen cut out.

The pure core (`cost_parameters`, `candidates_from_graph`, `choose`, `plan_envelope`) works
on values; `plan_model` is the shell that loads the model, predicts per-node times from the
profiles, optionally measures heads and tails on this machine (`edgecut.partitioner.correction`),
and `write_planned` writes the folder with `write_plan`.

Per-node times. The device's measured `per_node_ms` table is used when its
`per_node_model_sha256` is this model file's sha256, else the device's calibration
(`opclass.estimate_node_ms` over shape inference: `predict_for_device`). The cloud the same way
with `CloudProfile.as_device` (its `reference` device, or the edge device, scaled by `speedup`).

Codec (DESIGN.md, The channel; `edgecut.protocol.codecs.choose_codec`, which the device runs
with `codec="auto"`): below `RAW_ABOVE_MBPS` uplink float activations go shuffle+zstd, about
1.2x smaller (`SHUFFLE_ZSTD_RATIO`) at about 700 MB/s of encoding on the machine it was
measured on, scaled here by the device's memory bandwidth against the catalogue laptop's
(zstd level 1 is memory-bound); at or above it tensors go raw. Integer tensors and tensors
under 4 KiB are costed at the same ratio (they are rare and small on real cuts). Answers come
back raw: the device asks no response codec under "auto".

Candidates. Every cut of `list_cuts` (the prefixes of one topological order, ids 0..K-1),
plus the exact min-cut optimum of the latency (and of the objective when it is energy) and
the search's answer (`search.best_cut`, objective and constraints), each made a real cut with
`cut_from_device_set` when it is not one of the listed prefixes; those get ids K, K+1, ... and
`kind="downset"`. `chosen` minimises the objective among the feasible candidates (ties: fewer
device nodes, then the smaller id).

Envelope. Latency over uplink bandwidth, the downlink scaled with it (see `envelope.py`), over
the candidates that respect the memory limit and the pinned inputs. The codec changes at
`RAW_ABOVE_MBPS`, so the envelope is the compressed-codec envelope below it spliced to the
raw-codec envelope above it. The energy budget depends on bandwidth and is applied to
`chosen` only.

Example:
    >>> from edgecut.profiles import load_device, load_network, load_cloud
    >>> planned = plan_model("chain_cnn.onnx", device=load_device("phone"),
    ...                      network=load_network("lte"), cloud=load_cloud(),
    ...                      measure=False)                               # doctest: +SKIP
    >>> planned.chosen.id in {s.cut for s in planned.envelope}            # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgecut.errors import NoFeasibleCutError, UserInputError
from edgecut.partitioner.correction import Correction
from edgecut.partitioner.cost import (
    OBJECTIVES,
    Constraints,
    CostParameters,
    CutCost,
    cost_from_totals,
    objective_key,
)
from edgecut.partitioner.costgraph import CostGraph, costgraph_from_model
from edgecut.partitioner.cuts import Cut, cut_from_device_set, list_cuts
from edgecut.partitioner.envelope import EnvelopeSegment, envelope_candidate, lower_envelope
from edgecut.partitioner.graph import GraphInfo, analyse_graph
from edgecut.partitioner.search import best_cut
from edgecut.partitioner.search.mincut import min_cut
from edgecut.partitioner.search.scan import scan_prefixes
from edgecut.partitioner.shapes import (
    TensorInfo,
    concrete_input_shapes,
    resolve_tensors,
    shapes_from_values,
)
from edgecut.profiles.schema import CloudProfile, DeviceProfile, NetworkProfile

__all__ = [
    "RAW_ABOVE_MBPS",
    "SHUFFLE_ZSTD_RATIO",
    "Candidate",
    "Planned",
    "add_run_overheads",
    "candidates_from_graph",
    "choose",
    "cost_parameters",
    "measuring_threads",
    "node_times",
    "plan_envelope",
    "plan_model",
    "profile_digest",
    "write_planned",
]

RAW_ABOVE_MBPS = 500.0  # choose_codec sends raw at or above this uplink (codecs._RAW_ABOVE_MBPS)
SHUFFLE_ZSTD_RATIO = 1.2  # DESIGN.md: byte-shuffle + zstd level 1 on fp32 CNN activations
ZSTD_ENCODE_MBPS = 700 * 8.0  # DESIGN.md: ~700 MB/s zstd level 1 on the measuring machine
REFERENCE_MEMORY_GBPS = 17.0  # catalogue laptop.toml, the class of machine it was measured on

Progress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- pure core

def cost_parameters(device: DeviceProfile, network: NetworkProfile, cloud: CloudProfile, *,
                    uplink_mbps: float | None = None) -> CostParameters:
    """CostParameters for `device` on `network` to `cloud`, with the codec `choose_codec` would
    use at `uplink_mbps` (default: the network's; the downlink keeps the network's ratio).

    Example:
        >>> from edgecut.profiles import load_cloud, load_device, load_network
        >>> p = cost_parameters(load_device("phone"), load_network("lte"), load_cloud())
        >>> p.compression_ratio, p.uplink_mbps
        (1.2, 6.0)
    """
    up = network.uplink_mbps if uplink_mbps is None else float(uplink_mbps)
    down = network.downlink_mbps * up / network.uplink_mbps
    compress = up < RAW_ABOVE_MBPS
    ratio = SHUFFLE_ZSTD_RATIO if compress else 1.0
    encode = (ZSTD_ENCODE_MBPS * min(1.0, device.memory_gbps / REFERENCE_MEMORY_GBPS)
              if compress else math.inf)
    power = device.power
    # Answers come back raw: the downlink is given as seen through the ratio, so that
    # `down_bytes / ratio` at `down / ratio` Mbps is the raw transfer time.
    return CostParameters(
        uplink_mbps=float(up), downlink_mbps=float(down) / ratio, rtt_ms=float(network.rtt_ms),
        encode_mbps=encode, decode_mbps=math.inf, compression_ratio=ratio,
        cloud_queue_ms=float(cloud.queue_ms), idle_w=float(power.idle_w),
        compute_w=float(power.compute_w), transmit_w=float(power.transmit_w),
        receive_w=float(power.receive_w),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One costed cut. Totals are what the cost model sums; `cost` is at the plan's network.

    `device_ratio`/`cloud_ratio` are the measured corrections applied to the model's
    `model_device_ms`/`model_cloud_ms` (1.0 when not measured); `measured` says the plan's
    measurement set them (timed for its anchor cuts, interpolated for the others).
    """

    id: int
    kind: str  # "prefix" or "downset"
    device_set: frozenset[int]  # CostGraph node indices
    model_device_ms: float
    model_cloud_ms: float
    up_bytes: int
    down_bytes: int
    device_memory_bytes: int
    graph_nodes: int
    device_ratio: float = 1.0
    cloud_ratio: float = 1.0
    measured: bool = False

    @property
    def device_nodes(self) -> int:
        return len(self.device_set)

    @property
    def uses_cloud(self) -> bool:
        return self.device_nodes < self.graph_nodes

    def cost(self, params: CostParameters, *, corrected: bool = True) -> CutCost:
        """The cut's cost under `params`, with or without the measured correction."""
        d = self.device_ratio if corrected else 1.0
        c = self.cloud_ratio if corrected else 1.0
        return cost_from_totals(
            params, device_ms=self.model_device_ms * d, cloud_ms=self.model_cloud_ms * c,
            up_bytes=self.up_bytes, down_bytes=self.down_bytes,
            device_memory_bytes=self.device_memory_bytes, uses_cloud=self.uses_cloud)


def _candidate(cut_id: int, kind: str, device: frozenset[int], cost: CutCost, n: int) -> Candidate:
    return Candidate(id=cut_id, kind=kind, device_set=device, model_device_ms=cost.device_ms,
                     model_cloud_ms=cost.cloud_ms, up_bytes=cost.up_bytes,
                     down_bytes=cost.down_bytes, device_memory_bytes=cost.device_memory_bytes,
                     graph_nodes=n)


def candidates_from_graph(
    graph: CostGraph,
    params: CostParameters,
    prefix_cuts: Sequence[tuple[int, int]],
    *,
    objective: str = "latency",
    constraints: Constraints = Constraints(),  # noqa: B008 - frozen value
) -> list[Candidate]:
    """The candidates: listed prefixes `(cut id, prefix length)` and the searched down-sets.

    Prefixes a pinned input would leave by are dropped. Down-sets that are no listed prefix
    get ids after the largest prefix id, in a fixed order (latency min-cut, energy min-cut,
    the search's answer). Raises NoFeasibleCutError from the search.
    """
    if objective not in OBJECTIVES:
        raise UserInputError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    n = len(graph.nodes)
    costs = dict(scan_prefixes(graph, params))
    out = [_candidate(cut_id, "prefix", graph.prefix(k), costs[k], n)
           for cut_id, k in prefix_cuts if k in costs]
    known = {c.device_set: c for c in out}
    searched: list[tuple[frozenset[int], CutCost]] = []
    result = best_cut(graph, params, objective=objective, constraints=constraints)  # type: ignore[arg-type]
    unconstrained = constraints == Constraints()
    if objective == "latency" and unconstrained:
        searched.append((result.device_nodes, result.cost))
    else:
        searched.append(min_cut(graph, params, "latency"))
        if objective == "energy":
            searched.append(min_cut(graph, params, "energy"))
        searched.append((result.device_nodes, result.cost))
    next_id = max((cut_id for cut_id, _ in prefix_cuts), default=-1) + 1
    for device, cost in searched:
        if device in known:
            continue
        candidate = _candidate(next_id, "downset", device, cost, n)
        known[device] = candidate
        out.append(candidate)
        next_id += 1
    return out


def add_run_overheads(candidates: Sequence[Candidate], device_run_ms: float,
                      cloud_run_ms: float) -> list[Candidate]:
    """Candidates with one session run's fixed cost added: `device_run_ms` to every cut that
    runs a head, `cloud_run_ms` to every cut that runs a tail (a profile's `run_overhead_ms`).

    The search costs nodes only; the charge is the same for every cut with a head (or a
    tail), so it changes only how those compare with cloud-only (or device-only), which
    `choose` sees among the candidates.
    """
    return [dataclasses.replace(
        c, model_device_ms=c.model_device_ms + (device_run_ms if c.device_nodes else 0.0),
        model_cloud_ms=c.model_cloud_ms + (cloud_run_ms if c.uses_cloud else 0.0))
        for c in candidates]


def choose(candidates: Sequence[Candidate], params: CostParameters, objective: str,
           constraints: Constraints = Constraints()) -> Candidate:  # noqa: B008
    """The feasible candidate with the least objective (ties: fewer device nodes, lower id).

    NoFeasibleCutError names the binding limit and the least value that would admit a cut.
    """
    if not candidates:
        raise NoFeasibleCutError("no candidate cut: every cut sends a pinned input")
    costed = [(c, c.cost(params)) for c in candidates]
    feasible = [(c, k) for c, k in costed if constraints.admits(k)]
    if feasible:
        return min(feasible, key=lambda ck: (objective_key(ck[1], objective), ck[0].device_nodes,
                                             ck[0].id))[0]
    memory = constraints.device_memory_bytes
    fits = [k for _, k in costed if memory is None or k.device_memory_bytes <= memory]
    if not fits:
        need = min(k.device_memory_bytes for _, k in costed)
        raise NoFeasibleCutError(
            f"no cut fits the device memory limit of {memory} bytes ({memory / 2**20:.1f} MiB): "
            f"the least any candidate cut needs is {need} bytes ({need / 2**20:.1f} MiB)")
    need_j = min(k.energy_j for k in fits)
    raise NoFeasibleCutError(
        f"no cut fits the energy budget of {constraints.energy_budget_j} J per request: the least "
        f"device energy of any candidate cut is {need_j:.6g} J")


def _lines(candidates: Sequence[Candidate], params: CostParameters) -> list[tuple[int, float, float]]:
    return [envelope_candidate(c.id, c.cost(params), params) for c in candidates]


def plan_envelope(candidates: Sequence[Candidate], device: DeviceProfile, network: NetworkProfile,
                  cloud: CloudProfile, constraints: Constraints = Constraints(),  # noqa: B008
                  ) -> list[EnvelopeSegment]:
    """The fastest candidate per uplink range, [0, inf), with the codec switch spliced in.

    Candidates over the memory limit are left out (the energy budget depends on bandwidth and
    is not applied). Adjacent segments of one cut are merged.
    """
    memory = constraints.device_memory_bytes
    pool = [c for c in candidates if memory is None or c.device_memory_bytes <= memory]
    if not pool:
        pool = list(candidates)
    low = cost_parameters(device, network, cloud, uplink_mbps=min(network.uplink_mbps,
                                                                  RAW_ABOVE_MBPS / 2))
    high = cost_parameters(device, network, cloud, uplink_mbps=max(network.uplink_mbps,
                                                                   RAW_ABOVE_MBPS))
    pieces: list[tuple[int, float, float]] = []
    for s in lower_envelope(_lines(pool, low)):
        if s.min_mbps < RAW_ABOVE_MBPS:
            pieces.append((s.cut, s.min_mbps, min(s.max_mbps, RAW_ABOVE_MBPS)))
    for s in lower_envelope(_lines(pool, high)):
        if s.max_mbps > RAW_ABOVE_MBPS:
            pieces.append((s.cut, max(s.min_mbps, RAW_ABOVE_MBPS), s.max_mbps))
    merged: list[tuple[int, float, float]] = []
    for cut, lo, hi in pieces:
        if merged and merged[-1][0] == cut:
            merged[-1] = (cut, merged[-1][1], hi)
        else:
            merged.append((cut, lo, hi))
    return [EnvelopeSegment(cut=c, min_mbps=lo, max_mbps=hi) for c, lo, hi in merged]


# --------------------------------------------------------------------------- the shell

@dataclass(frozen=True, slots=True, kw_only=True)
class Planned:
    """What the planner decided, with everything needed to explain and write it."""

    model_path: Path
    input_shapes: dict[str, tuple[int, ...]]
    objective: str
    constraints: Constraints
    params: CostParameters
    candidates: tuple[Candidate, ...]
    chosen: Candidate
    envelope: tuple[EnvelopeSegment, ...]
    model_envelope: tuple[EnvelopeSegment, ...]  # before the measured correction
    model_chosen: int  # before the measured correction
    cuts: Mapping[int, Cut]
    profiles: Mapping[str, Any]
    measurement: Mapping[str, Any] | None
    planning_s: float
    plot_inputs: Mapping[str, Any]  # device, network, cloud profiles, for `plot_envelope`
    input_values: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict, compare=False)

    def candidate(self, cut_id: int) -> Candidate:
        return next(c for c in self.candidates if c.id == cut_id)

    @property
    def written_ids(self) -> list[int]:
        """The cuts a plan folder holds: every envelope cut and the chosen one, by id."""
        ids = {s.cut for s in self.envelope} | {s.cut for s in self.model_envelope}
        return sorted(ids | {self.chosen.id, self.model_chosen})

    def explain(self) -> list[dict[str, Any]]:
        """One JSON object per candidate (the `edgecut plan --explain --json` contract)."""
        on_envelope = {s.cut for s in self.envelope}
        rows = []
        for c in self.candidates:
            cost = c.cost(self.params)
            rows.append({
                "id": c.id, "kind": c.kind, "bytes": c.up_bytes, "down_bytes": c.down_bytes,
                "device_nodes": c.device_nodes, **_components(cost),
                "feasible": self.constraints.admits(cost), "on_envelope": c.id in on_envelope,
                "measured": c.measured, "device_ratio": c.device_ratio, "cloud_ratio": c.cloud_ratio,
                "chosen": c.id == self.chosen.id,
            })
        return rows


def _components(cost: CutCost) -> dict[str, Any]:
    return {k: (v if isinstance(v, int) else round(v, 9)) for k, v in dataclasses.asdict(cost).items()}


def profile_digest(profile: Any) -> str:
    """sha256 of a profile's canonical JSON (its dataclass fields): names what a plan used.

    Fields of `DIGEST_OMITS_WHEN_UNSET` count only where set, so adding them left every
    earlier digest as it was."""
    from edgecut.profiles.schema import DIGEST_OMITS_WHEN_UNSET

    def canonical(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: canonical(v) for k, v in value.items()
                    if not (k in DIGEST_OMITS_WHEN_UNSET and v is None)}
        return value

    text = json.dumps(canonical(dataclasses.asdict(profile)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def node_times(model: onnx.ModelProto, model_path: str | os.PathLike[str],
               shapes: Mapping[str, Sequence[int]], graph: GraphInfo,
               devices: Sequence[DeviceProfile]) -> list[dict[str, float]]:
    """Per-node ms of `model` on each of `devices`, keyed by CostGraph node names.

    A device's measured `per_node_ms` is used when it was measured on this very file (sha256),
    its calibration (`estimate_node_ms`) otherwise; shape inference runs once for all.
    """
    from edgecut.partitioner.costgraph import _names
    from edgecut.profiles.model_profiler import estimate_costs, model_sha256
    from edgecut.profiles.opclass import estimate_node_ms

    costs = estimate_costs(model, shapes)
    sha = model_sha256(model_path)
    names = _names(model, graph.order)
    tables = []
    for device in devices:
        measured = device.per_node_ms if device.per_node_model_sha256 == sha else {}
        table = {}
        for name in names:
            if name in measured:
                table[name] = float(measured[name])
            else:
                cost = costs[name]
                table[name] = estimate_node_ms(cost.op_class, cost.flops, cost.bytes_moved,  # type: ignore[attr-defined]
                                               device, cost.kernels, cost.small_kernels)  # type: ignore[attr-defined]
        tables.append(table)
    return tables


def measuring_threads(profile: DeviceProfile) -> int:
    """The onnxruntime threads to time `profile`'s parts with here: the threads its figures
    are for (`DeviceProfile.threads`), at most this machine's default (more threads than
    cores only measures oversubscription); 0 (onnxruntime's default) where not recorded."""
    if not profile.threads:
        return 0
    from edgecut.profiles.device_profiler import default_threads

    return min(int(profile.threads), default_threads())


def plan_model(
    model_path: str | os.PathLike[str],
    *,
    device: DeviceProfile,
    network: NetworkProfile,
    cloud: CloudProfile,
    cloud_reference: DeviceProfile | None = None,
    objective: str = "latency",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    constraints: Constraints = Constraints(),  # noqa: B008
    pinned_inputs: Sequence[str] = (),
    measure: bool = True,
    measure_budget_s: float = 20.0,
    progress: Progress | None = None,
    clock: Callable[[], float] | None = None,
    input_values: Mapping[str, np.ndarray] | None = None,
    correction: Correction | None = None,
) -> Planned:
    """Cost every candidate cut of the model and choose one (see the module docstring).

    `cloud_reference` is the device a `speedup` cloud is relative to (default: `device`).
    `input_values` are sample inputs (`--input`): their shapes fix symbolic dims, and every
    run of the model (open shapes, measuring, verifying the written cuts) uses them.
    With `measure`, anchor heads and tails (chosen from predictions, the same whatever the
    network) are timed on this machine and every candidate's prediction corrected
    (`edgecut.partitioner.correction`); a `correction` measured before is applied instead
    of measuring again (the simulator and benchmarks plan many networks for one model).
    """
    import time

    from edgecut.partitioner.plan import load_model

    now = clock or time.perf_counter
    start = now()
    path = Path(model_path)
    model = load_model(path)
    info = analyse_graph(model)
    shapes = concrete_input_shapes(model, shapes_from_values(model, input_values, input_shapes))
    tensors: dict[str, TensorInfo] = resolve_tensors(model, shapes, values=input_values)
    cuts = list_cuts(model, shapes, graph=info, tensors=tensors)
    cloud_device = cloud.as_device(cloud_reference or device)
    device_ms, cloud_ms = node_times(model, path, shapes, info, [device, cloud_device])
    graph = costgraph_from_model(model, shapes, device_ms, cloud_ms, pinned_inputs=pinned_inputs,
                                 tensors=tensors)
    params = cost_parameters(device, network, cloud)
    candidates = add_run_overheads(
        candidates_from_graph(graph, params, [(c.id, c.position) for c in cuts],
                              objective=objective, constraints=constraints),
        device.run_overhead_ms, cloud_device.run_overhead_ms)
    model_chosen = choose(candidates, params, objective, constraints)
    model_envelope = plan_envelope(candidates, device, network, cloud, constraints)

    by_id: dict[int, Cut] = {c.id: c for c in cuts}
    for c in candidates:
        if c.kind == "downset":
            model_indices = [graph.nodes[v].model_index for v in c.device_set]
            by_id[c.id] = cut_from_device_set(model, [i for i in model_indices if i is not None],
                                              shapes, cut_id=c.id, graph=info, tensors=tensors)
    planning_s = now() - start

    chosen, envelope, measurement = model_chosen, model_envelope, None
    if measure or correction is not None:
        from edgecut.partitioner.correction import apply_correction, measure_correction

        record: dict[str, Any] = {}
        if correction is None:
            from edgecut.partitioner.shapes import sample_inputs

            feeds = sample_inputs(model, shapes, values=input_values)
            correction, record = measure_correction(
                model, info, graph, candidates, by_id, feeds, budget_s=measure_budget_s,
                progress=progress, clock=now, device_threads=measuring_threads(device),
                cloud_threads=measuring_threads(cloud_device))
        else:
            record = {"method": "a correction given to plan_model (measured before)"}
        model_candidates = candidates
        candidates = apply_correction(candidates, correction)
        chosen = choose(candidates, params, objective, constraints)
        envelope = plan_envelope(candidates, device, network, cloud, constraints)
        measurement = {**record, "device_points": [list(p) for p in correction.device_points],
                       "cloud_points": [list(p) for p in correction.cloud_points],
                       "effect": _effect(model_candidates, candidates, model_chosen, chosen,
                                         params, objective)}

    profiles = {
        "device": {"name": device.name, "sha256": profile_digest(device),
                   "per_node_table": bool(device.per_node_ms)
                   and device.per_node_model_sha256 == _file_sha(path)},
        "network": {"name": network.name, "sha256": profile_digest(network)},
        "cloud": {"name": cloud.name, "sha256": profile_digest(cloud)},
    }
    return Planned(
        model_path=path, input_shapes=dict(shapes), objective=objective, constraints=constraints,
        params=params, candidates=tuple(candidates), chosen=chosen, envelope=tuple(envelope),
        model_envelope=tuple(model_envelope), model_chosen=model_chosen.id, cuts=by_id,
        profiles=profiles, measurement=measurement, planning_s=planning_s,
        plot_inputs={"device": device, "network": network, "cloud": cloud},
        input_values=dict(input_values or {}))


def _effect(before: Sequence[Candidate], after: Sequence[Candidate], model_chosen: Candidate,
            chosen: Candidate, params: CostParameters, objective: str) -> dict[str, Any]:
    """How much the correction moved the plan: the choice, and the predictions it scaled."""
    def key(c: Candidate) -> float:
        return objective_key(c.cost(params), objective)

    device_only = max(after, key=lambda c: (c.device_nodes, -c.id))
    ratios = [c.device_ratio for c in after if c.device_nodes] or [1.0]
    clouds = [c.cloud_ratio for c in after if c.uses_cloud] or [1.0]
    return {
        "chosen_before": model_chosen.id, "chosen_after": chosen.id,
        "objective_before": key(next(c for c in before if c.id == model_chosen.id)),
        "objective_after": key(chosen),
        "device_only_ms_before": device_only.model_device_ms,
        "device_only_ms_after": device_only.model_device_ms * device_only.device_ratio,
        "device_ratio_range": [min(ratios), max(ratios)],
        "cloud_ratio_range": [min(clouds), max(clouds)],
    }


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_planned(planned: Planned, out_dir: str | os.PathLike[str], *,
                  name: str | None = None) -> dict[str, Any]:
    """Write the plan folder: every envelope cut and the chosen one, with the planner's keys."""
    from edgecut.partitioner.plan import write_plan

    ids = planned.written_ids
    prefix_ids = [i for i in ids if planned.candidate(i).kind == "prefix"]
    extra = [planned.cuts[i] for i in ids if planned.candidate(i).kind == "downset"]
    cut_fields = {}
    for i in ids:
        c = planned.candidate(i)
        model_cost = c.cost(planned.params, corrected=False)
        entry: dict[str, Any] = {"model": _components(model_cost)}
        if c.measured:
            entry["corrected"] = _components(c.cost(planned.params))
            entry["device_ratio"] = c.device_ratio
            entry["cloud_ratio"] = c.cloud_ratio
        else:
            entry["corrected"] = None
        cut_fields[i] = {"predicted": entry}
    p = planned.params
    fields = {
        "envelope": [s.to_json() for s in planned.envelope],
        "model_envelope": [s.to_json() for s in planned.model_envelope],
        "planner": {
            "objective": planned.objective,
            "constraints": {"device_memory_bytes": planned.constraints.device_memory_bytes,
                            "energy_budget_j": planned.constraints.energy_budget_j},
            "model_chosen": planned.model_chosen,
            "codec": {"uplink": "shuffle_zstd" if p.compression_ratio > 1 else "raw",
                      "downlink": "raw", "compression_ratio": p.compression_ratio,
                      "encode_mbps": None if math.isinf(p.encode_mbps) else p.encode_mbps,
                      "switch_to_raw_mbps": RAW_ABOVE_MBPS},
            "candidates": len(planned.candidates),
            "measured": planned.measurement is not None,
            # predictions are for the onnxruntime threads the device profile was measured with
            "device_threads": planned.plot_inputs["device"].threads,
        },
        "profiles": dict(planned.profiles),
        "measurement": planned.measurement,
        # the device's runtime thresholds ([device.runtime]), read by the Predictor
        "runtime": dict(planned.plot_inputs["device"].runtime),
    }
    return write_plan(planned.model_path, out_dir, cut_ids=prefix_ids,
                      input_shapes=planned.input_shapes, chosen=planned.chosen.id, name=name,
                      extra_cuts=extra, cut_fields=cut_fields, fields=fields,
                      input_values=planned.input_values or None)

