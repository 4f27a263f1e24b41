"""Early exits in the plan: a cut whose head computes an exit branch skips its tail whenever
the exit is confident, so its expected cost mixes the head alone with the whole split by the
measured exit rate p:

    latency  = p * device_ms                 + (1 - p) * latency_ms
    energy   = p * compute_w * device_ms     + (1 - p) * energy_j

(the cut's predicted components, `predicted.corrected` or `.model` in plan.json). Cuts whose
head does not compute the exit pay the whole split (p = 0). The exit rate and the accuracy come
from the full model's two outputs on an evaluation set: the exit answers where its confidence
reaches the threshold, the final output elsewhere. The threshold is the least escalation
whose accuracy stays within the budget of the full model's own (edgecut.calibrate).

    >>> expected_exit_cost({"device_ms": 2.0, "latency_ms": 62.0, "energy_j": 0.2},
    ...                    exit_rate=0.9, compute_w=5.0)
    {'latency_ms': 8.0, 'energy_j': 0.029}

`plan_early_exit` records it in plan.json (`early_exit`, and each cut's `early_exit`) and
writes `cascade.json` with the threshold, where `Config(mode="cascade", cascade_exit=NAME,
cut=ID)` reads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgecut.accuracy import EvalSet, top1, top1_accuracy
from edgecut.calibrate import cascade_curve, pick_threshold
from edgecut.edge.cascade import CASCADE_FILE, CASCADE_FORMAT, CASCADE_VERSION, confidence
from edgecut.errors import BadPlanError, UserInputError

__all__ = ["expected_exit_cost", "plan_early_exit"]


def expected_exit_cost(predicted: Mapping[str, Any], *, exit_rate: float,
                       compute_w: float) -> dict[str, float]:
    """A cut's expected latency (ms) and device energy (J) when its tail runs for a share
    1 - `exit_rate` of requests."""
    if not 0 <= exit_rate <= 1:
        raise ValueError(f"exit rate must be in [0, 1], got {exit_rate}")
    device_ms = float(predicted["device_ms"])
    latency = exit_rate * device_ms + (1 - exit_rate) * float(predicted["latency_ms"])
    energy = (exit_rate * compute_w * device_ms / 1000.0
              + (1 - exit_rate) * float(predicted["energy_j"]))
    return {"latency_ms": round(latency, 9), "energy_j": round(energy, 9)}


def plan_early_exit(plan_dir: str | os.PathLike[str], *, exit_output: str, data: EvalSet,
                    compute_w: float | None, accuracy_budget: float = 0.01,
                    measure: str = "max_prob", objective: str = "latency") -> dict[str, Any]:
    """Measure the exit on `data`, cost every cut of the plan with it, and record both."""
    directory = Path(plan_dir)
    plan_path = directory / "plan.json"
    try:
        plan = json.loads(plan_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadPlanError(f"{plan_path}: cannot read the plan ({exc})") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(directory / plan["model"]["file"]), options,
                                   providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    if exit_output not in outputs:
        raise UserInputError(f"the model has no exit output {exit_output!r}; its outputs are "
                             f"{outputs}")
    final = next((n for n in outputs if n != exit_output), None)
    if final is None:
        raise UserInputError(f"the model's only output is the exit {exit_output!r}")
    names = [i.name for i in session.get_inputs()]
    rows = [session.run([exit_output, final], {n: s[n] for n in names}) for s in data.samples()]
    exit_scores = np.concatenate([r[0] for r in rows])
    scores = np.concatenate([r[1] for r in rows])
    truth = data.truth if data.truth is not None else top1(scores)
    full_accuracy = top1_accuracy(top1(scores), truth)
    conf = confidence(exit_scores, measure)
    curve = cascade_curve(conf, top1(exit_scores) == truth, top1(scores) == truth)
    chosen = pick_threshold(curve, target_accuracy=full_accuracy - accuracy_budget)
    exit_rate = 1.0 - chosen.escalation
    best: tuple[float, int] | None = None
    for cut in plan["cuts"]:
        on_device = exit_output in (cut.get("device_outputs") or []) and bool(cut.get("head"))
        rate = exit_rate if on_device else 0.0
        entry: dict[str, Any] = {"exit_on_device": on_device, "exit_rate": rate}
        predicted = (cut.get("predicted") or {})
        figures = predicted.get("corrected") or predicted.get("model")
        if figures and compute_w is not None:
            entry["expected"] = expected_exit_cost(figures, exit_rate=rate, compute_w=compute_w)
            key = entry["expected"]["energy_j" if objective == "energy" else "latency_ms"]
            if best is None or key < best[0]:
                best = (key, int(cut["id"]))
        cut["early_exit"] = entry
    summary = {"output": exit_output, "final_output": final, "measure": measure,
               "threshold": chosen.threshold, "exit_rate": exit_rate,
               "accuracy": chosen.accuracy, "full_accuracy": full_accuracy,
               "budget": accuracy_budget, "samples": len(data), "objective": objective,
               "cut": None if best is None else best[1], "planner_chosen": plan.get("chosen")}
    if best is not None:
        # The exit changes which cut is best: the plan's choice is the exit-aware one (the
        # planner's own stays in early_exit.planner_chosen).
        plan["chosen"] = best[1]
    plan["early_exit"] = summary
    plan_path.write_text(json.dumps(plan, indent=2) + "\n")
    (directory / CASCADE_FILE).write_text(json.dumps({
        "format": CASCADE_FORMAT, "version": CASCADE_VERSION, "exit": exit_output,
        "measure": measure, "threshold": chosen.threshold, "output": final,
        "calibration": {"exit_rate": exit_rate, "accuracy": chosen.accuracy,
                        "full_accuracy": full_accuracy, "samples": len(data)}}, indent=1) + "\n")
    return summary
