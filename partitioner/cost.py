"""The cost model of a cut: latency, device energy and device memory of one device/cloud split.

A cut is a set of device nodes closed under predecessors (DESIGN.md, Partitioning). Its latency
is the sum of the stages one request goes through:

    device compute + encode + uplink + round trip + cloud queue + cloud compute + downlink + decode

Modelling choices, each with its reason:

- Bandwidths and codec throughputs are in megabits per second (10**6 bit/s), like the
  profiles, so `ms = bytes * 8 / (mbps * 1000)`.
- The device encodes what it sends and decodes what it receives; both are device CPU work, so
  they are charged at `compute_w`. The cloud's codec work (decoding the upload, encoding the
  answer) is not a separate term: server codecs run an order of magnitude faster than the
  device's and overlap its queue, so they belong in `cloud_queue_ms` where they matter.
- Codecs see raw bytes; the wire carries `raw / compression_ratio` bytes each way.
- Round trip and cloud queue are paid once per request, and only when at least one node runs
  in the cloud: an all-device cut has no network term at all (not even a round trip).
- A tensor read by several cloud nodes crosses once. A graph input read in the cloud crosses
  too, unless it is pinned on the device (then the cut is infeasible). A graph output computed
  in the cloud comes down; graph outputs are wanted on the device, which called the model.
- Device energy = compute_w * (device + encode + decode) + transmit_w * uplink
  + receive_w * downlink + idle_w * (round trip + queue + cloud compute): while the cloud works,
  the device waits with its radio on.
- Device memory = weights of the device nodes + the peak of live activations while the head
  runs in order. A tensor is live from the step that makes it (step 0 for graph inputs) to its
  last reader on the device; one that crosses or is a graph output stays live to the end of the
  head, since it is sent (or returned) after the head has run.

Every objective except throughput is then linear in "which side each node is on" plus one fixed
charge for using the cloud at all (`LinearWeights`): that is what makes the min-cut exact.

Example:
    >>> from edgecut.partitioner.costgraph import chain_costgraph
    >>> g = chain_costgraph(device_ms=[5, 5], cloud_ms=[1, 1], tensor_bytes=[1000, 10, 4])
    >>> p = CostParameters(uplink_mbps=8, downlink_mbps=8, rtt_ms=20)
    >>> estimate_cut(g, frozenset({0}), p).latency_ms  # 5 + 0.01 + 20 + 1 + 0.004
    26.014
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Literal

from edgecut.errors import BadProfileError, NoFeasibleCutError
from edgecut.partitioner.costgraph import CostGraph

__all__ = [
    "OBJECTIVES",
    "Constraints",
    "CostParameters",
    "CutCost",
    "LinearWeights",
    "Objective",
    "combine_weights",
    "cost_from_totals",
    "estimate_cut",
    "evaluate_linear",
    "linear_weights",
    "objective_key",
    "peak_activation_bytes",
    "transfer_ms",
]

Objective = Literal["latency", "energy", "throughput"]
OBJECTIVES: tuple[str, ...] = ("latency", "energy", "throughput")


def transfer_ms(nbytes: float, mbps: float) -> float:
    """Milliseconds to move `nbytes` at `mbps` megabits per second; 0 at infinite speed."""
    return 0.0 if math.isinf(mbps) else nbytes * 8.0 / (mbps * 1000.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class CostParameters:
    """Network, codec, cloud and power figures a cut is costed with (one device, one link)."""

    uplink_mbps: float
    downlink_mbps: float
    rtt_ms: float = 0.0
    encode_mbps: float = math.inf
    decode_mbps: float = math.inf
    compression_ratio: float = 1.0
    cloud_queue_ms: float = 0.0
    idle_w: float = 0.0
    compute_w: float = 0.0
    transmit_w: float = 0.0
    receive_w: float = 0.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("uplink_mbps", "downlink_mbps", "compression_ratio"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a finite number > 0, got {value}")
        for name in ("encode_mbps", "decode_mbps"):
            value = getattr(self, name)
            if not value > 0:  # inf is allowed: a free codec
                problems.append(f"{name} must be > 0 (inf for a free codec), got {value}")
        for name in ("rtt_ms", "cloud_queue_ms", "idle_w", "compute_w", "transmit_w", "receive_w"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be a finite number >= 0, got {value}")
        if problems:
            raise BadProfileError("cost parameters: " + "; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class CutCost:
    """Predicted cost of one cut; times in ms, energy in J, sizes in bytes (raw, before codec)."""

    device_ms: float
    encode_ms: float
    uplink_ms: float
    rtt_ms: float
    cloud_queue_ms: float
    cloud_ms: float
    downlink_ms: float
    decode_ms: float
    latency_ms: float
    energy_j: float
    up_bytes: int
    down_bytes: int
    device_memory_bytes: int

    def __post_init__(self) -> None:
        bad = [
            f"{f.name}={getattr(self, f.name)}"
            for f in fields(self)
            if not (math.isfinite(getattr(self, f.name)) and getattr(self, f.name) >= 0)
        ]
        if bad:
            raise ValueError(f"cut cost: every field must be finite and >= 0, got {', '.join(bad)}")

    @property
    def bottleneck_ms(self) -> float:
        """Slowest stage of a pipelined stream: device CPU (compute and codecs), uplink, cloud
        compute, downlink. Round trip and queueing delay requests but do not limit the rate."""
        return max(self.device_ms + self.encode_ms + self.decode_ms, self.uplink_ms,
                   self.cloud_ms, self.downlink_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class Constraints:
    """Limits a chosen cut must respect; None means no limit."""

    device_memory_bytes: int | None = None
    energy_budget_j: float | None = None

    def __post_init__(self) -> None:
        m, e = self.device_memory_bytes, self.energy_budget_j
        if m is not None and not (isinstance(m, int) and m >= 0):
            raise BadProfileError(f"constraints: device_memory_bytes must be an int >= 0, got {m!r}")
        if e is not None and not (math.isfinite(e) and e >= 0):
            raise BadProfileError(f"constraints: energy_budget_j must be finite and >= 0, got {e!r}")

    def admits(self, cost: CutCost) -> bool:
        """True when `cost` is within every limit."""
        if self.device_memory_bytes is not None and cost.device_memory_bytes > self.device_memory_bytes:
            return False
        return self.energy_budget_j is None or cost.energy_j <= self.energy_budget_j


def objective_key(cost: CutCost, objective: str) -> tuple[float, float]:
    """Sort key of a cut for an objective; the second item breaks ties deterministically."""
    if objective == "latency":
        return (cost.latency_ms, cost.energy_j)
    if objective == "energy":
        return (cost.energy_j, cost.latency_ms)
    if objective == "throughput":
        return (cost.bottleneck_ms, cost.latency_ms)
    raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


def cost_from_totals(
    params: CostParameters,
    *,
    device_ms: float,
    cloud_ms: float,
    up_bytes: int,
    down_bytes: int,
    device_memory_bytes: int,
    uses_cloud: bool,
) -> CutCost:
    """Assemble a CutCost from a cut's sums; every term is linear in them (scan relies on it)."""
    p = params
    encode = transfer_ms(up_bytes, p.encode_mbps)
    uplink = transfer_ms(up_bytes / p.compression_ratio, p.uplink_mbps)
    downlink = transfer_ms(down_bytes / p.compression_ratio, p.downlink_mbps)
    decode = transfer_ms(down_bytes, p.decode_mbps)
    rtt = p.rtt_ms if uses_cloud else 0.0
    queue = p.cloud_queue_ms if uses_cloud else 0.0
    cloud = cloud_ms if uses_cloud else 0.0
    latency = device_ms + encode + uplink + rtt + queue + cloud + downlink + decode
    energy_mj = (
        p.compute_w * (device_ms + encode + decode)
        + p.transmit_w * uplink
        + p.receive_w * downlink
        + p.idle_w * (rtt + queue + cloud)
    )
    return CutCost(
        device_ms=device_ms, encode_ms=encode, uplink_ms=uplink, rtt_ms=rtt,
        cloud_queue_ms=queue, cloud_ms=cloud, downlink_ms=downlink, decode_ms=decode,
        latency_ms=latency, energy_j=energy_mj / 1000.0, up_bytes=up_bytes,
        down_bytes=down_bytes, device_memory_bytes=device_memory_bytes,
    )


