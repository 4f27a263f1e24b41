"""Version policies: which of a model's versions on disk are served, and which one a request
runs on. Pure functions.

    >>> select_versions(VersionPolicy(kind="latest", num_versions=2), [1, 2, 3])
    (2, 3)
    >>> select_versions(VersionPolicy(kind="specific", versions=(1, 4)), [1, 2, 3])
    (1,)
    >>> select_versions(VersionPolicy(kind="latest"), [1, 2, 3], failed={3})
    (2,)

The policies are Triton's (`version_policy` in config.pbtxt; the default is latest 1). One
deliberate difference: `latest N` means the N highest versions *that load*. A version that
failed to load is passed in `failed` and skipped, so a broken upload of version 3 leaves
version 2 serving instead of taking the model down. `all` and `specific` never substitute.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from edgecut.errors import BadModelError, ModelNotFoundError

__all__ = ["VersionPolicy", "choose_version", "missing_versions", "select_versions"]

PolicyKind = Literal["latest", "all", "specific"]


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionPolicy:
    """`latest` (the `num_versions` highest), `all`, or `specific` (`versions`)."""

    kind: PolicyKind = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in ("latest", "all", "specific"):
            problems.append(f"version policy must be latest, all or specific, got {self.kind!r}")
        if self.kind == "latest" and self.num_versions < 1:
            problems.append(f"latest.num_versions must be >= 1, got {self.num_versions}")
        if self.kind == "specific":
            if not self.versions:
                problems.append("specific.versions must name at least one version")
            bad = [v for v in self.versions if v < 1]
            if bad:
                problems.append(f"specific.versions must be positive integers, got {bad}")
        if problems:
            raise BadModelError("; ".join(problems))

    def describe(self) -> str:
        """`latest 1`, `all`, `specific [1, 3]`: the form messages and the index use."""
        if self.kind == "latest":
            return f"latest {self.num_versions}"
        if self.kind == "specific":
            return f"specific {sorted(set(self.versions))}"
        return "all"


def select_versions(policy: VersionPolicy, available: Iterable[int],
                    failed: Collection[int] = ()) -> tuple[int, ...]:
    """The versions to serve, ascending, among `available` (the version folders on disk).

    `failed` holds versions known not to load: `latest` skips them and takes the next lower
    ones; `all` and `specific` just leave them out.
    """
    usable = sorted({v for v in available if v > 0} - set(failed))
    if policy.kind == "all":
        return tuple(usable)
    if policy.kind == "specific":
        wanted = set(policy.versions)
        return tuple(v for v in usable if v in wanted)
    return tuple(usable[-policy.num_versions:])


def missing_versions(policy: VersionPolicy, available: Iterable[int]) -> tuple[int, ...]:
    """Versions a `specific` policy names that are not on disk (none for other policies).

    >>> missing_versions(VersionPolicy(kind="specific", versions=(1, 4)), [1, 2])
    (4,)
    """
    if policy.kind != "specific":
        return ()
    return tuple(sorted(set(policy.versions) - set(available)))


def choose_version(name: str, requested: str, ready: Sequence[int],
                   failed: Mapping[int, str] | None = None) -> int:
    """The version to serve: `requested` if it is ready, the highest ready one when empty.

    >>> choose_version("m", "", [1, 3])
    3
    >>> choose_version("m", "1", [1, 3])
    1

    A failed newest version is skipped by "latest": the previous one keeps serving (and the
    failure is logged and shown by ModelReady/statistics). Raises ModelNotFoundError naming
    the model, the versions available, and the load failure if that is why.
    """
    failed = failed or {}
    available = ", ".join(str(v) for v in sorted(ready)) or "none"
    if requested == "":
        if ready:
            return max(ready)
        why = "; ".join(f"version {v} failed to load: {r}" for v, r in sorted(failed.items()))
        raise ModelNotFoundError(
            f"model {name!r} has no ready version" + (f" ({why})" if why else "")
        )
    try:
        version = int(requested)
    except ValueError:
        version = 0
    if version <= 0:
        raise ModelNotFoundError(
            f"model {name!r} version {requested!r} is not a version; expected a positive "
            f"integer or empty for the latest (available: {available})"
        )
    if version in ready:
        return version
    if version in failed:
        raise ModelNotFoundError(
            f"model {name!r} version {version} failed to load: {failed[version]} "
            f"(available: {available})"
        )
    raise ModelNotFoundError(
        f"model {name!r} has no version {version}; available versions: {available}"
    )
