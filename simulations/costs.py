"""Service times from the cost model: one `CutTable` per (device, network, cloud) of a scenario.

The table holds, for every candidate cut of the planner (`edgecut plan --explain`), the figures
the simulator charges a request: head compute and encoding on the device, the bytes on the wire
each way, the round trip, the tail's compute in the cloud, decoding. They are the planner's
own `CutCost` terms (`Candidate.cost(cost_parameters(...))`), split so that a request can be
costed at any uplink bandwidth in O(1) and for a whole array of requests at once:

    uplink_ms   = up_wire_bytes[regime] * 8 / (uplink_mbps * 1000)
    downlink_ms = down_bytes * 8 / (downlink_mbps * 1000)

where `regime` is the codec `choose_codec` picks at that bandwidth (compressed below
`RAW_ABOVE_MBPS`, raw above) and the downlink keeps the profile's downlink/uplink ratio, as the
planner's envelope does. At the profile's own bandwidth the figures are exactly the planner's
(tests/simulations/test_costs.py checks them against `Planned.explain()`).

`build_tables` is the shell: it plans the model once per distinct (device, network, cloud)
with `plan_model(..., measure=False)`, so the simulation and `edgecut plan --no-measure` agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecut.partitioner.planner import RAW_ABOVE_MBPS, Candidate, cost_parameters
from edgecut.profiles.schema import CloudProfile, DeviceProfile, NetworkProfile

__all__ = ["CutTable", "build_tables", "model_file", "table_from_candidates"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CutTable:
    """Per-cut figures of one device/link/cloud; arrays indexed by cut position `k`.

    `cut_ids` are the planner's ids; `tails[k]` identifies the tail model (equal device sets
    of one model share it, whatever the device class), which is what the cloud batches by.
    Arrays with a leading axis of 2 are per codec regime: 0 compressed, 1 raw.
    """

    cut_ids: np.ndarray
    kinds: tuple[str, ...]
    tails: tuple[frozenset[int], ...]
    device_ms: np.ndarray
    encode_ms: np.ndarray          # (2, n)
    up_wire_bytes: np.ndarray      # (2, n)
    up_bytes: np.ndarray
    down_bytes: np.ndarray
    cloud_ms: np.ndarray
    decode_ms: np.ndarray
    uses_cloud: np.ndarray
    rtt_ms: float
    uplink_mbps: float             # the network profile's (the plan's) uplink
    downlink_per_uplink: float     # downlink_mbps / uplink_mbps of the profile
    power_w: Mapping[str, float]   # idle_w, compute_w, transmit_w, receive_w
    envelope: tuple[tuple[int, float, float], ...]  # (cut position k, min_mbps, max_mbps)
    planned_latency_ms: np.ndarray  # the planner's latency at `uplink_mbps` (cross-check)
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.cut_ids)

    def position(self, cut_id: int) -> int:
        """Index k of a planner cut id; KeyError if the plan has no such cut."""
        hits = np.flatnonzero(self.cut_ids == cut_id)
        if not len(hits):
            raise KeyError(cut_id)
        return int(hits[0])

    @property
    def edge_only(self) -> int:
        return int(np.flatnonzero(~self.uses_cloud)[0])

    @property
    def cloud_only(self) -> int:
        """The cut with the fewest device nodes that uses the cloud (none, unless pinned)."""
        sizes = np.array([len(t) for t in self.tails])
        candidates = np.flatnonzero(self.uses_cloud)
        return int(candidates[np.argmin(sizes[candidates])])

    def regime(self, uplink_mbps: np.ndarray | float) -> np.ndarray:
        return (np.asarray(uplink_mbps) >= RAW_ABOVE_MBPS).astype(np.int64)

    def components(self, k: np.ndarray | int, uplink_mbps: np.ndarray | float,
                   downlink_mbps: np.ndarray | float | None = None) -> dict[str, np.ndarray]:
        """The cost model's terms for cut positions `k` at `uplink_mbps` (arrays broadcast)."""
        k = np.asarray(k)
        up = np.asarray(uplink_mbps, dtype=float)
        down = up * self.downlink_per_uplink if downlink_mbps is None else np.asarray(
            downlink_mbps, dtype=float)
        r = self.regime(up)
        cloud = self.uses_cloud[k]
        uplink = self.up_wire_bytes[r, k] * 8.0 / (up * 1000.0)
        downlink = self.down_bytes[k] * 8.0 / (down * 1000.0)
        return {
            "device_ms": self.device_ms[k], "encode_ms": self.encode_ms[r, k],
            "uplink_ms": np.where(cloud, uplink, 0.0), "rtt_ms": np.where(cloud, self.rtt_ms, 0.0),
            "cloud_ms": self.cloud_ms[k], "downlink_ms": np.where(cloud, downlink, 0.0),
            "decode_ms": self.decode_ms[k],
        }

    def latency_ms(self, uplink_mbps: float, *, queue_ms: float = 0.0,
                   downlink_mbps: float | None = None) -> np.ndarray:
        """Predicted latency of every cut at this bandwidth with `queue_ms` in the cloud."""
        c = self.components(np.arange(self.size), uplink_mbps, downlink_mbps)
        total = sum(c.values())
        return np.asarray(total + np.where(self.uses_cloud, queue_ms, 0.0))

    def bottleneck_ms(self, uplink_mbps: float) -> np.ndarray:
        """The slowest pipelined stage per cut (`CutCost.bottleneck_ms`)."""
        c = self.components(np.arange(self.size), uplink_mbps)
        return np.maximum.reduce([c["device_ms"] + c["encode_ms"] + c["decode_ms"],
                                  c["uplink_ms"], c["cloud_ms"], c["downlink_ms"]])


