"""Profile this machine: cores, memory, per-class speed through onnxruntime, battery and power.

Each operator class is timed on a tiny ONNX graph built with onnx.helper (four Convs, four
MatMuls, an elementwise chain, four MaxPools, four LayerNorms, four Softmaxes) run through
onnxruntime on the CPU with a Predictor's session options: all defaults but the threads,
which are the CPUs this process may use (`default_threads`: its affinity and cgroup CPU
quota, as a Predictor with `intra_op_threads = 0` runs), recorded as `threads`. Every graph
is timed settled (profiles/timing.py): the graph that ran before must not spin its threads
into this one's time. A class's GFLOP/s is the graph's FLOPs, counted by
`edgecut.profiles.opclass` (the same count the predictions use, so the calibration is
consistent), over the median run time, the graph's launch costs taken off. Conv and gemm
graphs run with onnxruntime's full graph optimisations, as a real model would; the others
with none, so that the optimiser cannot fuse or cancel the very nodes being timed.
`default_gflops` (unknown op types) is the elementwise figure: most unknown ops are
elementwise-like and memory-bound, and it is the cautious choice.

Memory bandwidth is the elementwise chain's bytes moved over its time: the streaming rate
that memory-bound nodes (activations, normalisations, copies) see at activation sizes.
(A chain of Transposes, timed before, read 3.4 GB/s where elementwise nodes of real models
stream at about 40: strided copies are not what bounds most nodes, and every node of a
PP-OCR classifier came out 4-5x too slow.)

Launch costs: a graph of one Relu on 16 numbers and a chain of 33 such Relus, timed the same
way in a window of their own: `run_overhead_ms` is one run less its node (the session call
itself). Then
`edgecut.profiles.calibration` times a mobile-style reference network at two sizes and fits
`node_overhead_ms` (each kernel's launch, thread-pool fork and join included) and the
effective memory bandwidth to both runs: what real models pay around their kernels.

Power: where the OS exposes Intel RAPL (`/sys/class/powercap/intel-rapl:0/energy_uj`,
readable), idle and compute draw are the package energy over a sleep and over a conv loop.
Otherwise, and for the radio, the figures are the arguments (`idle_w=` ...) or the
catalogue laptop's, documented there. The battery capacity comes from `battery_wh=` or
`/sys/class/power_supply/BAT*/energy_full` (or charge_full x voltage_min_design) when
psutil reports a battery.

A full profile takes about 15 s (12 s of interleaved rounds); `quick=True` shrinks the graphs
and the rounds for tests (about 2 s in all).

Example:
    >>> profile = profile_device(name="this-box", quick=True)   # doctest: +SKIP
    >>> profile.gflops_by_class["conv"] > 0                      # doctest: +SKIP
    True
"""

from __future__ import annotations

import datetime as _dt
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import psutil
from onnx import TensorProto, helper, numpy_helper, shape_inference

from edgecut.cpu_budget import read_cpu_budget
from edgecut.profiles.opclass import classify_node, graph_shapes
from edgecut.profiles.schema import DeviceProfile, PowerModel
from edgecut.profiles.timing import settled_ms

__all__ = ["MachineSpeed", "ProgressCallback", "default_threads", "measure_class_throughput",
           "measure_machine", "profile_device"]

ProgressCallback = Callable[[str, int, int], None]
"""progress(step description, steps done, steps in all)"""

RAPL_ENERGY = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
RAPL_RANGE = Path("/sys/class/powercap/intel-rapl:0/max_energy_range_uj")
POWER_SUPPLIES = Path("/sys/class/power_supply")

# The catalogue laptop's power figures (catalogue/devices/laptop.toml gives their sources);
# used where the machine does not expose its own and no argument is given.
FALLBACK_POWER = {"idle_w": 6.0, "compute_w": 28.0, "transmit_w": 7.5, "receive_w": 7.0}

_OPSET = 17


@dataclass(frozen=True, slots=True)
class _Size:
    channels: int
    side: int
    rows: int
    features: int
    seconds: float


_FULL = _Size(channels=64, side=56, rows=256, features=768, seconds=2.0)
_QUICK = _Size(channels=16, side=16, rows=32, features=128, seconds=0.15)


