"""The fleet simulator against the real system on the one-machine testbed (issue 18's validation).

    sudo python benchmarks/simulation_validation.py                      # 3 configurations, ~6 min
    sudo python benchmarks/simulation_validation.py --quick --out /tmp/v.json   # ~2 min
    sudo python benchmarks/simulation_validation.py --configs vision_cnn:0.5:50 --requests 150

For each configuration (model, CPU share of the device, link Mbit/s):

- the device: a process in a cgroup v1 `cpu` group (`harness/cgroup.py`: the share of one
  10 ms period, pinned to core 0; taskset alone where there is no cgroup, noted in the JSON)
  running real `edgecut.edge.Predictor`s (`Config(mode="local" | "offload" | "split")`) with
  Poisson arrivals at `rate` for `--requests` requests per strategy;
- the link: a veth into a network namespace with `tbf` both ways (`harness/shaper.py`
  `NamespaceLink`); no delay is added (netem is missing): the round trip is what it measures;
- the cloud: `edgecut serve --tls --mtls` in the namespace (`harness/endpoint.py`), on core 1.

The simulator gets the profiles measured on that testbed: the device by `edgecut profile
device --quick` and `edgecut profile model --device-out` run inside the same cgroup, the cloud
by the same two commands in a cgroup of one full core 1, the link by `edgecut profile network`
run from the device's cgroup over the shaped link. It runs twice:

- "profiled": the profiles as those commands wrote them;
- "corrected": two measured corrections. (1) The per-node tables scaled to a plain
  one-thread session's time of the whole model, timed in the same cgroup (`time_model`):
  onnxruntime's profiler slows what it times (1.3-1.8x here), and `profile model` runs
  onnxruntime's default two threads where the process has one core. (2) The round trip
  replaced by the median ModelInfer of one byte to the endpoint's link probe: `profile
  network` times ServerLive calls, which skip what every ModelInfer pays (the request's
  protobuf, the endpoint's model lookup, thread hand-offs): 0.1-0.2 ms more here.

Then the same scenario (one device, that rate, `duration = 40 x requests / rate` so the
simulated distribution is smooth) runs in `edgecut.simulations` with strategies edge-only,
cloud-only and fixed (the inner cut with the fewest bytes among those with at most half the
nodes on the device). Also measured: each strategy's service time one request at a time
(`sequential_*`), which separates the profile's error from the queueing's. Edge-only runs on
one thread (a device runs one inference at a time, FIFO, as the simulator says); split and
offload on `--workers` threads, since their calls overlap in the network and the cloud (their
heads then share the CPU, where the simulator queues them). Every Predictor runs one
onnxruntime thread (`intra_op_threads=1`), as the endpoint does.

A fourth run adds the spread (a lognormal fitted to the plain runs' p50 and p95) and the
busy slowdown (the second of two runs after a pause over the first, both in the cgroup: at
a moderate load a request that waits has queued behind one other): a request that waits for
the device is served that much slower.

The rate is `--load` (0.3) over the slowest stage any strategy has in the simulator's table.
Prints the table, writes JSON (default benchmarks/results/simulation-validation-DATE.json) and
one PNG per configuration with the measured and simulated latency CDFs side by side. Needs
root (cgroup, namespaces, tc); exits 2 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

STRATEGIES = (("edge-only", "local"), ("cloud-only", "offload"), ("fixed", "split"))
DEFAULT_CONFIGS = ("vision_cnn:0.5:50", "vision_cnn:0.25:100", "ppocr_det:0.5:20")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True, slots=True)
class Configuration:
    model: str
    fraction: float
    mbps: float

    @classmethod
    def parse(cls, text: str) -> Configuration:
        try:
            model, fraction, mbps = text.split(":")
            return cls(model, float(fraction), float(mbps))
        except ValueError:
            raise SystemExit(f"--configs: {text!r} is not MODEL:CPU_SHARE:MBPS "
                             "(e.g. vision_cnn:0.5:50)") from None

    @property
    def label(self) -> str:
        return f"{self.model}, {self.fraction:g} core, {self.mbps:g} Mbit/s"


# --------------------------------------------------------------------------- the device worker

def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def _poisson(predictor: Any, names: list[str], feed: dict[str, Any], gaps: Any,
             workers: int) -> tuple[list[float], list[str], float]:
    """Requests at the arrival times `cumsum(gaps)`, each on one of `workers` threads (FIFO
    beyond them); latency from its arrival time to its answer."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    latencies = [0.0] * len(gaps)
    errors: list[str] = []
    lock = threading.Lock()

    def one_request(i: int, arrival: float) -> None:
        try:
            predictor.run(names, feed)
        except Exception as exc:  # recorded: a failed call is no latency
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
        latencies[i] = (time.perf_counter() - arrival) * 1e3

    with ThreadPoolExecutor(max_workers=workers) as pool:
        start = time.perf_counter() + 0.05
        for i, arrival in enumerate(start + np.cumsum(gaps)):
            delay = arrival - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one_request, i, float(arrival))
    return latencies, errors, time.perf_counter() - start


