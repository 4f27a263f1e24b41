"""Version policies are pure: the versions served for the versions on disk."""

from __future__ import annotations

import pytest

from edgecut.cloud.versions import VersionPolicy, missing_versions, select_versions
from edgecut.errors import BadModelError


def test_latest_n() -> None:
    assert select_versions(VersionPolicy(), [3, 1, 2]) == (3,)
    assert select_versions(VersionPolicy(kind="latest", num_versions=2), [3, 1, 2]) == (2, 3)
    assert select_versions(VersionPolicy(kind="latest", num_versions=5), [1, 2]) == (1, 2)


def test_latest_skips_versions_that_failed() -> None:
    assert select_versions(VersionPolicy(kind="latest", num_versions=2), [1, 2, 3], {3}) == (1, 2)


def test_all_and_specific_never_substitute() -> None:
    assert select_versions(VersionPolicy(kind="all"), [2, 1, 3], {3}) == (1, 2)
    policy = VersionPolicy(kind="specific", versions=(1, 3, 7))
    assert select_versions(policy, [1, 2, 3], {3}) == (1,)
    assert missing_versions(policy, [1, 2, 3]) == (7,)
    assert missing_versions(VersionPolicy(), [1]) == ()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "latest", "num_versions": 0}, "num_versions must be >= 1, got 0"),
    ({"kind": "specific"}, "at least one version"),
    ({"kind": "specific", "versions": (0, 2)}, r"positive integers, got \[0\]"),
    ({"kind": "newest"}, "latest, all or specific"),
])
def test_bad_policies(kwargs: dict, message: str) -> None:
    with pytest.raises(BadModelError, match=message):
        VersionPolicy(**kwargs)


def test_describe() -> None:
    assert VersionPolicy(kind="specific", versions=(3, 1)).describe() == "specific [1, 3]"
    assert VersionPolicy(kind="all").describe() == "all"
