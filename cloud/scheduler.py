"""Per-model queues and instances: the shell around edgecut.cloud.batching.

    handler thread: decode ──run──▶ ModelScheduler(bounded queue, N instances) ──▶ BatchResult
      batching model:    a worker thread takes a batch → concat → session.run → split
      no batching:       the handler's own thread runs its request when its turn comes

Each model version gets one ModelScheduler, created on its first request: a bounded
BatchQueue and `instance_count` instances (runs at a time). A handler calls `run` and waits;
a full queue answers OverloadedError at once with a retry hint, so memory never grows
without bound. A request whose caller went away or whose deadline passed leaves the queue
if it has not started. `submit` is the same with a Future, run by worker threads.

If a joined batch fails in the model (one caller's values it rejects) or its outputs do not
split along the batch dimension, its requests are run again one by one: one device's bad
request must not fail another's.

Whom a session run is for is readable inside it, `current_run()` (a RunContext: the request's
id and its call's deadline), set by whichever thread runs the batch around the session call.
A served chain slice (edgecut.cloud.forwarding) reads it to call the next hop with the same id
and within the caller's deadline; other sessions never look. A batch of several requests has
no id (an id names one request) and the earliest deadline among them.

    >>> scheduler = Scheduler(overrides={"dyn_mlp": SchedulingPolicy(max_batch_size=8,
    ...                                                              dynamic_batching=True)})
    >>> result = scheduler.for_model(model).run({"x": x}, ["y"], timeout_s=5.0)  # doctest: +SKIP
    >>> result.batch_rows                                                       # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from edgecut.cpu_budget import intra_op_threads_for, read_cpu_budget
from edgecut.errors import (
    BadInputError,
    CloudUnavailableError,
    DeadlineExceededError,
    OverloadedError,
)

from .batching import (
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_SIZE,
    BatchObservation,
    BatchQueue,
    BatchResult,
    Pending,
    SchedulerStatistics,
    SchedulingPolicy,
    batch_key,
    batchable_policy,
    concat_inputs,
    policy_from_settings,
    split_outputs,
)
from .inference import run_model
from .loaded_model import LoadedModel, TrackedSession
from .providers import create_session
from .threads import default_scheduling, name_this_thread

__all__ = [
    "BatchObservation",
    "BatchResult",
    "ModelScheduler",
    "RunContext",
    "Scheduler",
    "SchedulerStatistics",
    "current_run",
]

logger = logging.getLogger(__name__)

# Until a model has run, the retry hint assumes this much per batch.
_INITIAL_BATCH_S = 0.01
_MAX_RETRY_AFTER_MS = 60_000
# A caller waiting in ModelScheduler.run looks at least this often whether it was cancelled.
_POLL_S = 0.25


@dataclass(frozen=True, slots=True)
class RunContext:
    """Whom a session run is for (module docstring): the request's `id` ("" when it has none,
    or the run is a batch of several requests) and the `deadline` of its call, a
    time.monotonic() reading (None: no deadline; a batch: the earliest of its requests')."""

    request_id: str = ""
    deadline: float | None = None


# Set only around a session call the scheduler makes; None anywhere else (a warm-up run).
_RUN_CONTEXT: ContextVar[RunContext | None] = ContextVar("edgecut_run_context", default=None)


def current_run() -> RunContext | None:
    """The RunContext of the session run this thread is inside, or None outside one."""
    return _RUN_CONTEXT.get()


def _run_context(items: Sequence[Pending[_Work]]) -> RunContext:
    """The RunContext of a run of `items`: one request's id and deadline, or for several
    no id and the earliest deadline."""
    if len(items) == 1:
        work = items[0].payload
        return RunContext(work.request_id, work.call_deadline)
    deadlines = [d for p in items if (d := p.payload.call_deadline) is not None]
    return RunContext("", min(deadlines, default=None))


class GroupedReceiver(Protocol):
    """Where a request queued by `submit_many` gets its result instead of a Future: it is set
    (`set_result` or `set_exception`) during its batch's run, and once the run is over
    `group.answer(receivers)` is called once for each run of consecutive requests of the
    batch that share a `group` (the infer lane answers all of them in one call)."""

    group: Any

    def set_running_or_notify_cancel(self) -> bool: ...
    def set_result(self, result: BatchResult) -> None: ...
    def set_exception(self, exception: BaseException) -> None: ...
    def done(self) -> bool: ...
    def cancel(self) -> bool: ...


@dataclass(slots=True, kw_only=True, eq=False)
class _Work:
    inputs: Mapping[str, np.ndarray] = field(repr=False)
    output_names: tuple[str, ...]
    future: Future[BatchResult] | GroupedReceiver = field(repr=False)
    # Set to wake the caller waiting in ModelScheduler.run: its result is in, or its turn.
    # None for a submitted request: nobody waits on it, and an Event per request (a lock and
    # a condition) is a measurable share of the per-request cost.
    wake: threading.Event | None = field(default=None, repr=False)
    # A batch (with the instance to run it on) handed to this request's caller to run.
    assigned: tuple[list[Pending[_Work]], ort.InferenceSession] | None = field(
        default=None, repr=False)
    # A submitted request that no longer wants its run: past this clock reading, or once
    # `cancelled()` turns true (its caller went away). It fails when its batch is taken.
    deadline: float | None = None
    cancelled: Callable[[], bool] | None = field(default=None, repr=False)
    # What the run says it is for (RunContext): the request's id, and its call's deadline as
    # a time.monotonic() reading (not bounded by the queue timeout: that is `deadline`'s).
    request_id: str = ""
    call_deadline: float | None = None


def _wake(work: _Work) -> None:
    """Wake the caller waiting in ModelScheduler.run for `work` (submitted work has none)."""
    if work.wake is not None:
        work.wake.set()


class _Submitted(Future[BatchResult]):
    """The Future of a submitted request: cancelling it takes the request out of the queue.

    It names the scheduler, not the request: the request holds this future, so a reference
    back would be a cycle keeping the request's bytes alive until a full garbage collection.
    """

    def __init__(self, scheduler: ModelScheduler):
        super().__init__()
        self._scheduler = scheduler

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            self._scheduler._withdraw_future(self)
        return cancelled


class ModelScheduler:
    """The queue and instances of one model version.

    Two ways in, one queue and one bound (`instance_count` runs at a time, each on a session
    of its own when `separate_sessions`):

    - `submit`: the request is queued and a Future returned; worker threads (started on the
      first submit) run the batches.
    - `run` (what the endpoint uses) waits for the result. For a model that batches it goes
      through `submit`: a worker that wakes up after a run finds the requests that came
      meanwhile and runs them together, where a caller finding the instance free would run
      its own request alone at once (measured on the wide MLP at 32 clients: batches of one
      took over and throughput fell by a third). For a model that never batches the calling
      thread runs its own request when its turn comes, and the thread that finishes a run
      hands the instance straight to the next request's caller: no thread of the
      scheduler's own is involved, which saved about 0.1 ms per request on one core (the
      small CNN at 32 clients: 830 -> 880 requests/s).
    """

    def __init__(self, model: LoadedModel, policy: SchedulingPolicy, *,
                 max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
                 max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
                 separate_sessions: bool = False, intra_op_threads: int = 0,
                 on_batch: Callable[[BatchObservation], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._model = model
        self._policy, fixed = batchable_policy(policy, model.inputs)
        if fixed:
            logger.warning(
                "model %r version %d: max_batch_size %d ignored, inputs %s have no dynamic "
                "first dimension; requests run one by one", model.name, model.version,
                policy.max_batch_size, ", ".join(repr(n) for n in fixed),
            )
        self._queue: BatchQueue[_Work] = BatchQueue(
            self._policy, max_queue_size=self._policy.max_queue_size or max_queue_size,
            max_queue_bytes=max_queue_bytes,
        )
        self._clock = clock
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._closing = False
        self._flush = False
        self._running = 0
        self._batches = self._rows = self._rejected = 0
        self._batch_s = _INITIAL_BATCH_S
        sessions = [model.session]
        if separate_sessions:
            # As many threads as the model's own session got (edgecut.cloud.loader).
            threads = model.settings.intra_op_threads
            if threads is None:
                threads = intra_op_threads or intra_op_threads_for(
                    read_cpu_budget(), instances=self._policy.instance_count)
            # Tracked like the model's own session, so their runs reach ModelStatistics; a
            # chain stage's forward as its own does (cloud/forwarding.py's sibling).
            sibling = getattr(model.session, "sibling", None)
            for _ in range(self._policy.instance_count - 1):
                extra = create_session(model.path, intra_op_threads=threads)
                sessions.append(self._tracked(sibling(extra) if sibling else extra))
        # One entry per instance: taking one is taking the instance, its session with it.
        self._free_sessions = [sessions[i % len(sessions)]
                               for i in range(self._policy.instance_count)]
        self._threads: list[threading.Thread] = []
        # Whether queued requests can run out of queue time (the workers watch for it then).
        self._expiring = bool(self._policy.queue_timeout_us or self._policy.queue_timeout_override)

    def _tracked(self, session: ort.InferenceSession) -> ort.InferenceSession:
        traffic = self._model.traffic
        if traffic is None:
            return session
        return TrackedSession(session, traffic,  # type: ignore[return-value]
                              batched=self._model.settings.max_batch_size > 0)

    @property
    def model(self) -> LoadedModel:
        return self._model

    @property
    def policy(self) -> SchedulingPolicy:
        return self._policy

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], *,
            timeout_s: float | None = None,
            cancelled: Callable[[], bool] | None = None,
            asked_timeout_s: float | None = None, request_id: str = "") -> BatchResult:
        """Queue a request and wait for its result (see the class docstring for who runs it).

        Raises OverloadedError (with `retry_after_ms`) when the queue is full,
        DeadlineExceededError when `timeout_s`, or the policy's queue timeout (or the shorter
        one the request asked for, `asked_timeout_s`, where the policy allows it), passes
        before the request's batch starts, CloudUnavailableError when `cancelled()` turns
        true first (the caller went away) or the scheduler closes, and whatever the run raised
        for this request. `request_id` and `timeout_s` are what the run says it is for
        (current_run).
        """
        call_deadline = None if timeout_s is None else time.monotonic() + timeout_s
        timeout_s = self._with_queue_timeout(timeout_s, asked_timeout_s)
        if self._policy.batching:
            return self._run_by_workers(inputs, output_names, timeout_s=timeout_s,
                                        cancelled=cancelled, request_id=request_id,
                                        call_deadline=call_deadline)
        item = self._enqueue(inputs, output_names, request_id=request_id,
                             call_deadline=call_deadline)
        work = item.payload
        wake = work.wake
        assert wake is not None  # _enqueue gives run()'s requests an Event
        deadline = None if timeout_s is None else self._clock() + timeout_s
        while True:
            wake.clear()  # before looking: a wake-up from now on is not lost
            if work.future.done():
                break
            if work.assigned is not None:  # the previous runner passed its instance on
                (batch, session), work.assigned = work.assigned, None
                wake_at = None
            else:
                batch, session, wake_at = self._take_turn(item)
            if batch is not None:
                try:
                    self._run(session, batch)
                finally:
                    self._finished_run(session, batch)
                continue
            now = self._clock()
            expired = deadline is not None and now >= deadline
            if expired or (cancelled is not None and cancelled()):
                if self._withdraw(item):
                    raise self._gave_up(expired)
                # Too late to withdraw: it is in a batch, running or handed to this caller
                # to run. See it through; others in that batch wait for it too.
                deadline = cancelled = None
                continue
            timeout = _POLL_S
            if deadline is not None:
                timeout = min(timeout, deadline - now)
            if wake_at is not None:
                timeout = min(timeout, wake_at - now)
            wake.wait(max(0.0, timeout))
        try:
            return work.future.result()
        except CancelledError as exc:
            raise self._shutting_down() from exc

    def _run_by_workers(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], *,
                        timeout_s: float | None,
                        cancelled: Callable[[], bool] | None, request_id: str,
                        call_deadline: float | None) -> BatchResult:
        future = self._submit(inputs, output_names, timeout_s=None, cancelled=None,
                              request_id=request_id, call_deadline=call_deadline)
        deadline = None if timeout_s is None else self._clock() + timeout_s
        while True:
            wait = _POLL_S if deadline is None else min(_POLL_S, deadline - self._clock())
            try:
                return future.result(timeout=max(0.0, wait))
            except FutureTimeoutError:
                expired = deadline is not None and self._clock() >= deadline
                if (expired or (cancelled is not None and cancelled())) and future.cancel():
                    raise self._gave_up(expired) from None
                if expired or (cancelled is not None and cancelled()):
                    deadline = cancelled = None  # running already: see it through
            except CancelledError as exc:
                raise self._shutting_down() from exc

    def submit(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], *,
               timeout_s: float | None = None,
               cancelled: Callable[[], bool] | None = None,
               asked_timeout_s: float | None = None,
               request_id: str = "") -> Future[BatchResult]:
        """Queue a request; its Future gives a BatchResult or the run's error.

        Raises OverloadedError (with `retry_after_ms`) when the queue is full and
        CloudUnavailableError once the scheduler is closing. A request still queued when
        `timeout_s` (or the queue timeout, as in run()) passes, or when `cancelled()` turns
        true, is not run: its Future fails with DeadlineExceededError or CloudUnavailableError
        as run() would raise. `request_id` and `timeout_s` are what the run says it is for
        (current_run).
        """
        call_deadline = None if timeout_s is None else time.monotonic() + timeout_s
        return self._submit(inputs, output_names,
                            timeout_s=self._with_queue_timeout(timeout_s, asked_timeout_s),
                            cancelled=cancelled, request_id=request_id,
                            call_deadline=call_deadline)

    def _submit(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], *,
                timeout_s: float | None, cancelled: Callable[[], bool] | None,
                request_id: str, call_deadline: float | None) -> Future[BatchResult]:
        """submit(), `timeout_s` bounded by the queue timeout already."""
        self._start_workers()
        item = self._enqueue(inputs, output_names, future=_Submitted(self),
                             request_id=request_id, call_deadline=call_deadline)
        if timeout_s is not None:
            item.payload.deadline = item.enqueued_at + timeout_s
        item.payload.cancelled = cancelled
        return item.payload.future

    def submit_many(self, requests: Sequence[Mapping[str, np.ndarray]],
                    output_names: Sequence[str], receivers: Sequence[GroupedReceiver], *,
                    timeouts_s: Sequence[float | None],
                    cancelled: Sequence[Callable[[], bool] | None],
                    request_ids: Sequence[str] | None = None
                    ) -> tuple[int, OverloadedError | None]:
        """Queue requests that arrived together, in order, each answered through its
        receiver (GroupedReceiver) rather than a Future. Each is its own request in the
        queue, batched as if submitted one by one.

        Returns (how many were queued, None) or, when the queue filled up first, the
        OverloadedError the others get. Raises CloudUnavailableError once the scheduler is
        closing. Request i has `timeouts_s[i]`, `cancelled[i]` and `request_ids[i]` (default
        none), as `submit` has them.
        """
        real_now = time.monotonic()
        call_deadlines = [None if t is None else real_now + t for t in timeouts_s]
        if self._expiring:
            timeouts_s = [self._with_queue_timeout(t) for t in timeouts_s]
        ids = request_ids if request_ids is not None else [""] * len(requests)
        self._start_workers()
        now = self._clock()
        names = tuple(output_names)
        items = []
        shapes: list[tuple[tuple[int, ...], np.dtype]] | None = None
        for inputs, receiver, timeout_s, gone, request_id, call_deadline in zip(
                requests, receivers, timeouts_s, cancelled, ids, call_deadlines, strict=True):
            # Requests that arrive together mostly share their shapes: keyed once, then.
            same = shapes is not None and [(a.shape, a.dtype) for a in inputs.values()] == shapes
            if not same:
                shapes = [(a.shape, a.dtype) for a in inputs.values()]
                rows, key = batch_key(inputs, names, self._policy)
                nbytes = sum(a.nbytes for a in inputs.values())
            work = _Work(inputs=inputs, output_names=names, future=receiver,
                         deadline=None if timeout_s is None else now + timeout_s,
                         cancelled=gone, request_id=request_id, call_deadline=call_deadline)
            items.append(Pending(key=key, rows=rows, nbytes=nbytes, enqueued_at=now,
                                 payload=work))
        with self._cond:
            if self._closing or self._flush:
                raise self._shutting_down()
            queued = 0
            for item in items:
                if not self._queue.push(item):
                    break
                queued += 1
            refused = None
            if queued < len(items):
                self._rejected += len(items) - queued
                refused = self._overloaded()
            if queued and self._threads:
                self._cond.notify()
        return queued, refused

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def drain(self, timeout_s: float | None = None) -> bool:
        """Refuse new requests, run the queued ones without waiting for delays; True when
        nothing is queued or running any more (before `timeout_s`)."""
        with self._cond:
            self._flush = True
            self._cond.notify_all()
            self._wake_next()
            return self._cond.wait_for(lambda: not self._queue and not self._running,
                                       timeout=timeout_s)

    def close(self, timeout_s: float | None = 5.0) -> None:
        """Drain, then stop the worker threads; requests still queued are cancelled."""
        self.drain(timeout_s)
        with self._cond:
            self._closing = True
            left = self._queue.remove(lambda p: True)
            self._cond.notify_all()
        for item in left:
            item.payload.future.cancel()
            _wake(item.payload)
        for thread in self._threads:
            thread.join(timeout_s)

    def statistics(self) -> SchedulerStatistics:
        with self._cond:
            return SchedulerStatistics(
                model=self._model.name, version=self._model.version, policy=self._policy,
                pending=len(self._queue), max_queue_size=self._queue.max_queue_size,
                queued_bytes=self._queue.queued_bytes, batches=self._batches, rows=self._rows,
                rejected=self._rejected,
            )

    def _enqueue(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], *,
                 future: Future[BatchResult] | None = None, request_id: str = "",
                 call_deadline: float | None = None) -> Pending[_Work]:
        """Queue a request. Without `future` it is run()'s: a Future and a wake-up Event."""
        rows, key = batch_key(inputs, output_names, self._policy)
        work = _Work(inputs=inputs, output_names=tuple(output_names),
                     future=Future() if future is None else future,
                     wake=threading.Event() if future is None else None,
                     request_id=request_id, call_deadline=call_deadline)
        item = Pending(key=key, rows=rows, nbytes=sum(a.nbytes for a in inputs.values()),
                       enqueued_at=self._clock(), payload=work)
        with self._cond:
            if self._closing or self._flush:
                raise self._shutting_down()
            if not self._queue.push(item):
                self._rejected += 1
                raise self._overloaded()
            if self._threads:
                self._cond.notify()
        return item

    def _shutting_down(self) -> CloudUnavailableError:
        return CloudUnavailableError(
            f"{self._where()}the endpoint is shutting down; retry on another replica")

    def _overloaded(self) -> OverloadedError:
        """The error of a request the full queue refuses. Call with the lock held."""
        retry_ms = self._retry_after_ms()
        return OverloadedError(
            f"{self._where()}queue is full ({len(self._queue)} requests, "
            f"{self._queue.queued_bytes} bytes waiting; limit "
            f"{self._queue.max_queue_size} requests); retry after {retry_ms} ms",
            retry_after_ms=retry_ms,
        )

    def _take_turn(self, item: Pending[_Work]
                   ) -> tuple[list[Pending[_Work]] | None, ort.InferenceSession | None,
                              float | None]:
        """(a batch and the instance to run it on) when one is due and an instance free;
        else (None, None, when the oldest waiting request's delay runs out, if `item` is
        that request: it is the one to wake for it)."""
        with self._cond:
            if self._free_sessions and not item.payload.future.done():
                batch = self._queue.take(self._clock(), flush=self._flush)
                if batch:
                    self._running += 1
                    return batch, self._free_sessions.pop(), None
                if self._queue.oldest() is item:
                    return None, None, self._queue.wake_at()
            return None, None, None

    def _withdraw(self, item: Pending[_Work]) -> bool:
        """Take `item` out of the queue; False when it already left (it is running)."""
        return self._withdraw_where(lambda p: p is item)

    def _withdraw_future(self, future: Future[BatchResult]) -> None:
        """Take the request of a cancelled `future` out of the queue, if it is still there."""
        self._withdraw_where(lambda p: p.payload.future is future)

    def _withdraw_where(self, predicate: Callable[[Pending[_Work]], bool]) -> bool:
        with self._cond:
            gone = bool(self._queue.remove(predicate))
            self._cond.notify_all()
        if gone:
            self._wake_next()
        return gone

    def _with_queue_timeout(self, timeout_s: float | None,
                            asked_s: float | None = None) -> float | None:
        """The call's time left, bounded by how long the policy lets it wait in the queue."""
        if not self._expiring:  # the common case, on every request: no policy bound
            return timeout_s
        return _earliest(timeout_s, self._policy.queue_timeout_s(asked_s))

    def _gave_up(self, expired: bool) -> Exception:
        if expired:
            queue_timeout = (f" or the model's queue timeout ({self._policy.queue_timeout_us} "
                             f"us, config.pbtxt default_queue_policy)"
                             if self._policy.queue_timeout_us else "")
            return DeadlineExceededError(f"{self._where()}no answer by the call's deadline"
                                         f"{queue_timeout} ({self.pending()} requests queued)")
        return CloudUnavailableError(f"{self._where()}the call was cancelled before it ran")

    def _retry_after_ms(self) -> int:
        batch = max(1, self._policy.max_batch_size) if self._policy.batching else 1
        batches_ahead = math.ceil(len(self._queue) / batch)
        seconds = batches_ahead * self._batch_s / self._policy.instance_count
        now = self._clock()
        due = self._queue.next_batch_at(now)
        if due is not None:  # a queue short of a batch holds still until its delay runs out
            seconds += due - now
        return int(min(_MAX_RETRY_AFTER_MS, max(1, math.ceil(seconds * 1000))))

    def _start_workers(self) -> None:
        with self._cond:
            if self._threads or self._closing:
                return
            self._threads = [
                threading.Thread(target=self._work,
                                 name=f"edgecut-{self._model.name}-v{self._model.version}-{i}",
                                 daemon=True)
                for i in range(self._policy.instance_count)
            ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        name_this_thread(f"run-{self._model.name}")
        default_scheduling()
        while True:
            with self._cond:
                while True:
                    if self._closing:
                        return
                    now = self._clock()
                    expired = self._take_expired(now) if self._expiring else []
                    if expired:  # answered without the lock, as runs are
                        self._cond.release()
                        try:
                            for item in expired:
                                self._gave_up_before_run(item, now)
                            _answer_groups(expired)
                        finally:
                            self._cond.acquire()
                        continue
                    batch = (self._queue.take(self._clock(), flush=self._flush)
                             if self._free_sessions else None)
                    if batch:
                        self._running += 1
                        session = self._free_sessions.pop()
                        break
                    wake = self._queue.wake_at() if self._free_sessions else None
                    if self._expiring:
                        wake = _earliest(wake, self._queue.earliest_deadline())
                    self._cond.wait(None if wake is None else max(0.0, wake - self._clock()))
            try:
                self._run(session, batch)
            except BaseException:  # a worker must survive anything a batch does
                logger.exception("%sbatch failed unexpectedly", self._where())
            finally:
                self._finished_run(session, batch)
                del batch  # an idle worker holds on to no request

    def _take_expired(self, now: float) -> list[Pending[_Work]]:
        """Take out of the queue the requests whose time in it ran out (the policy's queue
        timeout, or their call's deadline), so that they are answered then, not when a batch
        is next formed. Call with the lock held."""
        return self._queue.remove(lambda p: p.payload.deadline is not None
                                  and now >= p.payload.deadline)

    def _finished_run(self, session: ort.InferenceSession,
                      batch: list[Pending[_Work]]) -> None:
        """Wake the batch's callers; pass the instance on with the next batch, or free it.

        The next batch is taken here, the moment the run ends, as a worker would take it:
        were the instance freed instead, the first request to arrive would take it alone
        before the waiting caller woke (a queue-jumper, and on a batching model a batch of one).
        """
        for p in batch:  # let the inputs go: a future's callback cycle would keep them till GC
            p.payload.inputs = {}
        handed: list[Pending[_Work]] | None = None
        with self._cond:
            if not self._threads and not self._closing:  # run() callers only: hand it over
                handed = self._queue.take(self._clock(), flush=self._flush)
            if handed:
                handed[0].payload.assigned = (handed, session)
            else:
                self._running -= 1
                self._free_sessions.append(session)
            self._cond.notify_all()
        for p in batch:
            _wake(p.payload)
        if handed:
            _wake(handed[0].payload)
        else:
            self._wake_next()

    def _wake_next(self) -> None:
        """Wake the caller of the oldest queued request: its turn to take a batch."""
        with self._cond:
            oldest = self._queue.oldest()
        if oldest is not None:
            _wake(oldest.payload)

    def _run(self, session: ort.InferenceSession, batch: list[Pending[_Work]]) -> None:
        try:
            self._run_batch(session, batch)
        finally:
            _answer_groups(batch)

    def _run_batch(self, session: ort.InferenceSession, batch: list[Pending[_Work]]) -> None:
        started = self._clock()
        live = [p for p in batch
                if not self._gave_up_before_run(p, started)
                and p.payload.future.set_running_or_notify_cancel()]
        if not live:
            return
        names = live[0].payload.output_names
        compute_started = time.perf_counter()
        shares: list[list[np.ndarray]] | None = None
        # Set, and reset, in this thread: a worker's or a run() caller's (see current_run).
        context = _RUN_CONTEXT.set(_run_context(live))
        try:
            if len(live) == 1:
                shares = [run_model(self._model, live[0].payload.inputs, names, session=session)]
            else:
                joined = concat_inputs([p.payload.inputs for p in live])
                outputs = run_model(self._model, joined, names, session=session)
                shares = split_outputs(outputs, [p.rows for p in live])
        except BadInputError as exc:
            if len(live) == 1:
                live[0].payload.future.set_exception(exc)
                return
        except Exception as exc:
            for p in live:
                p.payload.future.set_exception(exc)
            return
        finally:
            _RUN_CONTEXT.reset(context)
        if shares is None:
            # The joined run failed or its outputs do not split: run each request alone.
            for p in live:
                self._run_alone(session, p, started)
            return
        compute_s = time.perf_counter() - compute_started
        rows = sum(p.rows for p in live)
        self._observe(rows, len(live), compute_s)
        for p, outputs in zip(live, shares, strict=True):
            p.payload.future.set_result(BatchResult(
                outputs=outputs, queue_s=max(0.0, started - p.enqueued_at),
                compute_s=compute_s, batch_rows=rows, batch_requests=len(live),
            ))

    def _gave_up_before_run(self, item: Pending[_Work], now: float) -> bool:
        """Fail a submitted request whose deadline passed or whose caller went away."""
        work = item.payload
        expired = work.deadline is not None and now >= work.deadline
        if not expired and (work.cancelled is None or not work.cancelled()):
            return False
        if work.future.set_running_or_notify_cancel():
            work.future.set_exception(self._gave_up(expired))
        return True

    def _run_alone(self, session: ort.InferenceSession, item: Pending[_Work],
                   started: float) -> None:
        compute_started = time.perf_counter()
        context = _RUN_CONTEXT.set(_run_context((item,)))
        try:
            outputs = run_model(self._model, item.payload.inputs, item.payload.output_names,
                                session=session)
        except Exception as exc:
            item.payload.future.set_exception(exc)
            return
        finally:
            _RUN_CONTEXT.reset(context)
        compute_s = time.perf_counter() - compute_started
        self._observe(item.rows, 1, compute_s)
        item.payload.future.set_result(BatchResult(
            outputs=outputs, queue_s=max(0.0, started - item.enqueued_at), compute_s=compute_s,
            batch_rows=item.rows, batch_requests=1,
        ))

    def _observe(self, rows: int, requests: int, compute_s: float) -> None:
        with self._cond:
            self._batches += 1
            self._rows += rows
            self._batch_s = 0.8 * self._batch_s + 0.2 * compute_s
        if self._on_batch is not None:
            try:
                self._on_batch(BatchObservation(model=self._model.name,
                                                version=self._model.version, rows=rows,
                                                requests=requests, compute_s=compute_s))
            except Exception:
                logger.exception("batch observer failed")

    def _where(self) -> str:
        return f"model {self._model.name!r} version {self._model.version}: "


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _answer_groups(batch: list[Pending[_Work]]) -> None:
    """Call `group.answer` for each run of the batch's grouped receivers (GroupedReceiver)."""
    run: list[Any] = []
    for item in batch:
        group = getattr(item.payload.future, "group", None)
        if run and group is not run[0].group:
            _answer(run)
            run = []
        if group is not None:
            run.append(item.payload.future)
    if run:
        _answer(run)


def _answer(receivers: list[Any]) -> None:
    try:
        receivers[0].group.answer(receivers)
    except Exception:  # a worker must survive what an answer does
        logger.exception("answering a group of requests failed")


class Scheduler:
    """Every model version's ModelScheduler, created on first use.

    The policy of a model is `overrides[name]` if given, else what its settings say
    (`model.settings`, see policy_from_settings), else the default: no batching, one
    instance. A model reloaded under the same name and version (a new LoadedModel) gets a
    new ModelScheduler; the old one drains in the background.
    """

    def __init__(self, *, overrides: Mapping[str, SchedulingPolicy] | None = None,
                 max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
                 max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
                 separate_sessions: bool = False, intra_op_threads: int = 0,
                 on_batch: Callable[[BatchObservation], None] | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._max_queue_size = max_queue_size
        self._max_queue_bytes = max_queue_bytes
        self._separate_sessions = separate_sessions
        self._intra_op_threads = intra_op_threads
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._closed = False
        self._schedulers: dict[tuple[str, int], ModelScheduler] = {}

    def policy_for(self, model: LoadedModel) -> SchedulingPolicy:
        override = self._overrides.get(model.name)
        if override is not None:
            return override
        return policy_from_settings(getattr(model, "settings", None))

    def for_model(self, model: LoadedModel) -> ModelScheduler:
        key = (model.name, model.version)
        with self._lock:
            if self._closed:
                raise CloudUnavailableError("the endpoint is shutting down; retry on another "
                                            "replica")
            current = self._schedulers.get(key)
            if current is not None and current.model is model:
                return current
            scheduler = ModelScheduler(
                model, self.policy_for(model), max_queue_size=self._max_queue_size,
                max_queue_bytes=self._max_queue_bytes,
                separate_sessions=self._separate_sessions,
                intra_op_threads=self._intra_op_threads, on_batch=self._on_batch,
            )
            self._schedulers[key] = scheduler
        if current is not None:
            self._retire_in_background(current)
        return scheduler

    def retire(self, name: str, version: int | None = None) -> None:
        """Drain and stop the schedulers of `name` (one version or all), e.g. on unload."""
        with self._lock:
            keys = [k for k in self._schedulers if k[0] == name and version in (None, k[1])]
            retired = [self._schedulers.pop(k) for k in keys]
        for scheduler in retired:
            self._retire_in_background(scheduler)

    def drain(self, timeout_s: float | None = None) -> bool:
        """Flush every queue; True if all emptied within `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            schedulers = list(self._schedulers.values())
        ok = True
        for scheduler in schedulers:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ok = scheduler.drain(left) and ok
        return ok

    def close(self, timeout_s: float | None = 5.0) -> None:
        with self._lock:
            self._closed = True
            schedulers = list(self._schedulers.values())
            self._schedulers.clear()
        for scheduler in schedulers:
            scheduler.close(timeout_s)

    def statistics(self) -> tuple[SchedulerStatistics, ...]:
        with self._lock:
            schedulers = list(self._schedulers.values())
        return tuple(s.statistics() for s in schedulers)

    def _retire_in_background(self, scheduler: ModelScheduler) -> None:
        threading.Thread(target=scheduler.close, args=(30.0,), daemon=True,
                         name=f"edgecut-retire-{scheduler.model.name}").start()
