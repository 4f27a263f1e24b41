"""Scenario files: TOML in, a checked, frozen `Scenario` out; every problem named by file and key.

    [simulation]  duration_s, warmup_s, seed, sla_ms
    [model]       file = "model.onnx" | plan = "plan-folder/" | zoo = "vision_cnn"; input_shapes
    [cloud]       profile, replicas, max_batch_size, max_queue_delay_ms, batch_scaling
    [[devices]]   name, count, profile, network, arrival = {process, rate_per_s | file},
                  bandwidth_trace, rtt_ms, cell = {uplink_mbps, downlink_mbps, devices},
                  radio_tail_ms, radio_tail_w, battery_wh
    [strategies]  compare, fixed_cut, cascade_escalation_rate, dads_heavy_load,
                  [strategies.edgecut] hysteresis, min_gain_ms, min_gain_share, window,
                  max_sample_age_s, min_sample_bytes, max_cloud_queue_ms, probe_interval_s

`docs/simulation.md` describes each key. `load_scenario(path, overrides=...)` applies dotted
overrides (`cloud.replicas=8`, `devices.0.count=500`: the sweep's keys) to the parsed file
before checking it, so a bad swept value is reported like a bad value in the file:

    fleet.toml: devices[0].count must be a positive integer, got -3

Example:
    >>> s = scenario_from_dict({"simulation": {"duration_s": 10}, "model": {"zoo": "vision_cnn"},
    ...                         "devices": [{"name": "p", "count": 2, "profile": "phone",
    ...                                      "network": "lte", "arrival": {"rate_per_s": 1}}]},
    ...                        label="inline.toml")
    >>> s.devices[0].arrival.process, s.cloud.replicas, s.strategies.compare[0]
    ('poisson', 1, 'edge-only')
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecut.errors import BadProfileError, EdgecutError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "STRATEGIES",
    "Arrival",
    "Cell",
    "CloudSpec",
    "DeviceGroup",
    "EdgecutSettings",
    "ModelSpec",
    "Scenario",
    "ScenarioError",
    "SimulationSpec",
    "StrategySpec",
    "apply_overrides",
    "load_scenario",
    "parse_override",
    "read_scenario_data",
    "scenario_from_dict",
]

STRATEGIES = ("edge-only", "cloud-only", "fixed", "neurosurgeon", "dads", "edgecut", "cascade")
ARRIVAL_PROCESSES = ("poisson", "periodic", "trace")
TRACE_SUFFIXES = (".txt", ".csv", ".log", ".trace", ".dat")


class ScenarioError(BadProfileError):
    """A scenario file (or an override of it) has missing keys or values out of range."""


# --------------------------------------------------------------------------- values

@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationSpec:
    """Requests arrive during [0, duration_s); those before warmup_s are simulated, not counted."""

    duration_s: float
    warmup_s: float = 0.0
    seed: int = 1
    sla_ms: float = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """One of `file` (an .onnx), `plan` (a plan folder: its full model is planned) or `zoo`."""

    file: Path | None = None
    plan: Path | None = None
    zoo: str | None = None
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudSpec:
    """The shared endpoint: `replicas` servers, one batch each at a time (dynamic batching).

    A batch of n requests of one tail takes cloud_ms * (1 + batch_scaling * (n - 1)).
    """

    profile: str = "gpu-server"
    replicas: int = 1
    max_batch_size: int = 1
    max_queue_delay_ms: float = 0.0
    batch_scaling: float = 0.5
    service_cv: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """Requests of one device: Poisson or periodic at `rate_per_s`, or a trace file of times."""

    process: str = "poisson"
    rate_per_s: float | None = None
    file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell:
    """A shared cell or access point: its `devices` devices send (and receive) one message at
    a time through it, at its bandwidth, instead of each on its own link."""

    uplink_mbps: float
    downlink_mbps: float
    devices: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceGroup:
    """`count` identical devices: profile and network refs, arrivals, optional trace and cell."""

    name: str
    count: int
    profile: str
    network: str
    arrival: Arrival
    bandwidth_trace: Path | None = None
    rtt_ms: float | None = None
    cell: Cell | None = None
    radio_tail_ms: float = 0.0
    radio_tail_w: float | None = None
    battery_wh: float | None = None
    service_cv: float = 0.0
    busy_slowdown: float = 1.0  # device time of a request that waited / one that found it idle


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgecutSettings:
    """The adaptive policy's knobs, the device runtime's defaults (edgecut.edge: Config,
    policy.Thresholds, monitors.LinkEstimator)."""

    hysteresis: float = 0.25
    min_gain_ms: float = 1.0
    min_gain_share: float = 0.05
    window: int = 7
    max_sample_age_s: float = 30.0
    min_sample_bytes: int = 16 * 1024
    max_cloud_queue_ms: float | None = 50.0
    probe_interval_s: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategySpec:
    compare: tuple[str, ...] = ("edge-only", "cloud-only", "neurosurgeon", "dads", "edgecut")
    fixed_cut: int | None = None
    cascade_escalation_rate: float | None = None
    dads_heavy_load: float = 0.8
    edgecut: EdgecutSettings = field(default_factory=EdgecutSettings)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A checked scenario. `data` is the parsed TOML (after overrides), for sweeps and reports."""

    label: str
    base_dir: Path
    simulation: SimulationSpec
    model: ModelSpec
    cloud: CloudSpec
    devices: tuple[DeviceGroup, ...]
    strategies: StrategySpec
    data: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def device_count(self) -> int:
        return sum(d.count for d in self.devices)


