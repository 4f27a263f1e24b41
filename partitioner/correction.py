"""Correct the per-node cost model with what the real heads and tails take on this machine.

Summing per-node times misleads: onnxruntime fuses kernels across what were separate nodes,
threads a small part differently from the whole model, and every session run has a fixed
overhead (QDMP, "Queue-based Dynamic Model Partitioning", makes the same observation). So for
the cuts that matter (those on the envelope, and the chosen one) the planner:

1. profiles the full model once on this machine (`profiles.profile_model`, onnxruntime's own
   profiler: per-node ms, this machine's "sum of nodes" model);
2. builds each such cut's head and tail and times them here in onnxruntime, with the same
   session options (all graph optimisations, default threads): a warm-up run, then 3 to 7
   runs, the median;
3. sets `device_ratio = head measured / head's per-node sum here` and
   `cloud_ratio = tail measured / tail's per-node sum here`, and scales the cut's predicted
   device and cloud times by them (the ratio says how far the sum is from the real part on
   one machine; it is carried over to the device and cloud predictions);
4. re-runs the envelope and the choice; cuts newly on the envelope are measured next, for at
   most `MAX_ROUNDS` rounds and within `budget_s` seconds. Cuts not measured keep ratio 1.

A part whose per-node sum is under `MIN_SUMMED_MS` gets ratio 1: the quotient of two tiny
times is noise. Timing is the only impure step; the ratios are recorded in the plan.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx

from edgecut.partitioner.costgraph import CostGraph
from edgecut.partitioner.cuts import Cut
from edgecut.partitioner.extract import split_model
from edgecut.partitioner.graph import GraphInfo
from edgecut.partitioner.shapes import sample_inputs

__all__ = ["MAX_ROUNDS", "MIN_SUMMED_MS", "correct_candidates", "time_part"]

MAX_ROUNDS = 3
MIN_SUMMED_MS = 0.005
Progress = Callable[[str, int, int], None]


def _session(part: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(part.SerializeToString(), options, providers=["CPUExecutionProvider"])


def time_part(part: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, max_s: float = 1.0,
              clock: Callable[[], float]) -> tuple[float, dict[str, np.ndarray]]:
    """(median ms of 3 to 7 runs after a warm-up, outputs by name) of `part` on `feeds`."""
    session = _session(part)
    names = [i.name for i in session.get_inputs()]
    feed = {n: feeds[n] for n in names}
    outputs = session.run(None, feed)
    times: list[float] = []
    began = clock()
    while len(times) < 7 and (len(times) < 3 or clock() - began < max_s):
        t0 = clock()
        session.run(None, feed)
        times.append((clock() - t0) * 1000.0)
    return statistics.median(times), dict(zip((o.name for o in session.get_outputs()), outputs,
                                              strict=True))


def correct_candidates(
    model: onnx.ModelProto,
    model_path: str | os.PathLike[str],
    shapes: Mapping[str, Sequence[int]],
    info: GraphInfo,
    graph: CostGraph,
    candidates: Sequence[Any],
    cuts: Mapping[int, Cut],
    targets: Callable[[Sequence[Any]], set[int]],
    *,
    budget_s: float,
    progress: Progress | None,
    clock: Callable[[], float],
) -> tuple[list[Any], dict[str, Any]]:
    """Candidates with measured ratios on the cuts `targets` names (see the module docstring),
    and a record of the measurement for plan.json."""
    from edgecut.profiles.model_profiler import node_names, profile_model

    start = clock()
    step = 0

    def report(text: str, total: int) -> None:
        if progress:
            progress(text, step, total)

    report("profiling the model on this machine", 1)
    here = profile_model(model_path, input_shapes=shapes, runs=5, warmup=1)
    theirs = node_names(model.graph)
    here_ms = [here.node_ms.get(theirs[n.model_index], 0.0) if n.model_index is not None else 0.0
               for n in graph.nodes]
    feeds = sample_inputs(model, shapes)
    current = list(candidates)
    records: dict[str, Any] = {}
    out_of_time = False
    for _ in range(MAX_ROUNDS):
        todo = sorted(i for i in targets(current) if str(i) not in records)
        if not todo or out_of_time:
            break
        total = step + len(todo)
        for cut_id in todo:
            left = budget_s - (clock() - start)
            if left <= 0:
                out_of_time = True
                break
            step += 1
            report(f"timing head and tail of cut {cut_id}", total)
            index = next(k for k, c in enumerate(current) if c.id == cut_id)
            records[str(cut_id)], current[index] = _measure(
                model, info, cuts[cut_id], current[index], feeds, here_ms,
                max_s=min(1.0, left / 4), clock=clock)
    report("measured", step)
    missing = targets(current) - {int(k) for k in records}
    return current, {
        "this_machine_total_ms": here.total_ms,
        "this_machine_node_sum_ms": sum(here_ms),
        "cuts": records,
        "seconds": clock() - start,
        "complete": not missing,
    }


def _measure(model: onnx.ModelProto, info: GraphInfo, cut: Cut, candidate: Any,
             feeds: Mapping[str, np.ndarray], here_ms: Sequence[float], *, max_s: float,
             clock: Callable[[], float]) -> tuple[dict[str, Any], Any]:
    head, tail = split_model(model, cut, graph=info)
    head_ms = tail_ms = 0.0
    values = dict(feeds)
    if head is not None:
        head_ms, outs = time_part(head, values, max_s=max_s, clock=clock)
        values.update(outs)
    if tail is not None:
        tail_ms, _ = time_part(tail, values, max_s=max_s, clock=clock)
    head_sum = sum(here_ms[v] for v in candidate.device_set)
    tail_sum = sum(ms for v, ms in enumerate(here_ms) if v not in candidate.device_set)
    device_ratio = head_ms / head_sum if head is not None and head_sum >= MIN_SUMMED_MS else 1.0
    cloud_ratio = tail_ms / tail_sum if tail is not None and tail_sum >= MIN_SUMMED_MS else 1.0
    record = {
        "head_ms_measured": head_ms if head is not None else None,
        "head_ms_summed": head_sum, "device_ratio": device_ratio,
        "tail_ms_measured": tail_ms if tail is not None else None,
        "tail_ms_summed": tail_sum, "cloud_ratio": cloud_ratio,
    }
    return record, replace(candidate, device_ratio=device_ratio, cloud_ratio=cloud_ratio,
                           measured=True)
