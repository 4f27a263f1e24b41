"""The benchmark's sections, each a function returning JSON-ready dicts (benchmarks/serving.py
prints and saves them). Every server runs on the server CPUs, every client on the client CPUs
(processes.layout()).

    throughput   clients 1/8/32/128 x batching off/on x models, edgecut vs Triton vs
                 onnxruntime alone at the batch sizes each server formed
    memory       RSS of K tails of one model against the full model
    channel      ModelInfer 4 MiB vs a bare grpcio call of 4 MiB, with/without malloc tuning
    canary       canary, change, rollback, canary, promote under load: failed requests
    soak         N seconds at ~80 % of measured capacity: failures, RSS growth
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from edgecut.cloud.native_server import available as native_available
from edgecut.protocol.pki import init_ca

from .loadgen import LoadSpec
from .models import MODELS, ModelSpec, mlp_tail, save
from .processes import (
    MALLOC_ENV,
    ForeignCpu,
    PinnedServer,
    endpoint_frontend,
    endpoint_process,
    layout,
    ort_alone,
    run_json,
    run_load_pinned,
)
from .repo import MAX_BATCH, write_model
from .triton import TritonProcess, TritonUnavailable

Progress = Callable[[str], None]

THROUGHPUT_MODELS = ("small_cnn", "wide_mlp")
# A load level is measured again (up to MAX_ATTEMPTS times, the quietest kept) when other
# processes used more than this share of the machine's CPU during it.
DISTURBED = 0.10
MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    duration_s: float
    warmup_s: float
    ort_seconds: float  # per batch size, onnxruntime alone


def prepare(workdir: Path, models: tuple[str, ...] = THROUGHPUT_MODELS
            ) -> tuple[Path, Path, Path]:
    """TLS files, the edgecut repository and the Triton (Python backend) repository."""
    tls = workdir / "tls"
    if not (tls / "ca.crt").exists():
        init_ca(tls)
    repo, trepo = workdir / "repo", workdir / "triton_repo"
    # One instance per server CPU: a run in flight on each, as onnxruntime alone has.
    instances = len(layout().server)
    for name in models:
        spec = MODELS[name]
        model = spec.build()
        save(model, workdir / "onnx" / f"{name}.onnx")
        for batching, suffix in ((False, "_nb"), (True, "_b")):
            write_model(repo, name + suffix, spec, model, batching=batching, instances=instances)
            write_model(trepo, name + suffix, spec, model, batching=batching, backend="python",
                        instances=instances)
    return tls, repo, trepo


def batch_histogram(address: str, tls: Path | None, model: str) -> dict[int, int]:
    """Executions by batch size so far (ModelStatistics: both servers answer it); `tls`
    None: a plaintext gRPC port."""
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(
        address, ssl=tls is not None,
        root_certificates=str(tls / "ca.crt") if tls is not None else None)
    try:
        stats = client.get_inference_statistics(model, client_timeout=10)
    finally:
        client.close()
    hist: dict[int, int] = {}
    for entry in stats.model_stats:
        for b in entry.batch_stats:
            hist[int(b.batch_size)] = hist.get(int(b.batch_size), 0) + int(b.compute_infer.count)
    return hist


def histogram_diff(after: dict[int, int], before: dict[int, int]) -> dict[int, int]:
    return {b: n - before.get(b, 0) for b, n in after.items() if n - before.get(b, 0) > 0}


def _adjacent_ort(onnx_dir: Path, model: str, hist: dict[int, int],
                  timing: Timing) -> dict[str, float]:
    """onnxruntime alone on this row's batch sizes (and 1), right after the row: the limit
    measured seconds, not minutes, away from the server it is compared with, so that drift
    of the machine between the two (a shared VM's clock and neighbours) stays out of the
    ratio. Sizes beyond the 8 carrying most rows are interpolated."""
    top = sorted(hist, key=lambda b: -b * hist[b])[:8]
    measured = ort_alone(onnx_dir / f"{model}.onnx", sorted({1, *top}),
                         seconds=timing.ort_seconds, row_shape=MODELS[model].row_shape)
    return {str(b): t for b, t in measured.items()}


def _run_server_levels(server: Any, server_name: str, tls: Path, levels: list[int],
                       clients: list[str], timing: Timing, progress: Progress, *,
                       models: tuple[str, ...], onnx_dir: Path,
                       check_output: bool = True) -> list[dict]:
    rows = []
    for name in models:
        spec = MODELS[name]
        for batching in (False, True):
            model = name + ("_b" if batching else "_nb")
            for level in levels:
                for client in clients:
                    if client == "edgecut" and level not in levels_for_edgecut_client(levels):
                        continue
                    progress(f"{server_name} {model} {level} clients ({client} client)")
                    rows.append(quietest(partial(
                        _measure_row, server, server_name, tls, spec, batching, level, client,
                        timing=timing, onnx_dir=onnx_dir, check_output=check_output), progress))
    return rows


def _measure_row(server: Any, server_name: str, tls: Path, spec: ModelSpec, batching: bool,
                 level: int, client: str, *, timing: Timing, onnx_dir: Path,
                 check_output: bool) -> dict:
    """One load level on one server: the throughput row, with the batch sizes the server
    formed and onnxruntime alone on them right after."""
    model = spec.name + ("_b" if batching else "_nb")
    before = batch_histogram(server.address, tls, model)
    with ForeignCpu(server.pid) as foreign:
        result = run_load_pinned(LoadSpec(
            client=client, address=server.address, tls_dir=str(tls), model=model,
            row_shape=spec.row_shape, input_name=spec.input_name,
            output_name=spec.output_name, clients=level, duration_s=timing.duration_s,
            warmup_s=timing.warmup_s, check_output=check_output))
    hist = histogram_diff(batch_histogram(server.address, tls, model), before)
    row = {"server": server_name, "client": client, "model": spec.name, "batching": batching,
           "clients": level, "batch_histogram": hist, "foreign_cpu": foreign.fraction,
           **asdict(result)}
    if hist:
        row["ort_seconds_per_run"] = _adjacent_ort(onnx_dir, spec.name, hist, timing)
    return row


def quietest(measure: Callable[[], dict], progress: Progress) -> dict:
    """`measure()` (a row with `foreign_cpu` and `failures`), again up to MAX_ATTEMPTS times
    while other processes used more than DISTURBED of the machine's CPU during it: the
    quietest attempt is kept, with the failures of every attempt and how many there were."""
    best: dict | None = None
    failures = attempts = 0
    while attempts < MAX_ATTEMPTS:
        row = measure()
        attempts += 1
        failures += row["failures"]
        if best is None or row["foreign_cpu"] < best["foreign_cpu"]:
            best = row
        if row["foreign_cpu"] <= DISTURBED:
            break
        progress(f"  others used {100 * row['foreign_cpu']:.0f}% of the CPU; measuring again")
    assert best is not None
    best["failures"], best["attempts"] = failures, attempts
    return best


_EDGECUT_CLIENT_LEVELS: list[int] = []


def levels_for_edgecut_client(levels: list[int]) -> list[int]:
    return _EDGECUT_CLIENT_LEVELS or levels


def _sizes_to_measure(rows: list[dict], model: str, cap: int = 16) -> list[int]:
    weight: dict[int, int] = {}
    for r in rows:
        if r["model"] == model:
            for b, n in r["batch_histogram"].items():
                weight[int(b)] = weight.get(int(b), 0) + int(b) * n
    chosen = {1, MAX_BATCH} | set(sorted(weight, key=lambda b: -weight[b])[:cap])
    return sorted(chosen)


def _seconds_at(t: dict[int, float], b: int) -> float:
    if b in t:
        return t[b]
    lower = max((k for k in t if k < b), default=min(t))
    upper = min((k for k in t if k > b), default=max(t))
    if lower == upper:
        return t[lower] * b / lower
    f = (b - lower) / (upper - lower)
    return t[lower] + f * (t[upper] - t[lower])


def ort_limit_rps(t: dict[int, float], hist: dict[int, int]) -> float | None:
    """Rows/s onnxruntime alone reaches running exactly this mix of batch sizes."""
    rows = sum(b * n for b, n in hist.items())
    seconds = sum(n * _seconds_at(t, b) for b, n in hist.items())
    return rows / seconds if seconds > 0 else None


def throughput(workdir: Path, *, levels: list[int], edgecut_client_levels: list[int],
               timing: Timing, triton_home: Path | None, triton_error: str | None,
               progress: Progress, models: tuple[str, ...] = THROUGHPUT_MODELS,
               unshared_levels: tuple[int, ...] = (),
               grpcio_levels: tuple[int, ...] = ()) -> dict:
    tls, repo, trepo = prepare(workdir, models)
    onnx_dir = workdir / "onnx"
    _EDGECUT_CLIENT_LEVELS[:] = edgecut_client_levels
    rows: list[dict] = []
    server_rss: dict[str, int] = {}
    with endpoint_process(repo, tls, workdir=workdir) as edgecut:
        frontend = endpoint_frontend(edgecut)
        rows += _run_server_levels(edgecut, "edgecut", tls, levels, ["triton", "edgecut"],
                                   timing, progress, models=models, onnx_dir=onnx_dir)
        server_rss["edgecut"] = edgecut.rss_bytes()
    # The same endpoint with share_weights off: its sessions pre-pack MatMul/Conv weights
    # (WeightPool turns pre-packing off for every model it pools, shared or not).
    if unshared_levels:
        with endpoint_process(repo, tls, workdir=workdir,
                              extra_args=["--no-share-weights"]) as unshared:
            rows += _run_server_levels(unshared, "edgecut-unshared", tls, list(unshared_levels),
                                       ["triton"], timing, progress, models=models,
                                       onnx_dir=onnx_dir)
    # The endpoint as shipped runs the native transport where it is built; the same endpoint
    # over grpcio, next to it, says what the transport is worth.
    # Where it is not built, `auto` serves over grpcio's core (cloud/core_frontend.py): that
    # is what a plain `pip install` gives, so it gets rows of its own too.
    variants = ([("edgecut-core", "core")] if frontend != "core" else []) + [
        ("edgecut-grpcio", "grpcio")]
    for server_name, transport in variants if grpcio_levels else ():
        with endpoint_process(repo, tls, workdir=workdir,
                              extra_args=["--frontend", transport]) as variant:
            rows += _run_server_levels(variant, server_name, tls, list(grpcio_levels),
                                       ["triton"], timing, progress, models=models,
                                       onnx_dir=onnx_dir)
    # The floor of each transport here: the same request bytes, no model, no OIP.
    floors = [("bare-grpcio", [])] + ([("bare-native", ["--native"])] if native_available() else [])
    for floor, flags in floors:
        with PinnedServer("benchmarks.serving.channel", ["serve", "--tls", str(tls), *flags],
                          workdir=workdir) as bare:
            spec = MODELS[models[0]]
            for level in levels:
                progress(f"{floor} handler, {spec.name} payload, {level} clients")
                with ForeignCpu(bare.pid) as foreign:
                    result = run_load_pinned(LoadSpec(
                        client="bare", address=bare.address, tls_dir=str(tls), model="",
                        row_shape=spec.row_shape, clients=level, duration_s=timing.duration_s,
                        warmup_s=timing.warmup_s))
                rows.append({"server": floor, "client": "bare", "model": spec.name,
                             "batching": False, "clients": level, "batch_histogram": {},
                             "foreign_cpu": foreign.fraction, **asdict(result)})
    triton_status = triton_error
    if triton_home is not None and triton_error is None:
        try:
            progress("starting tritonserver")
            with TritonProcess(triton_home, trepo, tls, workdir=workdir) as triton:
                rows += _run_server_levels(triton, "triton", tls, levels, ["triton"], timing,
                                           progress, models=models, onnx_dir=onnx_dir,
                                           check_output=False)
                server_rss["triton"] = triton.rss_bytes()
        except (TritonUnavailable, OSError) as exc:
            triton_status = str(exc)
    ort: dict[str, dict[int, float]] = {}
    ort_foreign: dict[str, float] = {}
    for name in models:
        sizes = _sizes_to_measure(rows, name)
        progress(f"onnxruntime alone: {name} at batch sizes {sizes}")
        for _ in range(MAX_ATTEMPTS):
            with ForeignCpu() as foreign:
                measured = ort_alone(workdir / "onnx" / f"{name}.onnx", sizes,
                                     seconds=timing.ort_seconds,
                                     row_shape=MODELS[name].row_shape)
            if name not in ort or foreign.fraction < ort_foreign[name]:
                ort[name], ort_foreign[name] = measured, foreign.fraction
            if foreign.fraction <= DISTURBED:
                break
            progress(f"  others used {100 * foreign.fraction:.0f}% of the CPU; measuring again")
    for r in rows:
        hist = {int(b): n for b, n in r["batch_histogram"].items()}
        # The row's own adjacent measurement when it has one, else the one after all loads.
        adjacent = {int(b): t for b, t in r.get("ort_seconds_per_run", {}).items()}
        table = adjacent or ort[r["model"]]
        limit = ort_limit_rps(table, hist) if hist else None
        r["mean_batch"] = (sum(b * n for b, n in hist.items()) / sum(hist.values())
                           if hist else None)
        r["ort_limit_rps"] = limit
        r["vs_ort"] = r["throughput_rps"] / limit if limit else None
        r["ort_batch1_rps"] = 1.0 / table[1]
        if r["server"].startswith("bare-"):  # no model ran: what would be left for one
            r["ort_limit_rps"] = r["ort_batch1_rps"]
            r["vs_ort"] = None
    return {"rows": rows, "ort_seconds_per_run": {m: {str(b): s for b, s in t.items()}
                                                   for m, t in ort.items()},
            "ort_foreign_cpu": ort_foreign, "server_rss_bytes": server_rss,
            "triton_unavailable": triton_status,
            "edgecut_frontend": frontend}


# -- memory ----------------------------------------------------------------------------


def memory(workdir: Path, *, k: int, variants: list[str], progress: Progress) -> dict:
    base = workdir / "memory"
    for i in range(k):
        path = base / "tails" / f"deep_mlp.cut{i}" / "1" / "model.onnx"
        if not path.exists():
            save(mlp_tail(i), path)
    full = base / "full" / "deep_mlp" / "1" / "model.onnx"
    if not full.exists():
        save(mlp_tail(0), full)
    out: dict[str, Any] = {"k": k, "weights_mib": 32, "variants": {}}
    for variant in variants:
        progress(f"memory: {variant}")
        added = {}
        for which in ("full", "tails"):
            res = run_json("benchmarks.serving.memory",
                           [str(base / which), "--variant", variant, "--intra-op-threads", "1"],
                           cpus=layout().server[:1], timeout_s=300)
            added[which] = res["rss_added_bytes"]
        out["variants"][variant] = {"full_mib": added["full"] / 2**20,
                                    "tails_mib": added["tails"] / 2**20,
                                    "ratio": added["tails"] / added["full"]}
    out["tails_rss_ratio"] = out["variants"].get("repository", {}).get("ratio")
    return out


# -- channel ---------------------------------------------------------------------------


CHANNEL_ROUNDS = 3


def channel(workdir: Path, *, seconds: float, progress: Progress) -> dict:
    from .models import MODELS as _M

    tls = workdir / "tls"
    if not (tls / "ca.crt").exists():
        init_ca(tls)
    repo = workdir / "channel_repo"
    spec = _M["sink"]
    model = spec.build()
    write_model(repo, "sink", spec, model, batching=False)
    out: dict[str, Any] = {"nbytes": 4 << 20, "runs": {}}
    # default_malloc: glibc's defaults in every process (the endpoint told not to raise its
    # thresholds); as_shipped: the endpoint raises them as `edgecut serve` does, the bare
    # server and the clients keep glibc's defaults; tuned_malloc: raised in every process.
    variants: tuple[tuple[str, dict[str, str] | None, list[str]], ...] = (
        ("default_malloc", None, ["--glibc-defaults"]), ("as_shipped", None, []),
        ("tuned_malloc", MALLOC_ENV, []))
    for label, env, endpoint_args in variants:
        with endpoint_process(repo, tls, workdir=workdir, env=env,
                              extra_args=endpoint_args) as ep, \
                PinnedServer("benchmarks.serving.channel", ["serve", "--tls", str(tls)],
                             workdir=workdir, env=env) as bare:
            # Short runs taken in turns, medians kept: the ratio compares calls made seconds
            # apart, not a bare run against an edgecut run a minute later.
            rounds: dict[str, list[dict]] = {}
            for turn in range(CHANNEL_ROUNDS):
                for kind, address in (("bare", bare.address), ("edgecut", ep.address),
                                      ("triton", ep.address)):
                    progress(f"channel: {kind} ({label}, round {turn + 1}/{CHANNEL_ROUNDS})")
                    rounds.setdefault(kind, []).append(run_json(
                        "benchmarks.serving.channel", ["call", _json({
                            "kind": kind, "address": address, "tls_dir": str(tls),
                            "model": "sink", "nbytes": 4 << 20,
                            "seconds": seconds / CHANNEL_ROUNDS})],
                        cpus=layout().clients[:1], timeout_s=seconds + 120, env=env))
            for kind, runs in rounds.items():
                runs.sort(key=lambda r: r["mb_per_s"])
                out["runs"][f"{kind}/{label}"] = {**runs[len(runs) // 2],
                                                  "rounds_mb_per_s": [r["mb_per_s"] for r in runs]}
    for label, _, _ in variants:
        bare = out["runs"][f"bare/{label}"]["mb_per_s"]
        out[f"edgecut_vs_bare_{label}"] = out["runs"][f"edgecut/{label}"]["mb_per_s"] / bare
        out[f"tritonclient_vs_bare_{label}"] = out["runs"][f"triton/{label}"]["mb_per_s"] / bare
    out["channel_vs_bare_grpc"] = out["edgecut_vs_bare_as_shipped"]
    return out


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


# -- canary ----------------------------------------------------------------------------


def _control(address: str, tls: Path, name: str, **params: Any) -> None:
    import grpc

    from edgecut.protocol import grpc_service_pb2 as pb
    from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub
    from edgecut.protocol.tls import channel_credentials

    with grpc.secure_channel(address, channel_credentials(tls)) as ch:
        request = pb.RepositoryModelLoadRequest(model_name=name)
        for key, value in params.items():
            p = request.parameters[key]
            if isinstance(value, bool):
                p.bool_param = value
            elif isinstance(value, int):
                p.int64_param = value
            else:
                p.string_param = str(value)
        GRPCInferenceServiceStub(ch).RepositoryModelLoad(request, timeout=30)


def canary(workdir: Path, *, seconds: float, clients: int, progress: Progress) -> dict:
    """Under load: canary v2 30 %, 60 %, rollback, canary v2 20 %, promote."""
    tls, _, _ = prepare(workdir, ("small_cnn",))
    repo = workdir / "canary_repo"
    spec = MODELS["small_cnn"]
    model = spec.build()
    folder = write_model(repo, "cnn", spec, model, batching=True)
    (folder / "2").mkdir(exist_ok=True)
    save(model, folder / "2" / "model.onnx")
    with open(folder / "config.pbtxt", "a") as f:
        f.write("version_policy: { specific: { versions: [1] } }\n")
    steps = [("canary 30%", {"edgecut_canary_version": 2, "edgecut_canary_percent": 30}),
             ("canary 60%", {"edgecut_canary_version": 2, "edgecut_canary_percent": 60}),
             ("rollback", {"edgecut_rollback": True}),
             ("canary 20%", {"edgecut_canary_version": 2, "edgecut_canary_percent": 20}),
             ("promote", {"edgecut_promote": True})]
    done: list[dict] = []
    with endpoint_process(repo, tls, workdir=workdir) as ep:
        results: dict[str, Any] = {}

        def load(client: str) -> None:
            results[client] = run_load_pinned(LoadSpec(
                client=client, address=ep.address, tls_dir=str(tls), model="cnn",
                row_shape=spec.row_shape, clients=clients, duration_s=seconds, warmup_s=0.5))

        threads = [threading.Thread(target=load, args=(c,)) for c in ("triton", "edgecut")]
        for t in threads:
            t.start()
        time.sleep(1.5 + seconds / (len(steps) + 1))
        for label, params in steps:
            progress(f"canary under load: {label}")
            started = time.perf_counter()
            error = None
            try:
                _control(ep.address, tls, "cnn", **params)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            done.append({"step": label, "ms": (time.perf_counter() - started) * 1e3,
                         "error": error,
                         "inferences_by_version_after": _per_version(ep.address, tls, "cnn")})
            time.sleep(seconds / (len(steps) + 1))
        for t in threads:
            t.join(timeout=seconds + 120)
        per_version = _per_version(ep.address, tls, "cnn")
    loads = {c: asdict(r) for c, r in results.items()}
    return {"steps": done, "loads": loads, "per_version_inferences": per_version,
            "failed_requests": sum(r["failures"] for r in loads.values()),
            "completed_requests": sum(r["requests"] for r in loads.values())}


def _per_version(address: str, tls: Path, name: str) -> dict[str, int]:
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(address, ssl=True, root_certificates=str(tls / "ca.crt"))
    try:
        stats = client.get_inference_statistics(name, client_timeout=10)
    finally:
        client.close()
    return {e.version: int(e.inference_count) for e in stats.model_stats}


# -- soak ------------------------------------------------------------------------------


# Closed-loop seconds before the soak proper: every client in flight at once.
SOAK_BURST_S = 10.0


def soak(workdir: Path, *, seconds: float, capacity_rps: float, clients: int,
         progress: Progress, sample_every_s: float = 5.0) -> dict:
    """`seconds` at 80 % of `capacity_rps` (small CNN, batching on) on a fresh endpoint.

    The endpoint first gets SOAK_BURST_S of closed-loop load from the same clients: all of
    them in flight at once, as in any backlog. That is when the process reaches its high-water
    mark (each in-flight request's buffers, the largest batches), and glibc keeps part of that
    resident for good, fragmented between live blocks. Without the burst, the first backlog of
    the soak proper made that one step instead, whenever it came: +12 MiB (+10 %) at 20-35 s
    in 60-150 s soaks here, flat afterwards, and none after a burst. The burst's own RSS is
    reported (`rss_after_burst_mib`); growth compares the RSS early in the soak proper with
    the RSS at its end (`_start_and_end_rss`).
    """
    tls, repo, _ = prepare(workdir, ("small_cnn",))
    spec = MODELS["small_cnn"]
    rate = 0.8 * capacity_rps
    samples: list[tuple[float, int]] = []
    with endpoint_process(repo, tls, workdir=workdir) as ep:
        progress(f"soak: {SOAK_BURST_S:.0f} s burst, {clients} clients in closed loop")
        burst = run_load_pinned(LoadSpec(
            client="triton", address=ep.address, tls_dir=str(tls), model="small_cnn_b",
            row_shape=spec.row_shape, clients=clients, duration_s=SOAK_BURST_S, warmup_s=0.5))
        after_burst = ep.rss_bytes()
        stop = threading.Event()
        box: dict[str, Any] = {}

        def load() -> None:
            box["result"] = run_load_pinned(LoadSpec(
                client="triton", address=ep.address, tls_dir=str(tls), model="small_cnn_b",
                row_shape=spec.row_shape, clients=clients, duration_s=seconds, warmup_s=2.0,
                rate_per_s=rate))
            stop.set()

        thread = threading.Thread(target=load)
        foreign = ForeignCpu(ep.pid).__enter__()
        thread.start()
        start = time.perf_counter()
        while not stop.wait(sample_every_s):
            samples.append((time.perf_counter() - start, ep.rss_bytes()))
            if len(samples) % 6 == 0:
                progress(f"soak: {samples[-1][0]:.0f}/{seconds:.0f} s, "
                         f"RSS {samples[-1][1] / 2**20:.0f} MiB")
        thread.join(timeout=seconds + 180)
        foreign.__exit__()
    result = asdict(box["result"])
    first, last = _start_and_end_rss(samples, seconds)
    return {"seconds": seconds, "target_rps": rate, "capacity_rps": capacity_rps,
            "achieved_rps": result["throughput_rps"], "failures": result["failures"],
            "requests": result["requests"], "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"], "late_ms_p99": result["late_ms_p99"],
            "burst_s": SOAK_BURST_S, "burst_rps": burst.throughput_rps,
            "burst_failures": burst.failures, "rss_after_burst_mib": after_burst / 2**20,
            "rss_start_mib": first / 2**20, "rss_end_mib": last / 2**20,
            "rss_max_mib": max((s[1] for s in samples), default=0) / 2**20,
            "rss_growth": (last / first - 1) if first else None,
            "rss_growth_second_half": _second_half_growth(samples),
            "foreign_cpu": foreign.fraction,
            "p99_from_schedule_ms": result["p99_from_schedule_ms"],
            "rss_samples": [(round(t, 1), b) for t, b in samples]}


def _start_and_end_rss(samples: list[tuple[float, int]], seconds: float) -> tuple[int, int]:
    """Median RSS of the samples from 10 % to 25 % of the soak, and of its last 15 %.

    Medians, not single samples: under load RSS swings by 10-30 MiB within seconds (the
    buffers of the requests in flight in a backlog, freed memory between trims), and one
    sample taken in such a swing would read as growth or shrinkage that is not there.
    """
    if not samples:
        return 0, 0
    start = _median([b for t, b in samples if 0.10 * seconds <= t <= 0.25 * seconds])
    end = _median([b for t, b in samples if 0.85 * seconds <= t <= seconds])
    return start or samples[0][1], end or samples[-1][1]


def _second_half_growth(samples: list[tuple[float, int]]) -> float | None:
    """Median RSS of the last quarter over the median of the third: a leak keeps growing,
    an allocator that has reached its working set does not."""
    n = len(samples)
    if n < 8:
        return None
    third = _median([b for _, b in samples[n // 2: 3 * n // 4]])
    fourth = _median([b for _, b in samples[3 * n // 4:]])
    return fourth / third - 1


def _median(values: list[int]) -> int:
    """The upper median (0 for none): one of the samples, not an average of two."""
    return sorted(values)[len(values) // 2] if values else 0
