"""Read and write profiles: the built-in catalogue, TOML files, inline network strings.

A reference to a profile is a catalogue name (`raspberry-pi-4`, `lte`), a path to a `.toml`
file, or, for networks only, an inline string `up=MBPS,down=MBPS,rtt=MS[,jitter=MS,loss=P]`.
Anything ending in `.toml`, containing a path separator, or naming an existing file is a path.

File layout (one table per profile kind; units in every key):

    [device]                      [network]                   [cloud]
    name = "pi4"                  name = "lte"                name = "k8"
    cores = 4                     uplink_mbps = 6             speedup = 8.0     # or a [device] table
    memory_mib = 4096             downlink_mbps = 13          replicas = 2
    default_gflops = 8            rtt_ms = 60                 max_batch = 8
    memory_gbps = 4               jitter_ms = 10              queue_ms = 2
    [device.gflops_by_class]      trace = [[0, 6, 13, 60], ...]
    conv = 10
    [device.power]
    idle_w = 2.7 ...

Every problem of a file is reported at once, one line each, naming the file and dotted key:
`profiles/pi4.toml: device.memory_gbps must be > 0, got -5`. Unknown keys are errors with a
"did you mean"; unknown catalogue names list the known ones.

Example:
    >>> load_network("up=5,down=20,rtt=40").rtt_ms
    40.0
    >>> sorted(catalogue())
    ['devices', 'networks']
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from edgecut.errors import BadProfileError
from edgecut.profiles.schema import (
    CLOUD_FIELDS,
    DEVICE_CLASS_FIELDS,
    DEVICE_FIELDS,
    FLEET_FIELDS,
    NETWORK_FIELDS,
    POWER_FIELDS,
    CloudProfile,
    DeviceClass,
    DeviceProfile,
    FieldSpec,
    FleetProfile,
    NetworkProfile,
    PowerModel,
    check_fields,
    check_value,
    device_problems,
    power_problems,
    raise_problems,
    trace_problems,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_CLOUD",
    "catalogue",
    "load_cloud",
    "load_device",
    "load_fleet",
    "load_network",
    "parse_inline_network",
    "save_device",
]

DEFAULT_CLOUD = "gpu-server"

_KINDS = {"device": "devices", "network": "networks"}
_DEVICE_TABLES = ("gflops_by_class", "per_node_ms", "power", "runtime")
_INLINE_KEYS = {"up": "uplink_mbps", "down": "downlink_mbps", "rtt": "rtt_ms", "jitter": "jitter_ms",
                "loss": "loss"}


# --------------------------------------------------------------------------- catalogue

def _catalogue_dir(kind: str) -> Any:
    return resources.files("edgecut.profiles").joinpath("catalogue", _KINDS[kind])


def catalogue() -> dict[str, list[str]]:
    """Names of the built-in profiles: {"devices": [...], "networks": [...]}, sorted.

    Any device can also serve as a cloud (`load_cloud`).

    Example:
        >>> "raspberry-pi-4" in catalogue()["devices"]
        True
    """
    return {
        plural: sorted(entry.name[:-5] for entry in _catalogue_dir(kind).iterdir()
                       if entry.name.endswith(".toml"))
        for kind, plural in _KINDS.items()
    }


def _is_path(ref: str | os.PathLike[str]) -> bool:
    text = os.fspath(ref)
    return (isinstance(ref, os.PathLike) or text.endswith(".toml") or "/" in text or os.sep in text
            or Path(text).is_file())


def _read(ref: str | os.PathLike[str], kind: str) -> tuple[str, dict[str, Any]]:
    """(label for messages, parsed TOML) of a catalogue name or a file."""
    if _is_path(ref):
        path = Path(ref)
        label = os.fspath(ref)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BadProfileError(f"{label}: cannot read {kind} profile: {exc.strerror or exc}") from exc
    else:
        name = os.fspath(ref)
        known = catalogue()[_KINDS[kind]]
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise BadProfileError(f"unknown {kind} {name!r}; {hint}known {_KINDS[kind]}: "
                                  f"{', '.join(known)} (or give the path of a .toml file)")
        entry = _catalogue_dir(kind).joinpath(f"{name}.toml")
        label = f"catalogue/{_KINDS[kind]}/{name}.toml"
        data = entry.read_bytes()
    try:
        return label, tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadProfileError(f"{label}: not a valid TOML file: {exc}") from exc


def _unknown_keys(table: Mapping[str, Any], allowed: Sequence[str], prefix: str) -> list[str]:
    problems = []
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            problems.append(f"{prefix}{key} is not a known key (expected one of "
                            f"{', '.join(allowed)}){hint}")
    return problems


def _table(data: Mapping[str, Any], key: str, prefix: str, problems: list[str],
           required: bool = True) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None:
        if required:
            problems.append(f"{prefix}{key} is missing (expected a table [{prefix}{key}])")
        return None
    if not isinstance(value, dict):
        problems.append(f"{prefix}{key} must be a table, got {value!r}")
        return None
    return value


def _keys(specs: Sequence[FieldSpec], *extra: str) -> list[str]:
    return [s.key for s in specs] + list(extra)


# --------------------------------------------------------------------------- devices

def _device_from_table(table: Mapping[str, Any], prefix: str,
                       problems: list[str]) -> DeviceProfile | None:
    before = len(problems)
    problems += _unknown_keys(table, _keys(DEVICE_FIELDS, *_DEVICE_TABLES), prefix)
    problems += device_problems(table, prefix)
    power = _table(table, "power", prefix, problems)
    if power is not None:
        problems += _unknown_keys(power, _keys(POWER_FIELDS), f"{prefix}power.")
        problems += power_problems(power, f"{prefix}power.")
    if len(problems) > before:
        return None
    fields = {k: v for k, v in table.items() if k != "power"}
    return DeviceProfile(power=PowerModel(**power), **fields)  # type: ignore[arg-type]


def _load_device_data(label: str, data: Mapping[str, Any]) -> DeviceProfile:
    problems = _unknown_keys(data, ["device"], "")
    table = _table(data, "device", "", problems)
    device = _device_from_table(table, "device.", problems) if table is not None else None
    raise_problems(problems, label)
    return device  # type: ignore[return-value]


def load_device(ref: str | os.PathLike[str]) -> DeviceProfile:
    """A device profile from a catalogue name or a TOML file.

    Example:
        >>> load_device("jetson-nano").power.compute_w
        10.0
    """
    return _load_device_data(*_read(ref, "device"))


# --------------------------------------------------------------------------- networks

def parse_inline_network(text: str) -> NetworkProfile:
    """A network from `up=MBPS,down=MBPS,rtt=MS` (optionally `jitter=MS`, `loss=FRACTION`).

    The long key names (`uplink_mbps` ...) are accepted too. Every problem is reported at once.

    Example:
        >>> parse_inline_network("up=5, down=20, rtt=50").downlink_mbps
        20.0
    """
    label = f"network {text!r}"
    problems: list[str] = []
    values: dict[str, Any] = {}
    allowed = list(_INLINE_KEYS) + list(_INLINE_KEYS.values())
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, raw = (s.strip() for s in part.partition("="))
        if not sep:
            problems.append(f"{part!r} must be KEY=NUMBER (keys: up, down, rtt, jitter, loss)")
            continue
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{key!r} is not a known key (expected up, down, rtt, jitter, loss){hint}")
            continue
        long_key = _INLINE_KEYS.get(key, key)
        if long_key in values:
            problems.append(f"{key} is given twice")
            continue
        try:
            values[long_key] = float(raw)
        except ValueError:
            values[long_key] = raw
    specs = [s for s in NETWORK_FIELDS if s.key not in ("name", "source")]
    short = {v: k for k, v in _INLINE_KEYS.items()}
    for spec in specs:
        if spec.key not in values:
            if spec.required:
                problems.append(f"{short[spec.key]} is missing (expected {spec.expected()})")
            continue
        clause = check_value(spec, values[spec.key])
        if clause:
            problems.append(f"{short[spec.key]} {clause}")
    raise_problems(problems, label)
    name = ",".join(f"{short[k]}={values[k]:g}" for k in _INLINE_KEYS.values() if k in values)
    return NetworkProfile(name=name, source="inline", **values)


def _network_from_table(table: Mapping[str, Any], prefix: str,
                        problems: list[str]) -> NetworkProfile | None:
    before = len(problems)
    problems += _unknown_keys(table, _keys(NETWORK_FIELDS, "trace"), prefix)
    problems += check_fields(NETWORK_FIELDS, table, prefix)
    if "trace" in table:
        problems += trace_problems(table["trace"], prefix)
    if len(problems) > before:
        return None
    fields = dict(table)
    if "trace" in fields:
        fields["trace"] = tuple(tuple(row) for row in fields["trace"])
    return NetworkProfile(**fields)


def load_network(ref: str | os.PathLike[str]) -> NetworkProfile:
    """A network profile from a catalogue name, a TOML file, or an inline `up=..,down=..,rtt=..`.

    Example:
        >>> load_network("lte").uplink_mbps
        6.0
    """
    if not isinstance(ref, os.PathLike) and "=" in ref and not _is_path(ref):
        return parse_inline_network(ref)
    label, data = _read(ref, "network")
    problems = _unknown_keys(data, ["network"], "")
    table = _table(data, "network", "", problems)
    network = _network_from_table(table, "network.", problems) if table is not None else None
    raise_problems(problems, label)
    return network  # type: ignore[return-value]


# --------------------------------------------------------------------------- clouds

def load_cloud(ref: str | os.PathLike[str] = DEFAULT_CLOUD) -> CloudProfile:
    """A cloud profile from a catalogue device name, a device TOML file, or a cloud TOML file.

    A device becomes a cloud of one replica, batch 1, no queueing. A cloud file has a
    `[cloud]` table (replicas, max_batch, queue_ms) and its speed as either `speedup` (with an
    optional `reference` device name) or a `[device]` table in the same file.

    Example:
        >>> load_cloud().device.name
        'gpu-server'
    """
    label, data = _read(ref, "device")
    if "cloud" not in data:
        device = _load_device_data(label, data)
        return CloudProfile(name=device.name, device=device, replicas=1, max_batch=1, queue_ms=0.0,
                            source=device.source)
    problems = _unknown_keys(data, ["cloud", "device"], "")
    table = _table(data, "cloud", "", problems) or {}
    problems += _unknown_keys(table, _keys(CLOUD_FIELDS), "cloud.")
    table = {"replicas": 1, "max_batch": 1, "queue_ms": 0.0, **table}
    problems += check_fields(CLOUD_FIELDS, table, "cloud.")
    device_table = _table(data, "device", "", problems, required=False)
    device = _device_from_table(device_table, "device.", problems) if device_table is not None else None
    if (device is None and device_table is None) == ("speedup" not in table):
        problems.append("cloud.speedup or a [device] table: give exactly one "
                        f"(got {'both' if 'speedup' in table else 'neither'})")
    if "reference" in table and isinstance(table["reference"], str):
        try:
            load_device(table["reference"])
        except BadProfileError as exc:
            problems.append(f"cloud.reference: {exc}")
    raise_problems(problems, label)
    return CloudProfile(device=device, **table)


# --------------------------------------------------------------------------- fleets

def load_fleet(path: str | os.PathLike[str]) -> FleetProfile:
    """A fleet file: `[fleet]` (name, cloud, cloud_replicas) and `[[fleet.device_classes]]`.

    Each device class has name, count, device, network, arrival_rate_hz. Refs to profiles
    resolve relative to the fleet file's folder when they are paths; each must load.
    """
    label, data = _read(Path(path), "fleet")
    base = Path(path).parent
    problems = _unknown_keys(data, ["fleet"], "")
    table = _table(data, "fleet", "", problems) or {}
    problems += _unknown_keys(table, _keys(FLEET_FIELDS, "device_classes"), "fleet.")
    table = {"cloud": DEFAULT_CLOUD, "cloud_replicas": 1, **table}
    problems += check_fields(FLEET_FIELDS, table, "fleet.")

    def resolve(ref: object, loader: Any, key: str) -> None:
        if not isinstance(ref, str):
            return
        target = str(base / ref) if _is_path(ref) and not Path(ref).is_absolute() else ref
        if "=" in ref and loader is load_network:
            target = ref
        try:
            loader(target)
        except BadProfileError as exc:
            problems.append(f"{key}: {exc}")

    resolve(table.get("cloud"), load_cloud, "fleet.cloud")
    raw_classes = table.get("device_classes")
    classes = []
    if not isinstance(raw_classes, list) or not raw_classes:
        problems.append("fleet.device_classes is missing (expected one or more [[fleet.device_classes]])")
        raw_classes = []
    for i, raw in enumerate(raw_classes):
        prefix = f"fleet.device_classes[{i}]."
        if not isinstance(raw, dict):
            problems.append(f"{prefix[:-1]} must be a table, got {raw!r}")
            continue
        before = len(problems)
        problems += _unknown_keys(raw, _keys(DEVICE_CLASS_FIELDS), prefix)
        problems += check_fields(DEVICE_CLASS_FIELDS, raw, prefix)
        resolve(raw.get("device"), load_device, prefix + "device")
        resolve(raw.get("network"), load_network, prefix + "network")
        if len(problems) == before:
            classes.append(DeviceClass(**raw))
    raise_problems(problems, label)
    fields = {k: v for k, v in table.items() if k != "device_classes"}
    try:
        return FleetProfile(device_classes=tuple(classes), **fields)
    except BadProfileError as exc:
        raise BadProfileError(f"{label}: {exc}") from exc


# --------------------------------------------------------------------------- saving

def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else json.dumps(key)


def save_device(profile: DeviceProfile, path: str | os.PathLike[str]) -> Path:
    """Write a device profile as TOML that `load_device` reads back equal. Returns the path.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "pi.toml"
        >>> load_device(save_device(load_device("raspberry-pi-4"), out)) == load_device("raspberry-pi-4")
        True
    """
    lines = [f"# Device profile {profile.name!r}, written by edgecut.",
             f"# Source of the figures: {profile.source or 'not recorded'}", "", "[device]"]
    for spec in DEVICE_FIELDS:
        value = getattr(profile, spec.key)
        if value is not None and value != "":
            lines.append(f"{spec.key} = {_toml_value(value)}")
    lines += ["", "[device.gflops_by_class]"]
    lines += [f"{_toml_key(k)} = {_toml_value(float(v))}" for k, v in profile.gflops_by_class.items()]
    lines += ["", "[device.power]"]
    lines += [f"{s.key} = {_toml_value(float(getattr(profile.power, s.key)))}" for s in POWER_FIELDS]
    if profile.runtime:
        lines += ["", "[device.runtime]"]
        lines += [f"{k} = {_toml_value(float(v))}" for k, v in profile.runtime.items()]
    if profile.per_node_ms:
        lines += ["", "[device.per_node_ms]"]
        lines += [f"{_toml_key(k)} = {_toml_value(float(v))}" for k, v in profile.per_node_ms.items()]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
