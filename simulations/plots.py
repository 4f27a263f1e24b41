"""PNG plots of a run (matplotlib, the optional `plot` extra): latency CDF per strategy, device
energy per request by term, cloud utilisation over time.

Example:
    >>> write_plots(result, "out/")   # doctest: +SKIP
    [PosixPath('out/latency_cdf.png'), PosixPath('out/energy.png'), PosixPath('out/cloud_utilisation.png')]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgecut.errors import UserInputError
from edgecut.simulations.metrics import energy_j, utilisation_series

__all__ = ["write_plots"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise UserInputError("plots need matplotlib: pip install 'edgecut[plot]' (or pass "
                             "--no-plots)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(result: Any, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write the three plots into `out_dir`; returns their paths."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scenario, prepared = result.scenario, result.prepared
    w = prepared.workload
    counted = w.arrival_s >= scenario.simulation.warmup_s
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, o in result.outcomes.items():
        ms = np.sort((o.done_s - w.arrival_s)[counted] * 1000.0)
        if len(ms):
            ax.plot(ms, np.arange(1, len(ms) + 1) / len(ms), label=name)
    ax.axvline(scenario.simulation.sla_ms, color="grey", linestyle=":", label="SLA")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("share of requests")
    ax.set_title(f"{Path(scenario.label).name}: latency CDF")
    ax.legend()
    paths.append(out / "latency_cdf.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(result.outcomes)
    bottom = np.zeros(len(names))
    terms = ("compute", "transmit", "receive", "wait", "tail")
    for term in terms:
        values = np.array([float(np.mean(energy_j(scenario, prepared.tables, w, o)[term][counted]))
                           if np.any(counted) else 0.0 for o in result.outcomes.values()])
        ax.bar(names, values, bottom=bottom, label=term)
        bottom += values
    ax.set_ylabel("device energy per request (J)")
    ax.set_title("device energy by term")
    ax.legend()
    paths.append(out / "energy.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, o in result.outcomes.items():
        t, u = utilisation_series(o, scenario.cloud.replicas, scenario.simulation.duration_s)
        ax.step(t, u, where="post", label=name)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("cloud utilisation")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"cloud utilisation, {scenario.cloud.replicas} replicas")
    ax.legend()
    paths.append(out / "cloud_utilisation.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return paths
