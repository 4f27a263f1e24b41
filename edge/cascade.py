"""Placement 5, the cascade: a small model on the device answers when it is confident; the
plan's strong model (its split, or the cloud) answers when it is not. An early exit is the
same decision inside one model: the cut's head computes an exit branch (an extra output that
classifies early, `cascade_exit`), and a confident exit answers without sending anything.

The decision is pure (`confidence`, `decide_before`, `decide_after`), over values:

1. Before the small model runs: a battery at or below `battery_percent` (on battery power)
   sends the request straight to the strong model: the device does not spend its charge on
   an answer it might throw away.
2. After it ran: its confidence, by `measure`, against `threshold`. Below it, the request
   escalates, unless a `latency_budget_ms` is set and the strong model's expected time (the
   recent escalations' own, measured) would overrun it: then the small answer stands.

Confidence is higher-is-surer for every measure, in [0, 1]:

    max_prob   the largest class probability
    margin     the largest minus the second largest
    entropy    1 - H(p) / ln(K): 1 for a one-hot answer, 0 for a uniform one

    >>> p = np.array([[0.7, 0.2, 0.1]])
    >>> round(float(confidence(p, "max_prob")[0]), 3), round(float(confidence(p, "margin")[0]), 3)
    (0.7, 0.5)
    >>> decide_after(0.5, CascadeSettings(threshold=0.8, measure="max_prob"),
    ...              expected_strong_ms=None).escalate
    True

Scores that are not probabilities (logits) go through a softmax first. The threshold is read
from `cascade.json` beside the plan (written by `edgecut cascade calibrate`), which also names
the small model, unless the Config gives them. numpy and onnxruntime only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgecut.errors import BadPlanError, EdgecutError

from .config import CASCADE_MEASURES, Config
from .monitors import DeviceReadings
from .plan import Plan, PlanCut
from .sessions import DeviceSession, load_session
from .stats import RunStatistics

__all__ = ["CASCADE_FILE", "CASCADE_FORMAT", "CASCADE_VERSION", "Cascade", "CascadeDecision",
           "CascadeSettings", "EarlyExit", "SmallModel", "confidence", "decide_after", "decide_before",
           "exit_output_for", "load_cascade_file", "probabilities", "settings_for"]

CASCADE_FILE = "cascade.json"
CASCADE_FORMAT = "edgecut-cascade"
CASCADE_VERSION = 1
_PROBABILITY_TOLERANCE = 1e-3


@dataclass(frozen=True, slots=True, kw_only=True)
class CascadeSettings:
    """When a cascade escalates (see the module docstring)."""

    threshold: float
    measure: str = "max_prob"
    battery_percent: float | None = None
    latency_budget_ms: float | None = None

    def __post_init__(self) -> None:
        if self.measure not in CASCADE_MEASURES:
            raise BadPlanError(f"cascade measure must be one of {', '.join(CASCADE_MEASURES)}, "
                               f"got {self.measure!r}")
        if not isinstance(self.threshold, (int, float)) or not 0 <= self.threshold <= 1:
            raise BadPlanError(f"cascade threshold must be a number in [0, 1], got "
                               f"{self.threshold!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CascadeDecision:
    """Whether this request goes to the strong model, and why (None when the small answers)."""

    escalate: bool
    reason: str | None


def probabilities(scores: np.ndarray) -> np.ndarray:
    """`scores` [N, K] as probabilities: as they are when each row already is one (non-negative,
    summing to 1), else a softmax over the last axis."""
    s = np.asarray(scores, dtype=np.float64)
    s = s.reshape(1, -1) if s.ndim == 1 else s.reshape(s.shape[0], -1)
    if s.size and s.min() >= 0 and np.allclose(s.sum(axis=1), 1.0, atol=_PROBABILITY_TOLERANCE):
        return s
    shifted = np.exp(s - s.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def confidence(scores: np.ndarray, measure: str) -> np.ndarray:
    """Per-sample confidence in [0, 1], higher is surer, by `measure` (module docstring)."""
    if measure not in CASCADE_MEASURES:
        raise ValueError(f"measure must be one of {', '.join(CASCADE_MEASURES)}, got {measure!r}")
    p = probabilities(scores)
    k = p.shape[1]
    if measure == "max_prob":
        return p.max(axis=1)
    if measure == "margin":
        if k < 2:
            return np.ones(p.shape[0])
        top = np.sort(p, axis=1)[:, -2:]
        return top[:, 1] - top[:, 0]
    if k < 2:
        return np.ones(p.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return np.clip(1.0 + terms.sum(axis=1) / math.log(k), 0.0, 1.0)


def decide_before(settings: CascadeSettings, *, battery_percent: float | None,
                  power_plugged: bool | None) -> CascadeDecision:
    """Before the small model: escalate at once on a low battery (not while plugged in).

    >>> decide_before(CascadeSettings(threshold=0.9, battery_percent=20.0),
    ...               battery_percent=12.0, power_plugged=False).reason
    'battery 12 % <= 20 %'
    """
    limit = settings.battery_percent
    if (limit is not None and battery_percent is not None and not power_plugged
            and battery_percent <= limit):
        return CascadeDecision(escalate=True,
                               reason=f"battery {battery_percent:.0f} % <= {limit:.0f} %")
    return CascadeDecision(escalate=False, reason=None)


def decide_after(score: float, settings: CascadeSettings, *,
                 expected_strong_ms: float | None, elapsed_ms: float = 0.0) -> CascadeDecision:
    """After the small model: escalate when `score` is below the threshold, unless the strong
    model's expected time (None: not measured yet) would overrun the latency budget from
    `elapsed_ms` (what the request has spent already)."""
    if score >= settings.threshold:
        return CascadeDecision(escalate=False, reason=None)
    budget = settings.latency_budget_ms
    if budget is not None and expected_strong_ms is not None \
            and elapsed_ms + expected_strong_ms > budget:
        return CascadeDecision(escalate=False, reason=None)
    return CascadeDecision(
        escalate=True, reason=f"{settings.measure} {score:.3g} < {settings.threshold:.3g}")


# -- the shell: cascade.json, the small model ----------------------------------------------


def load_cascade_file(plan_dir: Path) -> dict[str, Any] | None:
    """`cascade.json` beside the plan, checked; None when there is none."""
    path = Path(plan_dir) / CASCADE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadPlanError(f"{path}: cannot read it as JSON ({exc}); write it again with "
                           f"`edgecut cascade calibrate`") from exc
    problems = []
    if not isinstance(doc, dict) or doc.get("format") != CASCADE_FORMAT:
        problems.append(f"format must be {CASCADE_FORMAT!r}")
        doc = doc if isinstance(doc, dict) else {}
    if doc.get("version") != CASCADE_VERSION:
        problems.append(f"version must be {CASCADE_VERSION}, got {doc.get('version')!r}")
    small = doc.get("small_model")
    exit_output = doc.get("exit")
    if exit_output is not None and (not isinstance(exit_output, str) or not exit_output):
        problems.append(f"exit must be the name of an exit output, got {exit_output!r}")
    if exit_output is None and (
            not isinstance(small, str) or not small or PurePosixPath(small).is_absolute()
            or ".." in PurePosixPath(small).parts):
        problems.append(f"small_model must be a file name inside the plan folder (or exit an "
                        f"exit output's name), got {small!r}")
    if not isinstance(doc.get("threshold"), (int, float)):
        problems.append(f"threshold must be a number, got {doc.get('threshold')!r}")
    if doc.get("measure") not in CASCADE_MEASURES:
        problems.append(f"measure must be one of {', '.join(CASCADE_MEASURES)}, "
                        f"got {doc.get('measure')!r}")
    if problems:
        raise BadPlanError(f"{path}: " + "; ".join(problems))
    return doc


def exit_output_for(config: Config, plan_dir: Path) -> str | None:
    """The early exit's output: the Config's, else cascade.json's (None: a small model)."""
    if config.cascade_exit is not None or config.small_model is not None:
        return config.cascade_exit
    return (load_cascade_file(plan_dir) or {}).get("exit")


