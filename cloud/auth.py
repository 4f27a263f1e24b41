"""Per-device authorisation: which models each device (its certificate's name) may use.

A TOML file names device patterns' allowed models as fnmatch patterns; devices not listed
get `[default]` (nothing, when it is absent):

    [default]
    models = []

    [devices.pi-kitchen]
    models = ["chain_cnn*"]          # chain_cnn and all its tails

    [devices.gateway-1]
    models = ["*"]

Under mutual TLS the endpoint knows who calls; a model-scoped call (ModelInfer,
ModelMetadata, ModelReady) for a model the device may not use is PERMISSION_DENIED, naming
the device and the model. The file is re-read when it changes; a broken new version is
logged and the previous rules stay in force (a typo must not lock the fleet out, or in).

    >>> rules = parse_authorization({"devices": {"pi": {"models": ["chain_cnn*"]}}},
    ...                             source="auth.toml")
    >>> rules.allows("pi", "chain_cnn.cut3"), rules.allows("pi", "resnet"), rules.allows("x", "m")
    (True, False, False)
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
    """Allowed model patterns per device name, and for every other device."""

    devices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default: tuple[str, ...] = ()
    source: str = "(rules)"

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", MappingProxyType(dict(self.devices)))

    def patterns_for(self, device: str | None) -> tuple[str, ...]:
        if device is not None and device in self.devices:
            return self.devices[device]
        return self.default

    def allows(self, device: str | None, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, p) for p in self.patterns_for(device))

    def check(self, device: str | None, model: str) -> None:
        """Raise PermissionDeniedError unless `device` may use `model`."""
        if self.allows(device, model):
            return
        who = f"device {device!r}" if device else "a caller without a client certificate"
        patterns = self.patterns_for(device)
        allowed = ", ".join(repr(p) for p in patterns) if patterns else "no models"
        section = f"[devices.{device}]" if device in self.devices else "[default]"
        raise PermissionDeniedError(
            f"{who} may not use model {model!r}: {self.source} {section} allows {allowed}"
        )


def parse_authorization(data: Mapping[str, Any], *, source: str) -> AuthorizationRules:
    """Rules from a parsed TOML document; BadProfileError lists every problem, by key."""
    problems: list[str] = []
    unknown = sorted(set(data) - {"default", "devices"})
    problems += [f"{source}: unknown key {k!r}; expected [default] and [devices.NAME]"
                 for k in unknown]
    default = _models(data.get("default", {}), "default", source, problems)
    devices: dict[str, tuple[str, ...]] = {}
    table = data.get("devices", {})
    if not isinstance(table, Mapping):
        problems.append(f"{source}: devices must be a table of [devices.NAME] sections")
        table = {}
    for name, section in table.items():
        devices[name] = _models(section, f"devices.{name}", source, problems)
    if problems:
        raise BadProfileError("; ".join(problems))
    return AuthorizationRules(devices=devices, default=default, source=source)


def _models(section: Any, key: str, source: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(section, Mapping):
        problems.append(f"{source}: {key} must be a table with models = [...]")
        return ()
    problems += [f"{source}: {key}.{k} is not a known key; expected models"
                 for k in sorted(set(section) - {"models"})]
    models = section.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        problems.append(
            f"{source}: {key}.models must be a list of model name patterns (strings, fnmatch "
            f"syntax), got {models!r}"
        )
        return ()
    return tuple(models)


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
        logger.info("reloaded authorisation rules from %s (%d devices)", self._path,
                    len(rules.devices))
        return True

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)