def table_from_candidates(candidates: Sequence[Candidate], envelope: Sequence[Any],
                          device: DeviceProfile, network: NetworkProfile,
                          cloud: CloudProfile) -> CutTable:
    """The CutTable of a planner's candidates (pure: profiles and candidates in)."""
    nominal = float(network.uplink_mbps)
    low = cost_parameters(device, network, cloud, uplink_mbps=min(nominal, RAW_ABOVE_MBPS / 2))
    high = cost_parameters(device, network, cloud, uplink_mbps=max(nominal, RAW_ABOVE_MBPS))
    at = cost_parameters(device, network, cloud)
    order = sorted(candidates, key=lambda c: c.id)
    costs = [[c.cost(p) for c in order] for p in (low, high)]
    positions = {c.id: k for k, c in enumerate(order)}
    power = device.power
    return CutTable(
        cut_ids=np.array([c.id for c in order], dtype=np.int64),
        kinds=tuple(c.kind for c in order),
        tails=tuple(c.device_set for c in order),
        device_ms=np.array([k.device_ms for k in costs[0]]),
        encode_ms=np.array([[k.encode_ms for k in regime] for regime in costs]),
        up_wire_bytes=np.array([[c.up_bytes / p.compression_ratio for c in order]
                                for p in (low, high)]),
        up_bytes=np.array([c.up_bytes for c in order], dtype=np.int64),
        down_bytes=np.array([c.down_bytes for c in order], dtype=np.int64),
        cloud_ms=np.array([k.cloud_ms for k in costs[0]]),
        decode_ms=np.array([k.decode_ms for k in costs[0]]),
        uses_cloud=np.array([c.uses_cloud for c in order]),
        rtt_ms=float(network.rtt_ms), uplink_mbps=nominal,
        downlink_per_uplink=float(network.downlink_mbps) / nominal,
        power_w={"idle_w": power.idle_w, "compute_w": power.compute_w,
                 "transmit_w": power.transmit_w, "receive_w": power.receive_w},
        envelope=tuple((positions[s.cut], float(s.min_mbps), float(s.max_mbps)) for s in envelope),
        planned_latency_ms=np.array([c.cost(at).latency_ms for c in order]),
        meta={"device": device.name, "network": network.name, "cloud": cloud.name})


def model_file(scenario: Any) -> Path:
    """The ONNX file a scenario's [model] names (a plan folder's full model; a built-in)."""
    spec = scenario.model
    if spec.file is not None:
        return Path(spec.file)
    if spec.plan is not None:
        from edgecut.edge.plan import load_plan

        plan = load_plan(spec.plan)
        return plan.path(plan.model.file)
    from edgecut.simulations.models import model_path

    return model_path(spec.zoo)


def build_tables(scenario: Any, networks: Sequence[NetworkProfile]) -> list[CutTable]:
    """One CutTable per device class (classes with equal profiles share one plan).

    `networks[i]` is class i's link as planned (a trace's mean for a trace link).
    """
    from edgecut.partitioner.planner import plan_model
    from edgecut.profiles import load_cloud, load_device

    path = model_file(scenario)
    cloud = load_cloud(scenario.cloud.profile)
    reference = load_device(cloud.reference) if cloud.reference else None
    cache: dict[tuple[str, str], CutTable] = {}
    tables = []
    for group, network in zip(scenario.devices, networks, strict=True):
        device = load_device(group.profile)
        key = (repr(device), repr(network))
        if key not in cache:
            planned = plan_model(path, device=device, network=network, cloud=cloud,
                                 cloud_reference=reference, measure=False,
                                 input_shapes=dict(scenario.model.input_shapes) or None)
            cache[key] = table_from_candidates(planned.candidates, planned.envelope, device,
                                               network, cloud)
        tables.append(cache[key])
    return tables
