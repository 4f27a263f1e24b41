"""Dynamic batching: the queue's rules with a controlled clock, batched == unbatched on real
models, and requests from two mTLS devices joined into one run on a real server."""

from __future__ import annotations

import contextlib
import gc
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from edgecut.cloud.batching import (
    BatchQueue,
    Pending,
    SchedulingPolicy,
    batch_key,
    concat_inputs,
    policy_from_settings,
    split_outputs,
)
from edgecut.cloud.repository import ModelRepository
from edgecut.cloud.scheduler import ModelScheduler
from edgecut.cloud.server import create_server
from edgecut.errors import (
    CloudUnavailableError,
    DeadlineExceededError,
    OverloadedError,
    UserInputError,
)
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from edgecut.protocol.tls import channel_credentials

from .conftest import wide_mlp
from .test_frontends import _wait_until

WAIT_S = 30.0  # generous bound on anything that should take milliseconds


def _queue(**policy: object) -> BatchQueue[int]:
    settings = {"max_batch_size": 8, "dynamic_batching": True, **policy}
    return BatchQueue(SchedulingPolicy(**settings), max_queue_size=16)  # type: ignore[arg-type]


def _push(queue: BatchQueue[int], payload: int, *, at: float, rows: int = 1,
          key: object = "k") -> None:
    assert queue.push(Pending(key=key, rows=rows, nbytes=4, enqueued_at=at, payload=payload))


def _payloads(batch: list[Pending[int]] | None) -> list[int] | None:
    return None if batch is None else [p.payload for p in batch]


# --- the pure rules ---------------------------------------------------------------------


def test_waits_for_the_delay_then_sends_what_it_has() -> None:
    queue = _queue(max_queue_delay_us=10_000)
    _push(queue, 0, at=1.0)
    _push(queue, 1, at=1.004)
    assert queue.take(now=1.005) is None
    assert queue.wake_at() == pytest.approx(1.010)
    assert _payloads(queue.take(now=1.010)) == [0, 1]
    assert len(queue) == 0 and queue.wake_at() is None


def test_a_preferred_size_goes_before_the_delay() -> None:
    queue = _queue(preferred_batch_sizes=(2, 4), max_queue_delay_us=1_000_000)
    for i in range(3):
        _push(queue, i, at=0.0)
    assert _payloads(queue.take(now=0.0)) == [0, 1]  # 3 rows: the largest preferred is 2
    assert queue.take(now=0.0) is None
    for i in range(3, 6):
        _push(queue, i, at=0.1)
    assert _payloads(queue.take(now=0.1)) == [2, 3, 4, 5]


def test_next_batch_at_is_now_when_one_is_ready_else_the_delays_end() -> None:
    policy = SchedulingPolicy(max_batch_size=4, dynamic_batching=True, max_queue_delay_us=1000)
    queue: BatchQueue[int] = BatchQueue(policy, max_queue_size=8)
    assert queue.next_batch_at(0.0) is None
    for i in range(3):
        queue.push(Pending(key="k", rows=1, nbytes=4, enqueued_at=0.0, payload=i))
    assert queue.next_batch_at(0.0002) == pytest.approx(0.001)  # 3 rows wait for the delay
    queue.push(Pending(key="k", rows=1, nbytes=4, enqueued_at=0.0001, payload=3))
    assert queue.next_batch_at(0.0002) == 0.0002  # 4 rows: a full batch goes now


def test_a_full_batch_goes_at_once_and_rows_count() -> None:
    queue = _queue(max_queue_delay_us=1_000_000)
    _push(queue, 0, at=0.0, rows=5)
    _push(queue, 1, at=0.0, rows=2)
    assert queue.take(now=0.0) is None  # 7 of 8 rows
    _push(queue, 2, at=0.0, rows=3)  # would make 10: the first two go, the third waits
    assert _payloads(queue.take(now=0.0)) == [0, 1]
    assert queue.take(now=0.5) is None
    assert _payloads(queue.take(now=1.0)) == [2]


