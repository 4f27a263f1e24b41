"""Per-device authorisation: which models each device (its certificate's name) may use, and
who may change what the endpoint serves.

A TOML file gives each device's allowed models as fnmatch patterns; devices not listed get
`[default]` (nothing, when it is absent). `[operators]` gives, as fnmatch patterns over
certificate names, who may control the repository:

    [default]
    models = []

    [devices.pi-kitchen]
    models = ["chain_cnn*"]          # chain_cnn and all its tails

    [devices.gateway-1]
    models = ["*"]

    [operators]
    names = ["ops-*"]                # `edgecut certs device ops-alice --dir tls/`

Under mutual TLS the endpoint knows who calls; a model-scoped call (ModelInfer,
ModelMetadata, ModelReady) for a model the device may not use is PERMISSION_DENIED, naming
the device and the model.

Repository control is for operators only, on every model: RepositoryModelLoad and
RepositoryModelUnload, so load, unload, and a canary's start, promote and rollback
(edgecut.cloud.management). From anyone else it is PERMISSION_DENIED naming the caller and
the action, so a device cannot unload or roll back a model for the whole fleet. A file
without `[operators]` lets nobody control the repository over the protocol (what is on disk
still loads at start, and in poll mode); with no auth file at all every admitted caller may,
as in Triton. Operators are a role, not extra devices: being one does not let a certificate
infer (name it under `[devices]` too for that).

Reading stays open, as in Triton, which has no per-caller rules: RepositoryIndex answers
every admitted caller (names, versions, states; no weights, no control), and so does
ModelStatistics without a model name. ModelConfig and ModelStatistics for a named model
answer a device that may use it, or an operator (a canary's per-version traffic is what an
operator decides on).

The file is re-read when it changes; a broken new version is logged and the previous rules
stay in force (a typo must not lock the fleet out, or in).

    >>> rules = parse_authorization({"devices": {"pi": {"models": ["chain_cnn*"]}},
    ...                              "operators": {"names": ["ops-*"]}}, source="auth.toml")
    >>> rules.allows("pi", "chain_cnn.cut3"), rules.allows("pi", "resnet"), rules.allows("x", "m")
    (True, False, False)
    >>> rules.is_operator("ops-alice"), rules.is_operator("pi")
    (True, False)
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edgecut.errors import BadProfileError, PermissionDeniedError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["AuthorizationFile", "AuthorizationRules", "load_authorization", "parse_authorization"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationRules:
    """Allowed model patterns per device name and for every other device; operator patterns."""

    devices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default: tuple[str, ...] = ()
    operators: tuple[str, ...] = ()
    source: str = "(rules)"

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", MappingProxyType(dict(self.devices)))

    def patterns_for(self, device: str | None) -> tuple[str, ...]:
        if device is not None and device in self.devices:
            return self.devices[device]
        return self.default

    def allows(self, device: str | None, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, p) for p in self.patterns_for(device))

    def is_operator(self, device: str | None) -> bool:
        """Whether `device` (a certificate name) matches one of `[operators] names`."""
        return device is not None and any(fnmatch.fnmatchcase(device, p) for p in self.operators)

    def check(self, device: str | None, model: str) -> None:
        """Raise PermissionDeniedError unless `device` may use `model`."""
        if self.allows(device, model):
            return
        patterns = self.patterns_for(device)
        allowed = _quoted(patterns) if patterns else "no models"
        section = f"[devices.{device}]" if device in self.devices else "[default]"
        raise PermissionDeniedError(
            f"{_who(device)} may not use model {model!r}: {self.source} {section} allows {allowed}"
        )

    def check_control(self, device: str | None, model: str, action: str) -> None:
        """Raise PermissionDeniedError unless `device` is an operator; `action` is the verb
        the message gives ("unload", "roll back", ...).

        >>> AuthorizationRules(operators=("ops-*",), source="auth.toml").check_control(
        ...     "pi", "m", "unload")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        edgecut.errors.PermissionDeniedError: device 'pi' may not unload model 'm': only operators ...
        """
        if self.is_operator(device):
            return
        operators = (f"[operators] names {_quoted(self.operators)}" if self.operators
                     else "names no operators (add [operators] names = [...])")
        raise PermissionDeniedError(
            f"{_who(device)} may not {action} model {model!r}: only operators control the "
            f"repository, and {self.source} {operators}"
        )

    def check_read(self, device: str | None, model: str) -> None:
        """Raise PermissionDeniedError unless `device` may use `model` or is an operator
        (ModelConfig and ModelStatistics of a named model)."""
        if not self.is_operator(device):
            self.check(device, model)


def _who(device: str | None) -> str:
    return f"device {device!r}" if device else "a caller without a client certificate"


def _quoted(patterns: tuple[str, ...]) -> str:
    return ", ".join(repr(p) for p in patterns)


# What a certificate name may hold (edgecut.protocol.pki), and fnmatch's own characters.
_NAME_PATTERN_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-*?[]!"
)


def parse_authorization(data: Mapping[str, Any], *, source: str) -> AuthorizationRules:
    """Rules from a parsed TOML document; BadProfileError lists every problem, by key."""
    problems: list[str] = []
    unknown = sorted(set(data) - {"default", "devices", "operators"})
    problems += [f"{source}: unknown key {k!r}; expected [default], [devices.NAME] and "
                 f"[operators]" for k in unknown]
    default = _models(data.get("default", {}), "default", source, problems)
    devices: dict[str, tuple[str, ...]] = {}
    table = data.get("devices", {})
    if not isinstance(table, Mapping):
        problems.append(f"{source}: devices must be a table of [devices.NAME] sections")
        table = {}
    for name, section in table.items():
        devices[name] = _models(section, f"devices.{name}", source, problems)
    operators = _operators(data.get("operators", {}), source, problems)
    if problems:
        raise BadProfileError("; ".join(problems))
    return AuthorizationRules(devices=devices, default=default, operators=operators,
                              source=source)


def _models(section: Any, key: str, source: str, problems: list[str]) -> tuple[str, ...]:
    return _patterns(section, key, "models", "model name patterns", source, problems)


def _operators(section: Any, source: str, problems: list[str]) -> tuple[str, ...]:
    names = _patterns(section, "operators", "names", 'certificate name patterns, e.g. ["ops-*"]',
                      source, problems)
    for name in names:
        odd = sorted(set(name) - _NAME_PATTERN_CHARS)
        if odd:
            problems.append(
                f"{source}: operators.names: {name!r} can match no certificate name (it has "
                f"{''.join(odd)!r}; names are letters, digits, '_', '.' and '-', as "
                f"`edgecut certs device NAME` writes them)"
            )
    return names


def _patterns(section: Any, key: str, field_name: str, what: str, source: str,
              problems: list[str]) -> tuple[str, ...]:
    if not isinstance(section, Mapping):
        problems.append(f"{source}: {key} must be a table with {field_name} = [...]")
        return ()
    problems += [f"{source}: {key}.{k} is not a known key; expected {field_name}"
                 for k in sorted(set(section) - {field_name})]
    patterns = section.get(field_name, [])
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        problems.append(
            f"{source}: {key}.{field_name} must be a list of {what} (strings, fnmatch syntax), "
            f"got {patterns!r}"
        )
        return ()
    return tuple(patterns)


def load_authorization(path: Path) -> AuthorizationRules:
    """Read and check an authorisation file; BadProfileError names the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadProfileError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise BadProfileError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadProfileError(f"{path}: not valid TOML ({exc})") from exc
    return parse_authorization(data, source=str(path))


class AuthorizationFile:
    """The rules of a file, re-read by `reload_if_changed` when its mtime or size changes."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._rules = load_authorization(self._path)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def rules(self) -> AuthorizationRules:
        with self._lock:
            return self._rules

    def check(self, device: str | None, model: str) -> None:
        self.rules.check(device, model)

    def check_control(self, device: str | None, model: str, action: str) -> None:
        self.rules.check_control(device, model, action)

    def check_read(self, device: str | None, model: str) -> None:
        self.rules.check_read(device, model)

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed; True if new rules are in force."""
        stamp = self._stat()
        with self._lock:
            if stamp == self._stamp:
                return False
            self._stamp = stamp
        try:
            rules = load_authorization(self._path)
        except BadProfileError as exc:
            logger.error("authorisation file not reloaded, previous rules stay: %s", exc)
            return False
        with self._lock:
            self._rules = rules
        logger.info("reloaded authorisation rules from %s (%d devices, %d operator patterns)",
                    self._path, len(rules.devices), len(rules.operators))
        return True

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)
