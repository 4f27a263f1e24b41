"""Placement 4 for real: latency and throughput of 1, 2 and 3 hops, and a helper killed.

    python benchmarks/chain.py --out benchmarks/results/chain-DATE.json     # about 3 minutes
    python benchmarks/chain.py --quick --out /tmp/chain.json                # about 1 minute

One run, side by side, on one 2-core machine:

- the device: a process limited to `--device-fraction` of core 0 (cgroup v1 cpu quota, as
  root; taskset alone where there is none), running the plan with `ChainPredictor`
  (or the full model, for device-only);
- helpers: `edgecut serve` processes limited to `--helper-fraction` of core 0 each;
- the cloud: `edgecut serve` on core 1, unlimited.

All over mutual TLS on loopback; the device-helper link is the loopback (a LAN), the link to
the cloud has `--wan-ms` added each way by a user-space delay proxy (a WAN; bandwidth is not
shaped: netem is missing here and tbf needs network namespaces). Placements, each planned
by the chain planner for these figures (per-node times: this machine's onnxruntime profile
of the model, divided by each hop's share of a core):

    1 hop   device-only
    2 hops  the best single cut: device + cloud
    3 hops  device + helper + cloud (the programme's cuts for latency, and for throughput)
    3 hops  the same with two helpers for stage 1 (least outstanding requests)

Each is measured one request at a time (latency: median and p90 of `--runs`) and with
`--threads` callers at once (throughput: requests per second over the same count). The fault
row: the two-helper chain under load, one helper SIGKILLed a third of the way in; lost =
untyped exceptions + wrong answers + answers past the deadline. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------------- the device worker

def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in the CPU-limited device process: latency runs, then a threaded load."""
    import numpy as np
    import onnxruntime as ort

    from edgecut.edge.chain import ChainConfig, ChainPredictor
    from edgecut.errors import EdgecutError

    rng = np.random.default_rng(0)
    plan = Path(spec["plan"])
    full = ort.InferenceSession(str(plan / "full.onnx"), providers=["CPUExecutionProvider"])
    name = full.get_inputs()[0].name
    shape = spec["shape"]
    feeds = [{name: rng.random(shape, dtype=np.float32)} for _ in range(4)]
    expected = [full.run(None, f) for f in feeds]
    timeout_s = spec["timeout_s"]
    if spec["mode"] == "local":
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(str(plan / "full.onnx"), opts,
                                       providers=["CPUExecutionProvider"])

        def run(feed: dict) -> list:
            return session.run(None, feed)
        chain = None
    else:
        chain = ChainPredictor(ChainConfig(
            plan=plan, helpers=tuple(spec["helpers"]), cloud=tuple(spec["cloud"]),
            tls_dir=Path(spec["tls"]), device="device-0", balance="least_outstanding",
            fallback="cloud", timeout_s=timeout_s, intra_op_threads=1,
            breaker_reset_s=60.0))

        def run(feed: dict) -> list:
            return chain.run(None, feed)
    warm_errors = []
    for feed in feeds * 2:  # warm every session and channel on the way (typed errors noted)
        try:
            run(feed)
        except EdgecutError as exc:
            warm_errors.append(f"{type(exc).__name__}: {exc}"[:300])
    latencies = []
    for i in range(spec["runs"]):
        start = time.perf_counter()
        try:
            run(feeds[i % len(feeds)])
        except EdgecutError as exc:
            warm_errors.append(f"{type(exc).__name__}: {exc}"[:300])
        latencies.append((time.perf_counter() - start) * 1e3)
    counts = {"ok": 0, "typed": 0, "untyped": 0, "wrong": 0, "late": 0}
    times: list[float] = []
    lock = threading.Lock()
    per_thread = spec["runs"]
    total = per_thread * spec["threads"]
    done = [0]

    def caller(k: int) -> None:
        for i in range(per_thread):
            j = (i + k) % len(feeds)
            start = time.perf_counter()
            try:
                got = run(feeds[j])
                outcome = "ok" if all(np.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in
                                      zip(got, expected[j], strict=True)) else "wrong"
            except EdgecutError:
                outcome = "typed"
            except Exception:  # an untyped error is a lost request
                outcome = "untyped"
            elapsed = time.perf_counter() - start
            if elapsed > timeout_s + 0.5:
                outcome = "late"
            with lock:
                counts[outcome] += 1
                times.append(elapsed * 1e3)
                done[0] += 1
                if done[0] == total // 3:
                    print("third", flush=True)  # the parent may kill a helper now
    print("load", flush=True)
    began = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(k,)) for k in range(spec["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    out: dict[str, Any] = {
        "latency_ms_p50": statistics.median(latencies),
        "latency_ms_p90": sorted(latencies)[int(0.9 * (len(latencies) - 1))],
        "throughput_rps": total / wall, "requests": total, **counts,
        "lost": counts["untyped"] + counts["wrong"] + counts["late"],
        "load_p99_ms": sorted(times)[int(0.99 * (len(times) - 1))],
        "sequential_typed_errors": warm_errors,
    }
    if chain is not None:
        stats = chain.statistics()
        out["runs_by_path"] = dict(stats.runs_by_path)
        out["helpers"] = [dataclasses.asdict(h) for h in stats.helpers]
        chain.close()
    return out


# --------------------------------------------------------------------------- the orchestrator

class _Limited:
    """A CpuLimit when the machine has one, else taskset alone (noted in the JSON)."""

    def __init__(self, fraction: float) -> None:
        from benchmarks.harness import HarnessUnavailable
        from benchmarks.harness.cgroup import CpuLimit

        self.fraction = fraction
        self.limit: Any = None
        try:
            self.limit = CpuLimit(fraction=fraction).__enter__()
            self.how = "cgroup"
        except HarnessUnavailable as exc:
            self.how = f"taskset only ({exc})"

    def wrap(self, argv: list[str], core: int) -> list[str]:
        from benchmarks.harness.cgroup import pinned

        return self.limit.wrap(argv, core=core) if self.limit else pinned(argv, core)

    def close(self) -> None:
        if self.limit is not None:
            self.limit.close()


def _endpoint(repository: Path, tls: Path, logs: Path, name: str, wrap: Any) -> Any:
    from benchmarks.harness.endpoint import EndpointProcess

    class Wrapped(EndpointProcess):
        def command(self) -> list[str]:
            return wrap(super().command())

    return Wrapped(repository, tls, log_dir=logs, device="device-0", name=name,
                   extra_args=["--frontend", "grpcio"])


def _full_model_ms(model_path: Path, shapes: dict[str, list[int]]) -> float:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    feed = {n: np.random.default_rng(0).random(s, dtype=np.float32) for n, s in shapes.items()}
    session.run(None, feed)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _profiles(model_path: Path, shapes: dict[str, list[int]], device_fraction: float,
              helper_fraction: float, wan_ms: float) -> dict[str, Any]:
    """Hops timed by this machine's own per-node table (onnxruntime's profiler, one core),
    scaled by each hop's share of a core; the LAN is loopback, the WAN has `wan_ms` each way."""
    from edgecut.partitioner.chain_plan import serialise_mbps_of, serve_ms_of
    from edgecut.profiles import load_device
    from edgecut.profiles.model_profiler import attach_model_profile, profile_model
    from edgecut.profiles.schema import CloudProfile, NetworkProfile

    measured = attach_model_profile(load_device("laptop"),
                                    profile_model(model_path, input_shapes=shapes, runs=5))
    # The profiler's per-node times carry its own overhead: scale them to the model's
    # measured time on one thread, so that the plan's figures are this machine's.
    total_ms = _full_model_ms(model_path, shapes)
    factor = total_ms / max(sum(measured.per_node_ms.values()), 1e-9)
    measured = dataclasses.replace(measured, per_node_ms={
        n: ms * factor for n, ms in measured.per_node_ms.items()})

    def scaled(name: str, fraction: float) -> Any:
        # A hop on a share of a core spends its serving CPU (chain_plan's figures for this
        # machine) at that share too: its requests' handling stretches like its compute.
        return dataclasses.replace(measured, name=name,
                                   per_node_ms={n: ms / fraction
                                                for n, ms in measured.per_node_ms.items()},
                                   serve_ms=serve_ms_of(measured) / fraction,
                                   serialise_mbps=serialise_mbps_of(measured) * fraction)

    lan = NetworkProfile(name="lan", uplink_mbps=4000.0, downlink_mbps=4000.0, rtt_ms=0.5)
    wan = NetworkProfile(name="wan", uplink_mbps=4000.0, downlink_mbps=4000.0,
                         rtt_ms=2 * wan_ms + 0.5)
    return {"device": scaled("bench-device", device_fraction),
            "helper": scaled("bench-helper", helper_fraction), "lan": lan, "network": wan,
            "cloud": CloudProfile(name="bench-cloud", device=dataclasses.replace(
                measured, name="bench-cloud"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--device-fraction", type=float, default=0.25)
    parser.add_argument("--helper-fraction", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--shape", default="1,3,320,320", help="the model's input shape")
    parser.add_argument("--wan-ms", type=float, default=20.0,
                        help="one-way delay to the cloud, added in user space (default 20)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    import onnx

    from edgecut.chain_deploy import deploy_stage
    from edgecut.partitioner.chain_plan import plan_chain, write_chain_plan
    from edgecut.protocol.pki import init_ca, issue_device_certificate
    from edgecut.zoo import ZOO, find_packaged_model

    runs = args.runs or (8 if args.quick else 30)
    shape = [int(x) for x in args.shape.split(",")]
    root = Path(tempfile.mkdtemp(prefix="edgecut-chain-bench-"))
    packaged = find_packaged_model()
    if packaged is not None:
        model_path, model_name = Path(packaged), "ppocr_det"
    else:
        model_path, model_name = root / "dynamic_cnn.onnx", "dynamic_cnn"
        onnx.save(ZOO["dynamic_cnn"](), str(model_path))
    input_name = onnx.load(str(model_path)).graph.input[0].name
    tls = root / "tls"
    init_ca(tls)
    for name in ("device-0", "helper-1", "helper-2"):
        issue_device_certificate(tls, name)
    p = _profiles(model_path, {input_name: shape}, args.device_fraction, args.helper_fraction,
                  args.wan_ms)
    common = {"network": p["network"], "cloud": p["cloud"], "input_shapes": {input_name: shape}}
    plans: dict[str, Any] = {}
    for key, helpers, objective in (
            ("single_cut", [], "latency"),
            ("chain_latency", [(p["helper"], p["lan"])], "latency"),
            ("chain_throughput", [(p["helper"], p["lan"])], "throughput")):
        planned = plan_chain(model_path, device=p["device"], helpers=helpers,
                             objective=objective, **common)
        write_chain_plan(planned, root / key, name=f"{model_name}_{key}")
        plans[key] = planned
    logs = root / "logs"
    logs.mkdir()
    limits = {"device": _Limited(args.device_fraction), "helper-1": _Limited(args.helper_fraction),
              "helper-2": _Limited(args.helper_fraction)}
    from benchmarks.harness.cgroup import pinned

    cloud = _endpoint(root / "cloud-repo", tls, logs, "cloud", lambda a: pinned(a, 1))
    helpers: list[Any] = []
    proxies: list[Any] = []
    rows: list[dict[str, Any]] = []
    fault: dict[str, Any] | None = None
    try:
        for key in plans:
            stages = json.loads((root / key / "plan.json").read_text())["stages"]
            deploy_stage(root / key, root / "cloud-repo", len(stages) - 1, with_plan=True) \
                if len(stages) > 1 else None
        cloud.start()
        from benchmarks.harness.delay import DelayProxy

        wan = DelayProxy(("127.0.0.1", cloud.port), one_way_ms=args.wan_ms).__enter__()
        proxies.append(wan)
        cloud_address = f"127.0.0.1:{wan.port}"
        for i in (1, 2):
            repo = root / f"helper-{i}-repo"
            for key in ("chain_latency", "chain_throughput"):
                stages = json.loads((root / key / "plan.json").read_text())["stages"]
                if len(stages) == 3:
                    deploy_stage(root / key, repo, 1, next_endpoints=[cloud_address],
                                 tls_dir=tls, device=f"helper-{i}")
                elif len(stages) == 2 and stages[1]["where"] == "helper":
                    deploy_stage(root / key, repo, 1, tls_dir=tls, device=f"helper-{i}")
            repo.mkdir(exist_ok=True)
            limit = limits[f"helper-{i}"]
            helpers.append(_endpoint(repo, tls, logs, f"helper-{i}",
                                     lambda a, lim=limit: lim.wrap(a, 0)))
            helpers[-1].start()

        def measure(label: str, key: str, mode: str, stage1: list[str], *,
                    kill: Any = None) -> dict[str, Any]:
            spec = {"plan": str(root / key), "mode": mode, "helpers": stage1,
                    "cloud": [cloud_address], "tls": str(tls), "runs": runs,
                    "threads": args.threads, "shape": shape, "timeout_s": 10.0}
            argv = limits["device"].wrap([sys.executable, str(Path(__file__).resolve()),
                                          "--out", "-", "--worker", json.dumps(spec)], 0)
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})
            assert proc.stdout is not None
            result: dict[str, Any] = {}
            for line in proc.stdout:
                if line.startswith("third") and kill is not None:
                    kill()
                elif line.startswith("{"):
                    result = json.loads(line)
            proc.wait(timeout=600)
            planned = plans.get(key)
            predicted = None
            if planned is not None:
                cost = planned.device_only if mode == "local" else planned.result.cost
                predicted = {"latency_ms": cost.latency_ms, "bottleneck_ms": cost.bottleneck_ms}
            row = {"placement": label, "plan": key, "mode": mode,
                   "cuts": None if mode == "local" else list(planned.result.cuts),
                   "predicted": predicted, **result}
            print(f"  {label}: p50 {result.get('latency_ms_p50', float('nan')):.1f} ms, "
                  f"{result.get('throughput_rps', float('nan')):.1f} req/s, lost "
                  f"{result.get('lost')}", flush=True)
            return row

        addr = [h.address for h in helpers]
        rows.append(measure("1 hop: device only", "single_cut", "local", []))
        single_stage1 = [cloud_address]
        rows.append(measure("2 hops: best single cut", "single_cut", "chain", single_stage1))

        def stage1(key: str, n: int) -> list[str]:
            stages = json.loads((root / key / "plan.json").read_text())["stages"]
            if len(stages) < 2:
                return []
            return addr[:n] if stages[1]["where"] == "helper" else single_stage1

        rows.append(measure("3 hops: device+helper+cloud (latency cuts)", "chain_latency",
                            "chain", stage1("chain_latency", 1)))
        rows.append(measure("3 hops: device+helper+cloud (throughput cuts)",
                            "chain_throughput", "chain", stage1("chain_throughput", 1)))
        rows.append(measure("3 hops, 2 helpers (throughput cuts)", "chain_throughput", "chain",
                            stage1("chain_throughput", 2)))
        fault = measure("fault: 2 helpers, one SIGKILLed under load", "chain_throughput",
                        "chain", stage1("chain_throughput", 2), kill=helpers[0].kill)
    finally:
        for h in helpers:
            h.stop()
        cloud.stop()
        for proxy in proxies:
            proxy.close()
        for limit in limits.values():
            limit.close()
    best_single = rows[1]
    for row in rows:
        if "latency_ms_p50" not in row or "latency_ms_p50" not in best_single:
            continue  # the worker failed: its stderr is in the output above
        row["latency_vs_single_cut"] = best_single["latency_ms_p50"] / row["latency_ms_p50"]
        row["throughput_vs_single_cut"] = row["throughput_rps"] / best_single["throughput_rps"]
        row["throughput_vs_device_only"] = row["throughput_rps"] / rows[0]["throughput_rps"]
    doc = {"model": model_name, "input_shape": shape, "device_fraction": args.device_fraction,
           "helper_fraction": args.helper_fraction, "cloud": "core 1, unlimited",
           "cpu_limit": limits["device"].how, "runs": runs, "threads": args.threads,
           "links": f"mutual TLS on loopback; device-helper LAN as is, {args.wan_ms:g} ms each "
                    "way to the cloud (user-space delay proxy), bandwidth not shaped",
           "rows": rows, "fault": fault,
           "plans": {k: v.summary() | {"cuts": list(v.result.cuts)} for k, v in plans.items()}}
    import shutil

    shutil.rmtree(root, ignore_errors=True)  # plans, repositories, certificates, logs
    text = json.dumps(doc, indent=1)
    if str(args.out) != "-":
        args.out.write_text(text + "\n")
    print(f"\n{'placement':48} {'cuts':>10} {'p50 ms':>8} {'p90 ms':>8} {'req/s':>7} "
          f"{'lat x':>6} {'thr x':>6} {'lost':>4}")
    for row in [*rows, fault]:
        if row is None or "latency_ms_p50" not in row:
            continue
        print(f"{row['placement']:48} {row['cuts']!s:>10} {row['latency_ms_p50']:8.1f} "
              f"{row['latency_ms_p90']:8.1f} {row['throughput_rps']:7.1f} "
              f"{row.get('latency_vs_single_cut', 0):6.2f} "
              f"{row.get('throughput_vs_single_cut', 0):6.2f} {row['lost']:>4}")
    if fault is not None:
        print(f"fault row: {fault['requests']} requests, ok {fault['ok']}, typed errors "
              f"{fault['typed']}, lost {fault['lost']}, paths {fault.get('runs_by_path')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