def time_model(spec: dict[str, Any]) -> dict[str, Any]:
    """The whole model's run time in a plain session (`threads` intra-op threads, all
    optimisations, no profiler) in the process it is started in: back to back, `gap_s`
    apart (as requests at a moderate load find the device: idle), and the second of two
    runs after such a gap (as a request that queued behind one other finds it)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    session = ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
    feed = {k: np.load(v) for k, v in spec["inputs"].items()}
    for _ in range(3):
        session.run(None, feed)
    times, gapped, second = [], [], []
    for _ in range(spec["runs"]):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    for _ in range(spec["gapped_runs"]):
        time.sleep(spec["gap_s"])
        t0 = time.perf_counter()
        session.run(None, feed)
        t1 = time.perf_counter()
        session.run(None, feed)
        gapped.append((t1 - t0) * 1e3)
        second.append((time.perf_counter() - t1) * 1e3)
    return {"back_to_back_ms": statistics.median(times), "gapped_ms": statistics.median(gapped),
            "gapped_p95_ms": _percentile(gapped, 95),
            "second_after_gap_ms": statistics.median(second)}


def call_overhead(spec: dict[str, Any]) -> dict[str, Any]:
    """ServerLive (what `profile network` times as the round trip) against a ModelInfer of one
    byte to the endpoint's link probe, interleaved; medians in ms."""
    import numpy as np

    from edgecut.edge.client import CloudClient
    from edgecut.protocol.probe import PROBE_DOWNLOAD_PARAMETER, PROBE_MODEL

    live, infer = [], []
    one = {"probe": np.zeros(1, np.uint8)}
    with CloudClient(spec["endpoint"], tls_dir=Path(spec["tls"]), device="device-0") as client:
        for i in range(spec["overhead_calls"] + 5):
            t0 = time.perf_counter()
            client.server_live()
            t1 = time.perf_counter()
            client.infer(PROBE_MODEL, one, parameters={PROBE_DOWNLOAD_PARAMETER: 0})
            t2 = time.perf_counter()
            if i >= 5:
                live.append((t1 - t0) * 1e3)
                infer.append((t2 - t1) * 1e3)
    return {"server_live_ms": statistics.median(live),
            "one_byte_infer_ms": statistics.median(infer)}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In the CPU-limited device process: each strategy's sequential then Poisson runs."""
    import numpy as np

    from edgecut.edge import Config, Predictor

    feed = {k: np.load(v) for k, v in spec["inputs"].items()}
    tls = Path(spec["tls"])
    out: dict[str, Any] = {"strategies": {}}
    rng = np.random.default_rng(spec["seed"])
    for strategy, mode in STRATEGIES:
        config = Config(plan=Path(spec["plan"]), mode=mode,
                        endpoint=None if mode == "local" else spec["endpoint"],
                        tls_dir=None if mode == "local" else tls,
                        device=None if mode == "local" else "device-0",
                        cut=spec["cut"] if mode == "split" else None, codec="auto",
                        intra_op_threads=1)
        predictor = Predictor(config)
        try:
            names = [o.name for o in predictor.get_outputs()]
            for _ in range(5):
                predictor.run(names, feed)
            sequential, stages = [], []
            for _ in range(spec["sequential"]):
                t0 = time.perf_counter()
                predictor.run(names, feed)
                sequential.append((time.perf_counter() - t0) * 1e3)
                stages.append(predictor.last_run())
            last = stages[-1]
            stage_ms = {k: statistics.median(getattr(r, k) for r in stages)
                        for k in ("head_ms", "encode_ms", "rpc_ms", "decode_ms", "total_ms")}
            gaps = rng.exponential(1.0 / spec["rate"], spec["requests"])
            workers = 1 if mode == "local" else spec["workers"]
            latencies, errors, wall = _poisson(predictor, names, feed, gaps, workers)
            out["strategies"][strategy] = {
                "mode": mode, "latencies_ms": latencies, "errors": errors,
                "sequential_ms": sequential, "sequential_stages_ms": stage_ms,
                "wire_up_bytes": last.wire_bytes_up, "raw_up_bytes": last.raw_bytes_up,
                "wall_s": wall}
        finally:
            predictor.close()
    return out