def settings_for(config: Config, plan_dir: Path) -> tuple[CascadeSettings, Path, str | None]:
    """The cascade's settings, small model file and scores output: Config first, then
    cascade.json."""
    doc = load_cascade_file(plan_dir) or {}
    threshold = config.cascade_threshold if config.cascade_threshold is not None \
        else doc.get("threshold")
    if threshold is None:
        raise BadPlanError(f"{plan_dir}: mode 'cascade' needs a threshold: give "
                           f"cascade_threshold, or write {CASCADE_FILE} with `edgecut cascade "
                           f"calibrate SMALL.onnx BIG.onnx --data EVAL --plan {plan_dir} ...`")
    if config.small_model is not None:
        small = Path(config.small_model)
    elif config.cascade_exit is not None or doc.get("exit"):
        small = Path()  # an early exit has no small model
    elif doc:
        small = Path(plan_dir) / doc["small_model"]
    else:
        raise BadPlanError(f"{plan_dir}: mode 'cascade' needs a small model: give small_model, "
                           f"or write {CASCADE_FILE} with `edgecut cascade calibrate`")
    settings = CascadeSettings(
        threshold=float(threshold),
        measure=config.cascade_measure or doc.get("measure") or "max_prob",
        battery_percent=config.cascade_battery_percent,
        latency_budget_ms=config.latency_budget_ms)
    return settings, small, config.cascade_output or doc.get("output")


