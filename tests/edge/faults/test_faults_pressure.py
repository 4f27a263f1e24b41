"""Memory pressure on the device: whole requests go to the cloud, and come back when it ends.

The pressure is a DeviceMonitor reading injected by the test (available memory dropped under
Config.min_free_memory_mib), against a real endpoint process over mutual TLS.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.harness.endpoint import EndpointProcess
from benchmarks.harness.faultload import DeviceLoop, run_loops, summarise
from edgecut.edge.monitors import DeviceMonitor

from .conftest import DEVICES, TIMEOUT_S, Readings


def test_memory_pressure_offloads_and_disengages(shared_endpoint: EndpointProcess,
                                                 predictor_factory: Callable,
                                                 feeds: list) -> None:
    readings = Readings()
    predictor = predictor_factory(shared_endpoint.address, device=DEVICES[4],
                                  monitor=DeviceMonitor(readings, min_interval_s=0.0),
                                  min_free_memory_mib=256.0)
    feed, expected = feeds[4]
    phases = {}
    for phase, free_mib in (("before", 8192.0), ("pressure", 100.0), ("after", 8192.0)):
        readings.available_memory_mib = free_mib
        loop = DeviceLoop(predictor, feed, expected, timeout_s=TIMEOUT_S, requests=10,
                          name=phase)
        phases[phase] = run_loops([loop], budget_s=10 * (TIMEOUT_S + 1))
    for phase, outcomes in phases.items():
        row = summarise(phase, outcomes)
        assert row.lost == 0 and row.typed == 0, (phase, row)
    # Without pressure the envelope decides (split:1 on loopback, unless a loaded machine made
    # the link look slow: then local); under pressure every request is offloaded whole.
    assert "offload" not in {o.mode for o in phases["before"] + phases["after"]}
    assert {o.mode for o in phases["pressure"]} == {"offload"}
    assert {o.kind for o in phases["pressure"]} == {"cloud"}
    events = predictor.events()
    engaged = [i for i, e in enumerate(events) if e.to_choice == "offload"]
    assert len(engaged) == 1 and "memory" in events[engaged[0]].reason, events
    assert any(e.from_choice == "offload" for e in events[engaged[0]:]), events
