"""The adaptive policy, the link estimator, device pressure and the circuit breaker, as
pure values: every rule on hand-checked cases."""

from __future__ import annotations

import math

import pytest

from edgecut.edge.breaker import CircuitBreaker
from edgecut.edge.channel import service_config, target_for
from edgecut.edge.monitors import DeviceMonitor, DeviceReadings, LinkEstimator
from edgecut.edge.policy import Choice, CutCosts, Inputs, Thresholds, decide, envelope_cut
from edgecut.errors import BadInputError

# A plan like fpn's on a slow board: local below 4 Mbit/s, split at cut 1 up to 7.5, then
# full offload; the costs are the ones whose latency lines cross at those breakpoints
# (rtt 0): 20 + 983 / B = 63.7 + 655 / B at 7.5, and 63.7 + 895 / B = 287.5 at 4, with the
# 30 kB answer at the same bandwidth.
ENVELOPE = [(22, 0.0, 4.0), (1, 4.0, 7.5), (0, 7.5, math.inf)]
COSTS = {
    0: CutCosts(cut=0, mode="offload", fixed_ms=20.0, up_bytes=122_880, down_bytes=30_000),
    1: CutCosts(cut=1, mode="split", fixed_ms=63.7, up_bytes=81_920, down_bytes=30_000),
    22: CutCosts(cut=22, mode="local", fixed_ms=287.5, up_bytes=0, down_bytes=0),
}
SPLIT = Choice("split", 1)


def _decide(current: Choice, thresholds: Thresholds | None = None, **inputs
            ) -> tuple[Choice, str | None]:
    decision = decide(Inputs(**inputs), current, envelope=ENVELOPE, costs=COSTS,
                      thresholds=thresholds or Thresholds(hysteresis=0.25,
                                                          max_cloud_queue_ms=50.0),
                      initial=SPLIT)
    return decision.choice, decision.reason


@pytest.mark.parametrize(("mbps", "expected"), [
    (0.5, Choice("local", None)), (3.99, Choice("local", None)), (4.0, SPLIT), (7.0, SPLIT),
    (7.5, Choice("offload", None)), (1000.0, Choice("offload", None)),
])
def test_the_envelope_alone_decides_without_hysteresis(mbps: float, expected: Choice) -> None:
    decision = decide(Inputs(uplink_mbps=mbps), Choice("offload", None), envelope=ENVELOPE,
                      costs=COSTS, thresholds=Thresholds(hysteresis=0.0, min_gain_ms=0.0,
                                                         min_gain_share=0.0))
    assert decision.choice == expected


def test_hysteresis_keeps_the_cut_near_a_breakpoint() -> None:
    # 7.5 Mbit/s is the breakpoint to offload: split holds up to 7.5 x 1.25.
    assert _decide(SPLIT, uplink_mbps=9.0) == (SPLIT, None)
    choice, reason = _decide(SPLIT, uplink_mbps=9.5)
    assert choice == Choice("offload", None) and "uplink 9.5 Mbit/s" in reason
    # ... and offload holds down to 7.5 x 0.75 on the way back.
    assert _decide(Choice("offload", None), uplink_mbps=6.0)[0] == Choice("offload", None)
    assert _decide(Choice("offload", None), uplink_mbps=5.5)[0] == SPLIT


def test_a_noisy_fast_link_does_not_flap_between_cuts_that_cost_the_same() -> None:
    # Two cuts that differ by 4 kB: at 300 or 800 Mbit/s they are under 0.1 ms apart, less than
    # the 1 ms a switch must gain, whatever the envelope's breakpoint between them says.
    envelope = [(1, 0.0, 500.0), (0, 500.0, math.inf)]
    costs = {0: CutCosts(cut=0, mode="offload", fixed_ms=2.0, up_bytes=12_288, down_bytes=40),
             1: CutCosts(cut=1, mode="split", fixed_ms=2.06, up_bytes=8_192, down_bytes=40)}
    current = SPLIT
    for mbps in (303.0, 802.0, 342.0, 686.0, 300.0, 713.0):
        current = decide(Inputs(uplink_mbps=mbps, rtt_ms=1.0), current, envelope=envelope,
                         costs=costs, thresholds=Thresholds()).choice
        assert current == SPLIT
