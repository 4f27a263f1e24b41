"""The fleet simulator against theory, against SimPy, and against the real system.

    python benchmarks/simulation.py --out /tmp/simulation.json            # about 4 minutes
    python benchmarks/simulation.py --quick --out /tmp/simulation.json    # about 1 minute
    python benchmarks/simulation.py --sections validation --out v.json

Sections (`--sections correctness,scale,validation`):

- correctness: queues whose theory is exact, simulated through whole scenarios. M/D/1 on the
  device (one Raspberry Pi, edge-only, Poisson arrivals at utilisation 0.5 and 0.8) against
  Pollaczek-Khinchine; M/D/c in the cloud (10,000 devices offloading to c = 1, 4 replicas
  without batching at utilisation 0.7) against Crommelin's exact M/D/c mean wait. ~200k
  requests each; simulated/theory ratios of the mean wait.
- scale: the headline, 1M requests from 10k budget phones on an LTE trace (4 batched GPU
  replicas, service-time spread cv 0.3 on the device, 0.15 in the cloud) on the vectorised
  engine (dads), and SimPy running an M/M/1 queue of as many customers (SimPy is the engine
  LEAF and most Python simulators build on), interleaved three times in this run: the ratio
  of the medians. Then wall time of dads and of edgecut by ranks (`ranks.py`) at 1k, 10k and
  100k devices, and edgecut on the event engine against SimPy on 100k requests (interleaved).
- validation: the real system on this machine (an endpoint from `create_server` on
  loopback, a `Predictor` in local, split and offload mode, one request at a time) against
  the simulator given this machine's profile (`profile_device`, with the model's per-node
  table from `profile_model` attached), the cloud as the same machine, and the loopback link
  as `probe_network` measured it. simulated/measured median and p95 latency per mode; and
  "calibrated", with the per-node table scaled so that local mode's median matches (this
  shared machine's speed drifts with its load between profiling and running), which tests
  how the simulator composes device, link and cloud in split and offload mode.

It prints the tables and writes JSON; it asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecut.simulations.run import prepare, run_strategy
from edgecut.simulations.scenario import scenario_from_dict


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- theory

def md1_wait(service_s: float, rho: float) -> float:
    return rho * service_s / (2 * (1 - rho))


def mdc_wait(c: int, rho: float, service_s: float, terms: int = 400) -> float:
    """Crommelin's exact mean wait of M/D/c (Tijms, A First Course in Stochastic Models, 5.2)."""
    total = 0.0
    for k in range(1, terms):
        a = k * c * rho
        # P(Poisson(a) >= m), summed in logs from the top so the tail keeps its precision
        def tail(m: int, a: float = a) -> float:
            j = max(m, int(a + 40 * math.sqrt(a) + 40))
            s = 0.0
            for i in range(j, m - 1, -1):
                s += math.exp(i * math.log(a) - a - math.lgamma(i + 1))
            return s
        term = tail(k * c) - tail(k * c + 1) / rho
        total += term
        if k > 10 and abs(term) < 1e-14:
            break
    return total * service_s


def _scenario(devices: list[dict[str, Any]], cloud: dict[str, Any], duration: float,
              compare: list[str], base: Path = Path(".")) -> Any:
    return scenario_from_dict({
        "simulation": {"duration_s": duration, "warmup_s": duration * 0.02, "seed": 11},
        "model": {"zoo": "vision_cnn"}, "cloud": cloud, "devices": devices,
        "strategies": {"compare": compare}}, label="benchmark.toml", base_dir=base)