# --------------------------------------------------------------------------- the orchestrator

class _Limited:
    """A CpuLimit on `core` when the machine has one, else taskset alone (noted in the JSON).

    The group's `cpu.shares` is raised to `shares` (the root group's tasks have 1024 each):
    on a machine other work shares, the quota is then what the process gets, not a ceiling
    it rarely reaches.
    """

    def __init__(self, fraction: float, *, core: int, shares: int = 65536) -> None:
        from benchmarks.harness import HarnessUnavailable
        from benchmarks.harness.cgroup import CpuLimit

        self.core = core
        self.limit: Any = None
        try:
            self.limit = CpuLimit(fraction=fraction).__enter__()
            (self.limit.path / "cpu.shares").write_text(str(shares))
            self.how = f"cgroup v1 cpu quota {fraction:g} of core {core}, cpu.shares {shares}"
        except HarnessUnavailable as exc:
            self.how = f"taskset only ({exc})"
        except OSError as exc:
            self.how = f"cgroup v1 cpu quota {fraction:g} of core {core} (shares: {exc})"

    def wrap(self, argv: list[str]) -> list[str]:
        from benchmarks.harness.cgroup import pinned

        return self.limit.wrap(argv, core=self.core) if self.limit else pinned(argv, self.core)

    def close(self) -> None:
        if self.limit is not None:
            self.limit.close()


def _check(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.strip()[-800:]}")


