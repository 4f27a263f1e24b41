"""Write a run's results: summary.json, per-request CSV, sweep.csv, plots.

Per-request records are CSV (stdlib `csv`), not Parquet: Parquet needs pyarrow (~40 MB) for a
file most users open once in a spreadsheet or pandas; `pandas.read_csv` reads ours as is.
JSON is written with sorted keys off, in the summary's fixed order, floats at 12 significant
digits (`metrics.figure`), and no wall-clock field, so that equal inputs give equal bytes.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecut.simulations.metrics import comparison_rows, energy_j, figure

__all__ = ["REQUEST_COLUMNS", "write_requests", "write_summary", "write_sweep"]

REQUEST_COLUMNS = ("strategy", "device_class", "device", "arrival_s", "cut", "offloaded",
                   "latency_ms", "device_ms", "uplink_ms", "cloud_wait_ms", "cloud_ms",
                   "downlink_ms", "bytes_up", "bytes_down", "energy_j")


def _dump(doc: Any) -> str:
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"


def write_summary(summary: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    path.write_text(_dump(summary), encoding="utf-8")
    return path


def write_requests(result: Any, out_dir: str | os.PathLike[str]) -> Path:
    """requests.csv: one row per counted request and strategy (see REQUEST_COLUMNS)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "requests.csv"
    scenario, prepared = result.scenario, result.prepared
    w = prepared.workload
    counted = np.flatnonzero(w.arrival_s >= scenario.simulation.warmup_s)
    names = [g.name for g in scenario.devices]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(REQUEST_COLUMNS)
        for strategy, o in result.outcomes.items():
            s = o.services
            energy = sum(energy_j(scenario, prepared.tables, w, o).values())
            wait = np.nan_to_num((o.cloud_start_s - o.cloud_arrival_s) * 1000.0)
            latency = (o.done_s - w.arrival_s) * 1000.0
            cut_ids = [t.cut_ids for t in prepared.tables]
            for i in counted:
                g = int(w.group[i])
                used = bool(s.uses_cloud[i])
                writer.writerow([
                    strategy, names[g], int(w.device[i]) - w.device_offsets[g],
                    f"{w.arrival_s[i]:.9f}", int(cut_ids[g][s.cut[i]]), int(used),
                    f"{latency[i]:.6f}", f"{s.device_ms[i]:.6f}", f"{s.uplink_ms[i]:.6f}",
                    f"{wait[i]:.6f}", f"{s.cloud_ms[i]:.6f}" if used else "0",
                    f"{s.downlink_ms[i]:.6f}", round(s.up_wire_bytes[i]),
                    int(s.down_bytes[i]), f"{energy[i]:.9f}"])
    return path


def write_sweep(rows: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]], keys: Sequence[str],
                out_dir: str | os.PathLike[str]) -> Path:
    """sweep.csv: one row per (grid point, strategy); a column per swept key, then figures."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.csv"
    lines = []
    header: list[str] | None = None
    for point, summary in rows:
        for row in comparison_rows(summary):
            values = {**{k: point[k] for k in keys}, **row}
            if header is None:
                header = list(values)
            lines.append([_cell(values[h]) for h in header])
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header or list(keys))
        writer.writerows(lines)
    return path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return repr(figure(value))
    return str(value)