def correctness(requests: int, work: Path) -> dict[str, Any]:
    rows = []
    device = {"name": "pi", "count": 1, "profile": "raspberry-pi-4", "network": "wifi",
              "arrival": {"rate_per_s": 1.0}}
    probe = prepare(_scenario([device], {}, 1.0, ["edge-only"]))
    table = probe.tables[0]
    service = float(table.device_ms[table.edge_only]) / 1000.0
    for rho in (0.5, 0.8):
        rate = rho / service
        s = _scenario([{**device, "arrival": {"rate_per_s": rate}}], {}, requests / rate,
                      ["edge-only"])
        p = prepare(s)
        o = run_strategy(s, p, "edge-only")
        keep = p.workload.arrival_s >= s.simulation.warmup_s
        wait = float(np.mean((o.head_start_s - p.workload.arrival_s)[keep]))
        theory = md1_wait(service, rho)
        rows.append({"queue": "M/D/1 device", "servers": 1, "utilisation": rho,
                     "requests": int(keep.sum()), "service_ms": service * 1000,
                     "simulated_wait_ms": wait * 1000, "theory_wait_ms": theory * 1000,
                     "ratio": wait / theory})
        _log(f"M/D/1 rho={rho}: {wait * 1000:.3f} ms simulated, {theory * 1000:.3f} ms theory")
    cloud_file = work / "cloud-x2.toml"
    cloud_file.write_text("[cloud]\nname = \"pi-x2\"\nspeedup = 2.0\nreference = "
                          "\"raspberry-pi-4\"\nreplicas = 1\nmax_batch = 1\n")
    fleet = {"name": "fleet", "count": 10_000, "profile": "raspberry-pi-4",
             "network": "up=100000,down=100000,rtt=0", "arrival": {"rate_per_s": 0.01}}
    for c in (1, 4):
        cloud = {"profile": str(cloud_file), "replicas": c, "max_batch_size": 1}
        probe = prepare(_scenario([fleet], cloud, 1.0, ["cloud-only"]))
        table = probe.tables[0]
        service = float(table.cloud_ms[table.cloud_only]) / 1000.0
        rho = 0.7
        rate = rho * c / service / fleet["count"]
        duration = requests / (rate * fleet["count"])
        s = _scenario([{**fleet, "arrival": {"rate_per_s": rate}}], cloud, duration,
                      ["cloud-only"])
        p = prepare(s)
        o = run_strategy(s, p, "cloud-only")
        keep = p.workload.arrival_s >= s.simulation.warmup_s
        wait = float(np.mean((o.cloud_start_s - o.cloud_arrival_s)[keep]))
        theory = mdc_wait(c, rho, service)
        rows.append({"queue": f"M/D/{c} cloud", "servers": c, "utilisation": rho,
                     "requests": int(keep.sum()), "service_ms": service * 1000,
                     "simulated_wait_ms": wait * 1000, "theory_wait_ms": theory * 1000,
                     "ratio": wait / theory})
        _log(f"M/D/{c} rho={rho}: {wait * 1000:.3f} ms simulated, {theory * 1000:.3f} ms theory")
    return {"rows": rows}


# --------------------------------------------------------------------------- scale

def simpy_mm1(customers: int) -> float | None:
    """Wall seconds for SimPy to run an M/M/1 queue (rho 0.8) of `customers` customers."""
    try:
        import simpy
    except ImportError:
        return None
    rng = np.random.default_rng(5)
    gaps = rng.exponential(1.25, customers).tolist()
    services = rng.exponential(1.0, customers).tolist()
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)

    def customer(i: int) -> Any:
        with server.request() as req:
            yield req
            yield env.timeout(services[i])

    def source() -> Any:
        for i in range(customers):
            yield env.timeout(gaps[i])
            env.process(customer(i))

    env.process(source())
    start = time.perf_counter()
    env.run()
    return time.perf_counter() - start


def _phones(count: int, requests: int, service_cv: float = 0.0) -> Any:
    duration = 600.0
    examples = Path(__file__).resolve().parents[1] / "simulations" / "examples"
    device = {"name": "phones", "count": count,
              "profile": str(examples / "budget-phone.toml"), "network": "lte",
              "bandwidth_trace": str(examples / "lte-commute.txt"),
              "arrival": {"rate_per_s": requests / count / duration}}
    cloud = {"profile": "gpu-server", "replicas": 4, "max_batch_size": 8,
             "max_queue_delay_ms": 2.0}
    if service_cv:
        device["service_cv"] = service_cv
        cloud["service_cv"] = service_cv / 2
    return _scenario([device], cloud, duration, ["dads", "edgecut"])


def _timed(s: Any, p: Any, strategy: str, engine: str) -> tuple[float, Any]:
    start = time.perf_counter()
    o = run_strategy(s, p, strategy, engine=engine)
    return time.perf_counter() - start, o


