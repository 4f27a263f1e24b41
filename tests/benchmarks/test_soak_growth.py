"""How the soak reads RSS growth (benchmarks/serving/suite.py): medians of windows, so that a
swing with the requests in flight reads as no growth and a real step still shows."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.serving.suite import _second_half_growth, _start_and_end_rss  # noqa: E402

MIB = 1 << 20
SECONDS = 300.0


def _samples(rss_mib_at: dict[float, int], base_mib: int = 120) -> list[tuple[float, int]]:
    """One sample every 5 s; `base_mib` except where `rss_mib_at` says otherwise."""
    return [(t, rss_mib_at.get(t, base_mib) * MIB) for t in (5.0 * i for i in range(1, 61))]


def _growth(samples: list[tuple[float, int]]) -> float:
    start, end = _start_and_end_rss(samples, SECONDS)
    return end / start - 1


def test_swings_at_the_edges_of_the_windows_read_as_no_growth() -> None:
    # A backlog at the first sample counted (30 s) and another at the very end.
    samples = _samples({30.0: 155, 35.0: 150, 295.0: 160, 300.0: 158})
    assert abs(_growth(samples)) < 0.01


def test_a_step_that_stays_reads_as_growth() -> None:
    samples = _samples({t: 135 for t in (5.0 * i for i in range(20, 61))})  # from 100 s on
    assert _growth(samples) > 0.10
    # It happened before the second half: a leak would keep growing there, a step does not.
    assert abs(_second_half_growth(samples) or 0.0) < 0.01


def test_steady_growth_shows_in_both_measures() -> None:
    samples = [(t, int((120 + t / 5) * MIB)) for t in (5.0 * i for i in range(1, 61))]
    assert _growth(samples) > 0.10
    assert (_second_half_growth(samples) or 0.0) > 0.05
