"""The device's side of a chain plan: run stage 0 here, send the rest to a helper.

A chain plan (`edgecut chain plan`) lists stages: the device, helpers, the cloud. The device
runs its slice and sends what stage 1 receives to one of stage 1's helpers; each helper runs
its slice and forwards to the next stage itself (edgecut.cloud.forwarding), and the answer
comes back along the chain. So the device needs only the addresses of stage 1:

    >>> chain = ChainPredictor(ChainConfig(plan=Path("plan"), helpers=("10.0.0.5:8001",
    ...     "10.0.0.6:8001"), cloud=("cloud:8001",), tls_dir=Path("tls"),
    ...     balance="least_outstanding", fallback="cloud"))              # doctest: +SKIP
    >>> (y,) = chain.run(["y"], {"x": x})                                # doctest: +SKIP
    >>> chain.last_run().path, chain.last_run().helper                   # doctest: +SKIP
    ('chain', '10.0.0.5:8001')

Several helpers for stage 1 share the requests, `round_robin` (in turn) or
`least_outstanding` (the one with the fewest requests in flight, ties in turn). Each helper
has its own circuit breaker (edge/breaker.py): a helper that fails `breaker_failures` times
in a row is not used until its reset time has passed and one trial request succeeds. A
request whose helper failed, or that finds no helper usable, follows `fallback`:

- "cloud" (skip to the cloud): the tensors stage 0 computed go to the cloud's tail of the
  plan's cut at the device's boundary (`plan.chosen`; the same tensors stage 1 receives),
  so the device's work is kept and the helpers are skipped;
- "local": the full model runs here;
- "none": the typed error is raised (CloudUnavailableError, DeadlineExceededError ...).

Every run returns the outputs or raises a typed EdgecutError within `timeout_s`: a helper
call is given half of what is left, so that the fallback has the other half.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecut.errors import (
    BadPlanError,
    BadProfileError,
    CloudUnavailableError,
    DeadlineExceededError,
    EdgecutError,
    ModelNotFoundError,
    OverloadedError,
    PermissionDeniedError,
    ProtocolError,
    RemoteError,
)
from edgecut.protocol.codecs import CODECS

from .breaker import CircuitBreaker
from .client import CloudClient
from .feeds import check_call
from .plan import Plan, PlanCut, load_plan
from .sessions import DeviceSession, load_session

__all__ = ["BALANCES", "CHAIN_FALLBACKS", "ChainConfig", "ChainPredictor", "ChainRun",
           "ChainStatistics", "HelperStatistics"]

BALANCES: tuple[str, ...] = ("round_robin", "least_outstanding")
CHAIN_FALLBACKS: tuple[str, ...] = ("cloud", "local", "none")
_FAILURES: tuple[type[EdgecutError], ...] = (
    CloudUnavailableError, DeadlineExceededError, OverloadedError, ProtocolError, RemoteError,
    ModelNotFoundError, PermissionDeniedError)
_HELPER_SHARE = 0.5  # of the time left, a helper call may use; the fallback keeps the rest
_MIN_CALL_S = 0.005


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainConfig:
    """How a ChainPredictor runs a chain plan (module docstring).

    `helpers`: "host:port" of every endpoint serving stage 1 (its helpers, or the cloud when
    the plan has no helper). `cloud`: the cloud's endpoint(s), for fallback "cloud".
    `tls_dir`/`device`: the fleet's folder from `edgecut certs` and this device's certificate.
    """

    plan: Path
    helpers: tuple[str, ...] = ()
    cloud: tuple[str, ...] = ()
    tls_dir: Path | None = None
    device: str | None = None
    balance: str = "round_robin"
    fallback: str = "cloud"
    codec: str = "raw"
    timeout_s: float = 30.0
    breaker_failures: int = 1
    breaker_reset_s: float = 1.0
    intra_op_threads: int = 0

    def __post_init__(self) -> None:
        for key in ("plan", "tls_dir"):
            value = getattr(self, key)
            if isinstance(value, str):
                object.__setattr__(self, key, Path(value))
        for key in ("helpers", "cloud"):
            value = getattr(self, key)
            object.__setattr__(self, key, (value,) if isinstance(value, str) else tuple(value))
        problems = []
        bad = [a for a in (*self.helpers, *self.cloud)
               if not isinstance(a, str) or not a.rsplit(":", 1)[-1].isdigit()]
        if bad:
            problems.append(f"endpoints must be 'host:port', got {bad[0]!r}")
        if self.balance not in BALANCES:
            problems.append(f"balance must be one of {', '.join(BALANCES)}, got {self.balance!r}")
        if self.fallback not in CHAIN_FALLBACKS:
            problems.append(f"fallback must be one of {', '.join(CHAIN_FALLBACKS)}, got "
                            f"{self.fallback!r}")
        if self.fallback == "cloud" and not self.cloud:
            problems.append("fallback 'cloud' needs the cloud's endpoint (cloud=...)")
        if self.codec not in CODECS:
            problems.append(f"codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if not self.timeout_s > 0:
            problems.append(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if not (isinstance(self.breaker_failures, int) and self.breaker_failures >= 1):
            problems.append(f"breaker_failures must be an integer >= 1, got "
                            f"{self.breaker_failures!r}")
        if not self.breaker_reset_s > 0:
            problems.append(f"breaker_reset_s must be > 0, got {self.breaker_reset_s!r}")
        if problems:
            raise BadProfileError("ChainConfig: " + "; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainRun:
    """One run: `path` "chain" (through a helper), "cloud" (helpers skipped) or "local";
    `helper` the helper's address (None when none answered); `fallback` why the chain was
    left (None when it was not)."""

    path: str
    helper: str | None
    fallback: str | None
    device_ms: float
    total_ms: float
    request_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HelperStatistics:
    address: str
    calls: int
    failures: int
    outstanding: int
    breaker: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainStatistics:
    """Totals since the ChainPredictor was created."""

    runs: int
    failures: int
    runs_by_path: Mapping[str, int]
    helpers: tuple[HelperStatistics, ...]
    last: ChainRun | None = field(default=None, compare=False)


class _Helper:
    def __init__(self, address: str, client: CloudClient, breaker: CircuitBreaker) -> None:
        self.address = address
        self.client = client
        self.breaker = breaker
        self.outstanding = 0
        self.calls = 0
        self.failures = 0


class ChainPredictor:
    """Runs a chain plan from the device (module docstring); safe to call from threads."""

    def __init__(self, config: ChainConfig) -> None:
        self.config = config
        self.plan: Plan = load_plan(config.plan)
        if not self.plan.stages:
            raise BadPlanError(f"{self.plan.directory}: not a chain plan (plan.json has no "
                               f"stages); write one with `edgecut chain plan`")
        self.stages = self.plan.stages
        first = self.stages[0]
        self._next = self.stages[1] if len(self.stages) > 1 else None
        if self._next is not None and not config.helpers:
            raise BadProfileError(f"ChainConfig: the plan's stage 1 runs on a "
                                  f"{self._next.where}; give its endpoint(s) as helpers")
        self._skip: PlanCut = self.plan.cut(self.plan.chosen)
        if self._next is not None and set(self._skip.crossing) != set(first.sends):
            raise BadPlanError(f"{self.plan.directory}: cut {self._skip.id} sends "
                               f"{list(self._skip.crossing)}, but stage 0 sends "
                               f"{list(first.sends)}; plan the chain again")
        self._outputs = [s.name for s in self.plan.model.outputs]
        self._specs = {s.name: s for s in self.plan.model.inputs}
        threads = config.intra_op_threads
        self._stage0: DeviceSession = load_session(self.plan.path(first.model),
                                                   "the device's slice", intra_op_threads=threads)
        self._full: DeviceSession | None = None
        if config.fallback == "local" or self._next is None:
            self._full = load_session(self.plan.path(self.plan.model.file), "the full model",
                                      intra_op_threads=threads)

        def client(address: str | Sequence[str]) -> CloudClient:
            return CloudClient(address, tls_dir=config.tls_dir, device=config.device,
                               timeout_s=config.timeout_s)

        self._helpers = [_Helper(a, client(a), CircuitBreaker(
            failures=config.breaker_failures, reset_s=config.breaker_reset_s))
            for a in config.helpers]
        self._cloud = client(config.cloud) if config.cloud else None
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._runs = self._failures = 0
        self._by_path: dict[str, int] = {}
        self._last: ChainRun | None = None
        self._closed = False

    # -- the InferenceSession surface -----------------------------------------------------

    def get_inputs(self) -> list[str]:
        return list(self._specs)

    def get_outputs(self) -> list[str]:
        return list(self._outputs)

    def run(self, output_names: Sequence[str] | None,
            input_feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs named (all when None), in that order; typed errors by the deadline."""
        if self._closed:
            raise EdgecutError(f"ChainPredictor for {self.plan.directory} is closed")
        start = time.perf_counter()
        deadline = start + self.config.timeout_s
        names = check_call(self.plan.model.name, self._specs, self._outputs, output_names,
                           input_feed)
        request_id = uuid.uuid4().hex
        try:
            outputs, run = self._run(names, input_feed, deadline, request_id)
        except EdgecutError:
            with self._lock:
                self._failures += 1
            raise
        run = dataclasses.replace(run, total_ms=(time.perf_counter() - start) * 1e3)
        with self._lock:
            self._runs += 1
            self._by_path[run.path] = self._by_path.get(run.path, 0) + 1
            self._last = run
        return [outputs[n] for n in names]

    def last_run(self) -> ChainRun | None:
        return self._last

    def statistics(self) -> ChainStatistics:
        with self._lock:
            return ChainStatistics(
                runs=self._runs, failures=self._failures, runs_by_path=dict(self._by_path),
                helpers=tuple(HelperStatistics(address=h.address, calls=h.calls,
                                               failures=h.failures, outstanding=h.outstanding,
                                               breaker=h.breaker.state)
                              for h in self._helpers),
                last=self._last)

    def close(self) -> None:
        self._closed = True
        for h in self._helpers:
            h.client.close()
        if self._cloud is not None:
            self._cloud.close()

    def __enter__(self) -> ChainPredictor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- running --------------------------------------------------------------------------

    def _run(self, names: list[str], feed: Mapping[str, np.ndarray], deadline: float,
             request_id: str) -> tuple[dict[str, np.ndarray], ChainRun]:
        stage0 = self.stages[0]
        began = time.perf_counter()
        values = dict(zip(self._stage0.output_names,
                          self._stage0.run(None, feed, deadline_s=deadline - began),
                          strict=True))
        device_ms = (time.perf_counter() - began) * 1e3
        answer = {n: values[n] for n in stage0.returns}
        for n in names:  # a graph input returned as an output
            if n not in answer and n in feed and n not in self._downstream():
                answer[n] = feed[n]
        wanted = [n for n in dict.fromkeys(names) if n not in answer]
        if not wanted or self._next is None:
            if wanted:  # the plan ends on the device: the full model answers the rest
                answer.update(self._local(wanted, feed, deadline))
            return answer, ChainRun(path="local" if self._next is None else "chain",
                                    helper=None, fallback=None, device_ms=device_ms,
                                    total_ms=0.0, request_id=request_id)
        sends = {n: values[n] if n in values else feed[n] for n in stage0.sends}
        helper = self._pick()
        reason: str
        if helper is None:
            reason = "no helper usable: every helper's circuit is open"
            error: EdgecutError = CloudUnavailableError(
                f"{self.plan.model.name}: {reason}; they are tried again after "
                f"{self.config.breaker_reset_s:g} s")
        else:
            try:
                result = self._call_helper(helper, sends, wanted, deadline, request_id)
                answer.update(result)
                return answer, ChainRun(path="chain", helper=helper.address, fallback=None,
                                        device_ms=device_ms, total_ms=0.0,
                                        request_id=request_id)
            except _FAILURES as exc:
                error = exc
                reason = f"helper {helper.address} failed: {type(exc).__name__}: {exc}"
        return self._fall_back(error, reason, answer, sends, wanted, feed, deadline,
                               request_id, device_ms)

    def _downstream(self) -> set[str]:
        return {n for s in self.stages[1:] for n in s.returns}

    def _pick(self) -> _Helper | None:
        with self._lock:
            turn = next(self._turn)
            count = len(self._helpers)
            ordered = [self._helpers[(turn + i) % count] for i in range(count)]
            if self.config.balance == "least_outstanding":
                ordered.sort(key=lambda h: h.outstanding)  # stable: ties keep the turn
            for h in ordered:
                if h.breaker.allow():
                    h.outstanding += 1
                    h.calls += 1
                    return h
        return None

    def _call_helper(self, helper: _Helper, sends: dict[str, np.ndarray], wanted: list[str],
                     deadline: float, request_id: str) -> dict[str, np.ndarray]:
        left = deadline - time.perf_counter()
        share = left if self.config.fallback == "none" else left * _HELPER_SHARE
        assert self._next is not None and self._next.endpoint_model is not None
        try:
            if share < _MIN_CALL_S:
                raise DeadlineExceededError(f"{self.plan.model.name}: no time left for the "
                                            f"helper within {self.config.timeout_s:g} s")
            result = helper.client.infer(self._next.endpoint_model, sends, outputs=wanted,
                                         codec=self.config.codec, timeout_s=share,
                                         request_id=request_id)
        except _FAILURES:
            with self._lock:
                helper.outstanding -= 1
                helper.failures += 1
            helper.breaker.record_failure()
            raise
        except BaseException:
            with self._lock:
                helper.outstanding -= 1
            helper.breaker.release()
            raise
        with self._lock:
            helper.outstanding -= 1
        helper.breaker.record_success()
        return result.outputs

    def _fall_back(self, error: EdgecutError, reason: str, answer: dict[str, np.ndarray],
                   sends: dict[str, np.ndarray], wanted: list[str],
                   feed: Mapping[str, np.ndarray], deadline: float, request_id: str,
                   device_ms: float) -> tuple[dict[str, np.ndarray], ChainRun]:
        fallback = self.config.fallback
        if fallback == "none":
            raise error
        if fallback == "cloud":
            assert self._cloud is not None and self._skip.endpoint_model is not None
            left = deadline - time.perf_counter()
            if left < _MIN_CALL_S:
                raise DeadlineExceededError(f"{self.plan.model.name}: {reason}, and no time "
                                            f"is left for the cloud") from error
            crossing = {n: sends[n] for n in self._skip.crossing}
            result = self._cloud.infer(self._skip.endpoint_model, crossing, outputs=wanted,
                                       codec=self.config.codec, timeout_s=left,
                                       request_id=request_id)
            answer.update(result.outputs)
            path = "cloud"
        else:
            answer.update(self._local(wanted, feed, deadline))
            path = "local"
        return answer, ChainRun(path=path, helper=None, fallback=reason, device_ms=device_ms,
                                total_ms=0.0, request_id=request_id)

    def _local(self, wanted: list[str], feed: Mapping[str, np.ndarray],
               deadline: float) -> dict[str, np.ndarray]:
        assert self._full is not None
        values = self._full.run(wanted, feed, deadline_s=deadline - time.perf_counter())
        return dict(zip(wanted, values, strict=True))