def _profile(wrap: Any, model: Path, shapes: dict[str, list[int]], inputs: dict[str, str],
             out: Path, name: str) -> tuple[Path, Path, dict[str, float]]:
    """`edgecut profile device --quick` then `profile model --device-out`, both through `wrap`;
    then the whole model timed in a plain session through `wrap`, and a copy of the profile
    whose per-node table is scaled to that time. Returns (as profiled, scaled, the figures).

    The scaling is there because onnxruntime's profiler slows what it times: on this machine
    its runs take 1.3-1.5x a plain session's, and the per-node table sums to its runs. The
    plain session has one thread, as the device's Predictor (`intra_op_threads=1`) and the
    endpoint (one CPU by affinity) have: `profile device` and `profile model` use
    onnxruntime's default, one thread per physical core (two here), and two threads on one
    core spin out of the quota between runs. Its time is that of runs 100 ms apart (as
    requests at a moderate load find the device: idle); back to back is recorded too.
    """
    import dataclasses as dc

    from edgecut.profiles import load_device, save_device

    cli = [sys.executable, "-m", "edgecut", "profile"]
    device = out / f"{name}.toml"
    _check(wrap([*cli, "device", "--quick", "--name", name, "--out", str(device)]),
           f"edgecut profile device ({name})")
    with_model = out / f"{name}-model.toml"
    shape_args = [a for k, v in shapes.items() for a in ("--input-shape",
                                                         f"{k}={'x'.join(map(str, v))}")]
    _check(wrap([*cli, "model", str(model), "--device", str(device), "--out",
                 str(out / f"{name}-model.json"), "--runs", "20", "--device-out",
                 str(with_model), *shape_args]), f"edgecut profile model ({name})")
    spec_file, timed_file = out / f"{name}-time.json", out / f"{name}-timed.json"
    # Runs after a pause vary more than back-to-back ones (under a CPU quota a run's time
    # depends on where in the quota's period it starts): three times as many of them.
    spec_file.write_text(json.dumps({"model": str(model), "inputs": inputs, "runs": 40,
                                     "gapped_runs": 120, "gap_s": 0.1, "threads": 1}))
    _check(wrap([sys.executable, str(Path(__file__).resolve()), "--time-model", str(spec_file),
                 "--worker-out", str(timed_file)]), f"timing the model ({name})")
    timed = json.loads(timed_file.read_text())
    plain_ms = timed["gapped_ms"]
    profiled = load_device(with_model)
    table_ms = sum(profiled.per_node_ms.values())
    factor = plain_ms / table_ms
    scaled = save_device(dc.replace(profiled, threads=1, per_node_ms={
        k: v * factor for k, v in profiled.per_node_ms.items()}), out / f"{name}-scaled.toml")
    from edgecut.simulations.workload import cv_from_quantiles

    return with_model, scaled, {"per_node_sum_ms": table_ms, "plain_run_ms": plain_ms,
                                "plain_run_p95_ms": timed["gapped_p95_ms"],
                                "back_to_back_run_ms": timed["back_to_back_ms"],
                                "scale": factor,
                                "second_after_gap_ms": timed["second_after_gap_ms"],
                                # the second of two runs over the first, after a pause: what a
                                # request queued behind one other pays (the simulator's
                                # busy_slowdown); a long back-to-back burst is slower still
                                "busy_slowdown": max(1.0, timed["second_after_gap_ms"] / plain_ms),
                                "service_cv": cv_from_quantiles(plain_ms,
                                                                timed["gapped_p95_ms"])}


def _simulate(model: Path, shapes: dict[str, list[int]], device: Path, cloud: Path,
              network: Path, cut: int, rate: float, requests: int, device_cv: float = 0.0,
              cloud_cv: float = 0.0, busy_slowdown: float = 1.0) -> dict[str, Any]:
    from edgecut.simulations.run import prepare, run_strategy
    from edgecut.simulations.scenario import scenario_from_dict

    scenario = scenario_from_dict({
        "simulation": {"duration_s": 40 * requests / rate, "seed": 7, "sla_ms": 1000.0},
        "model": {"file": str(model), "input_shapes": shapes},
        "cloud": {"profile": str(cloud), "replicas": 1, "max_batch_size": 1,
                  "service_cv": cloud_cv},
        "devices": [{"name": "device", "count": 1, "profile": str(device),
                     "network": str(network), "service_cv": device_cv,
                     "busy_slowdown": busy_slowdown,
                     "arrival": {"process": "poisson", "rate_per_s": rate}}],
        "strategies": {"compare": [s for s, _ in STRATEGIES], "fixed_cut": cut}},
        label="validation.toml")
    p = prepare(scenario)
    table = p.tables[0]
    out: dict[str, Any] = {"latencies_ms": {}, "service_ms": {}}
    positions = {"edge-only": table.edge_only, "cloud-only": table.cloud_only,
                 "fixed": table.position(cut)}
    for strategy, _ in STRATEGIES:
        o = run_strategy(scenario, p, strategy)
        out["latencies_ms"][strategy] = (o.done_s - p.workload.arrival_s) * 1000.0
        parts = table.components(positions[strategy], table.uplink_mbps)
        out["service_ms"][strategy] = {k: float(v) for k, v in parts.items()}
    bottleneck = table.bottleneck_ms(table.uplink_mbps)
    out["bottleneck_ms"] = max(float(bottleneck[k]) for k in positions.values())
    return out