def test_no_delay_sends_the_largest_batch_available() -> None:
    queue = _queue()
    for i in range(10):
        _push(queue, i, at=0.0)
    assert _payloads(queue.take(now=0.0)) == list(range(8))
    assert _payloads(queue.take(now=0.0)) == [8, 9]


def test_different_keys_never_share_a_batch_and_oldest_group_goes_first() -> None:
    queue = _queue()
    _push(queue, 0, at=0.0, key="16x16")
    _push(queue, 1, at=0.1, key="32x32")
    _push(queue, 2, at=0.2, key="16x16")
    assert _payloads(queue.take(now=1.0)) == [0, 2]
    assert _payloads(queue.take(now=1.0)) == [1]


def test_keyless_requests_run_alone_and_without_batching_all_do() -> None:
    queue = _queue(max_queue_delay_us=1_000_000)
    _push(queue, 0, at=0.0, key=None)
    _push(queue, 1, at=0.0)
    assert _payloads(queue.take(now=0.0)) == [0]
    plain = BatchQueue(SchedulingPolicy(), max_queue_size=4)
    for i in range(2):
        _push(plain, i, at=0.0)
    assert _payloads(plain.take(now=0.0)) == [0]


def test_flush_ignores_the_delay() -> None:
    queue = _queue(max_queue_delay_us=60_000_000)
    _push(queue, 0, at=0.0)
    assert queue.take(now=0.0) is None
    assert _payloads(queue.take(now=0.0, flush=True)) == [0]


def test_the_queue_is_bounded_by_count_and_bytes() -> None:
    queue: BatchQueue[int] = BatchQueue(SchedulingPolicy(), max_queue_size=2, max_queue_bytes=10)
    big = Pending(key=None, rows=1, nbytes=100, enqueued_at=0.0, payload=0)
    assert queue.push(big)  # alone in an empty queue: admitted
    assert not queue.push(Pending(key=None, rows=1, nbytes=1, enqueued_at=0.0, payload=1))
    assert _payloads(queue.take(now=0.0)) == [0]
    for i in range(2):
        assert queue.push(Pending(key=None, rows=1, nbytes=1, enqueued_at=0.0, payload=i))
    assert not queue.push(Pending(key=None, rows=1, nbytes=1, enqueued_at=0.0, payload=9))
    assert len(queue) == 2 and queue.queued_bytes == 2


def test_batch_key_groups_by_other_dims_dtype_and_outputs() -> None:
    policy = SchedulingPolicy(max_batch_size=4, dynamic_batching=True)
    a = batch_key({"x": np.zeros((2, 16), np.float32)}, ["y"], policy)
    b = batch_key({"x": np.zeros((1, 16), np.float32)}, ["y"], policy)
    assert a[0] == 2 and b[0] == 1 and a[1] == b[1]
    assert batch_key({"x": np.zeros((1, 8), np.float32)}, ["y"], policy)[1] != a[1]
    assert batch_key({"x": np.zeros((1, 16), np.float64)}, ["y"], policy)[1] != a[1]
    assert batch_key({"x": np.zeros((1, 16), np.float32)}, ["z"], policy)[1] != a[1]
    # Alone: inputs disagree on rows, too many rows, a scalar input, batching off.
    assert batch_key({"x": np.zeros((1, 4)), "k": np.zeros((2, 4))}, ["y"], policy) == (1, None)
    assert batch_key({"x": np.zeros((5, 4))}, ["y"], policy) == (1, None)
    assert batch_key({"x": np.zeros((1, 4)), "n": np.array(3)}, ["y"], policy) == (1, None)
    assert batch_key({"x": np.zeros((1, 4))}, ["y"], SchedulingPolicy()) == (1, None)


def test_concat_and_split_round_trip() -> None:
    parts = [np.full((n, 3), n, np.float32) for n in (1, 3, 2)]
    joined = concat_inputs([{"x": p} for p in parts])["x"]
    assert joined.shape == (6, 3)
    shares = split_outputs([joined, joined * 2], [1, 3, 2])
    assert shares is not None
    for part, (first, second) in zip(parts, shares, strict=True):
        np.testing.assert_array_equal(first, part)
        np.testing.assert_array_equal(second, part * 2)
    assert split_outputs([np.zeros((1, 3))], [1, 3, 2]) is None  # not split along the batch