def _model(nodes: list[onnx.NodeProto], inputs: list[tuple[str, tuple[int, ...]]], output: str,
           initializers: list[np.ndarray] | None = None, names: list[str] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "bench",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for a, n in zip(initializers or [], names or [], strict=True)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    return shape_inference.infer_shapes(model)


def _bench_models(size: _Size) -> dict[str, onnx.ModelProto]:
    rng = np.random.default_rng(0)
    c, s, r, f = size.channels, size.side, size.rows, size.features
    image = ("x", (1, c, s, s))

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    chain = [f"t{i}" for i in range(5)]
    chain[0] = "x"
    models = {}
    models["conv"] = _model(
        [helper.make_node("Conv", [chain[i], f"w{i}", f"b{i}"], [chain[i + 1]], pads=[1, 1, 1, 1])
         for i in range(4)], [image], chain[4],
        [a for i in range(4) for a in (weights(c, c, 3, 3), weights(c))],
        [n for i in range(4) for n in (f"w{i}", f"b{i}")])
    k = 2 * f
    models["gemm"] = _model(
        [helper.make_node("MatMul", [chain[i], f"w{i}"], [chain[i + 1]]) for i in range(4)],
        [("x", (r, k))], chain[4], [weights(k, k) for _ in range(4)], [f"w{i}" for i in range(4)])
    ops = ["Add", "Mul", "Sigmoid", "Add", "Tanh", "Mul", "Relu", "Sub"]
    ew_chain = ["x"] + [f"e{i}" for i in range(len(ops))]
    models["elementwise"] = _model(
        [helper.make_node(op, [ew_chain[i], "y"] if op in ("Add", "Mul", "Sub") else [ew_chain[i]],
                          [ew_chain[i + 1]]) for i, op in enumerate(ops)],
        [image, ("y", (1, c, s, s))], ew_chain[-1])
    models["pool"] = _model(
        [helper.make_node("MaxPool", [chain[i]], [chain[i + 1]], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
         for i in range(4)], [image], chain[4])
    models["norm"] = _model(
        [helper.make_node("LayerNormalization", [chain[i], "g", "beta"], [chain[i + 1]], axis=-1)
         for i in range(4)], [("x", (r, f))], chain[4],
        [np.ones(f, np.float32), np.zeros(f, np.float32)], ["g", "beta"])
    models["softmax"] = _model(
        [helper.make_node("Softmax", [chain[i]], [chain[i + 1]], axis=-1) for i in range(4)],
        [("x", (r, f))], chain[4])
    return models


def _overhead_models(nodes: int) -> onnx.ModelProto:
    chain = ["x"] + [f"r{i}" for i in range(nodes)]
    return _model([helper.make_node("Relu", [chain[i]], [chain[i + 1]]) for i in range(nodes)],
                  [("x", (1, 16))], chain[-1])


LAUNCH_CHAIN = 33


def _graph_cost(model: onnx.ModelProto) -> tuple[int, int]:
    shapes, itemsizes = graph_shapes(model)
    costs = [classify_node(n, shapes, itemsizes=itemsizes) for n in model.graph.node]
    return sum(c.flops for c in costs), sum(c.bytes_moved for c in costs)


def _session(model: onnx.ModelProto, optimise: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = default_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _interleaved_ms(runs: list[tuple[ort.InferenceSession, dict[str, np.ndarray]]], seconds: float,
                    min_rounds: int = 5) -> list[float]:
    """Median ms per run of each session, all timed round by round in one window.

    Two warm-up runs each, then rounds that visit every session once, in an order rotated
    each round, for about `seconds` (at least `min_rounds` rounds): on a shared machine a
    burst of load hits every graph alike instead of one class, so the figures keep their
    ratios. Each visit is `settled_ms` (profiles/timing.py): the previous session's spinning
    threads must not be in this one's time (a graph of a few microseconds would be timed at
    several times what it takes).
    """
    for session, feeds in runs:
        for _ in range(2):
            session.run(None, feeds)
    times: list[list[float]] = [[] for _ in runs]
    deadline = time.perf_counter() + seconds
    rounds = 0
    while time.perf_counter() < deadline or rounds < min_rounds:
        for k in range(len(runs)):
            i = (k + rounds) % len(runs)
            session, feeds = runs[i]
            times[i].append(settled_ms(lambda s=session, f=feeds: s.run(None, f)))
        rounds += 1
    return [statistics.median(t) for t in times]


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineSpeed:
    """What `measure_machine` found: the figures of a DeviceProfile it fills."""

    gflops_by_class: dict[str, float]
    memory_gbps: float
    run_overhead_ms: float
    node_overhead_ms: float
    small_node_overhead_ms: float


def measure_machine(*, quick: bool = False, progress: ProgressCallback | None = None) -> MachineSpeed:
    """Time every benchmark graph of the module docstring here, interleaved in one window,
    and fit the launch cost and bandwidth to the reference network."""
    from edgecut.profiles.calibration import REFERENCE_SIDES, fit_to_reference, reference_network

    size = _QUICK if quick else _FULL
    classes = _bench_models(size)
    tiny = {"x": np.ones((1, 16), np.float32)}
    reference = [reference_network(side) for side in ((32, 64) if quick else REFERENCE_SIDES)]
    if progress:
        progress("building the benchmark graphs", 0, 1)
    runs = [(_session(m, optimise=c in ("conv", "gemm")), _feeds(m)) for c, m in classes.items()]
    runs += [(_session(m, optimise=True), _feeds(m)) for m in reference]
    launch = [(_session(_overhead_models(n), optimise=False), tiny) for n in (1, LAUNCH_CHAIN)]
    if progress:
        progress("timing the benchmark graphs, interleaved", 0, 1)
    ms = _interleaved_ms(runs, 1.5 if quick else 11.0)
    # The launch graphs in a window of their own: timed between the heavy graphs, even
    # settled, a one-node run measured 2-10x the 5 us it takes in a Predictor.
    one, many = _interleaved_ms(launch, 0.3 if quick else 1.0)
    small_ms = max(0.0, (many - one) / (LAUNCH_CHAIN - 1))
    run_ms = max(0.0, one - small_ms)
    gflops: dict[str, float] = {}
    memory_gbps = 0.0
    for (op_class, model), t in zip(classes.items(), ms, strict=False):
        seconds = max(t - len(model.graph.node) * small_ms, t / 2) / 1e3
        flops, moved = _graph_cost(model)
        gflops[op_class] = flops / seconds / 1e9
        if op_class == "elementwise":
            memory_gbps = moved / seconds / 1e9
    stream = DeviceProfile(name="fit", cores=1, memory_mib=1, gflops_by_class=gflops,
                           default_gflops=gflops["elementwise"], memory_gbps=memory_gbps,
                           power=PowerModel(idle_w=0, compute_w=0, transmit_w=0, receive_w=0),
                           run_overhead_ms=run_ms, small_node_overhead_ms=small_ms)
    node_ms, fitted_gbps = fit_to_reference(stream, reference, ms[len(classes):])
    return MachineSpeed(gflops_by_class=gflops, memory_gbps=fitted_gbps, run_overhead_ms=run_ms,
                        node_overhead_ms=node_ms, small_node_overhead_ms=small_ms)


def measure_class_throughput(*, quick: bool = False,
                             progress: ProgressCallback | None = None) -> tuple[dict[str, float], float]:
    """({class: GFLOP/s}, effective memory GB/s) of this machine (`measure_machine`)."""
    speed = measure_machine(quick=quick, progress=progress)
    return speed.gflops_by_class, speed.memory_gbps


def default_threads() -> int:
    """The intra-op threads a Predictor with `intra_op_threads = 0` runs: the CPUs this
    process may use, its affinity and cgroup CPU quota (edgecut.cpu_budget). onnxruntime's
    own default, one per physical core, ignores both; the profile's sessions run this
    count and the profile records it."""
    return read_cpu_budget().cpus


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _rapl_power(quick: bool) -> tuple[float, float] | None:
    """(idle W, compute W) of the CPU package from RAPL, or None where it is not readable."""
    if _read_int(RAPL_ENERGY) is None:
        return None
    wrap = _read_int(RAPL_RANGE) or 2**32

    def watts(work: Callable[[], None]) -> float | None:
        start, t0 = _read_int(RAPL_ENERGY), time.perf_counter()
        work()
        end, t1 = _read_int(RAPL_ENERGY), time.perf_counter()
        if start is None or end is None or t1 <= t0:
            return None
        return ((end - start) % wrap) / 1e6 / (t1 - t0)

    seconds = 0.3 if quick else 1.0
    model = _bench_models(_QUICK if quick else _FULL)["conv"]
    session, feeds = _session(model, optimise=True), _feeds(model)

    def compute() -> None:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            session.run(None, feeds)

    idle = watts(lambda: time.sleep(seconds))
    busy = watts(compute)
    if idle is None or busy is None:
        return None
    return idle, max(busy, idle)


def _battery_wh() -> float | None:
    try:
        battery = psutil.sensors_battery()
    except (AttributeError, NotImplementedError, OSError):
        battery = None
    if battery is None or not POWER_SUPPLIES.is_dir():
        return None
    for supply in sorted(POWER_SUPPLIES.glob("BAT*")):
        energy = _read_int(supply / "energy_full")
        if energy:
            return energy / 1e6
        charge, volts = _read_int(supply / "charge_full"), _read_int(supply / "voltage_min_design")
        if charge and volts:
            return charge / 1e6 * volts / 1e6
    return None


def profile_device(*, name: str, progress: ProgressCallback | None = None, quick: bool = False,
                   idle_w: float | None = None, compute_w: float | None = None,
                   transmit_w: float | None = None, receive_w: float | None = None,
                   battery_wh: float | None = None) -> DeviceProfile:
    """Measure this machine and return its DeviceProfile named `name`.

    `progress(step, done, total)` is called before each step and once at the end. Power
    arguments override what the OS exposes; `quick=True` runs reduced benchmarks.

    Example:
        >>> profile = profile_device(name="bench", quick=True)  # doctest: +SKIP
        >>> profile.memory_gbps > 0                              # doctest: +SKIP
        True
    """
    steps = 9

    def step(text: str, done: int) -> None:
        if progress:
            progress(text, done, steps)

    step("counting cores and memory", 0)
    cores = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    memory_mib = round(psutil.virtual_memory().total / 2**20)

    def class_progress(text: str, done: int, _total: int) -> None:
        step(text, 1 + done)

    speed = measure_machine(quick=quick, progress=class_progress)
    gflops, memory_gbps = speed.gflops_by_class, speed.memory_gbps
    step("measuring power", 8)
    measured = _rapl_power(quick) if idle_w is None or compute_w is None else None
    power_notes = "RAPL package power" if measured else "catalogue laptop defaults [approximate]"
    idle = idle_w if idle_w is not None else (measured[0] if measured else FALLBACK_POWER["idle_w"])
    busy = compute_w if compute_w is not None else (measured[1] if measured else FALLBACK_POWER["compute_w"])
    if idle_w is not None and compute_w is not None:
        power_notes = "given"
    power = PowerModel(
        idle_w=idle, compute_w=max(busy, idle),
        transmit_w=transmit_w if transmit_w is not None else max(FALLBACK_POWER["transmit_w"], idle),
        receive_w=receive_w if receive_w is not None else max(FALLBACK_POWER["receive_w"], idle),
    )
    step("done", steps)
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return DeviceProfile(
        name=name,
        cores=int(cores),
        memory_mib=memory_mib,
        gflops_by_class=gflops,
        default_gflops=gflops["elementwise"],
        memory_gbps=memory_gbps,
        power=power,
        battery_wh=battery_wh if battery_wh is not None else _battery_wh(),
        threads=default_threads(),
        run_overhead_ms=speed.run_overhead_ms,
        node_overhead_ms=speed.node_overhead_ms,
        small_node_overhead_ms=speed.small_node_overhead_ms,
        source=(f"measured by edgecut profile_device{' (quick)' if quick else ''} on "
                f"{platform.node() or 'this machine'} ({platform.machine()}), onnxruntime "
                f"{ort.__version__} CPU, {when}; power: {power_notes}"),
    )
