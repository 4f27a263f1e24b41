"""Draw a plan's latency against uplink bandwidth: one line per cut, the envelope on top.

matplotlib is imported here only, lazily, with the Agg backend (no display needed); the rest
of edgecut never needs it.

Example:
    >>> plot_envelope(planned, "envelope.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgecut.errors import UserInputError

__all__ = ["plot_envelope"]

_POINTS = 200


def plot_envelope(planned: Any, path: str | os.PathLike[str], *, max_lines: int = 12) -> Path:
    """Write a PNG of latency (ms) over uplink Mbps (log scale) for the envelope cuts, the
    chosen cut and up to `max_lines` cuts in all, with the envelope drawn thick."""
    try:
        import matplotlib
    except ImportError as exc:
        raise UserInputError("--plot needs matplotlib: pip install 'edgecut[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgecut.partitioner.planner import cost_parameters

    inputs = planned.plot_inputs
    device, network, cloud = inputs["device"], inputs["network"], inputs["cloud"]
    edges = [s.min_mbps for s in planned.envelope if s.min_mbps > 0]
    low = min([network.uplink_mbps / 100, *[e / 10 for e in edges]])
    high = max([network.uplink_mbps * 100, *[e * 10 for e in edges]])
    grid = [low * (high / low) ** (i / (_POINTS - 1)) for i in range(_POINTS)]
    shown = [s.cut for s in planned.envelope]
    shown += [planned.chosen.id] if planned.chosen.id not in shown else []
    shown += [c.id for c in planned.candidates if c.id not in shown][: max(0, max_lines - len(shown))]
    params = [cost_parameters(device, network, cloud, uplink_mbps=bw) for bw in grid]

    figure, axes = plt.subplots(figsize=(8, 5))
    curves: dict[int, list[float]] = {}
    for cut_id in shown:
        candidate = planned.candidate(cut_id)
        curves[cut_id] = [candidate.cost(p).latency_ms for p in params]
        axes.plot(grid, curves[cut_id], linewidth=1, alpha=0.7, label=f"cut {cut_id}")
    best = []
    for i, bw in enumerate(grid):
        segment = next(s for s in reversed(planned.envelope) if s.min_mbps <= bw)
        best.append(curves[segment.cut][i])
    axes.plot(grid, best, color="black", linewidth=3, alpha=0.5, label="envelope")
    axes.axvline(network.uplink_mbps, color="grey", linestyle="--",
                 label=f"{network.name}: cut {planned.chosen.id}")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("uplink bandwidth (Mbps)")
    axes.set_ylabel("predicted latency (ms)")
    axes.set_title(f"{planned.model_path.name} on {device.name} to {cloud.name}")
    axes.legend(fontsize="small", ncol=2)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