def test_policy_validation_and_settings() -> None:
    with pytest.raises(UserInputError) as info:
        SchedulingPolicy(max_batch_size=4, preferred_batch_sizes=(8,), instance_count=0)
    assert "preferred_batch_sizes must lie in 1..max_batch_size (4), got [8]" in str(info.value)
    assert "instance_count must be >= 1, got 0" in str(info.value)
    triton_style = SimpleNamespace(
        max_batch_size=8, instance_count=3,
        dynamic_batching=SimpleNamespace(preferred_batch_size=[4], max_queue_delay_microseconds=100,
                                         max_queue_size=5),
    )
    assert policy_from_settings(triton_style) == SchedulingPolicy(
        max_batch_size=8, dynamic_batching=True, preferred_batch_sizes=(4,),
        max_queue_delay_us=100, max_queue_size=5, instance_count=3)
    assert not policy_from_settings(SimpleNamespace(max_batch_size=8,
                                                    dynamic_batching=None)).batching


def test_policy_from_model_settings() -> None:
    model_config = pytest.importorskip("edgecut.cloud.model_config")
    settings = model_config.ModelSettings(
        max_batch_size=16, instance_count=1,
        dynamic_batching=model_config.DynamicBatchingSettings(
            preferred_batch_sizes=(8,), max_queue_delay_us=500, max_queue_size=32),
    )
    assert policy_from_settings(settings) == SchedulingPolicy(
        max_batch_size=16, dynamic_batching=True, preferred_batch_sizes=(8,),
        max_queue_delay_us=500, max_queue_size=32, instance_count=1)


# --- batched == unbatched on real models ------------------------------------------------


@pytest.fixture(scope="module")
def ops_models(ops_repo: Path) -> ModelRepository:
    return ModelRepository(ops_repo, intra_op_threads=1)


