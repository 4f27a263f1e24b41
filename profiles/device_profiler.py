"""Profile this machine: cores, memory, per-class speed through onnxruntime, battery and power.

Each operator class is timed on a tiny ONNX graph built with onnx.helper (four Convs, four
MatMuls, an elementwise chain, four MaxPools, four LayerNorms, four Softmaxes, and a chain of
Transposes for memory bandwidth) run through onnxruntime on the CPU with its default threads.
A class's GFLOP/s is the graph's FLOPs, counted by `edgecut.profiles.opclass` (the same count
the predictions use, so the calibration is consistent), over the median run time. Conv and
gemm graphs run with onnxruntime's full graph optimisations, as a real model would; the
others with none, so that the optimiser cannot fuse or cancel the very nodes being timed.
`default_gflops` (unknown op types) is the elementwise figure: most unknown ops are
elementwise-like and memory-bound, and it is the cautious choice.

Power: where the OS exposes Intel RAPL (`/sys/class/powercap/intel-rapl:0/energy_uj`,
readable), idle and compute draw are the package energy over a sleep and over a conv loop.
Otherwise, and for the radio, the figures are the arguments (`idle_w=` ...) or the
catalogue laptop's, documented there. The battery capacity comes from `battery_wh=` or
`/sys/class/power_supply/BAT*/energy_full` (or charge_full x voltage_min_design) when
psutil reports a battery.

A full profile takes about 15 s (about 2 s per class); `quick=True` shrinks the graphs and
the time per class for tests (about 2 s in all).

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

from edgecut.profiles.opclass import classify_node, graph_shapes
from edgecut.profiles.schema import DeviceProfile, PowerModel

__all__ = ["ProgressCallback", "measure_class_throughput", "profile_device"]

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
    models["data"] = _model(
        [helper.make_node("Transpose", [chain[i]], [chain[i + 1]], perm=[0, 2, 3, 1]) for i in range(4)],
        [("x", (1, c * 2, s * 2, s * 2))], chain[4])
    return models


def _graph_cost(model: onnx.ModelProto) -> tuple[int, int]:
    shapes, itemsizes = graph_shapes(model)
    costs = [classify_node(n, shapes, itemsizes=itemsizes) for n in model.graph.node]
    return sum(c.flops for c in costs), sum(c.bytes_moved for c in costs)


def _session(model: onnx.ModelProto, optimise: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _time_runs(session: ort.InferenceSession, feeds: dict[str, np.ndarray], seconds: float) -> float:
    """Median seconds per run over about `seconds` of runs, after two warm-up runs."""
    for _ in range(2):
        session.run(None, feeds)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_class_throughput(*, quick: bool = False,
                             progress: ProgressCallback | None = None) -> tuple[dict[str, float], float]:
    """({class: GFLOP/s}, memory GB/s) of this machine through onnxruntime's CPU provider."""
    size = _QUICK if quick else _FULL
    models = _bench_models(size)
    gflops: dict[str, float] = {}
    memory_gbps = 0.0
    for i, (op_class, model) in enumerate(models.items()):
        if progress:
            progress(f"timing {op_class}", i, len(models))
        session = _session(model, optimise=op_class in ("conv", "gemm"))
        seconds = _time_runs(session, _feeds(model), size.seconds)
        flops, moved = _graph_cost(model)
        if op_class == "data":
            memory_gbps = moved / seconds / 1e9
        else:
            gflops[op_class] = flops / seconds / 1e9
    return gflops, memory_gbps


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

    gflops, memory_gbps = measure_class_throughput(quick=quick, progress=class_progress)
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
        source=(f"measured by edgecut profile_device{' (quick)' if quick else ''} on "
                f"{platform.node() or 'this machine'} ({platform.machine()}), onnxruntime "
                f"{ort.__version__} CPU, {when}; power: {power_notes}"),
    )
