"""Servers that never answer, answer garbage, or close mid-message: no run outlives its deadline.

Each fault is a real server on loopback (benchmarks/harness/badservers.py): a TCP listener
that never speaks, one that answers random bytes, a gRPC server over the fleet's mutual TLS
that holds every ModelInfer or answers it with a malformed response, and a proxy in front of
a real endpoint process that cuts each connection partway through the server's bytes (a
reset, a close, or a stall: no more bytes, the connection held open).

With fallback "local" every request is answered by the device with the full model's outputs;
with "none" it raises a typed error; split mode (no adaptation) raises typed errors too. In
every case nothing is lost: no untyped exception, no wrong answer, no run past
timeout_s + 0.5 s (the contract's bound, the only timing these tests assert).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks.harness.badservers import (
    CUT_ACTIONS,
    MALFORMED,
    CuttingProxy,
    FakeEndpoint,
    GarbageServer,
    SilentServer,
)
from benchmarks.harness.endpoint import EndpointProcess
from benchmarks.harness.faultload import DeviceLoop, Row, run_loops, summarise

from .conftest import DEVICES

TIMEOUT_S = 1.0
FAULTS = ["silent_tcp", "garbage_tcp", "hang", *MALFORMED, *(f"cut_{a}" for a in CUT_ACTIONS)]
# (mode, fallback, requests): split mode waits out each deadline on a silent server, so fewer.
SETTINGS = [("adaptive", "local", 12), ("adaptive", "none", 12), ("split", "none", 4)]


def _calibrated_cuts(target: str, make_predictor: Callable, feed: dict) -> list[int]:
    """Byte offsets that fall inside the TLS handshake and inside the first ModelInfer answer
    of a connection, measured through a pass-through proxy."""
    with CuttingProxy(target, cut_after=None) as proxy:
        predictor = make_predictor(proxy.address, mode="split", fallback="none")
        predictor.run(None, feed)
        first = proxy.bytes_down
        predictor.run(None, feed)
        per_request = proxy.bytes_down - first
        predictor.close()
    handshake = first - per_request
    return [first - per_request // 2, handshake // 2, first - per_request // 4,
            first - 3 * per_request // 4]


@pytest.fixture
def faulty_server(request: pytest.FixtureRequest, fault_fleet: Path,
                  shared_endpoint: EndpointProcess, predictor_factory: Callable,
                  feeds: list) -> Iterator[str]:
    """The address of the fault named by the test's `fault` parameter, running."""
    fault = request.node.callspec.params["fault"]
    with contextlib.ExitStack() as stack:
        if fault == "silent_tcp":
            server = stack.enter_context(SilentServer())
        elif fault == "garbage_tcp":
            server = stack.enter_context(GarbageServer(nbytes=8192))
        elif fault.startswith("cut_"):
            cuts = _calibrated_cuts(shared_endpoint.address, predictor_factory, feeds[0][0])
            server = stack.enter_context(CuttingProxy(shared_endpoint.address, cut_after=cuts,
                                                      action=fault.removeprefix("cut_")))
        else:
            server = stack.enter_context(FakeEndpoint(fault_fleet, fault))
        yield server.address


def _check(row: Row, *, mode: str, fallback: str) -> None:
    assert row.lost == 0, row.lost_examples
    # The server never gave a correct answer, so none came from the cloud.
    assert row.cloud == 0, row
    if mode == "adaptive" and fallback == "local":
        assert row.local == row.requests and row.typed == 0, row.typed_examples
    else:
        # Adaptive mode may choose to run locally on its own (the envelope, at a link it
        # measured slow); every other request is a typed error.
        assert row.typed + row.local == row.requests and row.typed > 0, row


@pytest.mark.parametrize(("mode", "fallback", "requests"), SETTINGS,
                         ids=[f"{m}-{f}" for m, f, _ in SETTINGS])
@pytest.mark.parametrize("fault", FAULTS)
def test_a_misbehaving_server_never_holds_a_run_past_its_deadline(
        fault: str, mode: str, fallback: str, requests: int, faulty_server: str,
        predictor_factory: Callable, feeds: list) -> None:
    feed, expected = feeds[1]
    predictor = predictor_factory(faulty_server, device=DEVICES[1], mode=mode,
                                  fallback=fallback, timeout_s=TIMEOUT_S)
    loop = DeviceLoop(predictor, feed, expected, timeout_s=TIMEOUT_S, requests=requests,
                      name=DEVICES[1])
    outcomes = run_loops([loop], budget_s=requests * (TIMEOUT_S + 1.0) + 5.0)
    row = summarise(fault, outcomes)
    assert row.requests == requests
    _check(row, mode=mode, fallback=fallback)