def test_no_estimate_keeps_the_plans_choice() -> None:
    assert _decide(SPLIT) == (SPLIT, None)


def test_pressure_offloads_whatever_the_link() -> None:
    choice, reason = _decide(SPLIT, uplink_mbps=1.0, pressure="memory 80 MiB free")
    assert choice == Choice("offload", None)
    assert reason == "device pressure: memory 80 MiB free"


def test_a_long_cloud_queue_pushes_work_back_when_local_is_faster() -> None:
    # split:1 at 5 Mbit/s, 20 ms rtt: 63.7 + 131.1 up + 48 down + 20 = 262.8 ms, against the
    # 287.5 ms local run. With a 10 ms limit: 100 ms of queue loses to local, 20 ms does not.
    limit = Thresholds(hysteresis=0.25, max_cloud_queue_ms=10.0)
    choice, reason = _decide(SPLIT, limit, uplink_mbps=5.0, rtt_ms=20.0, cloud_queue_ms=100.0)
    assert choice == Choice("local", None) and "cloud queue 100 ms" in reason
    assert _decide(SPLIT, limit, uplink_mbps=5.0, rtt_ms=20.0, cloud_queue_ms=20.0)[0] == SPLIT
    # Under the limit, the queue is not weighed at all.
    assert _decide(SPLIT, uplink_mbps=5.0, rtt_ms=20.0, cloud_queue_ms=45.0)[0] == SPLIT


def test_a_long_queue_without_predictions_goes_local() -> None:
    costs = {k: CutCosts(cut=v.cut, mode=v.mode, fixed_ms=math.nan, up_bytes=v.up_bytes,
                         down_bytes=v.down_bytes) for k, v in COSTS.items()}
    decision = decide(Inputs(uplink_mbps=5.0, cloud_queue_ms=80.0), SPLIT, envelope=ENVELOPE,
                      costs=costs, thresholds=Thresholds())
    assert decision.choice == Choice("local", None)


def test_envelope_cut_needs_an_envelope() -> None:
    with pytest.raises(ValueError, match="non-empty envelope"):
        envelope_cut([], 1.0, None, 0.1)


def test_link_estimate_is_the_median_and_forgets_old_samples() -> None:
    link = LinkEstimator(window=5, max_age_s=10.0)
    link.observe_rtt(10.0, now=0.0)
    # 1 MB in 100 ms + 10 ms round trip: 80 Mbit/s; one outlier (a stall) moves nothing.
    for t, rpc_ms in enumerate((110.0, 110.0, 2010.0, 110.0, 110.0)):
        link.observe_call(up_bytes=1_000_000, down_bytes=0, rpc_ms=rpc_ms, server_ms=0.0,
                          now=float(t))
    assert link.uplink_mbps(now=5.0) == pytest.approx(80.0)
    assert link.rtt_ms(now=5.0) == 10.0
    assert link.uplink_mbps(now=30.0) is None and link.rtt_ms(now=30.0) is None


def test_link_estimate_leaves_out_what_the_server_reported() -> None:
    link = LinkEstimator()
    link.observe_rtt(0.0, now=0.0)
    link.observe_call(up_bytes=1_000_000, down_bytes=0, rpc_ms=150.0, server_ms=50.0, now=1.0)
    assert link.uplink_mbps(now=1.0) == pytest.approx(80.0)


def test_small_calls_are_round_trip_samples() -> None:
    link = LinkEstimator()
    link.observe_call(up_bytes=100, down_bytes=40, rpc_ms=12.0, server_ms=2.0, now=0.0)
    assert link.rtt_ms(now=0.0) == pytest.approx(10.0) and link.uplink_mbps(now=0.0) is None


