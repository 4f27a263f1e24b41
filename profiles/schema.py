"""The profile values: device, network, cloud and fleet, as frozen, validated dataclasses.

Every numeric field carries its unit in its name (`uplink_mbps`, `rtt_ms`, `memory_mib`,
`compute_w`). Each class checks itself in `__post_init__` and reports every problem at once in
one `BadProfileError`; the TOML loader (`edgecut.profiles.load`) runs the same checks over the
raw file first (`check_fields`), so a file's messages name the file and the dotted key:

    profiles/pi4.toml: network.uplink_mbps must be > 0, got -5

Units: GFLOP/s = 1e9 floating-point operations per second (a multiply-add counts 2);
GB/s = 1e9 bytes per second; Mbps = 1e6 bits per second; MiB = 2**20 bytes.

Example:
    >>> net = NetworkProfile(name="lte", uplink_mbps=6, downlink_mbps=13, rtt_ms=60)
    >>> net.uplink_mbps
    6
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from edgecut.errors import BadProfileError

__all__ = [
    "COMPUTE_CLASSES",
    "DIGEST_OMITS_WHEN_UNSET",
    "OPERATOR_CLASSES",
    "CloudProfile",
    "DeviceClass",
    "DeviceProfile",
    "FieldSpec",
    "FleetProfile",
    "NetworkProfile",
    "PowerModel",
    "check_fields",
    "check_number_table",
    "raise_problems",
]

# Operator classes of `edgecut.profiles.opclass`. "data" (reshape, transpose, concat, gather ...)
# moves bytes and is timed by `memory_gbps`; every other class has a GFLOP/s figure, falling back
# to `default_gflops` where a profile gives none.
OPERATOR_CLASSES = ("conv", "gemm", "elementwise", "pool", "norm", "softmax", "data", "other")
COMPUTE_CLASSES = tuple(c for c in OPERATOR_CLASSES if c != "data")

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------- field checks

_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    ">0": (lambda v: v > 0, "> 0"),
    ">=0": (lambda v: v >= 0, ">= 0"),
    ">=1": (lambda v: v >= 1, ">= 1"),
    "[0,1)": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "[0,100]": (lambda v: 0 <= v <= 100, "in [0, 100]"),
}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One scalar key of a profile section: its kind ("number", "int", "str") and range rule."""

    key: str
    kind: str
    rule: str | None = None
    required: bool = True

    def expected(self) -> str:
        kind = {"number": "a number", "int": "an integer", "str": "a non-empty string"}[self.kind]
        return f"{kind} {_RULES[self.rule][1]}" if self.rule else kind


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_value(spec: FieldSpec, value: object) -> str | None:
    """The "must be ..." clause for a bad value, or None when it is fine."""
    if spec.kind == "str":
        ok = isinstance(value, str) and value.strip() != ""
    elif spec.kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = _is_number(value)
    if not ok:
        return f"must be {spec.expected()}, got {value!r}"
    if spec.rule and not _RULES[spec.rule][0](value):  # type: ignore[arg-type]
        return f"must be {_RULES[spec.rule][1]}, got {value!r}"
    return None


