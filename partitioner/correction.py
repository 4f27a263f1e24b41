"""Correct the per-node cost model with what real heads and tails take on this machine.

Summing per-node times misleads: onnxruntime fuses kernels across what were separate nodes,
threads a small part differently from the whole model, and every session run has a fixed
cost (QDMP, "Queue-based Dynamic Model Partitioning", makes the same observation). So the
planner times real parts here and scales its predictions by what it finds. The measurement
must not make the plan move with timing noise, nor with the network, so:

1. Anchors, chosen before any timing and independent of the network: the prefix cuts whose
   predicted device time is nearest 1/8, 1/4, 1/2 and 3/4 of the whole model's
   (`ANCHOR_SHARES`), and the whole model (the device-only cut's head, the cloud-only cut's
   tail). Each anchor's head and tail are built (`split_model`).
2. One window of interleaved rounds (`MIN_ROUNDS`, then more up to `MAX_ROUNDS` while the
   budget lasts): each
   round runs the full model once in onnxruntime's profiler (per-node times of this very
   round) and an empty model (the fixed cost of one session run: the calibration
   reference), then every part once, in an order rotated each round. Sessions use a
   Predictor's options (all graph optimisations) with the threads the profiles are for:
   heads at the device profile's `threads`, tails at the cloud's, each capped at this
   machine's cores (a ratio timed at other threads corrects a shape the plan does not run;
   where the two differ the tails are judged against the whole model at the cloud's threads).
   Each timed run is `settled_ms` (profiles/timing.py): the session timed before it must
   not spin its threads into this one's time.
3. For each part and round, the part's time over the whole model's (plain runs of one round:
   a burst of load hits both) against what the profile says that share should be: the
   empty run's share of the whole model's time plus the rest split by the part's share of
   the profiled node times (per-node medians over the rounds). The part's ratio is the
   median over the rounds, `spread` the interquartile range over the median. The whole
   model's ratio is 1: the device profile sets the level (`profile_device` fits it to a
   whole reference network), the measurement the shape, which is what a ratio of two
   times measured side by side can give reproducibly on a shared machine (a ratio of a
   plain run to a profiled one, tried first, swung 0.5-1.0 between identical plans on a
   loaded 2-core machine). Two limits on how far one measurement may move the model: the
   ratio is shrunk toward 1 by its own scatter, `raw ** trust` with
   `trust = max(0, 1 - spread / MAX_SPREAD)` (rounds that disagree by half their median
   move nothing: on a machine under heavy load the plan falls back to the profile instead
   of following the noise), then limited to [1/`MAX_RATIO`, `MAX_RATIO`]. A part whose share of the time is
   under `MIN_SUMMED_MS` keeps ratio 1 (a quotient of tiny times is noise).
4. Every candidate cut, not only the anchors, gets a device ratio interpolated (piecewise
   linear, flat beyond the ends) at its head's share of the predicted device time of the
   whole model, and a cloud ratio at its tail's share of the predicted cloud time: a cut's
   corrected device time depends on its own nodes and these anchors only, never on the
   network or on which cuts happen to be on the envelope.

Timing is the only impure step (`measure_correction`); `apply_correction` is pure, and
plan.json records what was measured, the ratios, and how much they moved the plan.
"""

from __future__ import annotations

import statistics
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgecut.partitioner.costgraph import CostGraph
from edgecut.partitioner.cuts import Cut
from edgecut.partitioner.extract import split_model
from edgecut.partitioner.graph import GraphInfo

__all__ = [
    "ANCHOR_SHARES",
    "MAX_RATIO",
    "MAX_ROUNDS",
    "MAX_SPREAD",
    "MIN_ROUNDS",
    "MIN_SUMMED_MS",
    "Correction",
    "anchor_cuts",
    "apply_correction",
    "measure_correction",
]