def scale(requests: int, device_counts: list[int], repeats: int = 3) -> dict[str, Any]:
    """The headline (10,000 devices, `requests` requests, dads on the vectorised engine with
    a service-time spread) and SimPy's M/M/1 of as many customers, run interleaved `repeats`
    times in this run, each the median of its runs; then how wall time grows with the fleet,
    and the event engine against SimPy on a tenth of the requests (interleaved likewise)."""
    if simpy_mm1(10) is None:
        _log("SimPy not installed (pip install 'edgecut[bench]'): no rate comparison")
    headline_devices = 10_000
    s = _phones(headline_devices, requests, service_cv=0.3)
    p = prepare(s)
    simpy_runs, ours, events_n = [], [], 0
    for rep in range(repeats):
        simpy_runs.append(simpy_mm1(requests))
        wall, o = _timed(s, p, "dads", "auto")
        ours.append(wall)
        events_n = o.events
        _log(f"headline run {rep + 1}: SimPy {simpy_runs[-1] or math.nan:.2f} s, edgecut "
             f"{wall:.2f} s ({p.workload.size / wall:,.0f} requests/s)")
    headline: dict[str, Any] = {
        "devices": headline_devices, "requests": p.workload.size, "strategy": "dads",
        "engine": "vectorised", "service_cv": 0.3, "wall_s_runs": ours,
        "wall_s": statistics.median(ours), "events": events_n}
    headline["requests_per_s"] = p.workload.size / headline["wall_s"]
    if simpy_runs[0] is not None:
        headline["simpy_mm1_s_runs"] = simpy_runs
        headline["simpy_mm1_s"] = statistics.median(simpy_runs)
        headline["simpy_mm1_customers_per_s"] = requests / headline["simpy_mm1_s"]
        headline["vs_simpy_mm1"] = headline["requests_per_s"] / headline["simpy_mm1_customers_per_s"]
        headline["vs_simpy_mm1_runs"] = [(p.workload.size / w) / (requests / q)
                                         for w, q in zip(ours, simpy_runs, strict=True)]
        _log(f"headline: {headline['vs_simpy_mm1']:.1f}x SimPy's M/M/1 rate (median of "
             f"{repeats}; runs {', '.join(f'{r:.1f}' for r in headline['vs_simpy_mm1_runs'])})")
    rows = []
    for count in device_counts:
        s = _phones(count, requests, service_cv=0.3)
        start = time.perf_counter()
        p = prepare(s)
        prepare_s = time.perf_counter() - start
        for strategy, engine in (("dads", "vectorised"), ("edgecut", "ranks")):
            wall, o = _timed(s, p, strategy, "auto")
            rows.append({"devices": count, "requests": p.workload.size, "strategy": strategy,
                         "engine": engine, "prepare_s": prepare_s, "wall_s": wall,
                         "requests_per_s": p.workload.size / wall, "events": o.events,
                         "events_per_s": o.events / wall})
            _log(f"{count} devices, {p.workload.size} requests, {strategy} ({engine}): "
                 f"{wall:.2f} s ({p.workload.size / wall:,.0f} requests/s), prepare "
                 f"{prepare_s:.2f} s")
    # The event engine (a cell or the cloud's queue reports need it) on a tenth as many.
    small = max(requests // 10, 1000)
    s = _phones(headline_devices, small, service_cv=0.3)
    p = prepare(s)
    ev_runs, ev_simpy = [], []
    for _ in range(repeats):
        ev_simpy.append(simpy_mm1(p.workload.size))
        wall, o = _timed(s, p, "edgecut", "events")
        ev_runs.append(wall)
    event_row: dict[str, Any] = {"devices": headline_devices, "requests": p.workload.size,
                                 "strategy": "edgecut", "engine": "events",
                                 "wall_s_runs": ev_runs, "wall_s": statistics.median(ev_runs),
                                 "events": o.events}
    event_row["requests_per_s"] = p.workload.size / event_row["wall_s"]
    if ev_simpy[0] is not None:
        event_row["simpy_mm1_s"] = statistics.median(ev_simpy)
        event_row["vs_simpy_mm1"] = event_row["simpy_mm1_s"] / event_row["wall_s"]
    _log(f"event engine, {p.workload.size} requests: {event_row['wall_s']:.2f} s, "
         f"{event_row.get('vs_simpy_mm1', math.nan):.2f}x SimPy")
    return {"headline": headline, "rows": rows, "events": event_row, "repeats": repeats}


# --------------------------------------------------------------------------- validation

def _simulate_modes(path: Path, shapes: dict[str, tuple[int, ...]], device_file: Path,
                    net_file: Path, cut: int) -> dict[str, np.ndarray]:
    """Simulated latencies (ms) of one device in local, split and offload mode, no queueing."""
    out = {}
    for mode, strategy in (("local", "edge-only"), ("split", "fixed"),
                           ("offload", "cloud-only")):
        scenario = scenario_from_dict({
            "simulation": {"duration_s": 200.0, "seed": 1, "sla_ms": 1000.0},
            "model": {"file": str(path), "input_shapes": {k: list(v) for k, v in
                                                          shapes.items()}},
            "cloud": {"profile": str(device_file)},
            "devices": [{"name": "this", "count": 1, "profile": str(device_file),
                         "network": str(net_file),
                         "arrival": {"process": "periodic", "rate_per_s": 0.5}}],
            "strategies": {"compare": [strategy], "fixed_cut": cut}},
            label="validation.toml")
        p = prepare(scenario)
        o = run_strategy(scenario, p, strategy)
        out[mode] = (o.done_s - p.workload.arrival_s) * 1000.0
    return out


def validation(work: Path, runs: int) -> dict[str, Any]:
    import onnx

    from edgecut.cloud.server import create_server
    from edgecut.deploy import deploy_plan
    from edgecut.edge import Config, Predictor
    from edgecut.netprobe import probe_network, save_network
    from edgecut.partitioner import list_cuts, write_plan
    from edgecut.profiles import attach_model_profile, profile_device, profile_model, save_device
    from edgecut.simulations.models import model_path
    from edgecut.zoo import sample_inputs

    rows = []
    _log("profiling this machine (quick)")
    machine = profile_device(name="this-machine", quick=True)
    for model_name in ("vision_cnn", "residual_dag"):
        path = model_path(model_name)
        model = onnx.load(path)
        inputs = sample_inputs(model)
        shapes = {k: tuple(v.shape) for k, v in inputs.items()}
        measured_nodes = profile_model(path, input_shapes=shapes, runs=10)
        device = attach_model_profile(machine, measured_nodes)
        device_file = save_device(device, work / f"{model_name}-device.toml")
        cuts = list_cuts(model, shapes)
        inner = [c for c in cuts if c.device_nodes > 0 and c.cloud_nodes > 0]
        cut = min(inner, key=lambda c: (c.bytes, -c.device_nodes)).id
        plan_dir = work / f"{model_name}-plan"
        write_plan(path, plan_dir, cut_ids=[cut], input_shapes=shapes, chosen=cut)
        repo = work / f"{model_name}-repo"
        deploy_plan(plan_dir, repo)
        server = create_server(repo, address="127.0.0.1:0")
        server.start()
        try:
            endpoint = f"127.0.0.1:{server.port}"
            network = probe_network(endpoint, upload_bytes=1 << 20, download_bytes=1 << 20,
                                    probes=3)
            net_file = save_network(network, work / f"{model_name}-loopback.toml")
            # The three modes run interleaved, one request each per round, so that the
            # machine's drift (other processes) falls on all of them alike.
            measured: dict[str, list[float]] = {m: [] for m in ("local", "split", "offload")}
            predictors = {mode: Predictor(Config(
                plan=plan_dir, mode=mode, endpoint=None if mode == "local" else endpoint,
                cut=cut if mode == "split" else None, codec="auto")) for mode in measured}
            try:
                names = [o.name for o in predictors["local"].get_outputs()]
                for _ in range(3):
                    for predictor in predictors.values():
                        predictor.run(names, inputs)
                for _ in range(runs):
                    for mode, predictor in predictors.items():
                        start = time.perf_counter()
                        predictor.run(names, inputs)
                        measured[mode].append((time.perf_counter() - start) * 1000.0)
            finally:
                for predictor in predictors.values():
                    predictor.close()
        finally:
            server.stop(1.0)

        raw = _simulate_modes(path, shapes, device_file, net_file, cut)
        # Calibrated: the per-node table scaled so that local mode's simulated median is the
        # measured one (the machine's speed drifts with its load); split and offload then test
        # how the simulator composes device, link and cloud.
        factor = statistics.median(measured["local"]) / float(np.median(raw["local"]))
        scaled = dataclasses.replace(device, per_node_ms={k: v * factor for k, v in
                                                          device.per_node_ms.items()})
        calibrated = _simulate_modes(path, shapes, save_device(scaled, work / f"{model_name}-scaled.toml"),
                                     net_file, cut)
        for mode in ("local", "split", "offload"):
            real_p50 = statistics.median(measured[mode])
            real_p95 = float(np.percentile(measured[mode], 95))
            row: dict[str, Any] = {"model": model_name, "mode": mode,
                                   "cut": cut if mode == "split" else None, "runs": runs,
                                   "measured_p50_ms": real_p50, "measured_p95_ms": real_p95,
                                   "calibration_factor": factor,
                                   "link": {"uplink_mbps": network.uplink_mbps,
                                            "rtt_ms": network.rtt_ms}}
            for label, sims in (("simulated", raw), ("calibrated", calibrated)):
                p50, p95 = (float(v) for v in np.percentile(sims[mode], [50, 95]))
                row[f"{label}_p50_ms"] = p50
                row[f"{label}_p95_ms"] = p95
                row[f"{label}_ratio_p50"] = p50 / real_p50
                row[f"{label}_ratio_p95"] = p95 / real_p95
            rows.append(row)
            _log(f"{model_name} {mode}: measured p50 {real_p50:.2f} ms, simulated "
                 f"{row['simulated_p50_ms']:.2f} ms, calibrated {row['calibrated_p50_ms']:.2f} ms")
    return {"rows": rows, "device_profile": {"cores": machine.cores,
                                             "conv_gflops": machine.gflops_for("conv")}}


def _print(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    if results.get("correctness"):
        t = Table(title="correctness: simulated mean wait / theory")
        for c in ("queue", "utilisation", "requests", "service ms", "simulated ms", "theory ms",
                  "ratio"):
            t.add_column(c, justify="right")
        for r in results["correctness"]["rows"]:
            t.add_row(r["queue"], f"{r['utilisation']:.2f}", str(r["requests"]),
                      f"{r['service_ms']:.3f}", f"{r['simulated_wait_ms']:.3f}",
                      f"{r['theory_wait_ms']:.3f}", f"{r['ratio']:.4f}")
        console.print(t)
    if results.get("scale"):
        sc = results["scale"]
        t = Table(title=f"scale: wall time (medians of {sc['repeats']} interleaved runs where "
                        "marked *)")
        for c in ("devices", "requests", "strategy", "engine", "wall s", "requests/s",
                  "x SimPy M/M/1"):
            t.add_column(c, justify="right")
        for r, star in ([(sc["headline"], "*")] + [(r, "") for r in sc["rows"]]
                        + [(sc["events"], "*")]):
            t.add_row(str(r["devices"]), str(r["requests"]), r["strategy"], r["engine"] + star,
                      f"{r['wall_s']:.2f}", f"{r['requests_per_s']:,.0f}",
                      f"{r['vs_simpy_mm1']:.1f}" if "vs_simpy_mm1" in r else "-")
        console.print(t)
    if results.get("validation"):
        t = Table(title="validation: simulated / measured latency, one request at a time")
        for c in ("model", "mode", "measured p50", "simulated p50", "ratio p50", "ratio p95",
                  "calibrated p50", "cal. ratio p50", "cal. ratio p95"):
            t.add_column(c, justify="right")
        for r in results["validation"]["rows"]:
            t.add_row(r["model"], r["mode"], f"{r['measured_p50_ms']:.2f}",
                      f"{r['simulated_p50_ms']:.2f}", f"{r['simulated_ratio_p50']:.2f}",
                      f"{r['simulated_ratio_p95']:.2f}", f"{r['calibrated_p50_ms']:.2f}",
                      f"{r['calibrated_ratio_p50']:.2f}", f"{r['calibrated_ratio_p95']:.2f}")
        console.print(t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true",
                        help="200k requests for scale, 50k for correctness, 20 validation runs")
    parser.add_argument("--sections", default="correctness,scale,validation")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    results: dict[str, Any] = {"machine": {"python": platform.python_version(),
                                           "cpus": __import__("os").cpu_count()},
                               "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="edgecut-simbench-") as tmp:
        work = Path(tmp)
        results["correctness"] = (correctness(50_000 if args.quick else 200_000, work)
                                  if "correctness" in sections else None)
        results["scale"] = (scale(200_000 if args.quick else 1_000_000, [1_000, 10_000, 100_000])
                            if "scale" in sections else None)
        results["validation"] = (validation(work, 20 if args.quick else 50)
                                 if "validation" in sections else None)
    _print(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