def peak_activation_bytes(graph: CostGraph, device_nodes: Iterable[int]) -> int:
    """Peak bytes of live tensors while the device runs its nodes in the graph's order."""
    on_device = set(device_nodes)
    step = {v: s for s, v in enumerate((v for v in graph.order if v in on_device), start=1)}
    last = len(step)
    diff = [0] * (last + 2)
    for t in graph.tensors:
        if t.producer is not None and t.producer not in on_device:
            continue
        start = 0 if t.producer is None else step[t.producer]
        leaves = t.is_graph_output or any(c not in on_device for c in t.consumers)
        end = last if leaves else max((step[c] for c in t.consumers), default=start)
        diff[start] += t.bytes
        diff[end + 1] -= t.bytes
    peak = live = 0
    for s in range(last + 1):
        live += diff[s]
        peak = max(peak, live)
    return peak


def estimate_cut(graph: CostGraph, device_nodes: frozenset[int], params: CostParameters) -> CutCost:
    """Cost of running `device_nodes` on the device and the rest in the cloud.

    Raises UserInputError when `device_nodes` is not closed under predecessors, and
    NoFeasibleCutError when a pinned graph input would have to leave the device.
    """
    graph.check_device_set(device_nodes)
    up = down = 0
    for t in graph.tensors:
        on_device = t.producer is None or t.producer in device_nodes
        if on_device and any(c not in device_nodes for c in t.consumers):
            if t.pinned_on_device:
                readers = sorted(graph.nodes[c].name for c in t.consumers if c not in device_nodes)
                raise NoFeasibleCutError(
                    f"input {t.name!r} is pinned on the device, but cloud node(s) "
                    f"{', '.join(map(repr, readers))} read it; keep them on the device"
                )
            up += t.bytes
        if t.is_graph_output and not on_device:
            down += t.bytes
    weights = sum(graph.nodes[v].weight_bytes for v in device_nodes)
    return cost_from_totals(
        params,
        device_ms=sum(graph.nodes[v].device_ms for v in device_nodes),
        cloud_ms=sum(n.cloud_ms for n in graph.nodes if n.index not in device_nodes),
        up_bytes=up,
        down_bytes=down,
        device_memory_bytes=weights + peak_activation_bytes(graph, device_nodes),
        uses_cloud=len(device_nodes) < len(graph.nodes),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LinearWeights:
    """An objective as `sum(device[v] for v on device) + sum(cloud[v] for v in cloud)
    + sum(up[t] for t crossing up) + sum(down[t] for t coming down) + fixed * (cloud used)`.

    `up[t]` is infinite for a pinned input. Indices follow `graph.nodes` and `graph.tensors`.
    """

    device: tuple[float, ...]
    cloud: tuple[float, ...]
    up: tuple[float, ...]
    down: tuple[float, ...]
    fixed: float


def linear_weights(graph: CostGraph, params: CostParameters, objective: str) -> LinearWeights:
    """The per-node and per-tensor charges of `objective` ("latency" in ms or "energy" in J).

    They are the same terms `cost_from_totals` adds up, split by what causes them.
    """
    p = params
    if objective not in ("latency", "energy"):
        raise ValueError(f"only latency and energy are linear objectives, got {objective!r}")

    def up_ms(nbytes: int) -> tuple[float, float]:
        return transfer_ms(nbytes, p.encode_mbps), transfer_ms(nbytes / p.compression_ratio,
                                                               p.uplink_mbps)

    def down_ms(nbytes: int) -> tuple[float, float]:
        return transfer_ms(nbytes / p.compression_ratio, p.downlink_mbps), transfer_ms(
            nbytes, p.decode_mbps)

    up: list[float] = []
    down: list[float] = []
    for t in graph.tensors:
        enc, link = up_ms(t.bytes)
        rx, dec = down_ms(t.bytes)
        if objective == "latency":
            up.append(enc + link)
            down.append(rx + dec)
        else:
            up.append((p.compute_w * enc + p.transmit_w * link) / 1000.0)
            down.append((p.receive_w * rx + p.compute_w * dec) / 1000.0)
        if t.pinned_on_device:
            up[-1] = math.inf
        if not t.is_graph_output or t.producer is None:
            down[-1] = 0.0
    if objective == "latency":
        return LinearWeights(
            device=tuple(n.device_ms for n in graph.nodes),
            cloud=tuple(n.cloud_ms for n in graph.nodes),
            up=tuple(up), down=tuple(down), fixed=p.rtt_ms + p.cloud_queue_ms,
        )
    return LinearWeights(
        device=tuple(p.compute_w * n.device_ms / 1000.0 for n in graph.nodes),
        cloud=tuple(p.idle_w * n.cloud_ms / 1000.0 for n in graph.nodes),
        up=tuple(up), down=tuple(down), fixed=p.idle_w * (p.rtt_ms + p.cloud_queue_ms) / 1000.0,
    )


def evaluate_linear(graph: CostGraph, weights: LinearWeights, device_nodes: frozenset[int]) -> float:
    """The value of a linear objective for one device set (equals the CutCost's latency or
    energy up to rounding; the search uses it to compare cuts under combined weights)."""
    total = sum(weights.device[v] if v in device_nodes else weights.cloud[v] for v in range(len(graph.nodes)))
    for ti, t in enumerate(graph.tensors):
        on_device = t.producer is None or t.producer in device_nodes
        if on_device and any(c not in device_nodes for c in t.consumers):
            total += weights.up[ti]
        if not on_device:
            total += weights.down[ti]
    return total + (weights.fixed if len(device_nodes) < len(graph.nodes) else 0.0)


def combine_weights(a: LinearWeights, b: LinearWeights, factor: float) -> LinearWeights:
    """`a + factor * b`, term by term (a Lagrangian of objective `a` and a limit on `b`)."""

    def mix(x: tuple[float, ...], y: tuple[float, ...]) -> tuple[float, ...]:
        # An infinite charge (a pinned input) stays infinite; 0 * inf would be nan.
        return tuple(p if math.isinf(p) or not q else p + factor * q for p, q in zip(x, y, strict=True))

    return LinearWeights(device=mix(a.device, b.device), cloud=mix(a.cloud, b.cloud),
                         up=mix(a.up, b.up), down=mix(a.down, b.down),
                         fixed=a.fixed + factor * b.fixed)
