"""Drive Predictors through a fault and say what became of every request.

    reference = Reference(plan_dir)                        # onnxruntime on the plan's full model
    loop = DeviceLoop(predictor, feed, reference.outputs(feed), timeout_s=2.0, requests=50)
    outcomes = run_loops([loop], budget_s=30)
    row = summarise("endpoint SIGKILLed", outcomes)
    print(format_table([row]))

Each call ends as exactly one of:

    cloud   outputs equal to the full model's, and last_run().mode says the cloud computed
            (part of) them: "split" with a cloud call, or "offload"
    local   outputs equal to the full model's, computed on the device alone
    typed   an edgecut.errors.EdgecutError raised by the deadline
    lost    anything else: another exception, outputs that differ from the full model's (or
            of another shape or dtype), or a call that returned or raised past its deadline
            (timeout_s + DEADLINE_SLACK_S); a call still running when the loop's budget ends is
            lost too ("hung")

"Equal" allows float noise of head-then-tail against the whole model (rtol/atol 1e-4); the
codecs a test uses are lossless.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgecut.edge import load_plan
from edgecut.errors import EdgecutError

__all__ = ["DEADLINE_SLACK_S", "KINDS", "DeviceLoop", "Outcome", "Reference", "Row",
           "call_once", "format_table", "random_feed", "run_loops", "summarise"]

# The contract: run() returns or raises within timeout_s, "a few hundred ms of slack at most".
DEADLINE_SLACK_S = 0.5
KINDS = ("cloud", "local", "typed", "lost")
_RTOL = _ATOL = 1e-4


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one Predictor.run call came to (see the module docstring for `kind`)."""

    kind: str
    device: str
    started_s: float  # time.monotonic() when the call began
    latency_ms: float
    mode: str | None = None  # last_run().mode of an answer
    cut: int | None = None
    fallback: str | None = None
    detail: str | None = None  # the error, or why the call is lost


class Reference:
    """The plan's full model in onnxruntime: what every answer must equal."""

    def __init__(self, plan_dir: Path) -> None:
        plan = load_plan(Path(plan_dir))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(plan.path(plan.model.file)), options,
                                            providers=["CPUExecutionProvider"])
        self.input_specs = {s.name: s for s in plan.model.inputs}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def outputs(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(None, dict(feed)))


def random_feed(plan_dir: Path, seed: int) -> dict[str, np.ndarray]:
    """Inputs of the plan's shapes and dtypes, different for each seed."""
    plan = load_plan(Path(plan_dir))
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in plan.model.inputs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        dtype = np.dtype(spec.dtype)
        feed[spec.name] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                           else np.zeros(shape, dtype))
    return feed


def _mismatch(got: Sequence[Any], want: Sequence[np.ndarray]) -> str | None:
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if not isinstance(g, np.ndarray):
            return f"output {i} is a {type(g).__name__}, not an array"
        if g.shape != w.shape or g.dtype != w.dtype:
            return f"output {i} is {g.dtype}{list(g.shape)}, expected {w.dtype}{list(w.shape)}"
        if not np.allclose(g, w, rtol=_RTOL, atol=_ATOL, equal_nan=True):
            diff = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64))))
            return f"output {i} differs from the full model's by up to {diff:.3g}"
    return None


def call_once(predictor: Any, feed: Mapping[str, np.ndarray], expected: Sequence[np.ndarray], *,
              timeout_s: float, device: str = "device") -> Outcome:
    """One predictor.run(None, feed), classified."""
    start = time.monotonic()
    try:
        outputs = predictor.run(None, feed)
    except EdgecutError as exc:
        elapsed = time.monotonic() - start
        detail = f"{type(exc).__name__}: {exc}"
        if elapsed > timeout_s + DEADLINE_SLACK_S:
            return Outcome(kind="lost", device=device, started_s=start,
                           latency_ms=elapsed * 1e3,
                           detail=f"raised after {elapsed:.3f} s, past the {timeout_s} s "
                                  f"deadline: {detail}")
        return Outcome(kind="typed", device=device, started_s=start, latency_ms=elapsed * 1e3,
                       detail=detail)
    except Exception as exc:  # the point: anything untyped is a lost request
        elapsed = time.monotonic() - start
        return Outcome(kind="lost", device=device, started_s=start, latency_ms=elapsed * 1e3,
                       detail=f"untyped {type(exc).__name__}: {exc}")
    elapsed = time.monotonic() - start
    stats = predictor.last_run()
    mode = getattr(stats, "mode", None)
    cut = getattr(stats, "cut", None)
    fallback = getattr(stats, "fallback", None)
    calls = getattr(stats, "cloud_calls", 1)
    wrong = _mismatch(outputs, expected)
    if wrong is not None:
        kind, detail = "lost", f"wrong answer ({mode}, cut {cut}): {wrong}"
    elif elapsed > timeout_s + DEADLINE_SLACK_S:
        kind, detail = "lost", f"answered after {elapsed:.3f} s, past the {timeout_s} s deadline"
    elif mode == "offload" or (mode == "split" and calls):
        kind, detail = "cloud", None
    else:
        kind, detail = "local", None
    return Outcome(kind=kind, device=device, started_s=start, latency_ms=elapsed * 1e3,
                   mode=mode, cut=cut, fallback=fallback, detail=detail)