@pytest.mark.parametrize(
    ("model_name", "shapes", "outputs"),
    [
        ("wide_mlp", [(1, 256), (3, 256), (2, 256), (2, 256)], ["y"]),
        ("batch_cnn", [(1, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16), (4, 3, 16, 16)],
         ["pooled", "y"]),
    ],
)
def test_batched_outputs_equal_unbatched(ops_models: ModelRepository, model_name: str,
                                         shapes: list[tuple[int, ...]],
                                         outputs: list[str]) -> None:
    model = ops_models.get(model_name, "")
    rng = np.random.default_rng(3)
    inputs = [rng.normal(size=s).astype(np.float32) for s in shapes]
    total = sum(s[0] for s in shapes)
    # The batch forms only when every request is in: a preferred size equal to all rows.
    policy = SchedulingPolicy(max_batch_size=total, dynamic_batching=True,
                              preferred_batch_sizes=(total,), max_queue_delay_us=60_000_000)
    scheduler = ModelScheduler(model, policy, max_queue_size=8)
    try:
        futures = [scheduler.submit({"x": x}, outputs) for x in inputs]
        results = [f.result(timeout=WAIT_S) for f in futures]
    finally:
        scheduler.close()
    assert {(r.batch_rows, r.batch_requests) for r in results} == {(total, len(shapes))}
    for x, result in zip(inputs, results, strict=True):
        alone = model.session.run(outputs, {"x": x})
        for got, want in zip(result.outputs, alone, strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


class _Group:
    """A GroupedReceiver's group (what the infer lane's LaneTicket is): records each answer."""

    def __init__(self) -> None:
        self.answers: list[list[_Receiver]] = []

    def answer(self, receivers: list[_Receiver]) -> None:
        self.answers.append(list(receivers))


class _Receiver:
    def __init__(self, group: _Group) -> None:
        self.group = group
        self.outcome: object = None
        self.state = "queued"

    def set_running_or_notify_cancel(self) -> bool:
        if self.state == "cancelled":
            return False
        self.state = "running"
        return True

    def set_result(self, result: object) -> None:
        self.outcome, self.state = result, "done"

    def set_exception(self, exception: BaseException) -> None:
        self.outcome, self.state = exception, "done"

    def done(self) -> bool:
        return self.state in ("done", "cancelled")

    def cancel(self) -> bool:
        if self.state != "queued":
            return False
        self.state = "cancelled"
        self.group.answer([self])
        return True


def test_submit_many_queues_each_request_and_answers_each_group_once_per_batch(
        ops_models: ModelRepository) -> None:
    """Requests queued together are batched as if submitted one by one; the queue's bound
    counts each (the rest get an OverloadedError back); each batch answers the run of a
    group's requests it held in one call; close() answers what was still queued."""
    model = ops_models.get("wide_mlp", "")
    policy = SchedulingPolicy(max_batch_size=4, dynamic_batching=True,
                              preferred_batch_sizes=(4,), max_queue_delay_us=60_000_000)
    scheduler = ModelScheduler(model, policy, max_queue_size=6)
    rng = np.random.default_rng(4)
    xs = [rng.normal(size=(1, 256)).astype(np.float32) for _ in range(8)]
    groups = [_Group(), _Group()]
    receivers = [_Receiver(groups[0]) for _ in range(3)] + [_Receiver(groups[1])
                                                             for _ in range(5)]
    try:
        first = scheduler.submit_many([{"x": x} for x in xs[:3]], ["y"], receivers[:3],
                                      timeouts_s=[None] * 3, cancelled=[None] * 3)
        second = scheduler.submit_many([{"x": x} for x in xs[3:]], ["y"], receivers[3:],
                                        timeouts_s=[None] * 5, cancelled=[None] * 5)
        assert first == (3, None)
        queued, refused = second
        assert queued == 3 and isinstance(refused, OverloadedError)
        assert refused.retry_after_ms >= 1
        # One batch of 4 (preferred) ran: group 0's three, then group 1's first.
        assert _wait_until(lambda: len(groups[1].answers) >= 1, WAIT_S)
    finally:
        # The last two never fill a batch: closing runs them (its drain) or cancels them.
        scheduler.close(timeout_s=0.0)
    assert [len(a) for a in groups[0].answers] == [3]
    answered = [r for answer in groups[1].answers for r in answer]
    assert answered[0] is receivers[3]
    assert sorted(map(id, answered)) == sorted(map(id, receivers[3:6]))  # each exactly once
    for receiver, x in zip(receivers[:4], xs, strict=False):
        result = receiver.outcome
        assert result.batch_rows == 4 and result.batch_requests == 4
        np.testing.assert_allclose(result.outputs[0], model.session.run(["y"], {"x": x})[0],
                                   rtol=1e-5, atol=1e-6)
    assert {r.state for r in receivers[4:6]} <= {"done", "cancelled"}
    assert receivers[6].state == receivers[7].state == "queued"  # refused: never queued


def test_outputs_that_do_not_split_run_each_request_alone(ops_models: ModelRepository) -> None:
    """batch_sum reduces over the batch: joining would be wrong, so requests run alone."""
    model = ops_models.get("batch_sum", "")
    policy = SchedulingPolicy(max_batch_size=4, dynamic_batching=True,
                              preferred_batch_sizes=(4,), max_queue_delay_us=60_000_000)
    scheduler = ModelScheduler(model, policy, max_queue_size=8)
    xs = [np.full((2, 4), v, np.float32) for v in (1.0, 10.0)]
    try:
        results = [f.result(timeout=WAIT_S)
                   for f in [scheduler.submit({"x": x}, ["total"]) for x in xs]]
    finally:
        scheduler.close()
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_array_equal(result.outputs[0], x.sum(axis=0, keepdims=True))
        assert result.batch_requests == 1


class _Held:
    def __init__(self, data: bytearray) -> None:
        self.data = data


def test_a_done_request_is_freed_without_the_garbage_collector(
        ops_models: ModelRepository) -> None:
    """Nothing a submitted request holds (its future, and what the caller's callback holds:
    the server's request bytes) may sit in a reference cycle: it would stay in memory until a
    full collection, and under load RSS would swell with request payloads."""
    model = ops_models.get("wide_mlp", "")
    scheduler = ModelScheduler(model, SchedulingPolicy(max_batch_size=4, dynamic_batching=True))
    request = _Held(bytearray(1 << 20))  # stands for the server's request, held by a callback
    request_alive = weakref.ref(request)
    gc.collect()
    gc.disable()
    try:
        future = scheduler.submit({"x": np.ones((1, 256), np.float32)}, ["y"])
        done = threading.Event()
        future.add_done_callback(lambda f, held=request: done.set())
        del request
        assert done.wait(WAIT_S)
        assert future.result().outputs[0].shape == (1, 512)
        future_alive = weakref.ref(future)
        del future
        # The worker lets go once it has finished the batch; a cycle would never let go.
        deadline = time.monotonic() + 5.0
        while future_alive() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert future_alive() is None, "the future outlived its last reference (in a cycle)"
        assert request_alive() is None, "what its callback held is still alive"
    finally:
        gc.enable()
        scheduler.close()


def test_a_fixed_first_dimension_turns_batching_off(model_repo: Path) -> None:
    model = ModelRepository(model_repo).get("tiny_cnn", "")  # x is [1,3,32,32]
    scheduler = ModelScheduler(model, SchedulingPolicy(max_batch_size=8, dynamic_batching=True))
    try:
        assert not scheduler.policy.batching
    finally:
        scheduler.close()


# --- two devices, one batch, on a real mTLS server --------------------------------------


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_requests_from_two_devices_share_one_batch(ops_repo: Path, two_devices: object,
                                                   frontend: str) -> None:
    fleet = two_devices
    policy = SchedulingPolicy(max_batch_size=8, dynamic_batching=True, preferred_batch_sizes=(4,),
                              max_queue_delay_us=60_000_000, instance_count=1)
    server = create_server(ops_repo, tls_dir=fleet.directory, mutual_tls=True,  # type: ignore[attr-defined]
                           workers=8, scheduling={"wide_mlp": policy}, metrics_port=0,
                           frontend=frontend)
    rng = np.random.default_rng(5)
    xs = {"pi-a": rng.normal(size=(1, 256)).astype(np.float32),
          "pi-b": rng.normal(size=(3, 256)).astype(np.float32)}
    with server:
        def call(device: str) -> np.ndarray:
            creds = channel_credentials(fleet.directory, device=device)  # type: ignore[attr-defined]
            with grpc.secure_channel(server.address, creds) as channel:
                request = pb.ModelInferRequest(model_name="wide_mlp")
                request.inputs.add(name="x", datatype="FP32", shape=xs[device].shape)
                request.raw_input_contents.append(xs[device].tobytes())
                response = GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=WAIT_S)
            return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(-1, 512)

        with ThreadPoolExecutor(2) as pool:
            answers = dict(zip(xs, pool.map(call, xs), strict=True))
        assert server.metrics_url is not None
        metrics = _scrape(server.metrics_url)
        model = server.repository.get("wide_mlp", "")
        for device, x in xs.items():
            np.testing.assert_allclose(answers[device], model.session.run(None, {"x": x})[0],
                                       rtol=1e-5, atol=1e-6)
    labels = "model=wide_mlp,version=1"
    assert metrics[f"edgecut_inference_batch_size_count{{{labels}}}"] == 1
    assert metrics[f"edgecut_inference_batch_size_sum{{{labels}}}"] == 4
    assert metrics[f"edgecut_inference_exec_count_total{{{labels}}}"] == 1
    assert metrics[f"edgecut_inference_count_total{{{labels}}}"] == 4
    assert metrics[f"edgecut_inference_request_success_total{{{labels}}}"] == 2
    assert metrics["edgecut_device_requests_total{device=pi-a}"] == 1
    assert metrics["edgecut_device_requests_total{device=pi-b}"] == 1