ANCHOR_SHARES = (0.125, 0.25, 0.5, 0.75)
MIN_ROUNDS = 7
MAX_ROUNDS = 25
MAX_RATIO = 2.0
MAX_SPREAD = 0.5
MIN_SUMMED_MS = 0.005
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Correction:
    """Measured ratios at anchor shares: `device_points` (head's share of the predicted
    device time of the whole model, ratio) and `cloud_points` (tail's share of the
    predicted cloud time, ratio), each sorted by share.

    Example:
        >>> c = Correction(device_points=((0.5, 2.0), (1.0, 1.0)), cloud_points=((1.0, 1.5),))
        >>> c.device_ratio(0.75), c.device_ratio(0.1), c.cloud_ratio(0.3)
        (1.5, 2.0, 1.5)
    """

    device_points: tuple[tuple[float, float], ...]
    cloud_points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        for points in (self.device_points, self.cloud_points):
            if list(points) != sorted(points):
                raise ValueError(f"correction points must be sorted by share, got {points}")

    @staticmethod
    def _at(points: Sequence[tuple[float, float]], share: float) -> float:
        if not points:
            return 1.0
        xs = [x for x, _ in points]
        i = bisect_left(xs, share)
        if i == 0:
            return points[0][1]
        if i == len(points):
            return points[-1][1]
        (x0, r0), (x1, r1) = points[i - 1], points[i]
        return r0 if x1 == x0 else r0 + (r1 - r0) * (share - x0) / (x1 - x0)

    def device_ratio(self, share: float) -> float:
        return self._at(self.device_points, share)

    def cloud_ratio(self, share: float) -> float:
        return self._at(self.cloud_points, share)


def _whole(candidates: Sequence[Any]) -> tuple[Any, Any]:
    device_only = max(candidates, key=lambda c: (c.device_nodes, -c.id))
    cloud_only = min(candidates, key=lambda c: (c.device_nodes, c.id))
    return device_only, cloud_only


def anchor_cuts(candidates: Sequence[Any]) -> list[Any]:
    """The anchor candidates (module docstring, step 1), fewest device nodes first; the
    device-only candidate is last. Depends on predicted times only."""
    device_only, _ = _whole(candidates)
    total = device_only.model_device_ms
    prefixes = [c for c in candidates if c.kind == "prefix" and c.device_nodes > 0
                and c.uses_cloud]
    picked = {device_only.id: device_only}
    for share in ANCHOR_SHARES:
        if prefixes:
            best = min(prefixes, key=lambda c: (abs(c.model_device_ms - share * total), c.id))
            picked.setdefault(best.id, best)
    return sorted(picked.values(), key=lambda c: (c.device_nodes, c.id))


def apply_correction(candidates: Sequence[Any], correction: Correction) -> list[Any]:
    """Every candidate with its interpolated ratios (module docstring, step 4)."""
    device_only, cloud_only = _whole(candidates)
    device_total = device_only.model_device_ms or 1.0
    cloud_total = cloud_only.model_cloud_ms or 1.0
    out = []
    for c in candidates:
        d = correction.device_ratio(c.model_device_ms / device_total) if c.device_nodes else 1.0
        r = correction.cloud_ratio(c.model_cloud_ms / cloud_total) if c.uses_cloud else 1.0
        out.append(replace(c, device_ratio=d, cloud_ratio=r, measured=True))
    return out


