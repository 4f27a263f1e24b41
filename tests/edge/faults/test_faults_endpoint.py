"""The endpoint process SIGKILLed under load, and one of three replicas killed under load.

Real `edgecut serve` processes, 8 devices each with its own certificate over mutual TLS, in
threads; every answer checked against the full model. The only timings asserted are the
contract's: no run past timeout_s + 0.5 s, and every device back in split mode within 10 s
of the endpoint answering again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from benchmarks.harness.endpoint import Replicas
from benchmarks.harness.faultload import DeviceLoop, Outcome, run_loops, summarise

from .conftest import DEVICES, TIMEOUT_S

BACK_IN_SPLIT_S = 10.0


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_endpoint_sigkilled_under_load_and_restarted(endpoint_factory: Callable,
                                                     predictor_factory: Callable,
                                                     feeds: list) -> None:
    endpoint = endpoint_factory()
    endpoint.start()
    predictors = [predictor_factory(endpoint.address, device=name) for name in DEVICES]
    marks: dict[str, float] = {}

    def back_in_split(outcomes: list[Outcome]) -> bool:
        restarted = marks.get("restarted")
        return restarted is not None and any(
            o.mode == "split" and o.started_s >= restarted for o in outcomes)

    budget_s = 40.0
    deadline = time.monotonic() + budget_s
    loops = [DeviceLoop(p, *feeds[i], timeout_s=TIMEOUT_S, requests=20, max_requests=2000,
                        done=back_in_split, deadline=deadline, pause_s=0.05, name=DEVICES[i])
             for i, p in enumerate(predictors)]

    def fault() -> None:
        assert _wait(lambda: all(len(loop.outcomes) >= 5 for loop in loops), 15.0)
        endpoint.kill()
        marks["killed"] = time.monotonic()
        time.sleep(1.5)
        endpoint.start()  # the same port, waited SERVING
        marks["restarted"] = time.monotonic()
        _wait(lambda: not any(loop.is_alive() for loop in loops), BACK_IN_SPLIT_S + 2.0)

    outcomes = run_loops(loops, budget_s=budget_s, during=fault)
    row = summarise("endpoint SIGKILLed, restarted", outcomes)
    assert row.lost == 0, row.lost_examples
    assert row.typed == 0, row.typed_examples  # fallback "local": every request answered
    assert row.requests == sum(len(loop.outcomes) for loop in loops)
    outage = [o for o in outcomes if marks["killed"] <= o.started_s < marks["restarted"]]
    assert outage and all(o.kind == "local" for o in outage)
    late = {}
    for loop in loops:
        first = next((o.started_s - marks["restarted"] for o in loop.outcomes
                      if o.mode == "split" and o.started_s >= marks["restarted"]), None)
        late[loop.device] = first
    assert all(s is not None and s <= BACK_IN_SPLIT_S for s in late.values()), str(late)
    for predictor in predictors:
        events = predictor.events()
        assert any(e.to_choice == "local" for e in events), events
        assert predictor.statistics().breaker == "closed"


def test_one_of_three_replicas_killed_under_load(fault_repository, fault_fleet, tmp_path,
                                                 predictor_factory: Callable,
                                                 feeds: list) -> None:
    with Replicas(3, fault_repository, fault_fleet, log_dir=tmp_path,
                  device=DEVICES[0]) as replicas:
        # As IP addresses (127.0.0.1:p, ...): TLS checks the certificate's IP names.
        predictors = [predictor_factory(replicas.addresses, device=name)
                      for name in DEVICES[:4]]
        marks: dict[str, float] = {}
        deadline = time.monotonic() + 30.0

        def enough_after_kill(outcomes: list[Outcome]) -> bool:
            killed = marks.get("killed")
            return killed is not None and sum(
                o.kind == "cloud" and o.started_s >= killed + 1.0 for o in outcomes) >= 10

        loops = [DeviceLoop(p, *feeds[i], timeout_s=TIMEOUT_S, requests=20, max_requests=2000,
                            done=enough_after_kill, deadline=deadline, pause_s=0.05,
                            name=DEVICES[i])
                 for i, p in enumerate(predictors)]

        def fault() -> None:
            assert _wait(lambda: all(len(loop.outcomes) >= 8 for loop in loops), 15.0)
            replicas[1].kill()
            marks["killed"] = time.monotonic()

        outcomes = run_loops(loops, budget_s=35.0, during=fault)
    row = summarise("1 of 3 replicas SIGKILLed", outcomes)
    assert row.lost == 0, row.lost_examples
    assert row.typed == 0, row.typed_examples
    # Throughput continues: every device keeps getting answers from the cloud (the two
    # replicas left) after the kill, not only from its own fallback.
    for loop in loops:
        after = [o for o in loop.outcomes if o.started_s >= marks["killed"] + 1.0]
        assert sum(o.kind == "cloud" for o in after) >= 10, (loop.device, summarise("", after))