def test_run_uses_the_callers_thread(ops_models: ModelRepository) -> None:
    model = ops_models.get("wide_mlp", "")
    scheduler = ModelScheduler(model, SchedulingPolicy(max_batch_size=4))  # not batching
    x = np.ones((1, 256), np.float32)
    try:
        result = scheduler.run({"x": x}, ["y"])
        # The scheduler started no thread of its own: the caller ran the model.
        assert not [t for t in threading.enumerate() if t.name.startswith("edgecut-wide_mlp")]
        np.testing.assert_allclose(result.outputs[0], model.session.run(["y"], {"x": x})[0])
        assert (result.batch_rows, result.batch_requests) == (1, 1)
    finally:
        scheduler.close()


def test_concurrent_callers_share_a_batch_that_one_of_them_runs(
        ops_models: ModelRepository) -> None:
    model = ops_models.get("wide_mlp", "")
    policy = SchedulingPolicy(max_batch_size=4, dynamic_batching=True, preferred_batch_sizes=(4,),
                              max_queue_delay_us=60_000_000)
    scheduler = ModelScheduler(model, policy, max_queue_size=8)
    xs = [np.random.default_rng(i).normal(size=(1, 256)).astype(np.float32) for i in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda x: scheduler.run({"x": x}, ["y"], timeout_s=WAIT_S),
                                    xs))
    finally:
        scheduler.close()
    assert {(r.batch_rows, r.batch_requests) for r in results} == {(4, 4)}
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_allclose(result.outputs[0], model.session.run(["y"], {"x": x})[0],
                                   rtol=1e-5, atol=1e-6)