class DeviceLoop(threading.Thread):
    """One device: calls predictor.run in a loop (one call in flight), bounded in count and time.

    It makes at least `requests` calls and at most `max_requests` (default `requests`); between
    the two it stops as soon as `done(outcomes)` is true. It never runs past `deadline`
    (time.monotonic()), whatever the counts say. `pause_s` sleeps between calls.
    """

    def __init__(self, predictor: Any, feed: Mapping[str, np.ndarray],
                 expected: Sequence[np.ndarray], *, timeout_s: float, requests: int,
                 max_requests: int | None = None,
                 done: Callable[[list[Outcome]], bool] | None = None,
                 deadline: float | None = None, pause_s: float = 0.0,
                 name: str = "device") -> None:
        super().__init__(name=f"fault-{name}", daemon=True)
        self.predictor, self.feed, self.expected = predictor, feed, expected
        self.timeout_s = timeout_s
        self.requests = requests
        self.max_requests = requests if max_requests is None else max(requests, max_requests)
        self.done = done
        self.deadline = deadline
        self.pause_s = pause_s
        self.device = name
        self.outcomes: list[Outcome] = []
        self.in_flight_since: float | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        """Make no further calls (the one in flight finishes)."""
        self._halt.set()

    def run(self) -> None:
        while len(self.outcomes) < self.max_requests and not self._halt.is_set():
            if self.deadline is not None and time.monotonic() >= self.deadline:
                break
            if (len(self.outcomes) >= self.requests
                    and (self.done is None or self.done(self.outcomes))):
                break
            self.in_flight_since = time.monotonic()
            outcome = call_once(self.predictor, self.feed, self.expected,
                                timeout_s=self.timeout_s, device=self.device)
            self.in_flight_since = None
            self.outcomes.append(outcome)
            if self.pause_s:
                self._halt.wait(self.pause_s)


def run_loops(loops: Sequence[DeviceLoop], *, budget_s: float,
              during: Callable[[], None] | None = None) -> list[Outcome]:
    """Start every loop, call `during()` (the fault: a kill, a rate change) while they run,
    and join them within `budget_s`; every outcome, in order of start. A call still in flight
    when the budget is over is counted lost ("hung") and its thread left behind (daemon)."""
    start = time.monotonic()
    for loop in loops:
        loop.start()
    try:
        if during is not None:
            during()
    finally:
        for loop in loops:
            loop.join(timeout=max(0.0, start + budget_s - time.monotonic()))
        for loop in loops:
            loop.stop()
        for loop in loops:
            # a call that is only late is better reported late (lost by call_once) than hung
            loop.join(timeout=loop.timeout_s + DEADLINE_SLACK_S if loop.is_alive() else 0.0)
    outcomes = [o for loop in loops for o in loop.outcomes]
    for loop in loops:
        since = loop.in_flight_since
        if loop.is_alive() and since is not None:
            outcomes.append(Outcome(kind="lost", device=loop.device, started_s=since,
                                    latency_ms=(time.monotonic() - since) * 1e3,
                                    detail=f"hung: still running after "
                                           f"{time.monotonic() - since:.1f} s"))
    return sorted(outcomes, key=lambda o: o.started_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One row of the fault table."""

    fault: str
    requests: int
    cloud: int
    local: int
    typed: int
    lost: int
    p50_ms: float
    p99_ms: float
    notes: str = ""
    lost_examples: tuple[str, ...] = ()
    typed_examples: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lost_examples"] = list(self.lost_examples)
        out["typed_examples"] = list(self.typed_examples)
        return out


def summarise(fault: str, outcomes: Sequence[Outcome], *, notes: str = "") -> Row:
    """Counts per kind and latency percentiles over every call (answered or not)."""
    counts = {k: sum(o.kind == k for o in outcomes) for k in KINDS}
    latencies = np.array([o.latency_ms for o in outcomes]) if outcomes else np.array([math.nan])

    def examples(kind: str) -> tuple[str, ...]:
        seen = dict.fromkeys(str(o.detail)[:300] for o in outcomes if o.kind == kind)
        return tuple(list(seen)[:3])

    return Row(fault=fault, requests=len(outcomes), cloud=counts["cloud"], local=counts["local"],
               typed=counts["typed"], lost=counts["lost"],
               p50_ms=float(np.percentile(latencies, 50)),
               p99_ms=float(np.percentile(latencies, 99)), notes=notes,
               lost_examples=examples("lost"), typed_examples=examples("typed"))


def format_table(rows: Sequence[Row]) -> str:
    """The fault table as aligned text (one line per row, notes after a dash)."""
    header = ("fault", "requests", "cloud", "local", "typed", "lost", "p50 ms", "p99 ms")
    body = [(r.fault, str(r.requests), str(r.cloud), str(r.local), str(r.typed), str(r.lost),
             f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}") for r in rows]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def fmt(line: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(line, widths, strict=True)))

    lines = [fmt(header), fmt(["-" * w for w in widths])]
    for row, line in zip(rows, body, strict=True):
        lines.append(fmt(line) + (f"  - {row.notes}" if row.notes else ""))
    return "\n".join(lines)