def _session(part: onnx.ModelProto, threads: int = 0) -> Any:
    import onnxruntime as ort

    from edgecut.profiles.device_profiler import default_threads

    options = ort.SessionOptions()  # a Predictor's: all graph optimisations, its threads
    options.intra_op_num_threads = threads or default_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(part.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _empty_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@dataclass(slots=True)
class _Part:
    cut: int
    role: str  # "head" or "tail"
    nodes: frozenset[int]  # CostGraph node indices
    session: Any
    feed: dict[str, np.ndarray]
    times: list[float]


def _limit(ratio: float) -> float:
    return min(MAX_RATIO, max(1.0 / MAX_RATIO, ratio))


def measure_correction(
    model: onnx.ModelProto,
    info: GraphInfo,
    graph: CostGraph,
    candidates: Sequence[Any],
    cuts: Mapping[int, Cut],
    feeds: Mapping[str, np.ndarray],
    *,
    budget_s: float,
    progress: Progress | None,
    clock: Callable[[], float],
    device_threads: int = 0,
    cloud_threads: int = 0,
) -> tuple[Correction, dict[str, Any]]:
    """Time the anchors here (module docstring) and return the correction and its record.

    Heads, the whole model and the empty run use `device_threads` onnxruntime threads,
    tails `cloud_threads` (0: onnxruntime's default), the threads the profiles' figures are
    for: a ratio timed at other threads corrects a shape the plan does not run. Where the
    two differ, the tails are judged against the whole model run at the cloud's threads in
    the same rounds.
    """
    from edgecut.profiles.model_profiler import ProfilingSession, node_names
    from edgecut.profiles.timing import settled_ms

    start = clock()
    anchors = anchor_cuts(candidates)
    device_only, cloud_only = _whole(candidates)
    steps = len(anchors) + 2

    def report(text: str, done: int) -> None:
        if progress:
            progress(text, done, steps)

    names = node_names(model.graph)
    model_index = [n.model_index for n in graph.nodes]
    everything = frozenset(range(len(graph.nodes)))
    parts: list[_Part] = []
    for k, anchor in enumerate(anchors):
        report(f"building head and tail of anchor cut {anchor.id}", k)
        if anchor.id == device_only.id:
            session = _session(model, device_threads)
            feed = {i.name: np.asarray(feeds[i.name]) for i in session.get_inputs()}
            parts.append(_Part(anchor.id, "whole", everything, session, feed, []))
            if cloud_threads != device_threads:
                parts.append(_Part(anchor.id, "whole_cloud", everything,
                                   _session(model, cloud_threads), feed, []))
            continue
        head, tail = split_model(model, cuts[anchor.id], graph=info)
        values = dict(feeds)
        for role, part, nodes in (("head", head, anchor.device_set),
                                  ("tail", tail, everything - anchor.device_set)):
            if part is None:
                continue
            session = _session(part, device_threads if role == "head" else cloud_threads)
            feed = {i.name: np.asarray(values[i.name]) for i in session.get_inputs()}
            if role == "head":
                outs = session.run(None, feed)
                values.update(zip((o.name for o in session.get_outputs()), outs, strict=True))
            parts.append(_Part(anchor.id, role, frozenset(nodes), session, feed, []))
    profiled = ProfilingSession(model, feeds)
    empty = _session(_empty_model(), device_threads)
    empty_feed = {"x": np.zeros(1, np.float32)}
    for part in parts:  # warm-up
        part.session.run(None, part.feed)
    profiled.run()
    empty.run(None, empty_feed)

    report("timing the anchors, interleaved", len(anchors))
    empty_ms: list[float] = []
    rounds = 0
    while rounds < MAX_ROUNDS:
        elapsed = clock() - start
        if rounds >= MIN_ROUNDS and elapsed > budget_s:
            break
        profiled.run()
        empty_ms.append(settled_ms(lambda: empty.run(None, empty_feed), clock=clock, timed=1))
        for k in range(len(parts)):
            part = parts[(k + rounds) % len(parts)]
            part.times.append(settled_ms(lambda p=part: p.session.run(None, p.feed), clock=clock,
                                         timed=1))
        rounds += 1
    tables, profiled_ms = profiled.finish(skip=1)
    per_round = [[table.get(names[i], 0.0) if i is not None else 0.0 for i in model_index]
                 for table in tables[:rounds]]

    whole_part = next(p for p in parts if p.role == "whole")
    whole_cloud = next((p for p in parts if p.role == "whole_cloud"), whole_part)
    node_ms = [statistics.median(row[v] for row in per_round) if per_round else 0.0
               for v in range(len(graph.nodes))]
    total_ms = sum(node_ms) or 1.0

    def ratio_of(part: _Part) -> dict[str, Any]:
        reference = whole_cloud if part.role == "tail" else whole_part
        summed_share = sum(node_ms[v] for v in part.nodes) / total_ms
        quotients = []
        for t, whole, e in zip(part.times, reference.times, empty_ms, strict=False):
            if whole <= 0:
                continue
            run_share = min(1.0, e / whole)
            predicted = run_share + (1.0 - run_share) * summed_share
            if predicted > 0:
                quotients.append((t / whole) / predicted)
        measured_ms = statistics.median(part.times)
        if not quotients or summed_share * statistics.median(reference.times) < MIN_SUMMED_MS:
            raw, spread = 1.0, 0.0
        else:
            raw = statistics.median(quotients)
            q = statistics.quantiles(quotients, n=4) if len(quotients) >= 2 else [raw, raw, raw]
            spread = (q[2] - q[0]) / raw if raw else 0.0
        trust = max(0.0, 1.0 - spread / MAX_SPREAD)
        applied = _limit(raw ** trust)
        return {"ms_measured": measured_ms, "summed_share": summed_share,
                "measured_share": measured_ms / statistics.median(reference.times),
                "ratio_measured": raw, "spread": spread, "trust": trust, "ratio": applied,
                "limited": applied != raw ** trust}

    device_points: dict[float, float] = {}
    cloud_points: dict[float, float] = {}
    records = []
    for anchor in anchors:
        mine = {p.role: ratio_of(p) for p in parts if p.cut == anchor.id}
        record: dict[str, Any] = {"cut": anchor.id, "device_nodes": anchor.device_nodes}
        if "whole" in mine:
            device_points[1.0] = cloud_points[1.0] = 1.0  # the profile's own level (see step 3)
            record["whole_model"] = {"ms_measured": mine["whole"]["ms_measured"]}
            if "whole_cloud" in mine:
                record["whole_model_cloud_threads"] = {
                    "ms_measured": mine["whole_cloud"]["ms_measured"]}
        else:
            share = anchor.model_device_ms / (device_only.model_device_ms or 1.0)
            tail_share = anchor.model_cloud_ms / (cloud_only.model_cloud_ms or 1.0)
            record["device_share"], record["cloud_share"] = share, tail_share
            if "head" in mine:
                device_points[share] = mine["head"]["ratio"]
                record["head"] = mine["head"]
            if "tail" in mine:
                cloud_points[tail_share] = mine["tail"]["ratio"]
                record["tail"] = mine["tail"]
        records.append(record)
    report("measured", steps)
    correction = Correction(device_points=tuple(sorted(device_points.items())),
                            cloud_points=tuple(sorted(cloud_points.items())))
    return correction, {
        "method": ("anchors: prefix heads nearest 1/8, 1/4, 1/2, 3/4 of the predicted device time, "
                   "their tails, and the whole model; interleaved rounds, each with the whole model "
                   "in onnxruntime's profiler, an empty run and every part; ratio = median over "
                   "rounds of (part / whole model, same round) / (empty run share + the rest "
                   "split by the part's profiled node share), shrunk toward 1 by its scatter "
                   f"(ratio ** max(0, 1 - spread / {MAX_SPREAD:g})) and limited to "
                   f"[{1 / MAX_RATIO:g}, {MAX_RATIO:g}]; the whole model 1; every cut interpolated "
                   "at its share of the predicted time"),
        "rounds": rounds,
        "device_threads": device_threads,
        "cloud_threads": cloud_threads,
        "empty_run_ms": statistics.median(empty_ms) if empty_ms else None,
        "profiled_whole_ms": statistics.median(profiled_ms[:rounds]) if profiled_ms else None,
        "max_ratio": MAX_RATIO,
        "anchors": records,
        "seconds": clock() - start,
        "complete": rounds >= MIN_ROUNDS,
    }