# --------------------------------------------------------------------------- checking

def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Checker:
    """Pulls typed values out of the parsed TOML, recording every problem by its dotted key."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.problems.append(f"{key} {message}")

    def unknown(self, table: Mapping[str, Any], allowed: Sequence[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {prefix}{close[0]}?" if close else ""
                self.add(f"{prefix}{key}", f"is not a known key (expected one of "
                                           f"{', '.join(allowed)}){hint}")

    def table(self, data: Mapping[str, Any], key: str, prefix: str, *,
              required: bool) -> dict[str, Any]:
        value = data.get(key)
        if value is None:
            if required:
                self.add(f"{prefix}{key}", f"is missing (expected a table [{prefix}{key}])")
            return {}
        if not isinstance(value, dict):
            self.add(f"{prefix}{key}", f"must be a table, got {value!r}")
            return {}
        return value

    def number(self, table: Mapping[str, Any], key: str, prefix: str, *, default: Any = None,
               minimum: float | None = None, positive: bool = False, maximum: float | None = None,
               below: float | None = None, required: bool = False) -> Any:
        if key not in table:
            if required:
                self.add(f"{prefix}{key}", "is missing (expected a number)")
            return default
        value = table[key]
        where = f"{prefix}{key}"
        if not _number(value):
            self.add(where, f"must be a number, got {value!r}")
            return default
        if positive and not value > 0:
            self.add(where, f"must be > 0, got {value!r}")
        elif minimum is not None and value < minimum:
            self.add(where, f"must be >= {minimum:g}, got {value!r}")
        elif maximum is not None and value > maximum:
            self.add(where, f"must be <= {maximum:g}, got {value!r}")
        elif below is not None and not value < below:
            self.add(where, f"must be < {below:g}, got {value!r}")
        else:
            return float(value)
        return default

    def integer(self, table: Mapping[str, Any], key: str, prefix: str, *, default: Any = None,
                minimum: int = 1, required: bool = False) -> Any:
        if key not in table:
            if required:
                self.add(f"{prefix}{key}", "is missing (expected a positive integer)")
            return default
        value = table[key]
        if not _integer(value) or value < minimum:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            self.add(f"{prefix}{key}", f"must be {kind}, got {value!r}")
            return default
        return int(value)

    def string(self, table: Mapping[str, Any], key: str, prefix: str, *, default: Any = None,
               required: bool = False) -> Any:
        if key not in table:
            if required:
                self.add(f"{prefix}{key}", "is missing (expected a non-empty string)")
            return default
        value = table[key]
        if not isinstance(value, str) or not value.strip():
            self.add(f"{prefix}{key}", f"must be a non-empty string, got {value!r}")
            return default
        return value

    def path(self, table: Mapping[str, Any], key: str, prefix: str, base: Path, *,
             folder: bool = False) -> Path | None:
        text = self.string(table, key, prefix)
        if text is None:
            return None
        path = Path(text) if Path(text).is_absolute() else base / text
        exists = path.is_dir() if folder else path.is_file()
        if not exists:
            kind = "folder" if folder else "file"
            self.add(f"{prefix}{key}", f"names {text!r}, but no such {kind} exists at {path}")
            return None
        return path


def _looks_like_trace(ref: str) -> bool:
    return ref.lower().endswith(TRACE_SUFFIXES)


def _resolve_ref(ref: str, base: Path) -> str:
    """A profile ref as the profile loaders take it: paths relative to the scenario file."""
    if "=" in ref and not ref.endswith(".toml"):
        return ref
    if ref.endswith(".toml") or "/" in ref or os.sep in ref:
        path = Path(ref)
        return str(path if path.is_absolute() else base / path)
    return ref


def _check_profile(c: _Checker, key: str, ref: str, kind: str, base: Path) -> str:
    from edgecut.profiles import load_cloud, load_device, load_network

    loader = {"device": load_device, "network": load_network, "cloud": load_cloud}[kind]
    resolved = _resolve_ref(ref, base)
    try:
        loader(resolved)
    except EdgecutError as exc:
        first, *rest = str(exc).splitlines()
        c.add(key, f"cannot be loaded: {first}" + "".join(f"; {line}" for line in rest))
    return resolved


def _model(c: _Checker, data: Mapping[str, Any], base: Path) -> ModelSpec:
    table = c.table(data, "model", "", required=True)
    c.unknown(table, ["file", "plan", "zoo", "input_shapes"], "model.")
    given = [k for k in ("file", "plan", "zoo") if k in table]
    if table and len(given) != 1:
        c.add("model", "must give exactly one of file (an .onnx), plan (a plan folder) or zoo "
                       f"(a built-in model), got {', '.join(given) or 'none'}")
    file = c.path(table, "file", "model.", base) if "file" in table else None
    plan = c.path(table, "plan", "model.", base, folder=True) if "plan" in table else None
    zoo = c.string(table, "zoo", "model.")
    if zoo is not None:
        from edgecut.simulations.models import model_names

        if zoo not in model_names():
            close = difflib.get_close_matches(zoo, model_names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            c.add("model.zoo", f"must name a built-in model ({', '.join(model_names())}), "
                               f"got {zoo!r}{hint}")
            zoo = None
    shapes: dict[str, tuple[int, ...]] = {}
    raw_shapes = table.get("input_shapes", {})
    if not isinstance(raw_shapes, dict):
        c.add("model.input_shapes", f"must be a table of NAME = [dims], got {raw_shapes!r}")
    else:
        for name, dims in raw_shapes.items():
            if (not isinstance(dims, list) or not dims
                    or not all(_integer(d) and d >= 1 for d in dims)):
                c.add(f"model.input_shapes.{name}", f"must be a list of positive integers, "
                                                     f"got {dims!r}")
            else:
                shapes[name] = tuple(dims)
    return ModelSpec(file=file, plan=plan, zoo=zoo, input_shapes=shapes)


def _cloud(c: _Checker, data: Mapping[str, Any], base: Path) -> CloudSpec:
    table = c.table(data, "cloud", "", required=False)
    c.unknown(table, ["profile", "replicas", "max_batch_size", "max_queue_delay_ms",
                      "batch_scaling", "service_cv"], "cloud.")
    profile = c.string(table, "profile", "cloud.", default="gpu-server")
    if profile is not None:
        profile = _check_profile(c, "cloud.profile", profile, "cloud", base)
    return CloudSpec(
        profile=profile or "gpu-server",
        replicas=c.integer(table, "replicas", "cloud.", default=1),
        max_batch_size=c.integer(table, "max_batch_size", "cloud.", default=1),
        max_queue_delay_ms=c.number(table, "max_queue_delay_ms", "cloud.", default=0.0,
                                    minimum=0),
        batch_scaling=c.number(table, "batch_scaling", "cloud.", default=0.5, minimum=0,
                               maximum=1),
        service_cv=c.number(table, "service_cv", "cloud.", default=0.0, minimum=0))


def _arrival(c: _Checker, raw: object, prefix: str, base: Path) -> Arrival:
    key = prefix + "arrival"
    if raw is None:
        c.add(key, "is missing (expected e.g. { process = \"poisson\", rate_per_s = 0.5 })")
        return Arrival(rate_per_s=1.0)
    if not isinstance(raw, dict):
        c.add(key, f"must be a table, got {raw!r}")
        return Arrival(rate_per_s=1.0)
    sub = key + "."
    c.unknown(raw, ["process", "rate_per_s", "file"], sub)
    process = c.string(raw, "process", sub, default="poisson")
    if process not in ARRIVAL_PROCESSES:
        c.add(sub + "process", f"must be one of {', '.join(ARRIVAL_PROCESSES)}, got {process!r}")
        process = "poisson"
    if process == "trace":
        if "file" not in raw:
            c.add(sub + "file", "is missing (a trace needs a file of arrival times, one time_s "
                                "per line)")
        path = c.path(raw, "file", sub, base) if "file" in raw else None
        if path is not None:
            from edgecut.simulations.traces import read_arrival_trace

            try:
                read_arrival_trace(path)
            except ScenarioError as exc:
                c.add(sub + "file", str(exc))
        return Arrival(process="trace", file=path)
    rate = c.number(raw, "rate_per_s", sub, positive=True, required=True)
    return Arrival(process=process, rate_per_s=rate if rate is not None else 1.0)


def _device(c: _Checker, raw: object, i: int, base: Path) -> DeviceGroup | None:
    prefix = f"devices[{i}]."
    if not isinstance(raw, dict):
        c.add(f"devices[{i}]", f"must be a table, got {raw!r}")
        return None
    allowed = ["name", "count", "profile", "network", "arrival", "bandwidth_trace", "rtt_ms",
               "cell", "radio_tail_ms", "radio_tail_w", "battery_wh", "service_cv",
               "busy_slowdown"]
    c.unknown(raw, allowed, prefix)
    name = c.string(raw, "name", prefix, default=f"devices{i}", required=True)
    count = c.integer(raw, "count", prefix, default=1, required=True)
    profile = c.string(raw, "profile", prefix, required=True)
    if profile is not None:
        profile = _check_profile(c, prefix + "profile", profile, "device", base)
    network = c.string(raw, "network", prefix, required=True)
    trace = None
    rtt = c.number(raw, "rtt_ms", prefix, minimum=0)
    if network is not None and _looks_like_trace(network):
        trace = c.path(raw, "network", prefix, base)
        if rtt is None and "rtt_ms" not in raw:
            c.add(prefix + "rtt_ms", "is missing (a network given as a bandwidth trace needs "
                                     "the link's round trip, e.g. rtt_ms = 60)")
    elif network is not None:
        network = _check_profile(c, prefix + "network", network, "network", base)
    if "bandwidth_trace" in raw:
        if trace is not None:
            c.add(prefix + "bandwidth_trace", "cannot be given with a network that is itself "
                                              "a trace")
        trace = c.path(raw, "bandwidth_trace", prefix, base)
    if trace is not None:
        from edgecut.simulations.traces import read_bandwidth_trace

        try:
            read_bandwidth_trace(trace)
        except ScenarioError as exc:
            c.add(prefix + ("bandwidth_trace" if "bandwidth_trace" in raw else "network"),
                  str(exc))
    cell = None
    if "cell" in raw:
        table = raw["cell"]
        if not isinstance(table, dict):
            c.add(prefix + "cell", f"must be a table, got {table!r}")
        else:
            sub = prefix + "cell."
            c.unknown(table, ["uplink_mbps", "downlink_mbps", "devices"], sub)
            up = c.number(table, "uplink_mbps", sub, positive=True, required=True)
            down = c.number(table, "downlink_mbps", sub, positive=True, required=True)
            per = c.integer(table, "devices", sub, required=True)
            if None not in (up, down, per):
                cell = Cell(uplink_mbps=up, downlink_mbps=down, devices=per)
    return DeviceGroup(
        name=name, count=count, profile=profile or "phone", network=network or "lte",
        arrival=_arrival(c, raw.get("arrival"), prefix, base), bandwidth_trace=trace,
        rtt_ms=rtt, cell=cell,
        radio_tail_ms=c.number(raw, "radio_tail_ms", prefix, default=0.0, minimum=0),
        radio_tail_w=c.number(raw, "radio_tail_w", prefix, minimum=0),
        battery_wh=c.number(raw, "battery_wh", prefix, positive=True),
        service_cv=c.number(raw, "service_cv", prefix, default=0.0, minimum=0),
        busy_slowdown=c.number(raw, "busy_slowdown", prefix, default=1.0, minimum=1))


def _strategies(c: _Checker, data: Mapping[str, Any]) -> StrategySpec:
    table = c.table(data, "strategies", "", required=False)
    p = "strategies."
    c.unknown(table, ["compare", "fixed_cut", "cascade_escalation_rate", "dads_heavy_load",
                      "edgecut"], p)
    compare: tuple[str, ...] = StrategySpec().compare
    if "compare" in table:
        raw = table["compare"]
        if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
            c.add(p + "compare", f"must be a non-empty list of strategy names, got {raw!r}")
        else:
            for s in raw:
                if s not in STRATEGIES:
                    close = difflib.get_close_matches(s, STRATEGIES, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    c.add(p + "compare", f"names an unknown strategy {s!r} (expected "
                                         f"{', '.join(STRATEGIES)}){hint}")
            repeated = sorted({s for s in raw if raw.count(s) > 1})
            if repeated:
                c.add(p + "compare", f"names {', '.join(repeated)} more than once")
            compare = tuple(raw)
    fixed = c.integer(table, "fixed_cut", p, minimum=0)
    if "fixed" in compare and "fixed_cut" not in table:
        c.add(p + "fixed_cut", "is missing (strategy 'fixed' runs this cut id from "
                               "`edgecut plan --explain`)")
    rate = c.number(table, "cascade_escalation_rate", p, minimum=0, maximum=1)
    if "cascade" in compare and "cascade_escalation_rate" not in table:
        c.add(p + "cascade_escalation_rate", "is missing (strategy 'cascade' escalates this "
                                             "share of requests to the cloud, e.g. 0.2)")
    heavy = c.number(table, "dads_heavy_load", p, default=0.8, positive=True)
    sub = c.table(table, "edgecut", p, required=False)
    q = p + "edgecut."
    c.unknown(sub, ["hysteresis", "min_gain_ms", "min_gain_share", "window", "max_sample_age_s",
                    "min_sample_bytes", "max_cloud_queue_ms", "probe_interval_s"], q)
    # false turns the cloud's push-back off (TOML has no null).
    queue = None if sub.get("max_cloud_queue_ms") is False else c.number(
        sub, "max_cloud_queue_ms", q, default=50.0, minimum=0)
    settings = EdgecutSettings(
        hysteresis=c.number(sub, "hysteresis", q, default=0.25, minimum=0, below=1),
        min_gain_ms=c.number(sub, "min_gain_ms", q, default=1.0, minimum=0),
        min_gain_share=c.number(sub, "min_gain_share", q, default=0.05, minimum=0, below=1),
        window=c.integer(sub, "window", q, default=7),
        max_sample_age_s=c.number(sub, "max_sample_age_s", q, default=30.0, positive=True),
        min_sample_bytes=c.integer(sub, "min_sample_bytes", q, default=16 * 1024, minimum=0),
        max_cloud_queue_ms=queue,
        probe_interval_s=c.number(sub, "probe_interval_s", q, default=5.0, positive=True))
    return StrategySpec(compare=compare, fixed_cut=fixed, cascade_escalation_rate=rate,
                        dads_heavy_load=heavy, edgecut=settings)


def scenario_from_dict(data: Mapping[str, Any], *, label: str = "scenario",
                       base_dir: Path | str = ".") -> Scenario:
    """Check parsed scenario data; ScenarioError lists every problem as `label: key message`."""
    base = Path(base_dir)
    c = _Checker()
    c.unknown(data, ["simulation", "model", "cloud", "devices", "strategies"], "")
    sim = c.table(data, "simulation", "", required=True)
    c.unknown(sim, ["duration_s", "warmup_s", "seed", "sla_ms"], "simulation.")
    duration = c.number(sim, "duration_s", "simulation.", positive=True, required=True)
    warmup = c.number(sim, "warmup_s", "simulation.", default=0.0, minimum=0)
    if warmup is not None and duration is not None and warmup >= duration:
        c.add("simulation.warmup_s", f"must be less than simulation.duration_s ({duration:g}), "
                                     f"got {warmup:g}")
    seed = c.integer(sim, "seed", "simulation.", default=1, minimum=0)
    sla = c.number(sim, "sla_ms", "simulation.", default=300.0, positive=True)
    simulation = SimulationSpec(duration_s=duration or 1.0, warmup_s=warmup, seed=seed, sla_ms=sla)
    model = _model(c, data, base)
    cloud = _cloud(c, data, base)
    raw_devices = data.get("devices")
    devices: list[DeviceGroup] = []
    if not isinstance(raw_devices, list) or not raw_devices:
        c.add("devices", "is missing (expected one or more [[devices]] tables)")
    else:
        for i, raw in enumerate(raw_devices):
            group = _device(c, raw, i, base)
            if group is not None:
                devices.append(group)
        names = [d.name for d in devices]
        for name in sorted({n for n in names if names.count(n) > 1}):
            c.add("devices", f"names {name!r} more than once (each class needs its own name)")
    strategies = _strategies(c, data)
    if c.problems:
        raise ScenarioError("\n".join(f"{label}: {p}" for p in c.problems))
    return Scenario(label=label, base_dir=base, simulation=simulation, model=model, cloud=cloud,
                    devices=tuple(devices), strategies=strategies, data=copy.deepcopy(dict(data)))


# --------------------------------------------------------------------------- files, overrides

def read_scenario_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed TOML of a scenario file; ScenarioError if it cannot be read or parsed."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read the scenario: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{p}: not UTF-8 text: {exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: not a valid TOML file: {exc}") from exc


def parse_override(text: str) -> tuple[str, list[Any]]:
    """`KEY=v1,v2,...` into (KEY, [values]); values read as TOML scalars (1, 2.5, "x", true)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not raw.strip():
        raise ScenarioError(f"--sweep {text!r}: expected KEY=v1,v2,... (e.g. cloud.replicas=2,4)")
    return key, [_scalar(v.strip()) for v in raw.split(",") if v.strip()]


def _scalar(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any], *,
                    label: str = "scenario") -> dict[str, Any]:
    """A deep copy of `data` with dotted keys set (`devices.0.count`: list index for tables)."""
    out = copy.deepcopy(dict(data))
    problems = []
    for key, value in overrides.items():
        parts = key.split(".")
        node: Any = out
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[:depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    problems.append(f"{where} is not an index of {'.'.join(parts[:depth])} "
                                    f"(it has {len(node)} tables: 0..{len(node) - 1})")
                    break
                index = int(part)
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                problems.append(f"{where}: {'.'.join(parts[:depth])} is not a table or list")
                break
    if problems:
        raise ScenarioError("\n".join(f"{label}: override {p}" for p in problems))
    return out


def load_scenario(path: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None,
                  seed: int | None = None) -> Scenario:
    """Read, override and check a scenario file (ScenarioError lists every problem)."""
    p = Path(path)
    data = read_scenario_data(p)
    if overrides:
        data = apply_overrides(data, overrides, label=str(p))
    if seed is not None:
        data = apply_overrides(data, {"simulation.seed": seed}, label=str(p))
    return scenario_from_dict(data, label=str(p), base_dir=p.parent)
