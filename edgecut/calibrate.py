"""Calibrate a cascade: the accuracy / escalation-rate curve of a small and a big model on an
evaluation set, and the threshold that meets a target.

For every candidate threshold t, the requests whose small-model confidence is below t go to
the big model; the rest keep the small answer. Each point of the curve is what that costs
and gives on the evaluation set:

    accuracy(t)    = mean(small_correct if conf >= t else big_correct)
    escalation(t)  = mean(conf < t)

    >>> conf = np.array([0.9, 0.6, 0.3]); small = np.array([1, 0, 0], bool)
    >>> big = np.array([1, 1, 0], bool)
    >>> [(p.threshold, round(p.accuracy, 3), round(p.escalation, 3))
    ...  for p in cascade_curve(conf, small, big)]
    [(0.0, 0.333, 0.0), (0.3, 0.333, 0.0), (0.6, 0.333, 0.333), (0.9, 0.667, 0.667), (1.0, 0.667, 1.0)]
    >>> pick_threshold(cascade_curve(conf, small, big), target_accuracy=0.6).threshold
    0.9

`calibrate` runs the models (edgecut.accuracy) and builds the curve; `write_cascade` puts
the small model and the chosen threshold beside a plan as `cascade.json`, where a Predictor
in mode "cascade" reads them (edgecut.edge.cascade).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecut.accuracy import EvalSet, predict_scores, top1, top1_accuracy
from edgecut.edge.cascade import CASCADE_FILE, CASCADE_FORMAT, CASCADE_VERSION, confidence
from edgecut.edge.config import CASCADE_MEASURES
from edgecut.errors import BadInputError, UserInputError

__all__ = ["Calibration", "CurvePoint", "calibrate", "cascade_curve", "pick_threshold",
           "plot_curve", "write_cascade"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CurvePoint:
    """Escalating below `threshold`: the top-1 `accuracy` and the share escalated."""

    threshold: float
    accuracy: float
    escalation: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Calibration:
    """A cascade measured on an evaluation set, and the point chosen on its curve."""

    measure: str
    samples: int
    metric: str  # "top-1 accuracy" (labels) or "agreement with the big model"
    small_accuracy: float
    big_accuracy: float
    curve: tuple[CurvePoint, ...]
    chosen: CurvePoint
    target_accuracy: float | None = None
    max_escalation: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"measure": self.measure, "samples": self.samples, "metric": self.metric,
                "small_accuracy": self.small_accuracy, "big_accuracy": self.big_accuracy,
                "target_accuracy": self.target_accuracy, "max_escalation": self.max_escalation,
                "chosen": asdict(self.chosen), "curve": [asdict(p) for p in self.curve]}


def cascade_curve(conf: np.ndarray, small_correct: np.ndarray,
                  big_correct: np.ndarray) -> list[CurvePoint]:
    """Accuracy and escalation at every threshold that changes them (each distinct
    confidence), plus 0 (never escalate) and 1 (always escalate, as conf < 1 for all but
    one-hot answers; 1.0 escalates only those below it). Thresholds ascend."""
    conf = np.asarray(conf, dtype=np.float64)
    small_correct = np.asarray(small_correct, bool)
    big_correct = np.asarray(big_correct, bool)
    if not conf.shape == small_correct.shape == big_correct.shape or conf.ndim != 1:
        raise BadInputError(f"confidence and correctness must be [N] alike, got "
                            f"{conf.shape}, {small_correct.shape}, {big_correct.shape}")
    if conf.size == 0:
        raise BadInputError("cannot calibrate on an empty evaluation set")
    n = conf.size
    order = np.argsort(conf, kind="stable")
    c = conf[order]
    # Escalating the k least confident: accuracy = big on the first k + small on the rest.
    gain = np.concatenate([[0], np.cumsum(big_correct[order].astype(int)
                                          - small_correct[order].astype(int))])
    base = int(small_correct.sum())
    thresholds = sorted({0.0, 1.0, *(float(v) for v in np.unique(c))})
    points = []
    for t in thresholds:
        k = int(np.searchsorted(c, t, side="left"))  # how many have conf < t
        points.append(CurvePoint(threshold=t, accuracy=(base + int(gain[k])) / n,
                                 escalation=k / n))
    return points


def pick_threshold(curve: Sequence[CurvePoint], *, target_accuracy: float | None = None,
                   max_escalation: float | None = None) -> CurvePoint:
    """With `target_accuracy`: the least escalation that reaches it (UserInputError when no
    point does). With `max_escalation`: the most accurate point within it. Ties go to the
    lower threshold."""
    if (target_accuracy is None) == (max_escalation is None):
        raise UserInputError("give exactly one of target_accuracy or max_escalation")
    if target_accuracy is not None:
        meeting = [p for p in curve if p.accuracy >= target_accuracy]
        if not meeting:
            best = max(p.accuracy for p in curve)
            raise UserInputError(f"no threshold reaches top-1 {target_accuracy:.4g}: the best "
                                 f"the cascade reaches on this data is {best:.4g} (the big model's "
                                 f"own, escalating everything, is the ceiling); lower the target")
        return min(meeting, key=lambda p: (p.escalation, p.threshold))
    within = [p for p in curve if p.escalation <= max_escalation]  # type: ignore[operator]
    return max(within, key=lambda p: (p.accuracy, -p.escalation, -p.threshold))


def calibrate(small: str | os.PathLike[str], big: str | os.PathLike[str], data: EvalSet, *,
              measure: str = "max_prob", output: str | None = None,
              target_accuracy: float | None = None,
              max_escalation: float | None = None) -> Calibration:
    """Run both models on `data` and choose the threshold (see `pick_threshold`).

    The truth is the labels; without them, the reference answers; without those, the big
    model's own top-1 (the metric is then agreement with it).
    """
    if measure not in CASCADE_MEASURES:
        raise UserInputError(f"measure must be one of {', '.join(CASCADE_MEASURES)}, "
                             f"got {measure!r}")
    for name, value in (("target accuracy", target_accuracy), ("max escalation", max_escalation)):
        if value is not None and not 0 <= value <= 1:
            raise UserInputError(f"{name} must be in [0, 1], got {value}")
    small_scores = predict_scores(small, data, output=output)
    big_scores = predict_scores(big, data, output=output)
    truth = data.truth
    metric = "top-1 accuracy"
    if truth is None:
        truth, metric = top1(big_scores), "agreement with the big model"
    small_correct = top1(small_scores) == truth
    big_correct = top1(big_scores) == truth
    curve = cascade_curve(confidence(small_scores, measure), small_correct, big_correct)
    chosen = pick_threshold(curve, target_accuracy=target_accuracy, max_escalation=max_escalation)
    return Calibration(measure=measure, samples=len(data), metric=metric,
                       small_accuracy=top1_accuracy(top1(small_scores), truth),
                       big_accuracy=top1_accuracy(top1(big_scores), truth), curve=tuple(curve),
                       chosen=chosen, target_accuracy=target_accuracy,
                       max_escalation=max_escalation)


def write_cascade(plan_dir: str | os.PathLike[str], small: str | os.PathLike[str],
                  calibration: Calibration, *, output: str | None = None) -> Path:
    """Copy the small model into the plan folder as small.onnx and write cascade.json."""
    directory = Path(plan_dir)
    if not (directory / "plan.json").is_file():
        raise UserInputError(f"{directory}: not a plan folder (no plan.json); write one with "
                             f"`edgecut plan BIG.onnx ... --out {directory}` first")
    target = directory / "small.onnx"
    if Path(small).resolve() != target.resolve():
        shutil.copyfile(small, target)
    doc = {"format": CASCADE_FORMAT, "version": CASCADE_VERSION, "small_model": target.name,
           "measure": calibration.measure, "threshold": calibration.chosen.threshold,
           "output": output, "calibration": calibration.to_json()}
    path = directory / CASCADE_FILE
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def plot_curve(calibration: Calibration, path: str | os.PathLike[str]) -> Path:
    """Accuracy against escalation rate, the chosen point marked (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.escalation for p in calibration.curve]
    ys = [p.accuracy for p in calibration.curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, drawstyle="steps-post", label=f"cascade ({calibration.measure})")
    ax.axhline(calibration.small_accuracy, color="grey", ls=":", label="small alone")
    ax.axhline(calibration.big_accuracy, color="black", ls="--", label="big alone")
    ax.scatter([calibration.chosen.escalation], [calibration.chosen.accuracy], color="red",
               zorder=3, label=f"threshold {calibration.chosen.threshold:.3g}")
    ax.set_xlabel("escalation rate (share sent to the big model)")
    ax.set_ylabel(calibration.metric)
    ax.set_title(f"cascade on {calibration.samples} samples")
    ax.legend(loc="lower right")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