def _waiting_policy() -> SchedulingPolicy:
    """A batch that never fills and a delay that never ends: requests only wait."""
    return SchedulingPolicy(max_batch_size=8, dynamic_batching=True, preferred_batch_sizes=(8,),
                            max_queue_delay_us=600_000_000)


HOLD_S = 1.5  # how long a run of `slow` holds the only instance of a model that never batches

MODES = ("batching", "no batching")


@contextlib.contextmanager
def _requests_wait(ops_models: ModelRepository, mode: str,
                   slow_iterations: Callable[[float], int]
                   ) -> Iterator[tuple[ModelScheduler, dict[str, np.ndarray]]]:
    """A scheduler whose requests only wait, and a request for it.

    Batching: the batch never fills and its delay never ends (_waiting_policy). No batching:
    a caller runs `slow` for HOLD_S on the only instance, as a long request would; the block
    runs while that run lasts, and ends after it.
    """
    if mode == "batching":
        scheduler = ModelScheduler(ops_models.get("wide_mlp", ""), _waiting_policy())
        try:
            yield scheduler, {"x": np.ones((1, 256), np.float32)}
        finally:
            scheduler.close()
        return
    model = ops_models.get("slow", "")
    scheduler = ModelScheduler(model, SchedulingPolicy())
    long_run = {"x": np.ones((1, 64), np.float32),
                "iterations": np.array(slow_iterations(HOLD_S), np.int64)}
    holder = threading.Thread(target=scheduler.run, args=(long_run, ["y"]),
                              kwargs={"timeout_s": WAIT_S})
    holder.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while model.session.in_flight_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert model.session.in_flight_count() == 1, "the long run never started"
        yield scheduler, {"x": np.ones((1, 64), np.float32),
                          "iterations": np.array(0, np.int64)}
    finally:
        holder.join(WAIT_S)
        scheduler.close()


@pytest.mark.parametrize("mode", MODES)
def test_run_gives_up_at_its_deadline_and_leaves_the_queue(
        ops_models: ModelRepository, slow_iterations: Callable[[float], int], mode: str) -> None:
    with _requests_wait(ops_models, mode, slow_iterations) as (scheduler, request):
        with pytest.raises(DeadlineExceededError, match="deadline"):
            scheduler.run(request, ["y"], timeout_s=0.05)
        assert scheduler.pending() == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_cancelled_caller_leaves_the_queue(
        ops_models: ModelRepository, slow_iterations: Callable[[float], int], mode: str) -> None:
    gone = threading.Event()
    with _requests_wait(ops_models, mode, slow_iterations) as (scheduler, request):
        threading.Timer(0.05, gone.set).start()
        with pytest.raises(CloudUnavailableError, match="cancelled"):
            scheduler.run(request, ["y"], timeout_s=WAIT_S, cancelled=gone.is_set)
        assert scheduler.pending() == 0


