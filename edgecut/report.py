"""Tables and JSON the CLI prints; formatting only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def cut_json(cut: Any) -> dict[str, Any]:
    """The `edgecut cuts --json` object of one cut (a contract: keys are only ever added)."""
    return {
        "id": cut.id,
        "crossing": list(cut.crossing),
        "bytes": cut.bytes,
        "down_bytes": cut.down_bytes,
        "device_nodes": cut.device_nodes,
        "cloud_nodes": cut.cloud_nodes,
        "device_outputs": list(cut.device_outputs),
        "cloud_outputs": list(cut.cloud_outputs),
    }


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