def _model(name: str, folder: Path) -> tuple[Path, dict[str, Any]]:
    """A model of `edgecut.simulations.models` or of `benchmarks/harness/models.py`, and its
    inputs (the zoo's sample inputs; seeded uniform ones for the harness's)."""
    import numpy as np

    from benchmarks.harness.models import MODELS, build
    from edgecut.simulations.models import model_names, model_path
    from edgecut.zoo import sample_inputs

    if name in MODELS:
        built = build(name, folder)
        if built is None:
            raise SystemExit(f"--configs: model {name!r} is not installed here "
                             "(ppocr_det needs rapidocr-onnxruntime)")
        rng = np.random.default_rng(0)
        return built.path, {k: rng.random(v, dtype=np.float32) for k, v in built.shapes.items()}
    if name not in model_names():
        raise SystemExit(f"--configs: unknown model {name!r}; choose from "
                         f"{', '.join(sorted({*model_names(), *MODELS}))}")
    import onnx

    path = model_path(name)
    return path, sample_inputs(onnx.load(path))


def _split_cut(model: Any, shapes: dict[str, tuple[int, ...]]) -> int:
    from edgecut.partitioner import list_cuts

    # The fewest bytes among inner cuts with at most half the nodes on the device: a split
    # that leaves the cloud work to do (the last inner cut sends a classifier's few bytes).
    inner = [c for c in list_cuts(model, shapes) if 0 < c.device_nodes <= c.cloud_nodes]
    return min(inner, key=lambda c: (c.bytes, -c.device_nodes)).id


def run_configuration(conf: Configuration, work: Path, *, requests: int, sequential: int,
                      load: float, workers: int, slot: int | None) -> dict[str, Any]:
    import numpy as np
    import onnx

    from benchmarks.harness.endpoint import EndpointProcess
    from benchmarks.harness.shaper import NamespaceLink, cloud_address, default_slot
    from edgecut.deploy import deploy_plan
    from edgecut.partitioner import write_plan
    from edgecut.protocol.pki import init_ca, issue_device_certificate
    here = work / f"{conf.model}-{conf.fraction:g}-{conf.mbps:g}"
    here.mkdir()
    path, inputs = _model(conf.model, here)
    model = onnx.load(path)
    shapes = {k: list(v.shape) for k, v in inputs.items()}
    cut = _split_cut(model, {k: tuple(v) for k, v in shapes.items()})
    plan = here / "plan"
    write_plan(path, plan, cut_ids=[cut], input_shapes=shapes, chosen=cut)
    deploy_plan(plan, here / "repo")
    input_files = {}
    for k, v in inputs.items():
        np.save(here / f"input-{k}.npy", v)
        input_files[k] = str(here / f"input-{k}.npy")
    slot = default_slot() if slot is None else slot
    tls = here / "tls"
    init_ca(tls, hosts=[cloud_address(slot)])
    issue_device_certificate(tls, "device-0")

    limited = _Limited(conf.fraction, core=0)
    cloud_cpu = _Limited(1.0, core=1)
    try:
        _log(f"{conf.label}: profiling the cloud ({cloud_cpu.how})")
        cloud = _profile(cloud_cpu.wrap, path, shapes, input_files, here, "cloud")
        _log(f"{conf.label}: profiling the device ({limited.how})")
        device = _profile(limited.wrap, path, shapes, input_files, here, "device")
        with NamespaceLink(up_mbps=conf.mbps, down_mbps=conf.mbps, slot=slot) as link:

            class Endpoint(EndpointProcess):
                def command(self) -> list[str]:
                    return cloud_cpu.wrap(super().command())

            with Endpoint(here / "repo", tls, log_dir=here, device="device-0",
                          host=link.cloud_address, netns=link.namespace, threads=0,
                          extra_args=["--frontend", "grpcio"]) as endpoint:
                result = _measure(conf, here, path, shapes, cut, device, cloud, limited,
                                  endpoint.address, input_files, tls, requests=requests,
                                  sequential=sequential, load=load, workers=workers)
                result["cloud_cpu"] = cloud_cpu.how
                return result
    finally:
        limited.close()
        cloud_cpu.close()


