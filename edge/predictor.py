"""Predictor: a plan run like a local model, its head here and its tail in the cloud.

It mirrors onnxruntime.InferenceSession, so code written against one runs against the other:

    >>> predictor = Predictor(Config(plan=Path("plans/chain_cnn"), mode="adaptive",
    ...                              endpoint="cloud:8001", tls_dir=Path("tls")))  # doctest: +SKIP
    >>> [i.name for i in predictor.get_inputs()]  # doctest: +SKIP
    ['x']
    >>> (y,) = predictor.run(["y"], {"x": x})  # doctest: +SKIP
    >>> predictor.last_run().mode, predictor.last_run().fallback  # doctest: +SKIP
    ('split', None)

A run checks its inputs against the plan before any work, then, by mode: runs the full model
here ("local"); sends the inputs to the full model on the endpoint ("offload"); runs the
cut's head here, sends the crossing tensors to the tail and merges the outputs both sides
computed ("split"); or chooses among those per request ("adaptive", edge/policy.py). With
`fallback="local"`, a cloud part that fails or cannot finish in time is replaced by the full
model run here. Every run returns the outputs or raises a typed error by its deadline.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from edgecut.errors import (
    BadModelError,
    BadPlanError,
    CloudUnavailableError,
    DeadlineExceededError,
    EdgecutError,
    OverloadedError,
    ProtocolError,
)
from edgecut.protocol.codecs import choose_codec

from .breaker import CircuitBreaker
from .cascade import Cascade, EarlyExit, exit_output_for
from .client import CloudClient
from .config import Config
from .failures import CLOUD_FAILURES, describe, is_refusal
from .feeds import TensorInfo, check_call, check_tensor, tensor_info
from .lossy import lossy_codecs
from .monitors import DeviceMonitor, LinkEstimator, RecentSamples
from .plan import Plan, PlanCut, load_plan
from .policy import Choice, Inputs, Thresholds, decide, downlink_ratio, plan_costs
from .prober import Prober
from .sessions import DeviceSession, device_threads, load_session, threads_mismatch
from .stats import PredictorStatistics, RunStatistics, SwitchEvent

logger = logging.getLogger(__name__)

__all__ = ["Predictor", "TensorInfo"]

_FP16_MAX = 65504.0
# A local fallback is given this much more than its measured time, and this margin on top.
_LOCAL_RESERVE_FACTOR = 2.0
_LOCAL_RESERVE_MS = 30.0
# A local run may overrun the deadline by this much (the contract's slack) before it is
# stopped: on a starved CPU an answer 10 ms late beats an error on time.
_LOCAL_GRACE_S = 0.25
# Below this much time for the cloud call, the device does not try it.
_MIN_CLOUD_BUDGET_MS = 5.0
# A head that failed to run keeps the device offloading this long.
_HEAD_FAILURE_HOLD_S = 10.0
_EVENTS_KEPT = 1000
# A queue the endpoint reported is believed this long; then the cloud is tried again.
_QUEUE_MEMORY_S = 2.0


class _CloudPartFailed(Exception):
    """Internal: the cloud part failed with `error`, after `stats` of work."""

    def __init__(self, error: EdgecutError, stats: RunStatistics) -> None:
        super().__init__(str(error))
        self.error = error
        self.stats = stats


class Predictor:
    """Runs a plan in the mode of `config`; see the module docstring.

    `monitor` reads the device's state for adaptive mode (a DeviceMonitor; tests and
    agents with their own sensors give one with their own reader). `on_event` is called with
    each SwitchEvent, from the thread that caused it; `events()` keeps the last 1000.
    """

    def __init__(self, config: Config, *, monitor: DeviceMonitor | None = None,
                 on_event: Callable[[SwitchEvent], None] | None = None) -> None:
        self.config = config
        self.plan: Plan = load_plan(config.plan)
        cut_id = self.plan.chosen if config.cut is None else config.cut
        self.cut: PlanCut = self.plan.cut(cut_id)
        self._inputs = tuple(tensor_info(s) for s in self.plan.model.inputs)
        self._outputs = tuple(tensor_info(s) for s in self.plan.model.outputs)
        self._specs = {s.name: s for s in self.plan.model.inputs}
        self._output_specs = {s.name: s for s in self.plan.model.outputs}
        self._adaptive = config.mode == "adaptive"
        # In cascade mode a failed escalation is answered by the small model (edge/cascade.py).
        self._fallback_local = config.fallback == "local" and config.mode not in ("local",
                                                                                 "cascade")
        self._costs = plan_costs(self.plan)
        # Split mode runs its cut as it is, even one with nothing on one side; adaptive mode
        # runs those as the full model, here ("local") or in the cloud ("offload").
        self._initial = (Choice("local", None) if config.mode == "local"
                         else Choice("offload", None) if config.mode == "offload"
                         else Choice("split", self.cut.id) if config.mode in ("split", "cascade")
                         else self._costs[self.cut.id].choice)
        self._choice = self._initial
        self.thresholds = config.thresholds(self.plan.runtime)
        self._thresholds = Thresholds(hysteresis=self.thresholds["hysteresis"],
                                      max_cloud_queue_ms=self.thresholds["max_cloud_queue_ms"],
                                      downlink_ratio=downlink_ratio(self.plan))
        self._envelope = [(r.cut, r.min_mbps, r.max_mbps) for r in self.plan.envelope]

        self._sessions: dict[str | None, DeviceSession] = {}  # None: the full model
        self._load_sessions()
        mismatch = threads_mismatch(self.plan.device_threads,
                                    device_threads(config.intra_op_threads), self.plan.directory)
        if mismatch and self._adaptive:
            logger.warning("%s", mismatch)
        self._lossy = lossy_codecs(self.plan.directory) if config.codec == "plan" else {}
        cascade = config.mode == "cascade"
        early = cascade and exit_output_for(config, self.plan.directory) is not None
        self._cascade = Cascade.for_config(config, self.plan) if cascade and not early else None
        self._exit = EarlyExit.for_config(config, self.plan, self.cut) if early else None
        self._client = None if config.mode == "local" else CloudClient(
            config.endpoints, tls_dir=config.tls_dir, device=config.device,
            timeout_s=config.timeout_s)
        self._link = LinkEstimator(downlink_ratio=self._thresholds.downlink_ratio)
        self._queue_ms = RecentSamples(window=5, max_age_s=_QUEUE_MEMORY_S)
        self._monitor = monitor if monitor is not None else DeviceMonitor()
        self._breaker = CircuitBreaker(failures=config.breaker_failures,
                                       reset_s=config.breaker_reset_s)
        self._on_event = on_event
        self._events: collections.deque[SwitchEvent] = collections.deque(maxlen=_EVENTS_KEPT)
        self._head_failed_until = -math.inf
        self._local_ms: float | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._stats = PredictorStatistics(
            mode=config.mode,
            cut=self.cut.id if config.mode in ("split", "adaptive", "cascade") else None)
        if self._fallback_local or self._adaptive:
            self._warm_up()
        self._prober = None
        if self._client is not None and (self._fallback_local or self._adaptive
                                         or config.mode == "cascade"):
            # The prober holds the Predictor weakly: one that is dropped unclosed is still
            # collected, and its prober stopped.
            me = weakref.ref(self)

            def lost(reason: str) -> None:
                predictor = me()
                if predictor is not None:
                    predictor._cloud_lost(reason)

            def back(reason: str) -> None:
                predictor = me()
                if predictor is not None:
                    predictor._cloud_back(reason)

            self._prober = Prober(
                self._client, self._breaker, self._link, interval_s=config.probe_interval_s,
                max_share=config.probe_max_share,
                tick_s=min(config.probe_interval_s, config.breaker_reset_s) / 4,
                on_open=lost, on_close=back)

    # -- the onnxruntime.InferenceSession surface -----------------------------------------

    def get_inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    def run(self, output_names: Sequence[str] | None,
            input_feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs named in `output_names` (all, when None or empty), in that order.

        Raises BadInputError (before any work) for unknown, missing or mistyped inputs and
        unknown output names. When the cloud part fails: with fallback "local" the full model
        runs here and its outputs are returned (`last_run().fallback` says why); with
        "none", CloudUnavailableError, DeadlineExceededError, OverloadedError,
        ModelNotFoundError, ProtocolError or RemoteError. Returns or raises within
        `timeout_s`. Outputs that came from the cloud uncompressed are read-only views over
        the response (no copy): copy one before writing into it. Safe to call from several
        threads.
        """
        if self._closed:
            raise EdgecutError(f"Predictor for {self.plan.directory} is closed; create a new one")
        start = time.perf_counter()
        deadline = start + self.config.timeout_s
        names = check_call(self.plan.model.name, self._specs, [o.name for o in self._outputs],
                           output_names, input_feed)
        request_id = uuid.uuid4().hex
        try:
            if self._cascade is not None:
                outputs, stats = self._run_cascade(self._cascade, names, input_feed, deadline,
                                                   request_id)
            elif self._exit is not None:
                outputs, stats = self._run_early_exit(self._exit, names, input_feed, deadline,
                                                      request_id)
            else:
                choice = self._next_choice()
                outputs, stats = self._execute(choice, names, input_feed, deadline, request_id)
        except EdgecutError:
            with self._lock:
                self._stats = dataclasses.replace(self._stats, failures=self._stats.failures + 1)
            raise
        stats = dataclasses.replace(stats, total_ms=(time.perf_counter() - start) * 1e3,
                                    request_id=request_id)
        with self._lock:
            self._stats = self._stats.add(stats)
        return [outputs[n] for n in names]

    # -- statistics and lifecycle ---------------------------------------------------------

    def last_run(self) -> RunStatistics | None:
        """Where the latest successful run ran, its timings and bytes (None before the first)."""
        return self._stats.last

    def statistics(self) -> PredictorStatistics:
        """Totals since this Predictor was created, with the live estimates and choice."""
        with self._lock:
            stats, choice = self._stats, self._effective_choice()
        return dataclasses.replace(
            stats, uplink_mbps=self._link.uplink_mbps(), downlink_mbps=self._link.downlink_mbps(),
            rtt_ms=self._link.rtt_ms(), cloud_queue_ms=self._queue_ms.median(),
            choice=str(choice), breaker=self._breaker.state)

    def events(self) -> list[SwitchEvent]:
        """The switches so far (the last 1000), oldest first."""
        with self._lock:
            return list(self._events)

    def close(self) -> None:
        self._closed = True
        if self._prober is not None:
            self._prober.stop()
        if self._client is not None:
            self._client.close()
        self._sessions = {}

    def __del__(self) -> None:
        prober = getattr(self, "_prober", None)
        if prober is not None:
            prober.stop()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- choosing -------------------------------------------------------------------------

    def _next_choice(self) -> Choice:
        if not self._adaptive:
            return self._initial
        pressure = self._monitor.pressure(
            min_free_memory_mib=self.thresholds["min_free_memory_mib"],
            max_cpu_percent=self.thresholds["max_cpu_percent"],
            min_battery_percent=self.thresholds["min_battery_percent"],
            recovery=self.config.pressure_recovery)
        if time.monotonic() < self._head_failed_until:
            pressure = "the head failed to run" + (f", {pressure}" if pressure else "")
        inputs = Inputs(uplink_mbps=self._link.uplink_mbps(), rtt_ms=self._link.rtt_ms(),
                        cloud_queue_ms=self._queue_ms.median(), pressure=pressure)
        with self._lock:
            before = self._effective_choice()
            decision = decide(inputs, self._choice, envelope=self._envelope, costs=self._costs,
                              thresholds=self._thresholds, initial=self._initial)
            self._choice = decision.choice
            after = self._effective_choice()
        # Breaker transitions make their own events (_cloud_lost, _cloud_back).
        if decision.reason is not None and before != after:
            self._event(before, after, decision.reason)
        return decision.choice

    def _effective_choice(self) -> Choice:
        """Where requests go now: the policy's choice, or local while the circuit is not
        closed (half-open lets a single trial through)."""
        if (self._fallback_local and self._choice.mode != "local"
                and self._breaker.state != "closed"):
            return Choice("local", None)
        return self._choice

    def _event(self, before: Choice, after: Choice, reason: str) -> None:
        event = SwitchEvent(time.time(), str(before), str(after), reason)
        with self._lock:
            self._events.append(event)
            self._stats = dataclasses.replace(self._stats, switches=self._stats.switches + 1)
        if self._on_event is not None:
            self._on_event(event)

    def _cloud_lost(self, reason: str) -> None:
        """The breaker opened: requests that needed the cloud run here until it closes."""
        if self._fallback_local and self._choice.mode != "local":
            self._event(self._choice, Choice("local", None), reason)

    def _cloud_back(self, reason: str) -> None:
        if self._fallback_local and self._choice.mode != "local":
            self._event(Choice("local", None), self._choice, reason)

    # -- running --------------------------------------------------------------------------

    def _execute(self, choice: Choice, names: list[str], feed: Mapping[str, np.ndarray],
                 deadline: float, request_id: str) -> tuple[dict[str, np.ndarray], RunStatistics]:
        if choice.mode == "local":
            return self._run_local(names, feed, deadline, fallback=None)
        cut = self.plan.cut(choice.cut) if choice.mode == "split" and choice.cut is not None \
            else None
        if cut is not None and cut.tail is None:
            return self._run_split(cut, names, feed, deadline - time.perf_counter(), request_id)
        error: EdgecutError
        if not self._breaker.allow():
            error = CloudUnavailableError(
                f"{self._client_name()}: not tried, the circuit is open after "
                f"{self.config.breaker_failures} failed calls; it is probed again shortly")
            return self._fall_back(error, "circuit open", names, feed, deadline, None)
        budget_s = deadline - time.perf_counter() - self._local_reserve_s()
        if budget_s * 1e3 < _MIN_CLOUD_BUDGET_MS:
            # Not a cloud failure: this request has no time for the cloud.
            self._breaker.release()
            error = DeadlineExceededError(
                f"run of {self.plan.model.name!r}: no time left for the cloud within the "
                f"{self.config.timeout_s} s deadline; raise timeout_s")
            return self._fall_back(error, "no time left for the cloud", names, feed, deadline,
                                   None)
        try:
            if cut is None:
                outputs, stats = self._run_cloud(
                    self.plan.model.name, dict(feed), names, budget_s,
                    RunStatistics(mode="offload", cut=None), request_id)
            else:
                outputs, stats = self._run_split(cut, names, feed, budget_s, request_id)
        except _CloudPartFailed as failed:
            return self._fall_back(failed.error, describe(failed.error), names, feed, deadline,
                                   failed.stats)
        if self._breaker.record_success():
            self._cloud_back("a request reached the endpoint")
        return outputs, stats

    def _run_cascade(self, cascade: Cascade, names: list[str], feed: Mapping[str, np.ndarray],
                     deadline: float, request_id: str
                     ) -> tuple[dict[str, np.ndarray], RunStatistics]:
        """The small model here; the plan's cut (as in split mode) when it is not sure."""
        readings = self._monitor.readings() if cascade.settings.battery_percent is not None \
            else None
        return cascade.run(
            names, feed, deadline, readings=readings,
            escalate=lambda: self._execute(self._initial, names, feed, deadline, request_id),
            fallback_small=self.config.fallback == "local", failures=CLOUD_FAILURES,
            describe=describe)

    def _run_early_exit(self, early: EarlyExit, names: list[str],
                        feed: Mapping[str, np.ndarray], deadline: float, request_id: str
                        ) -> tuple[dict[str, np.ndarray], RunStatistics]:
        """The cut's head, answered by its exit branch when sure, else on to the tail; with
        fallback "local", a failed tail is answered by the exit (the head run again)."""
        try:
            return self._execute(self._initial, names, feed, deadline, request_id)
        except CLOUD_FAILURES as exc:
            if self.config.fallback != "local" or early.cut.head is None:
                raise
            head = self._session(early.cut.head)
            values = head.run(None, feed, deadline_s=deadline - time.perf_counter())
            device = dict(zip(head.output_names, values, strict=True))
            answer = early.answer(device, names)
            if answer is None:
                raise
            return answer, RunStatistics(mode="local", cut=None, answered_by="exit",
                                         fallback=describe(exc))

    def _fall_back(self, error: EdgecutError, reason: str, names: list[str],
                   feed: Mapping[str, np.ndarray], deadline: float,
                   stats: RunStatistics | None
                   ) -> tuple[dict[str, np.ndarray], RunStatistics]:
        """The cloud part failed (`stats`: what it did) or was not tried (None): finish
        here, or raise `error`."""
        if isinstance(error, OverloadedError):
            # The endpoint said when to come back: until then the queue is that long.
            self._queue_ms.add(float(error.retry_after_ms))
        if stats is not None:
            if is_refusal(error):
                self._breaker.release()
            elif self._breaker.record_failure():
                self._cloud_lost(reason)
        if not self._fallback_local:
            raise error
        outputs, local = self._run_local(names, feed, deadline, fallback=reason)
        if stats is not None:
            local = dataclasses.replace(local, head_ms=local.head_ms + stats.head_ms,
                                        encode_ms=stats.encode_ms, rpc_ms=stats.rpc_ms)
        return outputs, local

    def _run_local(self, names: list[str], feed: Mapping[str, np.ndarray], deadline: float, *,
                   fallback: str | None) -> tuple[dict[str, np.ndarray], RunStatistics]:
        session = self._session(None)
        start = time.perf_counter()
        # A fallback must not overrun the deadline; a chosen local run is held to it too in
        # adaptive mode, where the caller was promised an answer or an error by then.
        limit = (deadline - start + _LOCAL_GRACE_S
                 if (fallback is not None or self._adaptive) else None)
        values = session.run(names, feed, deadline_s=limit)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        self._observe_local(elapsed_ms)
        # The whole model ran on the device: that is the device ("head") time.
        return (dict(zip(names, values, strict=True)),
                RunStatistics(mode="local", cut=None, head_ms=elapsed_ms, fallback=fallback))

    def _run_split(self, cut: PlanCut, names: list[str], feed: Mapping[str, np.ndarray],
                   budget_s: float, request_id: str
                   ) -> tuple[dict[str, np.ndarray], RunStatistics]:
        stats = RunStatistics(mode="split", cut=cut.id)
        device: dict[str, np.ndarray] = {}
        if cut.head is not None:
            head = self._session(cut.head)
            head_start = time.perf_counter()
            try:
                values = head.run(None, feed)
            except BadModelError as exc:
                if not self._adaptive:
                    raise
                # Out of memory, most likely: offload whole requests for a while.
                self._head_failed_until = time.monotonic() + _HEAD_FAILURE_HOLD_S
                return self._run_cloud(self.plan.model.name, dict(feed), names,
                                       budget_s - (time.perf_counter() - head_start),
                                       RunStatistics(mode="offload", cut=None,
                                                     fallback=f"the head failed: {exc}"),
                                       request_id)
            device = dict(zip(head.output_names, values, strict=True))
            head_ms = (time.perf_counter() - head_start) * 1e3
            stats = dataclasses.replace(stats, head_ms=head_ms)
            budget_s -= head_ms / 1e3
            if self._exit is not None:
                answer, stats = self._exit.check(device, names, stats)
                if answer is not None:
                    return answer, stats
        cloud_names = list(dict.fromkeys(n for n in names if n in cut.cloud_outputs))
        cloud: dict[str, np.ndarray] = {}
        if cloud_names:
            missing = [n for n in cut.crossing if n not in device and n not in feed]
            if missing or cut.endpoint_model is None:
                raise BadPlanError(f"{self.plan.directory}: cut {cut.id} sends {missing} to the "
                                   f"cloud, but neither its head nor the inputs produce them")
            crossing = {n: device[n] if n in device else feed[n] for n in cut.crossing}
            cloud, stats = self._run_cloud(cut.endpoint_model, crossing, cloud_names, budget_s,
                                           stats, request_id)
        outputs = {}
        for n in names:
            for source in (cloud, device, feed):
                if n in source:
                    outputs[n] = source[n]
                    break
            else:
                raise BadPlanError(f"{self.plan.directory}: cut {cut.id} computes output {n!r} "
                                   f"neither on the device nor in the cloud")
        return outputs, stats

    def _run_cloud(self, model: str, inputs: dict[str, np.ndarray], names: list[str],
                   budget_s: float, stats: RunStatistics, request_id: str
                   ) -> tuple[dict[str, np.ndarray], RunStatistics]:
        if self._client is None:
            raise EdgecutError(f"mode {self.config.mode!r} needs an endpoint")
        if budget_s <= 0:
            raise _CloudPartFailed(DeadlineExceededError(
                f"run of {self.plan.model.name!r}: the head used up the {self.config.timeout_s} s "
                f"deadline before the cloud call; raise timeout_s or use a cut with less work "
                f"on the device"), stats)
        codecs = {n: self._codec_for(a, model) for n, a in inputs.items()}
        wanted = list(dict.fromkeys(names))
        try:
            result = self._client.infer(model, inputs, outputs=wanted, codec=codecs,
                                        response_codec=self._response_codecs(wanted),
                                        timeout_s=budget_s, request_id=request_id)
            problems = [p for n in wanted if n in self._output_specs
                        for p in check_tensor(self._output_specs[n], result.outputs[n], "output")]
            if problems:
                raise ProtocolError(f"ModelInfer {model!r} on {self._client_name()} answered "
                                    f"outputs unlike the model's: {'; '.join(problems)}")
        except CLOUD_FAILURES as exc:
            raise _CloudPartFailed(exc, stats) from exc
        except (ValueError, TypeError, KeyError, OverflowError, MemoryError) as exc:
            # Whatever a malformed answer makes decoding raise is a corrupt answer.
            raise _CloudPartFailed(ProtocolError(
                f"ModelInfer {model!r} on {self._client_name()}: the answer cannot be decoded "
                f"({type(exc).__name__}: {exc})"), stats) from exc
        server_ms = None
        queue, compute = result.server_queue_ms, result.server_compute_ms
        # What a server reports is believed only within what the device itself timed.
        if queue is not None and compute is not None and 0 <= queue + compute <= result.rpc_ms:
            server_ms = queue + compute
            self._queue_ms.add(queue)
        self._link.observe_call(up_bytes=result.wire_bytes_up, down_bytes=result.wire_bytes_down,
                                rpc_ms=result.rpc_ms, server_ms=server_ms,
                                connected=result.connected)
        return result.outputs, dataclasses.replace(
            stats, encode_ms=result.encode_ms, rpc_ms=result.rpc_ms,
            decode_ms=result.decode_ms, raw_bytes_up=result.raw_bytes_up,
            wire_bytes_up=result.wire_bytes_up, raw_bytes_down=result.raw_bytes_down,
            wire_bytes_down=result.wire_bytes_down, cloud_calls=1, codecs=result.codecs,
            server_queue_ms=result.server_queue_ms)

    def _local_reserve_s(self) -> float:
        """Time a local fallback needs, kept back from the cloud call's deadline."""
        if not self._fallback_local:
            return 0.0
        local_ms = self._local_ms if self._local_ms is not None else 0.25 * self.config.timeout_s * 1e3
        return (local_ms * _LOCAL_RESERVE_FACTOR + _LOCAL_RESERVE_MS) / 1e3

    def _observe_local(self, ms: float) -> None:
        with self._lock:
            # A slow mean: the reserve must cover ordinary runs, not chase the fastest.
            old = self._local_ms
            self._local_ms = ms if old is None else max(ms, old + 0.2 * (ms - old))

    def _codec_for(self, array: np.ndarray, model: str) -> str:
        codec = self.config.codec
        if codec == "plan":
            codec = self._lossy.get(model, "auto")
        if codec == "auto":
            return choose_codec(array, uplink_mbps=self._link.uplink_mbps())
        if (codec == "fp16" and not _fits_fp16(array)) or (
                codec == "int8" and not _fits_int8(array)):
            # fp16 and int8 only where they are defined; anything else still goes
            # compressed, losslessly.
            return "shuffle_zstd" if array.dtype.kind == "f" else "zstd"
        return codec

    def _response_codecs(self, names: list[str]) -> dict[str, str] | None:
        """The codec asked for each output: the configured one, fp16 only on float32."""
        codec = self.config.codec
        if codec in ("auto", "plan", "raw", "int8"):
            # The device cannot size outputs before they exist; raw is never the wrong call.
            # int8 is for the crossing tensors, within the plan's accuracy budget: answers
            # come back exact.
            return None
        if codec != "fp16":
            return dict.fromkeys(names, codec)
        return {n: "fp16" if self._output_specs[n].dtype == "float32" else "zstd"
                for n in names}

    def _client_name(self) -> str:
        return self._client.endpoint if self._client is not None else "(no endpoint)"

    # -- onnxruntime and input checks -----------------------------------------------------

    def _load_sessions(self) -> None:
        """Load what this mode may run, before the first request."""
        mode = self.config.mode
        heads: list[str] = []
        if mode in ("split", "cascade") and self.cut.head is not None:
            heads = [self.cut.head]
        elif mode == "adaptive":
            ids = {self.cut.id, *(r.cut for r in self.plan.envelope)}
            heads = [c.head for c in self.plan.cuts
                     if c.id in ids and c.head is not None and c.tail is not None]
        for head in dict.fromkeys(heads):
            self._sessions[head] = load_session(self._device_path(head), f"the head {head}",
                                                intra_op_threads=self.config.intra_op_threads)
        if mode in ("local", "adaptive") or self._fallback_local:
            self._sessions[None] = load_session(
                self._device_path(self.plan.model.file),
                f"the full model of {self.plan.model.name!r}",
                intra_op_threads=self.config.intra_op_threads)

    def _device_path(self, file: str) -> Path:
        """A device model of the plan: the fp32 file, or its `quantized` version beside it."""
        path = self.plan.path(file)
        mode = self.config.quantized
        if mode is None:
            return path
        quantized = path.with_name(f"{path.stem}.{mode}{path.suffix}")
        if not quantized.is_file():
            raise BadPlanError(f"{quantized}: the plan has no {mode} version of {file}; write "
                               f"it with `edgecut plan ... --quantize {mode} --data EVAL`")
        return quantized

    def _session(self, head: str | None) -> DeviceSession:
        session = self._sessions.get(head)
        if session is None:
            if self._closed:
                raise EdgecutError(f"Predictor for {self.plan.directory} is closed")
            raise BadPlanError(f"{self.plan.directory}: {head or 'the full model'} is not loaded "
                               f"for mode {self.config.mode!r}")
        return session

    def _warm_up(self) -> None:
        """One local run on zeros: onnxruntime's first run is slow, and the fallback's reserve
        needs a figure. A model that cannot run on zeros is measured at its first real run."""
        feed = {}
        for spec in self.plan.model.inputs:
            shape = self.plan.input_shapes.get(spec.name) or tuple(
                d if isinstance(d, int) and d >= 0 else 1 for d in spec.shape)
            feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
        start = time.perf_counter()
        try:
            self._session(None).run(None, feed)
        except EdgecutError:
            return
        self._observe_local((time.perf_counter() - start) * 1e3)



def _fits_fp16(array: np.ndarray) -> bool:
    if array.dtype != np.float32:
        return False
    if array.size == 0:
        return True
    # NaN compares False here, and goes lossless: fp16 would keep it, but saying so costs a pass.
    return bool(array.max() <= _FP16_MAX and array.min() >= -_FP16_MAX)


def _fits_int8(array: np.ndarray) -> bool:
    return array.dtype == np.float32 and bool(np.isfinite(array).all())


