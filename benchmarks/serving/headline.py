"""The headline comparison: the transport a plain `pip install` gives against Triton, over
gRPC and over HTTP/REST, batching off and on, measured in turns.

Every server is up at once on the server CPUs, idle but for the one being loaded:

    edgecut-core     the `core` transport (grpcio's core: no system gRPC), gRPC over TLS,
                     and its HTTP/REST binding over HTTPS
    edgecut-native   the native transport (only where it is built), gRPC over TLS
    edgecut-plain    an endpoint without TLS: HTTP/REST as Triton's HTTP endpoint serves it
    triton           Triton 2.51: gRPC over TLS, HTTP/REST without TLS (it has none)

A round loads each of them in turn, once per model, batching setting and protocol, with the
same stock clients (tritonclient.grpc, tritonclient.http with binary tensors); the rounds
alternate the order. A shared VM's speed drifts by more than the servers' gap within
minutes, so the ratio that counts is taken within each round, between loads seconds apart:
`ratios[...]` holds one per round, and the table shows their median and their lowest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

from edgecut.cloud.native_server import available as native_available

from .loadgen import LoadSpec
from .models import MODELS
from .processes import (
    CpuSampler,
    ForeignCpu,
    endpoint_process,
    http_address,
    run_load_pinned,
    server_allowance,
)
from .suite import batch_histogram, histogram_diff, prepare, quietest
from .triton import TritonProcess, TritonUnavailable

__all__ = ["HEADLINE_MODELS", "PAIRS", "Cell", "headline"]

Progress = Callable[[str], None]

HEADLINE_MODELS = ("small_cnn", "ppocr_cls")


@dataclass(frozen=True, slots=True)
class Cell:
    """One server reached over one protocol."""

    server: str
    protocol: str  # "grpc" | "http" (plaintext) | "https"


# (edgecut's cell, Triton's cell): the ratios the headline reports.
PAIRS: dict[str, tuple[Cell, Cell]] = {
    "core_vs_triton_grpc": (Cell("edgecut-core", "grpc"), Cell("triton", "grpc")),
    "native_vs_triton_grpc": (Cell("edgecut-native", "grpc"), Cell("triton", "grpc")),
    "http_vs_triton_http": (Cell("edgecut-plain", "http"), Cell("triton", "http")),
}


@dataclass(frozen=True, slots=True)
class _Target:
    grpc: str  # gRPC address (batch statistics are read over it)
    http: str | None
    tls: Path | None  # of the gRPC port
    check_output: bool


def _spec(target: _Target, cell: Cell, model: str, clients: int, seconds: float,
          warmup_s: float, tls: Path) -> LoadSpec:
    spec = MODELS[model.rsplit("_", 1)[0]]
    if cell.protocol == "grpc":
        client, address, secure = "triton", target.grpc, True
    else:
        assert target.http is not None
        client, address, secure = "triton-http", target.http, cell.protocol == "https"
    return LoadSpec(client=client, address=address, tls_dir=str(tls), tls=secure, model=model,
                    row_shape=spec.row_shape, input_name=spec.input_name,
                    output_name=spec.output_name, clients=clients, duration_s=seconds,
                    warmup_s=warmup_s, check_output=target.check_output)


def _load(target: _Target, cell: Cell, model: str, *, clients: int, seconds: float,
          warmup_s: float, tls: Path, pid: int) -> dict[str, Any]:
    before = batch_histogram(target.grpc, target.tls, model)
    with ForeignCpu(pid) as foreign, CpuSampler(pid) as server_cpu:
        result = run_load_pinned(_spec(target, cell, model, clients, seconds, warmup_s, tls))
    hist = histogram_diff(batch_histogram(target.grpc, target.tls, model), before)
    executions = sum(hist.values())
    # How much of its CPUs (or quota) the server used in the measured window: well below 1,
    # the clients, not the server, set the pace of this closed-loop load.
    busy = server_cpu.busy(result.window_started_at, result.window_s,
                           allowance_cpus=server_allowance())
    return {**asdict(result), "foreign_cpu": foreign.fraction, "server_busy": busy,
            "batch_histogram": hist,
            "mean_batch": sum(b * n for b, n in hist.items()) / executions
            if executions else None}


def headline(workdir: Path, *, triton_home: Path | None, rounds: int, clients: int,
             seconds: float, warmup_s: float, progress: Progress,
             models: tuple[str, ...] = HEADLINE_MODELS,
             triton_error: str | None = None) -> dict[str, Any]:
    """The section's JSON; without `triton_home`, `triton_error` says why (the JSON's
    `triton_unavailable`) and the ratios are empty."""
    tls, repo, trepo = prepare(workdir, models)
    cells = [Cell("edgecut-core", "grpc"), Cell("edgecut-core", "https"),
             Cell("edgecut-plain", "http")]
    if native_available():
        cells.insert(1, Cell("edgecut-native", "grpc"))
    triton_error = (triton_error or "no Triton home given") if triton_home is None else None
    with contextlib.ExitStack() as stack:
        servers: dict[str, tuple[_Target, int]] = {}
        core = stack.enter_context(endpoint_process(repo, tls, workdir=workdir, http=True,
                                                    extra_args=["--frontend", "core"]))
        servers["edgecut-core"] = (_Target(core.address, http_address(core), tls, True), core.pid)
        if native_available():
            native = stack.enter_context(endpoint_process(
                repo, tls, workdir=workdir, extra_args=["--frontend", "native"]))
            servers["edgecut-native"] = (_Target(native.address, None, tls, True), native.pid)
        plain = stack.enter_context(endpoint_process(repo, None, workdir=workdir, http=True,
                                                     extra_args=["--frontend", "core"]))
        servers["edgecut-plain"] = (_Target(plain.address, http_address(plain), None, True),
                                    plain.pid)
        if triton_home is not None:
            try:
                progress("starting tritonserver (gRPC over TLS, HTTP)")
                triton = stack.enter_context(TritonProcess(triton_home, trepo, tls,
                                                           workdir=workdir, http=True))
                # Triton 2.51's Python backend answers without output bytes on a machine
                # without CUDA (benchmarks/README.md): those answers are counted, not checked.
                servers["triton"] = (_Target(triton.address, triton.http_address, tls, False),
                                     triton.pid)
                cells += [Cell("triton", "grpc"), Cell("triton", "http")]
            except (TritonUnavailable, OSError) as exc:
                triton_error = str(exc)
        runs: list[dict[str, Any]] = []
        combos = [(m, b) for m in models for b in (False, True)]
        for turn in range(rounds):
            order = cells if turn % 2 == 0 else cells[::-1]
            for name, batching in combos:
                model = name + ("_b" if batching else "_nb")
                for cell in order:
                    target, pid = servers[cell.server]
                    progress(f"round {turn + 1}/{rounds}: {cell.server} over {cell.protocol}, "
                             f"{model}, {clients} clients")
                    runs.append({"round": turn, "server": cell.server,
                                 "protocol": cell.protocol, "model": name,
                                 "batching": batching, "clients": clients,
                                 **quietest(partial(_load, target, cell, model,
                                                    clients=clients, seconds=seconds,
                                                    warmup_s=warmup_s, tls=tls, pid=pid),
                                            progress)})
    return {"runs": runs, "rows": summarise(runs), "ratios": ratios(runs),
            "rounds": rounds, "clients": clients, "seconds": seconds,
            "triton_unavailable": triton_error}


def _key(run: dict[str, Any]) -> tuple[str, str, str, bool]:
    return run["server"], run["protocol"], run["model"], run["batching"]


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per server, protocol, model and batching: the medians over the rounds."""
    groups: dict[tuple[str, str, str, bool], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(_key(run), []).append(run)
    rows = []
    for (server, protocol, model, batching), group in groups.items():
        rows.append({
            "server": server, "protocol": protocol, "model": model, "batching": batching,
            "rounds": len(group),
            "rows_per_s": median(r["throughput_rps"] for r in group),
            "rows_per_s_rounds": [round(r["throughput_rps"], 1) for r in group],
            "p50_ms": median(r["p50_ms"] for r in group),
            "p99_ms": median(r["p99_ms"] for r in group),
            "mean_batch": median(r["mean_batch"] or 0.0 for r in group),
            "failures": sum(r["failures"] for r in group),
            "empty_outputs": sum(r["empty_outputs"] for r in group),
            "foreign_cpu_max": max(r["foreign_cpu"] for r in group),
            "server_busy": median(r.get("server_busy", 0.0) for r in group)})
    return rows


def ratios(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each pair in PAIRS, model and batching: edgecut's rows/s over Triton's in each
    round, and p99 likewise (Triton's over edgecut's, so that above 1 is edgecut ahead)."""
    by_round = {(r["round"], *_key(r)): r for r in runs}
    rounds = sorted({r["round"] for r in runs})
    out: dict[str, dict[str, Any]] = {}
    for pair, (ours, theirs) in PAIRS.items():
        for model in dict.fromkeys(r["model"] for r in runs):
            for batching in (False, True):
                rows, tails = [], []
                for turn in rounds:
                    a = by_round.get((turn, ours.server, ours.protocol, model, batching))
                    b = by_round.get((turn, theirs.server, theirs.protocol, model, batching))
                    if a and b and b["throughput_rps"] and a["p99_ms"]:
                        rows.append(a["throughput_rps"] / b["throughput_rps"])
                        tails.append(b["p99_ms"] / a["p99_ms"])
                if rows:
                    out[f"{pair}/{model}/{'on' if batching else 'off'}"] = {
                        "rows_per_s": [round(x, 3) for x in rows], "median": median(rows),
                        "lowest": min(rows), "p99": [round(x, 3) for x in tails],
                        "p99_median": median(tails)}
    return out
