"""Strategies: which cut each request runs. Pure functions of cut tables and the workload.

| name         | decision                                                                 |
| ------------ | ------------------------------------------------------------------------ |
| edge-only    | the whole model on the device                                            |
| cloud-only   | the raw input to the cloud's full model (secure offload)                 |
| fixed        | `strategies.fixed_cut`, a cut id of `edgecut plan --explain`             |
| neurosurgeon | the best *prefix* cut for the class's mean bandwidth, fixed (Kang 2017)  |
| dads         | the min-cut optimum for the mean bandwidth; under heavy load the cut of  |
|              | least bottleneck stage instead (Hu 2019's throughput mode), see below    |
| cascade      | the model on the device; `cascade_escalation_rate` of the requests then  |
|              | go whole to the cloud as well (a confident-enough answer stays local)    |
| edgecut      | the plan's envelope at the device's live bandwidth estimate, pushed back |
|              | to the device when the cloud reports long queues (`adaptive.py`)         |

DADS's heavy-load test, per device class: the latency-optimal cut's slowest stage
(`CutCost.bottleneck_ms`) times the class's arrival rate per device is its utilisation; at
`strategies.dads_heavy_load` (default 0.8) or more the class runs the cut of least bottleneck.

Every static strategy resolves to one cut position per device class (`static_cuts`), except
cascade, which adds a per-request escalation; `service_arrays` turns decisions into the
per-request service times the engines consume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgecut.errors import UnknownCutError
from edgecut.simulations.costs import CutTable
from edgecut.simulations.scenario import Scenario
from edgecut.simulations.workload import Workload

__all__ = ["STATIC", "Services", "class_rate_per_s", "service_arrays", "static_cuts"]

STATIC = ("edge-only", "cloud-only", "fixed", "neurosurgeon", "dads", "cascade")


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """Per-request service times in ms (device CPU, uplink, cloud, downlink) and what moves.

    `cut` is the cut position in the request's class table (the cloud-only cut for an
    escalated cascade request); `tail` the cloud model it runs (-1: none).
    """

    cut: np.ndarray
    device_ms: np.ndarray       # head compute + encoding: the device's FIFO service time
    compute_ms: np.ndarray      # device compute alone (energy at compute_w: + encode, decode)
    uplink_ms: np.ndarray
    cloud_ms: np.ndarray        # one request's tail; a batch scales it
    downlink_ms: np.ndarray
    decode_ms: np.ndarray
    uses_cloud: np.ndarray
    tail: np.ndarray
    up_wire_bytes: np.ndarray
    down_bytes: np.ndarray


def class_rate_per_s(scenario: Scenario, g: int) -> float:
    """Mean requests per second of one device of class g."""
    group = scenario.devices[g]
    if group.arrival.rate_per_s is not None:
        return float(group.arrival.rate_per_s)
    from edgecut.simulations.traces import read_arrival_trace

    times = read_arrival_trace(group.arrival.file)
    step = float(np.mean(np.diff(times))) if len(times) > 1 else 1.0
    return len(times) / float(times[-1] + step)


def static_cuts(strategy: str, scenario: Scenario, tables: Sequence[CutTable],
                mean_uplink_mbps: Sequence[float]) -> list[int]:
    """The cut position each device class runs under a static strategy."""
    out = []
    for g, table in enumerate(tables):
        bw = mean_uplink_mbps[g]
        if strategy in ("edge-only", "cascade"):
            k = table.edge_only
        elif strategy == "cloud-only":
            k = table.cloud_only
        elif strategy == "fixed":
            cut_id = scenario.strategies.fixed_cut
            try:
                k = table.position(cut_id)  # type: ignore[arg-type]
            except KeyError as exc:
                raise UnknownCutError(
                    f"{scenario.label}: strategies.fixed_cut {cut_id} is not a cut of the model "
                    f"for devices {scenario.devices[g].name!r}; its cut ids are "
                    f"{table.cut_ids.tolist()} (see `edgecut plan --explain`)") from exc
        elif strategy == "neurosurgeon":
            latency = table.latency_ms(bw)
            prefixes = np.array([kind == "prefix" for kind in table.kinds])
            k = int(np.flatnonzero(prefixes)[np.argmin(latency[prefixes])])
        elif strategy == "dads":
            latency = table.latency_ms(bw)
            k = int(np.argmin(latency))
            bottleneck = table.bottleneck_ms(bw)
            if class_rate_per_s(scenario, g) * bottleneck[k] / 1000.0 >= \
                    scenario.strategies.dads_heavy_load:
                k = int(np.lexsort((latency, bottleneck))[0])
        else:
            raise ValueError(f"not a static strategy: {strategy!r}")
        out.append(k)
    return out


def service_arrays(tables: Sequence[CutTable], workload: Workload, cut: np.ndarray,
                   tail_ids: Sequence[np.ndarray], *, escalate: np.ndarray | None = None
                   ) -> Services:
    """Per-request services for cut positions `cut` (per request), costed at each request's
    bandwidth. With `escalate`, those requests run the class's edge-only cut and then its
    cloud-only cut (cascade): both computes on the device, the cloud-only network and tail.
    """
    n = workload.size
    out = {name: np.zeros(n) for name in ("device_ms", "compute_ms", "uplink_ms", "cloud_ms",
                                          "downlink_ms", "decode_ms", "up_wire_bytes",
                                          "down_bytes")}
    uses = np.zeros(n, dtype=bool)
    tail = np.full(n, -1, dtype=np.int64)
    cut = np.asarray(cut, dtype=np.int64).copy()
    for g, table in enumerate(tables):
        rows = np.flatnonzero(workload.group == g)
        if not len(rows):
            continue
        extra = np.zeros(len(rows))
        if escalate is not None:
            esc = escalate[rows]
            extra = np.where(esc, table.device_ms[table.edge_only], 0.0)
            cut[rows] = np.where(esc, table.cloud_only, table.edge_only)
        k = cut[rows]
        up = workload.uplink_mbps[rows]
        c = table.components(k, up, workload.downlink_mbps[rows])
        out["device_ms"][rows] = c["device_ms"] + c["encode_ms"] + extra
        out["compute_ms"][rows] = c["device_ms"] + extra
        out["uplink_ms"][rows] = c["uplink_ms"]
        out["cloud_ms"][rows] = c["cloud_ms"]
        out["downlink_ms"][rows] = c["downlink_ms"]
        out["decode_ms"][rows] = c["decode_ms"]
        used = table.uses_cloud[k]
        uses[rows] = used
        out["up_wire_bytes"][rows] = np.where(used, table.up_wire_bytes[table.regime(up), k], 0)
        out["down_bytes"][rows] = np.where(used, table.down_bytes[k], 0)
        tail[rows] = np.where(used, tail_ids[g][k], -1)
    if workload.device_factor is not None:  # this request's draw of its device's service time
        out["device_ms"] *= workload.device_factor
        out["compute_ms"] *= workload.device_factor
    if workload.cloud_factor is not None:
        out["cloud_ms"] *= workload.cloud_factor
    return Services(cut=cut, uses_cloud=uses, tail=tail, **out)
