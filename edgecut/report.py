"""Tables and JSON the CLI prints; formatting only."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def cut_json(cut: Any) -> dict[str, Any]:
    """The `edgecut cuts --json` object of one cut (a contract: keys are only ever added)."""
    return dict(cut.to_json())


def print_cuts(cuts: Sequence[Any], *, title: str) -> None:
    table = Table(title=title)
    for column in ("id", "device nodes", "cloud nodes", "up", "down", "crossing"):
        table.add_column(column, justify="left" if column == "crossing" else "right")
    for cut in cuts:
        crossing = ", ".join(cut.crossing)
        if len(crossing) > 60:
            crossing = f"{crossing[:57]}... ({len(cut.crossing)} tensors)"
        table.add_row(str(cut.id), str(cut.device_nodes), str(cut.cloud_nodes),
                      human_bytes(cut.bytes), human_bytes(cut.down_bytes), crossing)
    Console().print(table)


def print_checks(checks: Sequence[Any], *, where: str) -> None:
    table = Table(title=f"head→tail against the full model ({where})")
    for column in ("cut", "output", "max abs diff", "ok"):
        table.add_column(column)
    for check in checks:
        for i, (name, diff) in enumerate(check.max_abs_diff.items()):
            table.add_row(str(check.cut) if i == 0 else "", name, f"{diff:.3g}",
                          ("yes" if check.ok else "NO") if i == 0 else "")
    Console().print(table)
    failed = [c.cut for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} of {len(checks)} cuts within tolerance"
          + (f"; failed: {failed}" if failed else ""))


@contextmanager
def progress_bar(description: str, *, quiet: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """A `progress(step, done, total)` callback drawing a rich bar on stderr while it runs."""
    if quiet:
        yield lambda _step, _done, _total: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[step]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None, step="")

        def update(step: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=max(total, 1), step=step)

        yield update


def print_candidates(rows: Sequence[Mapping[str, Any]], *, title: str) -> None:
    """The `edgecut plan --explain` table: one row per candidate cut, times in ms."""
    table = Table(title=title)
    columns = ("id", "kind", "up", "device", "encode", "uplink", "rtt", "cloud", "downlink",
               "latency", "energy J", "memory", "")
    for column in columns:
        table.add_column(column, justify="left" if column in ("kind", "") else "right")
    for r in rows:
        marks = []
        if r["chosen"]:
            marks.append("chosen")
        if r["on_envelope"]:
            marks.append("envelope")
        if not r["feasible"]:
            marks.append("infeasible")
        if r["measured"]:
            marks.append(f"measured x{r['device_ratio']:.2f}/x{r['cloud_ratio']:.2f}")
        style = "bold" if r["chosen"] else None
        table.add_row(str(r["id"]), r["kind"], human_bytes(r["bytes"]), f"{r['device_ms']:.3f}",
                      f"{r['encode_ms']:.3f}", f"{r['uplink_ms']:.3f}", f"{r['rtt_ms']:.1f}",
                      f"{r['cloud_ms']:.3f}", f"{r['downlink_ms']:.3f}", f"{r['latency_ms']:.3f}",
                      f"{r['energy_j']:.4g}", human_bytes(r["device_memory_bytes"]),
                      ", ".join(marks), style=style)
    Console().print(table)


def model_profile_json(measured: Any, predicted: Mapping[str, float], *,
                       device_name: str) -> dict[str, Any]:
    """The `edgecut profile model` file: this machine's per-node times and the prediction."""
    return {
        "model_sha256": measured.model_sha256,
        "input_shapes": {k: list(v) for k, v in measured.input_shapes.items()},
        "this_machine": {
            "node_ms": measured.node_ms,
            "total_ms": measured.total_ms,
            "node_sum_ms": sum(measured.node_ms.values()),
            "unattributed_ms": measured.unattributed_ms,
            "peak_memory_mib": measured.peak_memory_mib,
            "runs": measured.runs,
            "optimization": measured.optimization,
            "op_types": measured.node_op_types,
        },
        "predicted": {
            "device": device_name,
            "node_ms": dict(predicted),
            "total_ms": sum(predicted.values()),
        },
    }