def test_cancelling_a_submitted_request_takes_it_out_of_the_queue(
        ops_models: ModelRepository) -> None:
    scheduler = ModelScheduler(ops_models.get("wide_mlp", ""), _waiting_policy())
    try:
        kept = scheduler.submit({"x": np.ones((1, 256), np.float32)}, ["y"])
        dropped = scheduler.submit({"x": np.zeros((1, 256), np.float32)}, ["y"])
        assert scheduler.pending() == 2
        assert dropped.cancel() and dropped.cancelled()
        assert scheduler.pending() == 1
        assert not kept.done()
        scheduler.drain(WAIT_S)  # runs what is queued without waiting for the delay
        assert kept.result(WAIT_S).batch_rows == 1
        assert scheduler.statistics().rows == 1  # the cancelled request never ran
    finally:
        scheduler.close()


def test_waiting_callers_of_a_model_that_never_batches_all_run_when_it_frees(
        ops_models: ModelRepository, slow_iterations: Callable[[float], int]) -> None:
    """Each caller runs its own request, one at a time, once the instance comes back."""
    order: list[int] = []
    xs = [np.full((1, 64), i / 10, np.float32) for i in range(6)]
    with _requests_wait(ops_models, "no batching", slow_iterations) as (scheduler, request):
        model = ops_models.get("slow", "")

        def call(i: int) -> None:
            inputs = {**request, "x": xs[i]}
            result = scheduler.run(inputs, ["y"], timeout_s=WAIT_S)
            np.testing.assert_allclose(result.outputs[0], model.session.run(["y"], inputs)[0],
                                       rtol=1e-5, atol=1e-6)
            order.append(i)

        threads = []
        for i in range(6):
            threads.append(threading.Thread(target=call, args=(i,)))
            threads[-1].start()
            while scheduler.pending() < i + 1:  # queued in this order
                time.sleep(0.002)
        assert model.session.in_flight_count() == 1  # still the long run: they all waited
        for t in threads:
            t.join(WAIT_S)
        statistics = scheduler.statistics()
    assert sorted(order) == list(range(6))
    assert statistics.batches == 7  # the long run, then one run per caller


def test_run_is_refused_when_the_queue_is_full_and_unblocked_by_close(
        ops_models: ModelRepository) -> None:
    scheduler = ModelScheduler(ops_models.get("wide_mlp", ""), _waiting_policy(),
                               max_queue_size=1)
    x = np.ones((1, 256), np.float32)
    errors: list[Exception] = []

    def wait() -> None:
        try:
            scheduler.run({"x": x}, ["y"], timeout_s=WAIT_S)
        except Exception as exc:  # what the waiting caller gets when the scheduler closes
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    while scheduler.pending() == 0:
        time.sleep(0.005)
    with pytest.raises(OverloadedError, match="queue is full") as info:
        scheduler.run({"x": x}, ["y"], timeout_s=WAIT_S)
    # Nothing leaves this queue before its 600 s delay: the hint says so (capped at 60 s), not
    # the few ms one batch takes.
    assert info.value.retry_after_ms == 60_000
    # Closing drains: the waiting request runs (flush), and new ones are refused.
    scheduler.close()
    waiter.join(WAIT_S)
    assert not waiter.is_alive() and not errors
    with pytest.raises(CloudUnavailableError, match="shutting down"):
        scheduler.run({"x": x}, ["y"])


def test_separate_sessions_count_their_runs(ops_repo: Path) -> None:
    """Every instance's session reports to the model's statistics, not only the first."""
    model = ModelRepository(ops_repo, intra_op_threads=1).get("wide_mlp", "")
    before = model.statistics().executions
    # A queue delay keeps callers from running inline: every request goes to the workers.
    policy = SchedulingPolicy(max_batch_size=1, dynamic_batching=True, max_queue_delay_us=1,
                              instance_count=3)
    scheduler = ModelScheduler(model, policy, separate_sessions=True, max_queue_size=64)
    x = np.ones((1, 256), np.float32)
    try:
        futures = [scheduler.submit({"x": x}, ["y"]) for _ in range(60)]
        results = [f.result(WAIT_S) for f in futures]
    finally:
        scheduler.close()
    assert len(results) == 60
    assert model.statistics().executions - before == 60