def test_pressure_engages_at_the_threshold_and_releases_past_the_margin() -> None:
    value = {"memory": 1000.0, "battery": 80.0, "plugged": False}
    monitor = DeviceMonitor(lambda: DeviceReadings(
        available_memory_mib=value["memory"], battery_percent=value["battery"],
        power_plugged=value["plugged"], cpu_percent=10.0), min_interval_s=0.0)

    def pressure() -> str | None:
        return monitor.pressure(min_free_memory_mib=256.0, max_cpu_percent=90.0,
                                min_battery_percent=15.0, recovery=0.1)

    assert pressure() is None
    value["memory"] = 200.0
    assert pressure() == "memory 200 MiB free"
    value["memory"] = 270.0  # above 256, below 256 x 1.1
    assert pressure() == "memory 270 MiB free"
    value["memory"] = 300.0
    assert pressure() is None
    value["battery"] = 10.0
    assert pressure() == "battery 10 %"
    value["plugged"] = True  # a charging device is not short of energy
    assert pressure() is None


def test_readings_are_cached_between_looks() -> None:
    calls = []
    monitor = DeviceMonitor(lambda: calls.append(1) or DeviceReadings(), min_interval_s=60.0)
    monitor.readings()
    monitor.readings()
    assert len(calls) == 1


def test_breaker_opens_doubles_its_wait_and_closes() -> None:
    clock = [0.0]
    breaker = CircuitBreaker(failures=2, reset_s=1.0, max_reset_s=3.0, clock=lambda: clock[0])
    assert breaker.allow() and not breaker.record_failure()
    assert breaker.record_failure() and breaker.state == "open" and not breaker.allow()
    clock[0] = 1.0
    assert breaker.state == "half_open" and breaker.allow() and not breaker.allow()
    assert not breaker.record_failure()  # the trial failed: open again, for 2 s now
    clock[0] = 2.5
    assert breaker.state == "open"
    clock[0] = 3.0
    assert breaker.state == "half_open" and breaker.allow()
    assert not breaker.record_failure() and breaker.state == "open"  # 3 s: the cap, not 4
    clock[0] = 6.0
    assert breaker.state == "half_open"
    assert breaker.allow() and breaker.record_success() and breaker.state == "closed"
    assert breaker.opened == 1


def test_a_lost_trial_does_not_block_the_breaker() -> None:
    clock = [0.0]
    breaker = CircuitBreaker(failures=1, reset_s=1.0, clock=lambda: clock[0])
    breaker.record_failure()
    clock[0] = 1.5
    assert breaker.allow() and not breaker.allow()
    clock[0] = 10.0  # the trial's caller never reported back
    assert breaker.allow()


def test_replica_lists_become_one_balanced_target() -> None:
    assert target_for(["127.0.0.1:1", "localhost:2"]) == ("ipv4:127.0.0.1:1,127.0.0.1:2",
                                                          "localhost")
    assert target_for(["[::1]:1", "[::1]:2"]) == ("ipv6:[::1]:1,[::1]:2", "::1")
    with pytest.raises(BadInputError, match="mix IPv4 and IPv6"):
        target_for(["127.0.0.1:1", "[::1]:2"])
    assert '"round_robin"' in service_config() and '"UNAVAILABLE"' in service_config()


def test_calls_that_had_to_connect_and_unresolved_transfers_do_not_inflate_the_estimate(
        ) -> None:
    link = LinkEstimator()
    link.observe_rtt(10.0, now=0.0)
    # The first call paid for TCP, TLS and HTTP/2: no sample at all.
    link.observe_call(up_bytes=1_000_000, down_bytes=0, rpc_ms=300.0, server_ms=0.0,
                      connected=False, now=1.0)
    assert link.uplink_mbps(now=1.0) is None
    # 100 kB in 10.5 ms against a 10 ms round trip: the transfer is hidden in the jitter;
    # the call says only "at least 76 Mbit/s" (800 kbit / 10.5 ms), not 1600 Mbit/s.
    link.observe_call(up_bytes=100_000, down_bytes=0, rpc_ms=10.5, server_ms=0.0, now=2.0)
    assert link.uplink_mbps(now=2.0) == pytest.approx(800 / 10.5, rel=1e-3)