class SmallModel:
    """The device's small model: its session, its scores output, and the strong model's
    recent time (what the latency budget is checked against)."""

    def __init__(self, path: Path, *, input_names: list[str], output_names: list[str],
                 scores: str | None, intra_op_threads: int) -> None:
        if not path.is_file():
            raise BadPlanError(f"{path}: no such small model for the cascade; give the .onnx "
                               f"file of the device's model")
        self.session: DeviceSession = load_session(path, f"the cascade's small model {path.name}",
                                                   intra_op_threads=intra_op_threads)
        problems = []
        extra = [n for n in self.session.input_names if n not in input_names]
        if extra:
            problems.append(f"it reads inputs {extra} the plan's model does not have "
                            f"({input_names})")
        missing = [n for n in output_names if n not in self.session.output_names]
        if missing:
            problems.append(f"it lacks the plan model's outputs {missing} (it has "
                            f"{self.session.output_names}); both models must answer with the "
                            f"same output names")
        self.scores = scores or output_names[0]
        if self.scores not in self.session.output_names:
            problems.append(f"its scores output {self.scores!r} is not among its outputs "
                            f"{self.session.output_names}")
        if problems:
            raise BadPlanError(f"{path}: cannot serve as the cascade's small model: "
                               + "; ".join(problems))
        self.output_names = output_names
        self._strong_ms: float | None = None
        self._small_ms: float | None = None

    def run(self, feed: Mapping[str, np.ndarray], measure: str, *, deadline_s: float | None
            ) -> tuple[dict[str, np.ndarray], float, float]:
        """(outputs by name, confidence of the scores' first sample, milliseconds)."""
        start = time.perf_counter()
        names = list(dict.fromkeys([*self.output_names, self.scores]))
        # The deadline's timer thread costs more than a small model's run (1-2 ms against
        # 0.05 ms on a loaded machine): armed only when the deadline is near its usual time.
        near = deadline_s is not None and (
            self._small_ms is None or deadline_s < 20 * self._small_ms / 1e3 + 0.1)
        values = self.session.run(names, feed, deadline_s=deadline_s if near else None)
        outputs = dict(zip(names, values, strict=True))
        score = confidence(outputs[self.scores], measure)
        if score.size == 0:
            raise EdgecutError(f"{self.session.what}: its scores {self.scores!r} are empty")
        # A batch is as confident as its least confident sample.
        elapsed_ms = (time.perf_counter() - start) * 1e3
        self._small_ms = elapsed_ms if self._small_ms is None else max(
            elapsed_ms, self._small_ms + 0.2 * (elapsed_ms - self._small_ms))
        return outputs, float(score.min()), elapsed_ms

    def expected_strong_ms(self) -> float | None:
        return self._strong_ms

    def observe_strong(self, ms: float) -> None:
        """A strong-model run took `ms`; a slow mean, like the local fallback's reserve."""
        old = self._strong_ms
        self._strong_ms = ms if old is None else old + 0.3 * (ms - old)


Escalate = Callable[[], tuple[dict[str, np.ndarray], RunStatistics]]


