"""The link shaped from 100 to 1 Mbit/s and back: the adaptive cut follows the plan's envelope.

Shaped for real: a veth between this namespace and one the endpoint process runs in, each
direction a `tbf` (root only), or, where namespaces are not to be had, an in-process token
bucket proxy. An adaptive device and a fixed-cut (split:1) device run side by side through the
same link; every answer is checked against the full model. The adaptive one must leave
split:1 for the envelope's local segment on the slow link (the plan's breakpoint is ~2.2
Mbit/s) and come back when the link is fast again; the latencies of both are reported, not
asserted.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from benchmarks.harness import HarnessUnavailable
from benchmarks.harness.endpoint import EndpointProcess
from benchmarks.harness.faultload import DeviceLoop, Outcome, run_loops, summarise
from benchmarks.harness.shaper import NamespaceLink, ThrottleProxy
from edgecut.edge import load_plan

from .conftest import DEVICES, TIMEOUT_S

FAST_MBPS, SLOW_MBPS = 100.0, 1.0


@contextlib.contextmanager
def shaped_endpoint(kind: str, endpoint_factory: Callable) -> Iterator[tuple[str, object]]:
    """(address the devices use, the shaper with set_rate) for `kind` "netns" or "proxy"."""
    if kind == "netns":
        if os.geteuid() != 0:
            pytest.skip("a shaped namespace link needs root (ip netns, tc)")
        try:
            link = NamespaceLink(up_mbps=FAST_MBPS, down_mbps=FAST_MBPS)
            link.__enter__()
        except HarnessUnavailable as exc:
            pytest.skip(f"no shaped namespace link here: {exc}")
        try:
            endpoint = endpoint_factory(host=link.cloud_address, netns=link.namespace)
            endpoint.start()
            yield endpoint.address, link
            endpoint.stop()  # before the namespace goes
        finally:
            link.close()
        assert link.namespace not in _namespaces(), "the namespace was left behind"
    else:
        endpoint: EndpointProcess = endpoint_factory()
        endpoint.start()
        with ThrottleProxy(endpoint.address, up_mbps=FAST_MBPS, down_mbps=FAST_MBPS) as proxy:
            yield proxy.address, proxy


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _phase(outcomes: list[Outcome], start: float, end: float) -> str:
    row = summarise("", [o for o in outcomes if start <= o.started_s < end])
    return f"{row.requests} runs, p50 {row.p50_ms:.1f} ms, p99 {row.p99_ms:.1f} ms"


def test_the_plans_envelope_breaks_between_the_two_rates(fault_plan) -> None:
    """The premise of the test below: split:1 at 100 Mbit/s, the device alone at 1."""
    plan = load_plan(fault_plan)
    assert plan.cut_for_bandwidth(FAST_MBPS) == 1
    local = plan.cut_for_bandwidth(SLOW_MBPS)
    assert plan.cut(local).tail is None  # nothing in the cloud: adaptive runs it as "local"
    # Room for the default hysteresis (25 %) on both sides of the breakpoint.
    assert plan.cut_for_bandwidth(SLOW_MBPS * 1.25 * 1.25) == local
    assert plan.cut_for_bandwidth(FAST_MBPS / 1.25) == 1


@pytest.mark.parametrize("kind", ["netns", "proxy"])
def test_the_cut_follows_the_link_down_and_back(kind: str, endpoint_factory: Callable,
                                                predictor_factory: Callable, feeds: list) -> None:
    with shaped_endpoint(kind, endpoint_factory) as (address, shaper):
        adaptive = predictor_factory(address, device=DEVICES[2], probe_interval_s=0.5)
        fixed = predictor_factory(address, device=DEVICES[3], mode="split", cut=1,
                                  fallback="none")
        deadline = time.monotonic() + 40.0
        loops = [DeviceLoop(p, *feeds[i + 2], timeout_s=TIMEOUT_S, requests=10**6,
                            deadline=deadline, pause_s=0.02, name=name)
                 for i, (p, name) in enumerate(((adaptive, "adaptive"), (fixed, "fixed")))]
        marks: dict[str, float] = {}

        def shape() -> None:
            marks["fast"] = time.monotonic()
            assert _wait(lambda: len(loops[0].outcomes) >= 20
                         and adaptive.statistics().choice == "split:1", 15.0), adaptive.events()
            shaper.set_rate(up_mbps=SLOW_MBPS, down_mbps=SLOW_MBPS)
            marks["slow"] = time.monotonic()
            _wait(lambda: adaptive.statistics().choice == "local", 12.0)
            time.sleep(1.0)
            shaper.set_rate(up_mbps=FAST_MBPS, down_mbps=FAST_MBPS)
            marks["fast_again"] = time.monotonic()
            _wait(lambda: adaptive.statistics().choice == "split:1", 15.0)
            time.sleep(0.5)
            marks["end"] = time.monotonic()
            for loop in loops:
                loop.stop()

        run_loops(loops, budget_s=45.0, during=shape)
        events = adaptive.events()
    rows = {loop.device: summarise(loop.device, loop.outcomes) for loop in loops}
    for name, row in rows.items():
        assert row.lost == 0, (name, row.lost_examples)
    assert rows["adaptive"].typed == 0, rows["adaptive"].typed_examples
    wall = time.time() - time.monotonic()  # events carry time.time(), marks monotonic
    down = [e for e in events if e.time - wall >= marks["slow"] and e.to_choice == "local"]
    assert down and down[0].from_choice == "split:1" and "uplink" in down[0].reason, events
    up = [e for e in events if e.time - wall >= marks["fast_again"] and e.to_choice == "split:1"]
    assert up and up[0].from_choice == "local", events
    for loop in loops:
        print(f"{kind} {loop.device}: fast {_phase(loop.outcomes, marks['fast'], marks['slow'])}; "
              f"slow {_phase(loop.outcomes, marks['slow'], marks['fast_again'])}; fast again "
              f"{_phase(loop.outcomes, marks['fast_again'], marks['end'])}")


def test_probes_sized_for_a_link_that_fell_neither_congest_it_nor_open_the_breaker(
        shared_endpoint: EndpointProcess, fault_fleet) -> None:
    """The link falls from 100 to 1 Mbit/s while the estimate still says 100. A probe sized
    for 100 Mbit/s (1.25 MB here) would hold the link for ~9 s, the device's requests
    queued behind it, and time out. The scout finds the fall first; the cloud answered, so
    the breaker stays closed, and the estimate comes down to the link's own rate."""
    from edgecut.edge.breaker import CircuitBreaker
    from edgecut.edge.client import CloudClient
    from edgecut.edge.monitors import LinkEstimator
    from edgecut.edge.prober import Prober

    opened: list[str] = []
    with ThrottleProxy(shared_endpoint.address, up_mbps=SLOW_MBPS, down_mbps=SLOW_MBPS) as proxy, \
            CloudClient(proxy.address, tls_dir=fault_fleet, device=DEVICES[4]) as client:
        client.probe_uplink(0, timeout_s=10.0)  # connected before the estimate is seeded
        link = LinkEstimator()
        for _ in range(3):  # what the link measured while it was fast
            link.observe_rtt(1.0)
            link.observe_call(up_bytes=1_250_000, down_bytes=0, rpc_ms=101.0, server_ms=0.0)
        assert link.uplink_mbps() > 50
        breaker = CircuitBreaker(failures=1, reset_s=5.0)
        prober = Prober(client, breaker, link, interval_s=0.5, max_share=0.2, tick_s=3600.0,
                        on_open=opened.append, on_close=lambda reason: None)
        estimates = []
        try:
            for _ in range(8):  # each probe is sized by the estimate the last one left
                prober.probe_link()
                estimates.append(link.uplink_mbps())
                if estimates[-1] < 5:
                    break
        finally:
            prober.stop()
    assert breaker.state == "closed" and not opened, opened
    assert estimates[-1] < 5, estimates
    assert prober.probe_bytes < 1_250_000, prober.probe_bytes  # the large probe never went


