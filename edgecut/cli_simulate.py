"""`edgecut simulate`: run a fleet scenario (or a sweep of it) and write its results.

    edgecut simulate SCENARIO.toml --out DIR [--seed N] [--strategy NAME ...]
                     [--sweep KEY=v1,v2 ...] [--executor processes|threads|dask|dask://HOST:PORT]
                     [--requests] [--no-plots] [--json]

Writes DIR/summary.json (and DIR/requests.csv with --requests, PNG plots unless --no-plots),
or with --sweep DIR/sweep.csv; prints a comparison table. The wall time and event rate are
printed on stderr only: the files hold none, so equal inputs give equal files.

Parses, calls edgecut.simulations, prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edgecut.cli_types import at_least

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # argparse has no public name
    """Add `simulate` to the `edgecut` command's subparsers."""
    p = subparsers.add_parser("simulate", help="simulate offloading strategies for a fleet "
                                               "described in a scenario file")
    p.add_argument("scenario", metavar="SCENARIO.toml",
                   help="a scenario file, or example:NAME for a shipped example "
                        "(phones-lte, city-cameras-wifi, rush-hour-3g)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for summary.json (or sweep.csv), requests.csv and plots")
    p.add_argument("--seed", type=at_least(0), metavar="N",
                   help="the random seed (default: the scenario's simulation.seed)")
    p.add_argument("--strategy", action="append", metavar="NAME",
                   help="run only this strategy (repeatable; default: strategies.compare)")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=v1,v2",
                   help="run the grid of these values (dotted keys, list index for tables: "
                        "cloud.replicas=2,4 devices.0.count=100,1000; repeatable)")
    p.add_argument("--executor", default="processes", metavar="KIND",
                   help="where sweep points run: processes (default), threads, dask, or "
                        "dask://HOST:PORT (a Dask cluster)")
    p.add_argument("--workers", type=at_least(1), metavar="N",
                   help="sweep processes or threads (default: one per core)")
    p.add_argument("--requests", action="store_true",
                   help="also write requests.csv, one row per counted request and strategy")
    p.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    p.add_argument("--json", action="store_true", help="print the summary JSON, not a table")
    p.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from edgecut import report
    from edgecut.simulations.scenario import load_scenario, parse_override, read_scenario_data

    if args.scenario.startswith("example:"):
        from edgecut.simulations import example_path

        args.scenario = example_path(args.scenario.removeprefix("example:"))
    args.scenario = Path(args.scenario)
    grid = [parse_override(s) for s in args.sweep]
    overrides: dict[str, Any] = {}
    if args.strategy:
        overrides["strategies.compare"] = list(args.strategy)
    if args.seed is not None:
        overrides["simulation.seed"] = args.seed
    scenario = load_scenario(args.scenario, overrides=overrides)  # checks the file first
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    started = time.perf_counter()
    if grid:
        from edgecut.simulations.output import write_sweep
        from edgecut.simulations.scenario import apply_overrides
        from edgecut.simulations.sweep import run_sweep

        data = apply_overrides(read_scenario_data(args.scenario), overrides,
                               label=str(args.scenario))
        with report.progress_bar("simulating the grid", quiet=args.json) as progress:
            rows = run_sweep(data, str(args.scenario), scenario.base_dir, grid,
                             executor=args.executor, workers=args.workers, progress=progress)
        path = write_sweep(rows, [k for k, _ in grid], args.out)
        wall = time.perf_counter() - started
        if args.json:
            print(json.dumps([{"point": p, "summary": s} for p, s in rows], indent=1))
        else:
            _print_sweep(rows, [k for k, _ in grid])
        say(f"wrote {path}: {len(rows)} grid points x {len(scenario.strategies.compare)} "
            f"strategies in {wall:.1f} s")
        return 0

    from edgecut.simulations.output import write_requests, write_summary
    from edgecut.simulations.run import simulate

    with report.progress_bar(f"simulating {scenario.device_count} devices",
                             quiet=args.json) as progress:
        result = simulate(scenario, progress=progress)
    wall = time.perf_counter() - started
    written = [write_summary(result.summary, args.out)]
    if args.requests:
        written.append(write_requests(result, args.out))
    if not args.no_plots:
        try:
            from edgecut.simulations.plots import write_plots

            written += write_plots(result, args.out)
        except ImportError:  # pragma: no cover - matplotlib is in the test extra
            print("edgecut simulate: no plots (pip install 'edgecut[plot]')", file=sys.stderr)
    if args.json:
        print(json.dumps(result.summary, indent=1))
    else:
        _print_summary(result.summary)
    events = sum(s["events"] for s in result.summary["strategies"].values())
    requests = result.summary["requests_simulated"]
    say(f"simulated {requests} requests x {len(result.outcomes)} strategies in {wall:.1f} s "
        f"({events / max(wall, 1e-9):,.0f} events/s); wrote "
        + ", ".join(str(p) for p in written))
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['scenario']}: {sum(summary['devices'].values())} devices, "
                        f"seed {summary['seed']}, SLA {summary['sla_ms']:g} ms")
    for column in ("strategy", "requests", "p50 ms", "p95 ms", "p99 ms", "SLA miss", "req/s",
                   "J/request", "cloud util", "offloaded", "MB up"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name, s in summary["strategies"].items():
        lat = s["latency_ms"]
        table.add_row(name, str(s["requests"]), f"{lat['p50']:.1f}", f"{lat['p95']:.1f}",
                      f"{lat['p99']:.1f}", f"{s['sla_violation_rate']:.1%}",
                      f"{s['throughput_rps']:.1f}", f"{s['device_energy_j_per_request']:.3f}",
                      f"{s['cloud_utilisation']:.1%}", f"{s['offloaded_share']:.0%}",
                      f"{s['bytes_up'] / 1e6:.1f}")
    Console().print(table)


def _print_sweep(rows: list[tuple[dict[str, Any], dict[str, Any]]], keys: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sweep")
    for column in (*keys, "strategy", "p50 ms", "p95 ms", "SLA miss", "J/request", "cloud util"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for point, summary in rows:
        for name, s in summary["strategies"].items():
            table.add_row(*(str(point[k]) for k in keys), name, f"{s['latency_ms']['p50']:.1f}",
                          f"{s['latency_ms']['p95']:.1f}", f"{s['sla_violation_rate']:.1%}",
                          f"{s['device_energy_j_per_request']:.3f}",
                          f"{s['cloud_utilisation']:.1%}")
    Console().print(table)
