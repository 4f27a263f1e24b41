"""Parameter sweeps: the grid of `--sweep KEY=v1,v2` values, one simulation per point.

Each point is the scenario with its keys overridden (`scenario.apply_overrides`), checked like
the file itself, and simulated with the scenario's seed: its summary is the same on any
executor, and rows come back in grid order whatever order the points finish in.

Executors:
- "processes" (default): `concurrent.futures.ProcessPoolExecutor`, one process per core
  (spawned, so nothing of the parent's threads is inherited);
- "threads": `ThreadPoolExecutor` (numpy releases the GIL in the vectorised stages only);
- "dask": dask's local multiprocessing scheduler (`pip install 'edgecut[dask]'`);
- "dask://HOST:PORT": a running Dask cluster (`distributed`); its workers must see the
  scenario's files (profiles, traces, model) at the same paths.

Example:
    >>> grid_points([("cloud.replicas", [1, 2]), ("devices.0.count", [10, 20])])[1]
    {'cloud.replicas': 1, 'devices.0.count': 20}
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from edgecut.errors import UserInputError
from edgecut.simulations.scenario import apply_overrides, scenario_from_dict

__all__ = ["EXECUTORS", "grid_points", "run_point", "run_sweep"]

EXECUTORS = ("processes", "threads", "dask")

Progress = Callable[[str, int, int], None]


def grid_points(grid: Sequence[tuple[str, Sequence[Any]]]) -> list[dict[str, Any]]:
    """Every combination of the swept values, the last key varying fastest."""
    keys = [k for k, _ in grid]
    return [dict(zip(keys, values, strict=True))
            for values in itertools.product(*(v for _, v in grid))]


def run_point(data: Mapping[str, Any], label: str, base_dir: str,
              point: Mapping[str, Any]) -> dict[str, Any]:
    """The summary of one grid point (a top-level function: it travels to workers)."""
    from edgecut.simulations.run import simulate

    scenario = scenario_from_dict(apply_overrides(data, point, label=label), label=label,
                                  base_dir=Path(base_dir))
    return simulate(scenario).summary


def check_points(data: Mapping[str, Any], label: str, base_dir: str,
                 points: Sequence[Mapping[str, Any]]) -> None:
    """Check every point before any runs: a bad swept value fails at once, naming its key."""
    problems: list[str] = []
    for point in points:
        try:
            scenario_from_dict(apply_overrides(data, point, label=label), label=label,
                               base_dir=Path(base_dir))
        except UserInputError as exc:
            problems += [line for line in str(exc).splitlines() if line not in problems]
    if problems:
        from edgecut.simulations.scenario import ScenarioError

        raise ScenarioError("\n".join(problems))


def _local_executor(kind: str, workers: int) -> Executor:
    if kind == "threads":
        return ThreadPoolExecutor(max_workers=workers)
    import multiprocessing

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def run_sweep(data: Mapping[str, Any], label: str, base_dir: str | os.PathLike[str],
              grid: Sequence[tuple[str, Sequence[Any]]], *, executor: str = "processes",
              workers: int | None = None, progress: Progress | None = None
              ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """[(point, summary)] for every grid point, in grid order."""
    points = grid_points(grid)
    base = str(base_dir)
    check_points(data, label, base, points)
    say = progress or (lambda _s, _d, _t: None)
    total = len(points)
    say("grid points", 0, total)
    summaries: list[dict[str, Any] | None] = [None] * total
    if executor.startswith("dask"):
        summaries = _run_dask(executor, data, label, base, points, say)
    elif executor in ("processes", "threads"):
        n = workers or min(total, os.cpu_count() or 1)
        with _local_executor(executor, n) as pool:
            futures: dict[Future[dict[str, Any]], int] = {
                pool.submit(run_point, data, label, base, p): i for i, p in enumerate(points)}
            for done, future in enumerate(as_completed(futures), start=1):
                summaries[futures[future]] = future.result()
                say("grid points", done, total)
    else:
        raise UserInputError(f"--executor must be processes, threads, dask or dask://HOST:PORT, "
                             f"got {executor!r}")
    return [(p, s) for p, s in zip(points, summaries, strict=True) if s is not None]


def _run_dask(executor: str, data: Mapping[str, Any], label: str, base: str,
              points: Sequence[Mapping[str, Any]], say: Progress) -> list[dict[str, Any] | None]:
    try:
        import dask
    except ImportError as exc:
        raise UserInputError("--executor dask needs dask: pip install 'edgecut[dask]'") from exc
    total = len(points)
    if executor == "dask":
        tasks = [dask.delayed(run_point)(data, label, base, p) for p in points]
        computed: list[dict[str, Any] | None] = list(dask.compute(*tasks, scheduler="processes"))
        say("grid points", total, total)
        return computed
    if not executor.startswith("dask://"):
        raise UserInputError(f"--executor {executor!r}: a Dask cluster is dask://HOST:PORT")
    try:
        from distributed import Client
    except ImportError as exc:
        raise UserInputError("--executor dask://HOST:PORT needs distributed: "
                             "pip install 'edgecut[dask]'") from exc
    address = "tcp://" + executor.removeprefix("dask://")
    try:
        client = Client(address, timeout=10, set_as_default=False)
    except OSError as exc:
        raise UserInputError(f"--executor {executor}: no Dask scheduler answers at {address}: "
                             f"{exc}") from exc
    try:
        futures = [client.submit(run_point, data, label, base, p, pure=False) for p in points]
        results: list[dict[str, Any] | None] = []
        for done, future in enumerate(futures, start=1):  # all run at once; read in grid order
            results.append(future.result())
            say("grid points", done, total)
        return results
    finally:
        client.close()