def check_fields(specs: Sequence[FieldSpec], values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Problems of the scalar `values` against `specs`: missing, mistyped or out of range.

    A key that is absent or None counts as missing when the spec requires it.
    """
    problems = []
    for spec in specs:
        value = values.get(spec.key)
        if value is None:
            if spec.required:
                problems.append(f"{prefix}{spec.key} is missing (expected {spec.expected()})")
            continue
        clause = check_value(spec, value)
        if clause:
            problems.append(f"{prefix}{spec.key} {clause}")
    return problems


def check_number_table(table: object, prefix: str, rule: str,
                       allowed: Sequence[str] | None = None) -> list[str]:
    """Problems of a {name: number} table (`gflops_by_class`, `per_node_ms`)."""
    if not isinstance(table, Mapping):
        return [f"{prefix.rstrip('.')} must be a table of numbers, got {table!r}"]
    problems = []
    for key, value in table.items():
        if allowed is not None and key not in allowed:
            problems.append(f"{prefix}{key} is not an operator class; expected one of "
                            f"{', '.join(allowed)}{_did_you_mean(key, allowed)}")
            continue
        clause = check_value(FieldSpec(str(key), "number", rule), value)
        if clause:
            problems.append(f"{prefix}{key} {clause}")
    return problems


def _did_you_mean(key: str, candidates: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def raise_problems(problems: Sequence[str], where: str = "") -> None:
    """Raise one BadProfileError listing every problem, each on its own line, if any."""
    if problems:
        lead = f"{where}: " if where else ""
        raise BadProfileError("\n".join(lead + p for p in problems))


def _where(kind: str, name: object) -> str:
    return f"{kind} {name!r}"


# --------------------------------------------------------------------------- device

POWER_FIELDS = (
    FieldSpec("idle_w", "number", ">=0"),
    FieldSpec("compute_w", "number", ">=0"),
    FieldSpec("transmit_w", "number", ">=0"),
    FieldSpec("receive_w", "number", ">=0"),
)


def power_problems(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    problems = check_fields(POWER_FIELDS, values, prefix)
    idle, compute = values.get("idle_w"), values.get("compute_w")
    if not problems and compute < idle:  # type: ignore[operator]
        problems.append(f"{prefix}compute_w must be >= {prefix}idle_w (both are the device's "
                        f"total draw), got {compute!r} < {idle!r}")
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerModel:
    """The device's total power draw, in watts, in each state.

    `idle_w` waiting; `compute_w` running inference on all its cores; `transmit_w` /
    `receive_w` while its radio or NIC sends / receives (idle draw plus the radio's).
    Device energy = compute_w x compute time + transmit_w x uplink time + receive_w x
    downlink time + idle_w x waiting time.
    """

    idle_w: float
    compute_w: float
    transmit_w: float
    receive_w: float

    def __post_init__(self) -> None:
        raise_problems(power_problems({f: getattr(self, f) for f in self.__slots__}), "PowerModel")


DEVICE_FIELDS = (
    FieldSpec("name", "str"),
    FieldSpec("cores", "int", ">=1"),
    FieldSpec("memory_mib", "number", ">0"),
    FieldSpec("default_gflops", "number", ">0"),
    FieldSpec("memory_gbps", "number", ">0"),
    FieldSpec("battery_wh", "number", ">0", required=False),
    FieldSpec("threads", "int", ">=1", required=False),
    FieldSpec("run_overhead_ms", "number", ">=0", required=False),
    FieldSpec("node_overhead_ms", "number", ">=0", required=False),
    FieldSpec("small_node_overhead_ms", "number", ">=0", required=False),
    FieldSpec("serve_ms", "number", ">=0", required=False),
    FieldSpec("serialise_mbps", "number", ">0", required=False),
    FieldSpec("per_node_model_sha256", "str", required=False),
    FieldSpec("source", "str", required=False),
)


# Fields added after plans began recording profile digests (planner.profile_digest): left out
# of a digest while unset, so that the digest of a profile that does not set them, and every
# plan written from it, stays what it was.
DIGEST_OMITS_WHEN_UNSET = ("serve_ms", "serialise_mbps")


# [device.runtime]: the device runtime's thresholds for this device (edge/config.py); a plan
# carries them to the Predictor, whose Config may still override each.
RUNTIME_FIELDS = (
    FieldSpec("min_free_memory_mib", "number", ">=0", required=False),
    FieldSpec("max_cpu_percent", "number", "[0,100]", required=False),
    FieldSpec("min_battery_percent", "number", "[0,100]", required=False),
    FieldSpec("max_cloud_queue_ms", "number", ">=0", required=False),
    FieldSpec("hysteresis", "number", "[0,1)", required=False),
)


def device_problems(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Problems of a device's fields (the scalar ones, its tables; not `power`)."""
    problems = check_fields(DEVICE_FIELDS, values, prefix)
    runtime = values.get("runtime", {})
    if not isinstance(runtime, Mapping):
        problems.append(f"{prefix}runtime must be a table of thresholds, got {runtime!r}")
    else:
        known = [f.key for f in RUNTIME_FIELDS]
        problems += [f"{prefix}runtime.{k} is not a runtime threshold; expected one of "
                     f"{', '.join(known)}{_did_you_mean(k, known)}"
                     for k in runtime if k not in known]
        problems += check_fields(RUNTIME_FIELDS, runtime, f"{prefix}runtime.")
    problems += check_number_table(values.get("gflops_by_class", {}), prefix + "gflops_by_class.",
                                   ">0", COMPUTE_CLASSES)
    per_node = values.get("per_node_ms", {})
    problems += check_number_table(per_node, prefix + "per_node_ms.", ">=0")
    sha = values.get("per_node_model_sha256")
    if isinstance(sha, str) and not _SHA256_RE.match(sha):
        problems.append(f"{prefix}per_node_model_sha256 must be 64 lowercase hex digits, got {sha!r}")
    if per_node and sha is None:
        problems.append(f"{prefix}per_node_model_sha256 is missing (expected the sha256 of the model "
                        f"that {prefix}per_node_ms was measured on)")
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceProfile:
    """What a device can compute, hold and spend.

    `gflops_by_class` maps operator classes (`COMPUTE_CLASSES`) to effective GFLOP/s measured
    or estimated for onnxruntime on this device; classes it lacks use `default_gflops`.
    Data movement ("data" ops, and the memory-bound side of every op) uses `memory_gbps`.
    `per_node_ms` optionally holds a measured per-node table for one model (keyed by node
    name), valid only for the model whose sha256 is `per_node_model_sha256`. `runtime` holds
    the device runtime's thresholds for this device (`RUNTIME_FIELDS`, the `[device.runtime]`
    table), which plans carry to the Predictor.
    `threads` is the number of onnxruntime intra-op threads the figures were measured with
    (None: not recorded; `profile_device` records onnxruntime's default, a Predictor's);
    predictions are for that many threads. `run_overhead_ms` is the fixed cost of one
    session run (paid once per head), `node_overhead_ms` the fixed cost of launching one
    kernel (paid per node, per body node of If/Loop/Scan), `small_node_overhead_ms` that of
    a kernel too small for the thread pool (`opclass.SMALL_KERNEL_BYTES`); 0 where not
    measured.
    `serve_ms` and `serialise_mbps` are what this device spends as a served hop of a chain
    (placement 4; `edgecut.partitioner.chain_plan`): `serve_ms` the fixed CPU one request
    costs its `edgecut serve` endpoint (parse the ModelInfer, schedule it, answer), and
    `serialise_mbps` the rate at which it (de)serialises the tensors it receives and sends
    (raw bytes, Mbps). None (the default): `chain_plan.serve_ms_of` / `serialise_mbps_of`,
    this class of machine's measured figures (0.6 ms, 8000 Mbps) scaled to `memory_gbps`.
    Treat the dict fields as read-only.

    Example:
        >>> from edgecut.profiles import load_device
        >>> load_device("raspberry-pi-4").cores
        4
    """

    name: str
    cores: int
    memory_mib: float
    default_gflops: float
    memory_gbps: float
    power: PowerModel
    # optional in a profile file, as device_problems checks it: classes it lacks use default_gflops
    gflops_by_class: dict[str, float] = field(default_factory=dict)
    per_node_ms: dict[str, float] = field(default_factory=dict)
    per_node_model_sha256: str | None = None
    battery_wh: float | None = None
    source: str = ""
    threads: int | None = None
    run_overhead_ms: float = 0.0
    node_overhead_ms: float = 0.0
    small_node_overhead_ms: float = 0.0
    runtime: dict[str, float] = field(default_factory=dict)
    serve_ms: float | None = None
    serialise_mbps: float | None = None

    def __post_init__(self) -> None:
        values = {f: getattr(self, f) for f in self.__slots__}
        problems = device_problems({**values, "source": values["source"] or None})
        if not isinstance(self.power, PowerModel):
            problems.append(f"power must be a PowerModel, got {self.power!r}")
        raise_problems(problems, _where("device", self.name))
        object.__setattr__(self, "gflops_by_class", dict(self.gflops_by_class))
        object.__setattr__(self, "per_node_ms", dict(self.per_node_ms))
        object.__setattr__(self, "runtime", dict(self.runtime))

    def gflops_for(self, op_class: str) -> float:
        """Effective GFLOP/s for an operator class (`default_gflops` where none is given)."""
        return self.gflops_by_class.get(op_class, self.default_gflops)


# --------------------------------------------------------------------------- network

NETWORK_FIELDS = (
    FieldSpec("name", "str"),
    FieldSpec("uplink_mbps", "number", ">0"),
    FieldSpec("downlink_mbps", "number", ">0"),
    FieldSpec("rtt_ms", "number", ">=0"),
    FieldSpec("jitter_ms", "number", ">=0", required=False),
    FieldSpec("loss", "number", "[0,1)", required=False),
    FieldSpec("source", "str", required=False),
)

TracePoint = tuple[float, float, float, float]


def trace_problems(trace: object, prefix: str = "") -> list[str]:
    """Problems of a trace: rows of [t_s, uplink_mbps, downlink_mbps, rtt_ms], t_s increasing."""
    key = f"{prefix}trace"
    if not isinstance(trace, Sequence) or isinstance(trace, str) or not trace:
        return [f"{key} must be a non-empty list of [t_s, uplink_mbps, downlink_mbps, rtt_ms] rows, "
                f"got {trace!r}"]
    problems = []
    previous = -math.inf
    for i, row in enumerate(trace):
        if (not isinstance(row, Sequence) or isinstance(row, str) or len(row) != 4
                or not all(_is_number(v) for v in row)):
            problems.append(f"{key}[{i}] must be 4 numbers [t_s, uplink_mbps, downlink_mbps, rtt_ms], "
                            f"got {row!r}")
            continue
        t_s, up, down, rtt = row
        if t_s < 0 or t_s <= previous:
            problems.append(f"{key}[{i}] t_s must be >= 0 and greater than the row before, got {t_s!r}")
        if up <= 0 or down <= 0:
            problems.append(f"{key}[{i}] uplink_mbps and downlink_mbps must be > 0, got {up!r}, {down!r}")
        if rtt < 0:
            problems.append(f"{key}[{i}] rtt_ms must be >= 0, got {rtt!r}")
        previous = t_s
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkProfile:
    """A link between device and cloud: bandwidth each way, round trip, jitter, loss, or a trace.

    `trace`, when given, is a tuple of (t_s, uplink_mbps, downlink_mbps, rtt_ms) points held
    until the next point (`conditions_at`); the scalar figures are the link before the first
    point and its typical value.

    Example:
        >>> NetworkProfile(name="x", uplink_mbps=5, downlink_mbps=20, rtt_ms=50).loss
        0.0
    """

    name: str
    uplink_mbps: float
    downlink_mbps: float
    rtt_ms: float
    jitter_ms: float = 0.0
    loss: float = 0.0
    trace: tuple[TracePoint, ...] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        values = {f: getattr(self, f) for f in self.__slots__}
        problems = check_fields(NETWORK_FIELDS, {**values, "source": values["source"] or None})
        if self.trace is not None:
            problems += trace_problems(self.trace)
        raise_problems(problems, _where("network", self.name))
        if self.trace is not None:
            object.__setattr__(self, "trace", tuple(tuple(float(v) for v in row) for row in self.trace))

    def conditions_at(self, t_s: float) -> tuple[float, float, float]:
        """(uplink_mbps, downlink_mbps, rtt_ms) at time t_s (step-wise hold of the trace)."""
        current = (self.uplink_mbps, self.downlink_mbps, self.rtt_ms)
        for point_t, up, down, rtt in self.trace or ():
            if point_t > t_s:
                break
            current = (up, down, rtt)
        return current


# --------------------------------------------------------------------------- cloud

CLOUD_FIELDS = (
    FieldSpec("name", "str"),
    FieldSpec("speedup", "number", ">0", required=False),
    FieldSpec("reference", "str", required=False),
    FieldSpec("replicas", "int", ">=1"),
    FieldSpec("max_batch", "int", ">=1"),
    FieldSpec("queue_ms", "number", ">=0"),
    FieldSpec("source", "str", required=False),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudProfile:
    """A cloud endpoint: how fast one replica computes, how many replicas, how it batches.

    Its speed is either `device`, a full DeviceProfile (its own per-class GFLOP/s table), or
    `speedup`, a factor relative to a reference device: the catalogue device named by
    `reference`, or, when `reference` is None, the edge device it is paired with (the
    Neurosurgeon-style "the cloud is k times faster"). `as_device()` turns either into a
    DeviceProfile for the cost model.

    Example:
        >>> cloud = CloudProfile(name="k8", speedup=8.0, replicas=2, max_batch=8, queue_ms=2.0)
        >>> cloud.reference is None
        True
    """

    name: str
    device: DeviceProfile | None = None
    speedup: float | None = None
    reference: str | None = None
    replicas: int = 1
    max_batch: int = 1
    queue_ms: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        values = {f: getattr(self, f) for f in self.__slots__}
        problems = check_fields(CLOUD_FIELDS, {**values, "source": values["source"] or None})
        if (self.device is None) == (self.speedup is None):
            problems.append("give exactly one of device (a speed table) or speedup (a factor), got "
                            + ("both" if self.device is not None else "neither"))
        if self.device is not None and not isinstance(self.device, DeviceProfile):
            problems.append(f"device must be a DeviceProfile, got {self.device!r}")
        if self.reference is not None and self.speedup is None:
            problems.append("reference is only meaningful with speedup")
        raise_problems(problems, _where("cloud", self.name))

    def as_device(self, reference: DeviceProfile | None = None) -> DeviceProfile:
        """One replica as a DeviceProfile: `device`, or `reference` scaled by `speedup`.

        `reference` is required with `speedup`: the loaded `self.reference` device, or the edge
        device when `self.reference` is None. Compute and memory speed scale by `speedup`; a
        per-node table and the fixed overheads shrink by it (`serve_ms` too, where given).
        """
        if self.device is not None:
            return self.device
        if reference is None:
            raise BadProfileError(f"cloud {self.name!r}: speedup {self.speedup} needs a reference "
                                  f"device ({self.reference or 'the edge device'})")
        k = float(self.speedup)  # type: ignore[arg-type]
        return replace(
            reference,
            name=self.name,
            gflops_by_class={c: g * k for c, g in reference.gflops_by_class.items()},
            default_gflops=reference.default_gflops * k,
            memory_gbps=reference.memory_gbps * k,
            per_node_ms={n: ms / k for n, ms in reference.per_node_ms.items()},
            run_overhead_ms=reference.run_overhead_ms / k,
            node_overhead_ms=reference.node_overhead_ms / k,
            small_node_overhead_ms=reference.small_node_overhead_ms / k,
            serve_ms=None if reference.serve_ms is None else reference.serve_ms / k,
            serialise_mbps=None if reference.serialise_mbps is None
            else reference.serialise_mbps * k,
            source=f"{reference.name} x {k:g}",
        )


# --------------------------------------------------------------------------- fleet (stub)

DEVICE_CLASS_FIELDS = (
    FieldSpec("name", "str"),
    FieldSpec("count", "int", ">=1"),
    FieldSpec("device", "str"),
    FieldSpec("network", "str"),
    FieldSpec("arrival_rate_hz", "number", ">0"),
)

FLEET_FIELDS = (
    FieldSpec("name", "str"),
    FieldSpec("cloud", "str"),
    FieldSpec("cloud_replicas", "int", ">=1"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceClass:
    """`count` identical devices: a device profile ref, a link ref, Poisson arrivals per device."""

    name: str
    count: int
    device: str
    network: str
    arrival_rate_hz: float

    def __post_init__(self) -> None:
        values = {f: getattr(self, f) for f in self.__slots__}
        raise_problems(check_fields(DEVICE_CLASS_FIELDS, values), _where("device class", self.name))


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetProfile:
    """A fleet for the simulator: device classes and the cloud they share.

    Profile refs (`device`, `network`, `cloud`) are catalogue names, paths, or (for networks)
    inline `up=..,down=..,rtt=..` strings; `load_fleet` checks that each resolves.
    """

    name: str
    device_classes: tuple[DeviceClass, ...]
    cloud: str = "gpu-server"
    cloud_replicas: int = 1

    def __post_init__(self) -> None:
        values = {f: getattr(self, f) for f in self.__slots__}
        problems = check_fields(FLEET_FIELDS, values)
        if not self.device_classes:
            problems.append("device_classes must list at least one device class")
        names = [c.name for c in self.device_classes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"device class names must be unique, got {', '.join(duplicates)} twice")
        raise_problems(problems, _where("fleet", self.name))
        object.__setattr__(self, "device_classes", tuple(self.device_classes))