def test_an_uplink_probe_out_of_time_is_a_bound_on_the_link_not_a_failure(
        shared_endpoint: EndpointProcess, fault_fleet) -> None:
    """Where the scout passed and the link fell after it, the large probe runs out of time:
    it is a sample at the rate it proves at most (1.25 MB in 1.4 s: ~7 Mbit/s), not an error."""
    from edgecut.edge.breaker import CircuitBreaker
    from edgecut.edge.client import CloudClient
    from edgecut.edge.monitors import LinkEstimator
    from edgecut.edge.prober import Prober

    with ThrottleProxy(shared_endpoint.address, up_mbps=SLOW_MBPS, down_mbps=SLOW_MBPS) as proxy, \
            CloudClient(proxy.address, tls_dir=fault_fleet, device=DEVICES[5]) as client:
        client.probe_uplink(0, timeout_s=10.0)
        link = LinkEstimator()
        link.observe_rtt(1.0)
        breaker = CircuitBreaker(failures=1, reset_s=5.0)
        prober = Prober(client, breaker, link, interval_s=0.5, max_share=0.2, tick_s=3600.0,
                        on_open=lambda reason: None, on_close=lambda reason: None)
        try:
            crossed_as_expected = prober._send(1_250_000, 100.0, 1.0)
        finally:
            prober.stop()
    assert not crossed_as_expected and breaker.state == "closed"
    assert 5 < link.uplink_mbps() < 8, link.uplink_mbps()