# -- queue timeouts: Triton's default_queue_policy { default_timeout_microseconds } ----------

def _never_filling(**timeouts: Any) -> SchedulingPolicy:
    """Batches that never fill and a 600 s delay: only a queue timeout ends the wait."""
    return SchedulingPolicy(max_batch_size=8, dynamic_batching=True, preferred_batch_sizes=(8,),
                            max_queue_delay_us=600_000_000, **timeouts)


@pytest.mark.parametrize(("timeouts", "asked_s"), [
    ({"queue_timeout_us": 50_000}, None),                               # the policy's timeout
    ({"queue_timeout_override": True}, 0.05),                           # the request's own
    ({"queue_timeout_us": 600_000_000, "queue_timeout_override": True}, 0.05),  # shorter: taken
])
def test_queued_requests_fail_when_their_queue_time_runs_out(
        ops_models: ModelRepository, timeouts: dict[str, Any], asked_s: float | None) -> None:
    """Through run() (a caller waiting) and submit() (the workers answer it): answered at the
    timeout, not when the 600 s delay would form a batch, and out of the queue."""
    scheduler = ModelScheduler(ops_models.get("wide_mlp", ""), _never_filling(**timeouts))
    x = {"x": np.ones((1, 256), np.float32)}
    try:
        with pytest.raises(DeadlineExceededError, match="deadline or the model's queue timeout"
                           if timeouts.get("queue_timeout_us") else "deadline"):
            scheduler.run(x, ["y"], asked_timeout_s=asked_s)
        future = scheduler.submit(x, ["y"], asked_timeout_s=asked_s)
        with pytest.raises(DeadlineExceededError):
            future.result(timeout=WAIT_S)
        assert scheduler.pending() == 0
    finally:
        scheduler.close(timeout_s=0.0)


def test_a_request_may_not_lengthen_the_queue_timeout_nor_set_one_unless_allowed(
        ops_models: ModelRepository) -> None:
    assert _never_filling(queue_timeout_us=50_000).queue_timeout_s(9.0) == 0.05
    assert _never_filling(queue_timeout_us=50_000,
                          queue_timeout_override=True).queue_timeout_s(9.0) == 0.05
    assert _never_filling().queue_timeout_s(0.01) is None  # no override: the request's is ignored


def test_queue_timeout_from_config_over_both_transports(tmp_path: Path, frontend: str) -> None:
    """config.pbtxt's default_queue_policy as Triton reads it: tritonclient's plain request
    (the infer lane) fails DEADLINE_EXCEEDED at the default timeout; one that
    asks for a shorter `timeout` (the per-call path) at its own."""
    (tmp_path / "m" / "1").mkdir(parents=True)
    onnx.save(wide_mlp(), str(tmp_path / "m" / "1" / "model.onnx"))
    (tmp_path / "m" / "config.pbtxt").write_text(
        "max_batch_size: 8\n"
        "dynamic_batching { preferred_batch_size: [8] max_queue_delay_microseconds: 600000000\n"
        "  default_queue_policy { default_timeout_microseconds: 200000 "
        "allow_timeout_override: true } }\n")
    x = triton.InferInput("x", [1, 256], "FP32")
    x.set_data_from_numpy(np.ones((1, 256), np.float32))
    with create_server(tmp_path, workers=4, frontend=frontend) as server:
        client = triton.InferenceServerClient(server.address)
        for timeout_us in (None, 20_000):
            with pytest.raises(InferenceServerException) as info:
                client.infer("m", [x], timeout=timeout_us, client_timeout=WAIT_S)
            assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
            assert "queue timeout (200000 us, config.pbtxt default_queue_policy)" in (
                info.value.message())
        statistics = client.get_inference_statistics("m", as_json=True)
        assert statistics["model_stats"][0]["inference_stats"]["fail"]["count"] == "2"
        assert server.lane_calls == (0 if frontend == "grpcio" else 1)  # the plain one
