"""Trace files: bandwidth (`time_s throughput_mbps` per line) and arrival times (`time_s`).

The bandwidth format is the one Pensieve's cooked traces and most mobile-link datasets are
shared in (Norway HSDPA, Ghent 4G, FCC, converted): one sample per line, whitespace or comma
separated, `#` starts a comment. A sample holds until the next; the trace repeats after its
last sample (its period is the last time plus the mean step), and each device replays it from
its own random phase so that a fleet is not in lock-step.

Example:
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "t.txt"
    >>> _ = f.write_text("0 5\\n1 10\\n2 2.5\\n")
    >>> t = read_bandwidth_trace(f)
    >>> t.period_s, float(t.mbps_at(np.array([0.5, 1.5, 3.2]))[2])
    (3.0, 5.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["BandwidthTrace", "read_arrival_trace", "read_bandwidth_trace"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BandwidthTrace:
    """Step-wise throughput samples, repeated with period `period_s`."""

    times_s: np.ndarray
    mbps: np.ndarray
    period_s: float

    @property
    def mean_mbps(self) -> float:
        """Time-weighted mean over one period."""
        widths = np.diff(np.append(self.times_s, self.period_s))
        return float(np.sum(widths * self.mbps) / self.period_s)

    def mbps_at(self, t_s: np.ndarray) -> np.ndarray:
        """Throughput at times `t_s` (any shape; the trace repeats)."""
        phase = np.mod(t_s, self.period_s)
        i = np.searchsorted(self.times_s, phase, side="right") - 1
        return self.mbps[np.clip(i, 0, len(self.mbps) - 1)]


def _rows(path: Path) -> list[list[float]]:
    from edgecut.simulations.scenario import ScenarioError

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read {path}: {exc}") from exc
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError as exc:
            raise ScenarioError(f"{path}:{n}: expected numbers, got {line!r}") from exc
    if not rows:
        raise ScenarioError(f"{path}: holds no samples")
    return rows


def read_bandwidth_trace(path: str | Path) -> BandwidthTrace:
    """A `time_s throughput_mbps` trace; ScenarioError names the line that is wrong."""
    from edgecut.simulations.scenario import ScenarioError

    p = Path(path)
    rows = _rows(p)
    problems = []
    for n, row in enumerate(rows):
        if len(row) < 2:
            problems.append(f"sample {n} must be 'time_s throughput_mbps', got {row}")
        elif row[1] <= 0 or not np.isfinite(row[1]):
            problems.append(f"sample {n} throughput must be > 0 Mbps, got {row[1]:g}")
        elif n and row[0] <= rows[n - 1][0]:
            problems.append(f"sample {n} time must increase, got {row[0]:g} after "
                            f"{rows[n - 1][0]:g}")
    if problems:
        raise ScenarioError(f"{p}: " + "; ".join(problems[:5])
                            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    times = np.array([r[0] for r in rows]) - rows[0][0]
    mbps = np.array([r[1] for r in rows])
    step = float(np.mean(np.diff(times))) if len(times) > 1 else 1.0
    return BandwidthTrace(times_s=times, mbps=mbps, period_s=float(times[-1] + step))


def read_arrival_trace(path: str | Path) -> np.ndarray:
    """Arrival times in seconds (first column), sorted; ScenarioError if any is negative."""
    from edgecut.simulations.scenario import ScenarioError

    p = Path(path)
    times = np.array([r[0] for r in _rows(p)])
    if np.any(times < 0) or not np.all(np.isfinite(times)):
        raise ScenarioError(f"{p}: arrival times must be finite and >= 0")
    return np.sort(times)