def _measure(conf: Configuration, here: Path, path: Path, shapes: dict[str, list[int]],
             cut: int, device: Path, cloud: Path, limited: _Limited, endpoint: str,
             input_files: dict[str, str], tls: Path, *, requests: int, sequential: int,
             load: float, workers: int) -> dict[str, Any]:
    import numpy as np

    from edgecut.netprobe import save_network
    from edgecut.profiles import load_network

    _log(f"{conf.label}: profiling the link to {endpoint}")
    net_file = here / "network.toml"
    _check(limited.wrap([sys.executable, "-m", "edgecut", "profile", "network", "--endpoint",
                         endpoint, "--tls", str(tls), "--device", "device-0", "--out",
                         str(net_file), "--upload-mib", "1", "--download-mib", "1",
                         "--probes", "5"]), "edgecut profile network")
    network = load_network(net_file)
    # The per-call overhead: the median ModelInfer of one byte against ServerLive.
    spec = {"endpoint": endpoint, "tls": str(tls), "overhead_calls": 30}
    (here / "overhead.json").write_text(json.dumps(spec))
    _check(limited.wrap([sys.executable, str(Path(__file__).resolve()), "--overhead",
                         str(here / "overhead.json"), "--worker-out",
                         str(here / "overhead-out.json")]), "timing one-byte calls")
    overhead = json.loads((here / "overhead-out.json").read_text())
    call_net = here / "network-call-rtt.toml"
    save_network(dataclasses.replace(network, name="call-rtt",
                                     rtt_ms=round(overhead["one_byte_infer_ms"], 3)), call_net)
    inputs = {"profiled": (device[0], cloud[0], net_file),
              "corrected": (device[1], cloud[1], call_net)}
    # The rate: `load` of the slowest stage of any strategy, as the simulator costs them.
    probe = _simulate(path, shapes, *inputs["corrected"], cut, 1.0, 10)
    rate = load / (probe["bottleneck_ms"] / 1000.0)
    _log(f"{conf.label}: link {network.uplink_mbps:.1f}/{network.downlink_mbps:.1f} Mbit/s, "
         f"rtt {network.rtt_ms:.2f} ms; slowest stage {probe['bottleneck_ms']:.1f} ms, "
         f"rate {rate:.2f}/s, {requests} requests per strategy")
    spec = {"plan": str(here / "plan"), "endpoint": endpoint, "tls": str(tls), "cut": cut,
            "inputs": input_files, "rate": rate, "requests": requests, "seed": 3,
            "sequential": sequential, "workers": workers}
    spec_file = here / "spec.json"
    spec_file.write_text(json.dumps(spec))
    result_file = here / "measured.json"
    _check(limited.wrap([sys.executable, str(Path(__file__).resolve()), "--worker",
                         str(spec_file), "--worker-out", str(result_file)]), "the device worker")
    measured = json.loads(result_file.read_text())
    # The simulator on the profiles as written, and corrected (per-node tables scaled to a
    # plain run, the round trip of a one-byte ModelInfer).
    sims = {label: _simulate(path, shapes, *files, cut, rate, requests)
            for label, files in inputs.items()}
    # And corrected with each stage's service time drawn around its mean, the spread a
    # lognormal fitted to the p50 and p95 of the plain runs timed in the same cgroup.
    sims["spread"] = _simulate(path, shapes, *inputs["corrected"], cut, rate, requests,
                               device_cv=device[2]["service_cv"],
                               cloud_cv=cloud[2]["service_cv"])
    # And with that spread, a request that waited for the device served `busy_slowdown` times
    # slower than one that found it idle (the second of two runs after a pause against the
    # first, timed in the cgroup).
    sims["busy"] = _simulate(path, shapes, *inputs["corrected"], cut, rate, requests,
                             device_cv=device[2]["service_cv"],
                             cloud_cv=cloud[2]["service_cv"],
                             busy_slowdown=device[2]["busy_slowdown"])
    rows = []
    for strategy, mode in STRATEGIES:
        m = measured["strategies"][strategy]
        real = m["latencies_ms"]
        row: dict[str, Any] = {
            "strategy": strategy, "mode": mode, "cut": cut if mode == "split" else None,
            "requests": len(real), "errors": len(m["errors"]), "error_examples": m["errors"][:3],
            "measured_p50_ms": statistics.median(real), "measured_p95_ms": _percentile(real, 95),
            "sequential_p50_ms": statistics.median(m["sequential_ms"]),
            "sequential_stages_ms": m["sequential_stages_ms"],
            "wire_up_bytes": m["wire_up_bytes"], "raw_up_bytes": m["raw_up_bytes"]}
        for label, sim in sims.items():
            lat = sim["latencies_ms"][strategy]
            p50, p95 = (float(v) for v in np.percentile(lat, [50, 95]))
            service = sim["service_ms"][strategy]
            row[label] = {"p50_ms": p50, "p95_ms": p95,
                          "ratio_p50": p50 / row["measured_p50_ms"],
                          "ratio_p95": p95 / row["measured_p95_ms"],
                          "service_ms": sum(service.values()), "terms_ms": service,
                          "service_ratio": sum(service.values()) / row["sequential_p50_ms"]}
        rows.append(row)
        _log(f"{conf.label} {strategy}: measured p50 {row['measured_p50_ms']:.1f} p95 "
             f"{row['measured_p95_ms']:.1f} ms; simulated (corrected) "
             f"{row['corrected']['p50_ms']:.1f} / {row['corrected']['p95_ms']:.1f} ms, "
             f"with spread {row['spread']['p50_ms']:.1f} / {row['spread']['p95_ms']:.1f} ms, "
             f"and busy slowdown {row['busy']['p50_ms']:.1f} / {row['busy']['p95_ms']:.1f} ms")
    plot = _plot(conf, measured, sims, here)
    return {"model": conf.model, "cpu_share": conf.fraction, "link_mbps": conf.mbps,
            "cpu_limit": limited.how, "rate_per_s": rate, "load": load, "cut": cut,
            "network_profile": {"uplink_mbps": network.uplink_mbps,
                                "downlink_mbps": network.downlink_mbps,
                                "rtt_ms": network.rtt_ms, "jitter_ms": network.jitter_ms},
            "server_live_ms": overhead["server_live_ms"],
            "one_byte_infer_ms": overhead["one_byte_infer_ms"],
            "call_overhead_ms": overhead["one_byte_infer_ms"] - overhead["server_live_ms"],
            "device_profile": device[2], "cloud_profile": cloud[2],
            "rows": rows, "plot": plot,
            "measured_latencies_ms": {s: measured["strategies"][s]["latencies_ms"]
                                      for s, _ in STRATEGIES}}


