"""Request-id deduplication (edgecut.cloud.dedup): a request sent again with its id gets the
first one's answer without a second model run; different callers, other requests and
requests without an id are never merged.

The pure part first (RequestDeduplicator with a clock of its own), then real endpoints over
mutual TLS on each transport, on the infer lane (plain calls) and the per-call path
(calls with parameters), the model runs counted in ModelStatistics' execution_count.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgecut.cloud.batching import SchedulingPolicy
from edgecut.cloud.dedup import RequestDeduplicator, StoredAnswer, kept_error, request_key
from edgecut.cloud.server import EndpointServer, create_server
from edgecut.errors import BadInputError, DeadlineExceededError, OverloadedError
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from edgecut.protocol.tls import channel_credentials

WAIT_S = 30.0
# A lone request waits this long for a batch: a repeat sent at once finds it still running.
DELAY_US = 200_000
KEY = ("pi4", "m", "", "req-1", 7, 0)


def _answer(text: bytes = b"answer") -> StoredAnswer:
    return StoredAnswer(response=text, model="m", version="1")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_repeat_waits_for_the_first_and_later_ones_get_it_at_once() -> None:
    dedup = RequestDeduplicator()
    first = dedup.claim(KEY)
    assert first.flight is not None
    waiting = dedup.claim(KEY).waiting
    assert waiting is not None and not waiting.done()
    dedup.settle(first.flight, _answer())
    assert waiting.result(timeout=1).response == b"answer"  # type: ignore[union-attr]
    assert dedup.claim(KEY).answer == _answer()
    assert dedup.statistics().answered_again == 2


def test_an_unkept_failure_lets_the_repeats_run_themselves() -> None:
    dedup = RequestDeduplicator()
    first = dedup.claim(KEY)
    waiting = dedup.claim(KEY).waiting
    assert first.flight is not None and waiting is not None
    dedup.settle(first.flight, None)
    assert waiting.result(timeout=1) is None
    assert dedup.claim(KEY).flight is not None  # nothing kept: the next one leads
    dedup.settle(first.flight, _answer())  # a flight settles once; this one is over
    assert dedup.statistics().kept == 0


def test_answers_expire_after_the_ttl() -> None:
    clock = _Clock()
    dedup = RequestDeduplicator(ttl_s=60.0, clock=clock)
    flight = dedup.claim(KEY).flight
    assert flight is not None
    dedup.settle(flight, _answer())
    clock.now = 59.0
    assert dedup.claim(KEY).answer is not None
    clock.now = 60.5
    assert dedup.claim(KEY).flight is not None
    assert dedup.statistics().kept == 0


def test_kept_answers_are_bounded_in_entries_and_bytes() -> None:
    dedup = RequestDeduplicator(max_entries=3, max_bytes=1000)
    for i in range(5):
        flight = dedup.claim((*KEY[:3], f"id-{i}", 7, 0)).flight
        assert flight is not None
        dedup.settle(flight, _answer(b"x" * 100))
    assert dedup.statistics().kept == 3  # the oldest went first
    assert dedup.claim((*KEY[:3], "id-0", 7, 0)).flight is not None
    assert dedup.claim((*KEY[:3], "id-4", 7, 0)).answer is not None
    flight = dedup.claim((*KEY[:3], "big", 7, 0)).flight
    assert flight is not None
    dedup.settle(flight, _answer(b"x" * 2000))  # larger than every bound: not kept
    assert dedup.claim((*KEY[:3], "big", 7, 0)).flight is not None
    assert dedup.statistics().kept_bytes <= 1000


def test_keys_need_an_id_and_a_caller_and_tell_messages_apart() -> None:
    assert request_key("pi4", "m", "", "", b"message") is None
    assert request_key(None, "m", "", "req-1", b"message") is None
    assert request_key("pi4", "m", "", "req-1", b"message") != \
        request_key("pi4", "m", "", "req-1", b"massage")  # same size, other bytes


def test_only_the_requests_own_faults_are_kept() -> None:
    assert kept_error(BadInputError("bad"), None) is not None
    for transient in (OverloadedError("full", retry_after_ms=5), DeadlineExceededError("late"),
                      RuntimeError("bug")):
        assert kept_error(transient, None) is None


# --- Real endpoints ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(ops_repo: Path, two_devices: Any, frontend: str) -> Iterator[EndpointServer]:
    scheduling = {"wide_mlp": SchedulingPolicy(max_batch_size=8, dynamic_batching=True,
                                               max_queue_delay_us=DELAY_US)}
    with create_server(ops_repo, tls_dir=two_devices.directory, mutual_tls=True, workers=8,
                       frontend=frontend, scheduling=scheduling, metrics_port=0) as running:
        yield running


@pytest.fixture(scope="module")
def stubs(server: EndpointServer, two_devices: Any
          ) -> Iterator[dict[str, GRPCInferenceServiceStub]]:
    channels = {device: grpc.secure_channel(
        server.address, channel_credentials(two_devices.directory, device=device))
        for device in ("pi-a", "pi-b")}
    yield {device: GRPCInferenceServiceStub(channel) for device, channel in channels.items()}
    for channel in channels.values():
        channel.close()


@pytest.fixture(params=["plain", "with-parameters"])
def path(request: pytest.FixtureRequest) -> str:
    """A plain call (the infer lane of the native and core transports) or one with a
    parameter (their per-call path); over grpcio both take the one path there is."""
    return str(request.param)


def _request(request_id: str, *, path: str, seed: int = 0, width: int = 256
             ) -> pb.ModelInferRequest:
    x = np.random.default_rng(seed).normal(size=(1, width)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="wide_mlp", id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    if path == "with-parameters":
        request.parameters["edgecut_codec"].string_param = "raw"
    return request


def _executions(server: EndpointServer) -> int:
    (version,) = server.repository.version_statistics("wide_mlp")
    return version.executions


def _deduplicated(server: EndpointServer) -> float:
    assert server.metrics_url is not None
    with urllib.request.urlopen(server.metrics_url, timeout=WAIT_S) as response:
        text = response.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == "edgecut_inference_deduplicated_total"
               and s.labels == {"model": "wide_mlp", "version": "1"})


def _infer(stub: GRPCInferenceServiceStub, request: pb.ModelInferRequest
           ) -> pb.ModelInferResponse:
    return stub.ModelInfer(request, timeout=WAIT_S)


def test_the_same_id_sent_twice_runs_once(server: EndpointServer,
                                          stubs: dict[str, GRPCInferenceServiceStub],
                                          path: str) -> None:
    request = _request(f"twice-{path}", path=path)
    runs, repeats, lane = _executions(server), _deduplicated(server), server.lane_calls
    first = _infer(stubs["pi-a"], request)
    again = _infer(stubs["pi-a"], request)
    assert again == first  # the same bytes: timing included
    assert first.id == request.id
    assert _executions(server) == runs + 1
    assert _deduplicated(server) == repeats + 1
    took_lane = server.frontend in ("native", "core") and path == "plain"
    assert server.lane_calls == lane + (2 if took_lane else 0)


def test_the_same_id_sent_twice_at_once_runs_once(server: EndpointServer,
                                                  stubs: dict[str, GRPCInferenceServiceStub],
                                                  path: str) -> None:
    """The second arrives while the first waits out its batch delay: it waits for that
    answer instead of running."""
    request = _request(f"at-once-{path}", path=path)
    runs, repeats = _executions(server), _deduplicated(server)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: _infer(stubs["pi-a"], request), range(2)))
    assert answers[0] == answers[1]
    assert _executions(server) == runs + 1
    assert _deduplicated(server) == repeats + 1


def test_different_callers_with_one_id_are_not_merged(
        server: EndpointServer, stubs: dict[str, GRPCInferenceServiceStub], path: str) -> None:
    request = _request(f"shared-{path}", path=path)
    runs, repeats = _executions(server), _deduplicated(server)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda device: _infer(stubs[device], request),
                                ["pi-a", "pi-b"]))
    assert answers[0].raw_output_contents == answers[1].raw_output_contents
    assert _executions(server) in (runs + 1, runs + 2)  # one batch may run both
    assert _deduplicated(server) == repeats


def test_no_id_or_another_request_under_the_id_is_computed(
        server: EndpointServer, stubs: dict[str, GRPCInferenceServiceStub], path: str) -> None:
    repeats = _deduplicated(server)
    for request in (_request("", path=path), _request("", path=path)):
        _infer(stubs["pi-a"], request)
    reused = [_request(f"reused-{path}", path=path, seed=seed) for seed in (1, 2)]
    answers = [_infer(stubs["pi-a"], request) for request in reused]
    assert answers[0].raw_output_contents != answers[1].raw_output_contents
    assert _deduplicated(server) == repeats


def test_a_request_error_is_given_again_without_a_run(
        server: EndpointServer, stubs: dict[str, GRPCInferenceServiceStub], path: str) -> None:
    request = _request(f"too-narrow-{path}", path=path, width=255)  # wide_mlp takes 256
    repeats = _deduplicated(server)
    errors = []
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as caught:
            _infer(stubs["pi-a"], request)
        errors.append((caught.value.code(), caught.value.details()))  # type: ignore[attr-defined]
    assert errors[0] == errors[1]
    assert errors[0][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert _deduplicated(server) == repeats + 1