class Cascade:
    """A Predictor's cascade: the small model, its settings, and one request's course."""

    def __init__(self, settings: CascadeSettings, small: SmallModel) -> None:
        self.settings = settings
        self.small = small

    @classmethod
    def for_config(cls, config: Config, plan: Plan) -> Cascade:
        """The cascade `config` describes for `plan`, its small model loaded."""
        settings, path, scores = settings_for(config, plan.directory)
        small = SmallModel(path, input_names=[s.name for s in plan.model.inputs],
                           output_names=[s.name for s in plan.model.outputs], scores=scores,
                           intra_op_threads=config.intra_op_threads)
        return cls(settings, small)

    def run(self, names: Sequence[str], feed: Mapping[str, np.ndarray], deadline: float, *,
            readings: DeviceReadings | None, escalate: Escalate, fallback_small: bool,
            failures: tuple[type[EdgecutError], ...], describe: Callable[[EdgecutError], str],
            ) -> tuple[dict[str, np.ndarray], RunStatistics]:
        """One request: the small model, then `escalate` (the plan's own run) if it must.

        With `fallback_small`, an escalation that fails with one of `failures` is answered by
        the small model (`fallback` says why); otherwise the error is raised.
        """
        start = time.perf_counter()
        before = decide_before(
            self.settings, battery_percent=None if readings is None else readings.battery_percent,
            power_plugged=None if readings is None else readings.power_plugged)
        small: dict[str, np.ndarray] | None = None
        score: float | None = None
        small_ms = 0.0
        reason = before.reason
        if not before.escalate:
            small, score, small_ms = self.small.run(feed, self.settings.measure,
                                                    deadline_s=deadline - time.perf_counter())
            after = decide_after(score, self.settings,
                                 expected_strong_ms=self.small.expected_strong_ms(),
                                 elapsed_ms=(time.perf_counter() - start) * 1e3)
            if not after.escalate:
                return self._answer(small, names, small_ms, score, None, None)
            reason = after.reason
        strong_start = time.perf_counter()
        try:
            outputs, stats = escalate()
        except failures as exc:
            if not fallback_small:
                raise
            if small is None:
                small, score, small_ms = self.small.run(feed, self.settings.measure,
                                                        deadline_s=deadline - time.perf_counter())
            return self._answer(small, names, small_ms, score, reason, describe(exc))
        self.small.observe_strong((time.perf_counter() - strong_start) * 1e3)
        return outputs, dataclasses.replace(stats, answered_by="big", small_ms=small_ms,
                                            confidence=score, escalation=reason)

    @staticmethod
    def _answer(small: dict[str, np.ndarray], names: Sequence[str], small_ms: float,
                score: float | None, escalation: str | None, fallback: str | None
                ) -> tuple[dict[str, np.ndarray], RunStatistics]:
        return ({n: small[n] for n in names},
                RunStatistics(mode="local", cut=None, answered_by="small", small_ms=small_ms,
                              confidence=score, escalation=escalation, fallback=fallback))


class EarlyExit:
    """An exit branch in the head of the plan's cut: its answer stands when confident."""

    def __init__(self, settings: CascadeSettings, *, exit_output: str, scores: str,
                 cut: PlanCut) -> None:
        self.settings = settings
        self.exit_output = exit_output
        self.scores = scores
        self.cut = cut

    @classmethod
    def for_config(cls, config: Config, plan: Plan, cut: PlanCut) -> EarlyExit:
        settings, _, scores = settings_for(config, plan.directory)
        exit_output = str(exit_output_for(config, plan.directory))
        if cut.head is None or exit_output not in cut.device_outputs:
            raise BadPlanError(
                f"{plan.directory}: cut {cut.id} does not compute the exit {exit_output!r} on "
                f"the device (its device outputs are {list(cut.device_outputs)}); choose a cut "
                f"after the exit branch")
        outputs = [s.name for s in plan.model.outputs]
        scores = scores or next((n for n in outputs if n != exit_output), exit_output)
        return cls(settings, exit_output=exit_output, scores=scores, cut=cut)

    def answer(self, device: Mapping[str, np.ndarray], names: Sequence[str]
               ) -> dict[str, np.ndarray] | None:
        """The exit's answer for `names` (the exit stands in for `scores`), or None when one
        of them can only come from the cloud."""
        out = {}
        for n in names:
            if n == self.scores:
                out[n] = device[self.exit_output]
            elif n in device:
                out[n] = device[n]
            else:
                return None
        return out

    def check(self, device: Mapping[str, np.ndarray], names: Sequence[str],
              stats: RunStatistics) -> tuple[dict[str, np.ndarray] | None, RunStatistics]:
        """After the head ran: the exit's answer and its statistics when it is confident;
        else None and the statistics of a run that goes on to the cloud."""
        score = float(confidence(device[self.exit_output], self.settings.measure).min())
        decision = decide_after(score, self.settings, expected_strong_ms=None)
        answer = None if decision.escalate else self.answer(device, names)
        if answer is not None:
            return answer, dataclasses.replace(stats, answered_by="exit", confidence=score)
        return None, dataclasses.replace(
            stats, answered_by="big", confidence=score,
            escalation=decision.reason or "an output asked for comes from the cloud")