def _plot(conf: Configuration, measured: dict[str, Any], sims: dict[str, Any],
          here: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 4, figsize=(19, 4), sharex=True, sharey=True)
    colours = {"edge-only": "tab:blue", "cloud-only": "tab:orange", "fixed": "tab:green"}
    for ax, (title, source) in zip(axes, (("measured (testbed)", None),
                                          ("simulated (corrected)", "corrected"),
                                          ("simulated (with service-time spread)", "spread"),
                                          ("simulated (spread, busy slowdown)", "busy")),
                              strict=True):
        for strategy, _ in STRATEGIES:
            values = (measured["strategies"][strategy]["latencies_ms"] if source is None
                      else sims[source]["latencies_ms"][strategy])
            xs = np.sort(np.asarray(values))
            ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=strategy,
                    color=colours[strategy])
        ax.set_title(title)
        ax.set_xlabel("latency (ms)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of requests")
    axes[0].legend(loc="lower right")
    fig.suptitle(conf.label)
    fig.tight_layout()
    out = here / "cdf.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _print(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="simulated / measured latency on the testbed (sim: profiled | corrected | "
                    "corrected with service-time spread | and the busy slowdown)")
    for c in ("configuration", "strategy", "rate/s", "meas. p50", "meas. p95", "seq. p50",
              "sim p50", "p50 ratio", "p95 ratio", "p50 ratio (corr.)", "p95 ratio (corr.)",
              "cv dev/cloud", "p50 ratio (spread)", "p95 ratio (spread)", "busy",
              "p50 ratio (busy)", "p95 ratio (busy)"):
        t.add_column(c, justify="right")
    for conf in results["configurations"]:
        label = f"{conf['model']} {conf['cpu_share']:g} {conf['link_mbps']:g}M"
        for r in conf["rows"]:
            t.add_row(label, r["strategy"], f"{conf['rate_per_s']:.2f}",
                      f"{r['measured_p50_ms']:.1f}", f"{r['measured_p95_ms']:.1f}",
                      f"{r['sequential_p50_ms']:.1f}", f"{r['corrected']['p50_ms']:.1f}",
                      f"{r['profiled']['ratio_p50']:.2f}", f"{r['profiled']['ratio_p95']:.2f}",
                      f"{r['corrected']['ratio_p50']:.2f}", f"{r['corrected']['ratio_p95']:.2f}",
                      f"{conf['device_profile']['service_cv']:.2f}/"
                      f"{conf['cloud_profile']['service_cv']:.2f}",
                      f"{r['spread']['ratio_p50']:.2f}", f"{r['spread']['ratio_p95']:.2f}",
                      f"{conf['device_profile']['busy_slowdown']:.2f}",
                      f"{r['busy']['ratio_p50']:.2f}", f"{r['busy']['ratio_p95']:.2f}")
    Console(width=200).print(t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON (default benchmarks/results/simulation-validation-DATE.json)")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        help="MODEL:CPU_SHARE:MBPS each (default %(default)s)")
    parser.add_argument("--requests", type=int, default=None,
                        help="Poisson requests per strategy (default 150; --quick 40)")
    parser.add_argument("--load", type=float, default=0.3,
                        help="utilisation of the slowest stage (default 0.3)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--slot", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the work folder (profiles, plans, logs) here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--time-model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--overhead", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.worker_out.write_text(json.dumps(worker(json.loads(args.worker.read_text()))))
        return 0
    if args.overhead:
        args.worker_out.write_text(json.dumps(call_overhead(json.loads(
            args.overhead.read_text()))))
        return 0
    if args.time_model:
        args.worker_out.write_text(json.dumps(time_model(json.loads(
            args.time_model.read_text()))))
        return 0
    if os.geteuid() != 0:
        print("simulation_validation needs root (cgroup cpu quota, network namespaces, tc)",
              file=sys.stderr)
        return 2
    configs = [Configuration.parse(c) for c in args.configs]
    requests = args.requests or (40 if args.quick else 150)
    sequential = 10 if args.quick else 20
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    out = args.out or REPO / "benchmarks" / "results" / f"simulation-validation-{date}.json"
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()},
        "quick": args.quick, "requests": requests, "configurations": []}
    with contextlib.ExitStack() as stack:
        if args.keep:
            work = args.keep
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="edgecut-simval-")))
        for conf in configs:
            result = run_configuration(conf, work, requests=requests, sequential=sequential,
                                       load=args.load, workers=args.workers, slot=args.slot)
            if result["plot"] is not None:
                png = out.with_name(f"{out.stem}-{conf.model}-{conf.fraction:g}-"
                                    f"{conf.mbps:g}.png")
                png.parent.mkdir(parents=True, exist_ok=True)
                png.write_bytes(Path(result["plot"]).read_bytes())
                result["plot"] = str(png.relative_to(REPO) if png.is_relative_to(REPO)
                                     else png)
            results["configurations"].append(result)
    results["machine"]["load_average_after"] = os.getloadavg()
    _print(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    _log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
