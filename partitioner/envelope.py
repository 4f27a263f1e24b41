"""The best cut as a function of bandwidth: a lower envelope, computed once per plan.

At uplink bandwidth `bw` (Mbps) a cut's latency is `a + b / bw`: `a` holds everything that
does not move bytes (compute, codecs, round trip, queue) and `b` the bytes on the wire. The
downlink is taken to scale with the uplink, keeping the profile's ratio downlink/uplink fixed,
so `b = (uplink_ms + downlink_ms) * uplink_mbps` of the profile (`envelope_candidate`). A link
whose two directions change independently needs re-planning for the downlink.

With y = 1 / bw every cut is the line a + b*y, so the best cut over bandwidth is the lower
envelope of lines over y >= 0, found by the convex-hull trick in O(n log n) (the sort). The
hull test runs on exact fractions, so equal or nearly parallel lines cannot flip it. Ties go to
fewer bytes (smaller b), then to the candidate given first; at a breakpoint both cuts are
equally fast and `cut_for_bandwidth` answers with the faster-link one (min_mbps <= bw).
A breakpoint outside the positive floats (1e400 Mbps: two cuts that differ by 1e-300 ms) or
equal as a float to the next one is dropped, so every segment has a non-empty float range.

Example:
    >>> env = lower_envelope([(0, 50.0, 800.0), (1, 20.0, 2000.0), (2, 90.0, 0.0)])
    >>> [(s.cut, round(s.min_mbps, 3), s.max_mbps) for s in env]
    [(2, 0.0, 20.0), (0, 20.0, 40.0), (1, 40.0, inf)]
    >>> cut_for_bandwidth(env, 30.0)
    0
    >>> env[-1].to_json()
    {'cut': 1, 'min_mbps': 40.0, 'max_mbps': None}
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from edgecut.errors import BadPlanError, UserInputError
from edgecut.partitioner.cost import CostParameters, CutCost

__all__ = ["EnvelopeSegment", "cut_for_bandwidth", "envelope_candidate", "lower_envelope"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopeSegment:
    """Cut `cut` is the fastest for uplink bandwidths in [min_mbps, max_mbps)."""

    cut: int
    min_mbps: float
    max_mbps: float  # math.inf for the last segment

    def __post_init__(self) -> None:
        if not (0 <= self.min_mbps < self.max_mbps and not math.isnan(self.max_mbps)):
            raise UserInputError(
                f"envelope segment of cut {self.cut}: need 0 <= min_mbps < max_mbps, got "
                f"{self.min_mbps}..{self.max_mbps}"
            )

    def to_json(self) -> dict[str, Any]:
        """{"cut", "min_mbps", "max_mbps"}; JSON has no infinity, so an open end is null."""
        return {"cut": self.cut, "min_mbps": self.min_mbps,
                "max_mbps": None if math.isinf(self.max_mbps) else self.max_mbps}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EnvelopeSegment:
        """The inverse of `to_json`; BadPlanError naming the bad key."""
        try:
            top = data["max_mbps"]
            return cls(cut=int(data["cut"]), min_mbps=float(data["min_mbps"]),
                       max_mbps=math.inf if top is None else float(top))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadPlanError(f"envelope segment {dict(data)!r}: expected keys cut, min_mbps, "
                               f"max_mbps (null for no upper end): {exc}") from exc


def envelope_candidate(cut: int, cost: CutCost, params: CostParameters) -> tuple[int, float, float]:
    """(cut, a_ms, b) of a costed cut, with b in ms * Mbps (see the module docstring)."""
    moving = cost.uplink_ms + cost.downlink_ms
    return cut, cost.latency_ms - moving, moving * params.uplink_mbps


def lower_envelope(candidates: Sequence[tuple[int, float, float]]) -> list[EnvelopeSegment]:
    """The fastest cut on each bandwidth range, ranges contiguous from 0 to math.inf.

    `candidates` are (cut, a_ms, b): latency a_ms + b / bandwidth_mbps, a and b finite, b >= 0.
    """
    if not candidates:
        raise UserInputError("lower envelope: need at least one candidate cut")
    for cut, a, b in candidates:
        if not (math.isfinite(a) and math.isfinite(b) and b >= 0):
            raise UserInputError(f"lower envelope: cut {cut} needs finite a and b >= 0, got {a}, {b}")
    # Steepest first (most bytes: best on the fastest links); among equal b keep the least a,
    # and among equal lines the one given first (the sort is stable).
    lines = sorted(
        ((Fraction(a), Fraction(b), cut) for cut, a, b in candidates), key=lambda x: (-x[1], x[0])
    )
    hull: list[tuple[Fraction, Fraction, int]] = []
    for line in lines:
        if hull and hull[-1][1] == line[1]:
            continue  # same slope, no smaller intercept
        while hull and line[0] <= hull[-1][0]:
            hull.pop()  # flatter and no higher at y = 0: the steeper line never wins on y >= 0
        while len(hull) >= 2 and _crossing(hull[-2], line) <= _crossing(hull[-2], hull[-1]):
            hull.pop()  # the middle line is nowhere strictly below both neighbours
        hull.append(line)
    # Each hull line wins for y up to where the next takes over; y = 1 / bandwidth.
    segments: list[EnvelopeSegment] = []
    upper = math.inf
    last = hull[0]
    for left, right in itertools.pairwise(hull):
        a1, b1, _ = left
        a2, b2, _ = right
        try:
            lower = float((b1 - b2) / (a2 - a1))  # bandwidth where both are equally fast
        except OverflowError:
            lower = math.inf  # beyond any float bandwidth: the steeper cut never wins
        if lower <= 0.0:
            break  # underflow: the flatter cuts win only below the least positive float
        if lower < upper:  # exact breakpoints are distinct; their floats may not be
            segments.append(EnvelopeSegment(cut=left[2], min_mbps=lower, max_mbps=upper))
            upper = lower
        last = right
    segments.append(EnvelopeSegment(cut=last[2], min_mbps=0.0, max_mbps=upper))
    segments.reverse()
    return segments


def _crossing(p: tuple[Fraction, Fraction, int], q: tuple[Fraction, Fraction, int]) -> Fraction:
    """y where line p (steeper) meets line q."""
    return (q[0] - p[0]) / (p[1] - q[1])


def cut_for_bandwidth(envelope: Sequence[EnvelopeSegment], mbps: float) -> int:
    """The cut the envelope picks at uplink bandwidth `mbps`, by bisection: O(log n)."""
    if not mbps >= 0:
        raise UserInputError(f"bandwidth must be >= 0 Mbps, got {mbps}")
    if not envelope:
        raise UserInputError("empty envelope: build it with lower_envelope(candidates)")
    i = bisect_right(envelope, mbps, key=lambda s: s.min_mbps) - 1
    return envelope[max(i, 0)].cut
