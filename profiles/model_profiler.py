"""Per-node latency of a model on this machine, from onnxruntime's own profiler; predictions.

`profile_model(path, input_shapes=...)` runs the model in onnxruntime with
`SessionOptions.enable_profiling`, parses the JSON trace it writes, and averages each node's
"Node" kernel events over the measured runs (warm-up runs, identified by their `model_run`
window, are dropped). Nodes are not timed one by one by hand.

Node names. Keys are the graph's node names; a node without a name is keyed
`<op_type>_<index>` (its position in `graph.node`), suffixed `_<n>` if that collides, the same
names `node_names()` returns. The model is given these names before onnxruntime sees it.

Fused and inserted nodes. onnxruntime's optimiser fuses nodes (Conv+Relu, Conv+BatchNorm,
MatMul+Add ...), renames them (a fused node may be named after its output tensor, e.g.
`y_nchwc`) and inserts layout nodes (ReorderInput/ReorderOutput, Memcpy). An event is
attributed, in order, to: the graph node of that name; else the graph node whose name or one
of whose output names is the longest prefix of the event name. Graph nodes left without an
event were fused away: each takes a share of the time of its nearest timed neighbour
(producer first, then consumer), the neighbour's time split over the group by work share
(FLOPs + bytes moved + 1, from `edgecut.profiles.opclass`). Time of events matching no node
(layout and copy nodes) is spread over all nodes by the same work share and reported as
`ModelProfile.unattributed_ms`. Events of nodes inside If/Loop/Scan bodies are ignored: the
control-flow node's own event already includes them. A node that onnxruntime removes outright
with no timed neighbour (an Identity or Dropout folded away) is reported at 0 ms.

Peak memory is the growth of this process's resident set (psutil RSS) from before the session
is created to the largest value sampled after creation and after each run: a lower bound of
the true peak, good for comparing devices' memory limits against.

`predict_for_device(model, input_shapes, device)` needs no run: it uses the device's
measured `per_node_ms` table when it belongs to this model (same sha256), else the roofline
estimate of `opclass.estimate_node_ms` on shapes from ONNX shape inference.

Example:
    >>> profile = profile_model("model.onnx", input_shapes={"x": (1, 3, 224, 224)})  # doctest: +SKIP
    >>> sorted(profile.node_ms)[:2]                                                    # doctest: +SKIP
    ['conv1', 'relu1']
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import psutil
from onnx import helper, numpy_helper, shape_inference

from edgecut.errors import BadModelError, BadShapeError
from edgecut.profiles.opclass import classify_node, estimate_node_ms, graph_shapes
from edgecut.profiles.schema import DeviceProfile

__all__ = [
    "ModelProfile",
    "ProfilingSession",
    "attach_model_profile",
    "model_sha256",
    "node_names",
    "predict_for_device",
    "profile_model",
]

InputShapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelProfile:
    """A model measured on this machine: mean ms per graph node, whole runs, memory.

    `node_ms` has an entry for every main-graph node (see the module docstring for fused and
    unnamed nodes); `total_ms` is the mean `model_run` time, which also holds the executor's
    own overhead between nodes; `unattributed_ms` is the mean time of events that matched no
    node and was spread by work share.
    """

    model_sha256: str
    input_shapes: dict[str, tuple[int, ...]]
    node_ms: dict[str, float]
    total_ms: float
    runs: int
    peak_memory_mib: float
    unattributed_ms: float = 0.0
    optimization: str = "all"
    node_op_types: dict[str, str] = field(default_factory=dict)


def node_names(graph: onnx.GraphProto) -> list[str]:
    """The key of each node of `graph`, in order: its name, or `<op_type>_<index>` when it has
    none or shares it with another node. Every table of per-node times in edgecut (profiles,
    predictions, the cost graph) is keyed by these.

    Example:
        >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [], [])
        >>> node_names(g)
        ['Relu_0']
    """
    uses: dict[str, int] = {}
    for node in graph.node:
        uses[node.name] = uses.get(node.name, 0) + 1
    taken = {name for name, n in uses.items() if name and n == 1}
    names = []
    for i, node in enumerate(graph.node):
        name = node.name
        if not name or uses[name] > 1:
            name = base = f"{node.op_type}_{i}"
            suffix = 1
            while name in taken:
                name, suffix = f"{base}_{suffix}", suffix + 1
            taken.add(name)
        names.append(name)
    return names


def model_sha256(model: onnx.ModelProto | str | os.PathLike[str]) -> str:
    """sha256 of a model file's bytes, or of a ModelProto's serialisation."""
    if isinstance(model, onnx.ModelProto):
        return hashlib.sha256(model.SerializeToString()).hexdigest()
    return hashlib.sha256(Path(model).read_bytes()).hexdigest()


def _load(model: onnx.ModelProto | str | os.PathLike[str]) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(os.fspath(model))
    except FileNotFoundError as exc:
        raise BadModelError(f"{os.fspath(model)}: no such model file") from exc
    except Exception as exc:  # onnx raises DecodeError and friends: translated here, once
        raise BadModelError(f"{os.fspath(model)}: not an ONNX model ({exc})") from exc


def _concrete_inputs(model: onnx.ModelProto, input_shapes: InputShapes) -> dict[str, tuple[int, ...]]:
    initializers = {i.name for i in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    known = {vi.name for vi in inputs}
    problems = [f"input_shapes names {name!r}, which is not a model input (inputs: "
                f"{', '.join(sorted(known))})" for name in input_shapes if name not in known]
    shapes = {}
    for vi in inputs:
        if vi.name in input_shapes:
            shape = tuple(int(d) for d in input_shapes[vi.name])
            if any(d <= 0 for d in shape):
                problems.append(f"input {vi.name!r}: dimensions must be > 0, got {shape}")
            shapes[vi.name] = shape
            continue
        # symbolic, unknown and negative (Paddle2ONNX's -1) dims all need a given size
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        if any(d <= 0 for d in dims):
            problems.append(f"input {vi.name!r} has symbolic dimensions; give its shape in input_shapes")
        shapes[vi.name] = tuple(dims)
    if problems:
        raise BadShapeError("\n".join(problems))
    return shapes


def _feeds(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in model.graph.input:
        if vi.name not in shapes:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shapes[vi.name]).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(shapes[vi.name], dtype)
    return feeds


def _named_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    named = onnx.ModelProto()
    named.CopyFrom(model)
    for node, name in zip(named.graph.node, node_names(named.graph), strict=True):
        node.name = name
    return named


def _subgraph_node_names(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            subs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
            for sub in subs:
                names.update(n.name for n in sub.node if n.name)
                names.update(_subgraph_node_names(sub))
    return names


def _work(model: onnx.ModelProto, shapes: InputShapes) -> dict[str, float]:
    """FLOPs + bytes moved + 1 of each named node: the weight for sharing fused time."""
    costs = estimate_costs(model, shapes)
    return {name: float(cost.flops + cost.bytes_moved + 1) for name, cost in costs.items()}


def estimate_costs(model: onnx.ModelProto, input_shapes: InputShapes) -> dict[str, object]:
    """{node name: NodeCost} of the main graph at the given input shapes (shape inference)."""
    concrete = _concrete_inputs(model, input_shapes)
    shaped = onnx.ModelProto()
    shaped.CopyFrom(model)
    for vi in shaped.graph.input:
        if vi.name in concrete:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in concrete[vi.name]:
                dims.add().dim_value = d
    try:
        shaped = shape_inference.infer_shapes(shaped, data_prop=True)
    except Exception as exc:  # onnx.shape_inference.InferenceError and checker errors
        raise BadModelError(f"shape inference failed at input shapes {concrete}: {exc}") from exc
    shapes, itemsizes = graph_shapes(shaped)
    constants: dict[str, object] = {}
    for init in shaped.graph.initializer:
        if not init.dims or list(init.dims) == [1]:
            constants[init.name] = numpy_helper.to_array(init).reshape(-1)[0]
    for node in shaped.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            value = numpy_helper.to_array(node.attribute[0].t)
            if value.size == 1:
                constants[node.output[0]] = value.reshape(-1)[0]
    names = node_names(shaped.graph)
    return {name: classify_node(node, shapes, itemsizes=itemsizes, constants=constants)
            for name, node in zip(names, shaped.graph.node, strict=True)}


def _attribute(events: list[dict], graph: onnx.GraphProto, runs_windows: list[tuple[int, int]],
               work: Mapping[str, float]) -> tuple[dict[str, float], float]:
    names = node_names(graph)
    name_set = set(names)
    ignored = _subgraph_node_names(graph) - name_set
    prefixes = sorted(((p, n) for n, node in zip(names, graph.node, strict=True)
                       for p in (n, *[o for o in node.output if o])), key=lambda pn: -len(pn[0]))
    timed: dict[str, float] = {}
    unmatched = 0.0
    for event in events:
        ts = event.get("ts", 0)
        if not any(start <= ts <= end for start, end in runs_windows):
            continue
        label = str(event.get("name", "")).removesuffix("_kernel_time")
        if label in ignored:
            continue
        target = label if label in name_set else next((n for p, n in prefixes if label.startswith(p)), None)
        dur_ms = float(event.get("dur", 0)) / 1e3
        if target is None:
            unmatched += dur_ms
        else:
            timed[target] = timed.get(target, 0.0) + dur_ms

    # fused-away nodes share the time of their nearest timed neighbour
    producer = {o: n for n, node in zip(names, graph.node, strict=True) for o in node.output if o}
    consumers: dict[str, list[str]] = {}
    for n, node in zip(names, graph.node, strict=True):
        for i in node.input:
            if i in producer:
                consumers.setdefault(producer[i], []).append(n)
    inputs_of = {n: [producer[i] for i in node.input if i in producer]
                 for n, node in zip(names, graph.node, strict=True)}
    groups: dict[str, list[str]] = {}
    for n in names:
        if n in timed:
            continue
        seen, frontier, anchor = {n}, [n], None
        while frontier and anchor is None:
            nxt = []
            for m in frontier:
                for k in (*inputs_of.get(m, []), *consumers.get(m, [])):
                    if k in timed:
                        anchor = anchor or k
                    elif k not in seen:
                        seen.add(k)
                        nxt.append(k)
            frontier = nxt
        if anchor is not None:
            groups.setdefault(anchor, []).append(n)
    node_ms = {n: 0.0 for n in names}
    node_ms.update(timed)
    for anchor, members in groups.items():
        group = [anchor, *members]
        total = sum(work.get(m, 1.0) for m in group)
        for m in group:
            node_ms[m] = timed[anchor] * work.get(m, 1.0) / total
    if unmatched:
        total = sum(work.get(n, 1.0) for n in names)
        for n in names:
            node_ms[n] += unmatched * work.get(n, 1.0) / total
    return node_ms, unmatched


_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def profile_model(model_path: str | os.PathLike[str], *, input_shapes: InputShapes, runs: int = 20,
                  warmup: int = 3, optimization: str = "all",
                  intra_op_threads: int = 0) -> ModelProfile:
    """Measure every node of a model in onnxruntime's profiler, averaged over `runs` runs.

    `optimization` is onnxruntime's graph optimisation level ("disable", "basic",
    "extended", "all"; "all" is what a deployed session uses). `intra_op_threads` are
    onnxruntime's threads (0: its default, one per physical core, as a Predictor's; give the
    serving endpoint's count to profile a cloud: a process pinned to one core that runs two
    threads is measured slower than it serves). Raises BadModelError for a
    missing or invalid model, BadShapeError for missing or bad input shapes.

    Example:
        >>> p = profile_model("cnn.onnx", input_shapes={"x": (1, 3, 32, 32)}, runs=5)  # doctest: +SKIP
        >>> all(ms >= 0 for ms in p.node_ms.values())                                   # doctest: +SKIP
        True
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got {runs}, {warmup}")
    if optimization not in _LEVELS:
        raise ValueError(f"optimization must be one of {', '.join(_LEVELS)}, got {optimization!r}")
    model = _load(model_path)
    sha = model_sha256(model_path)
    shapes = _concrete_inputs(model, input_shapes)
    named = _named_copy(model)
    feeds = _feeds(named, shapes)
    process = psutil.Process()
    with tempfile.TemporaryDirectory(prefix="edgecut-profile-") as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        options.intra_op_num_threads = intra_op_threads
        options.graph_optimization_level = _LEVELS[optimization]
        options.log_severity_level = 3
        rss_before = process.memory_info().rss
        try:
            session = ort.InferenceSession(named.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
            peak = process.memory_info().rss
            for _ in range(warmup + runs):
                session.run(None, feeds)
                peak = max(peak, process.memory_info().rss)
        except (ort.capi.onnxruntime_pybind11_state.Fail,
                ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph,
                ort.capi.onnxruntime_pybind11_state.NotImplemented) as exc:
            raise BadModelError(f"{os.fspath(model_path)}: onnxruntime cannot run it at input shapes "
                                f"{shapes}: {exc}") from exc
        trace = json.loads(Path(session.end_profiling()).read_text())
    run_events = sorted((e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])
    measured = run_events[warmup:]
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in measured]
    node_events = [e for e in trace
                   if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    work = _work(named, shapes)
    totals, unmatched = _attribute(node_events, named.graph, windows, work)
    count = max(1, len(measured))
    return ModelProfile(
        model_sha256=sha,
        input_shapes=shapes,
        node_ms={n: ms / count for n, ms in totals.items()},
        total_ms=sum(e["dur"] for e in measured) / 1e3 / count,
        runs=len(measured),
        peak_memory_mib=max(0, peak - rss_before) / 2**20,
        unattributed_ms=unmatched / count,
        optimization=optimization,
        node_op_types=dict(zip(node_names(named.graph), (n.op_type for n in named.graph.node), strict=True)),
    )


class ProfilingSession:
    """A model in onnxruntime's profiler, run one call at a time by its caller (so that other
    work can be interleaved with it), each run's per-node ms read back at the end.

    Session options are a Predictor's (default threads, `optimization` level "all"), plus
    profiling. Node keys are `node_names`; fused and unmatched time is attributed as in
    `profile_model`, run by run.

    Example:
        >>> session = ProfilingSession(model, feeds)          # doctest: +SKIP
        >>> for _ in range(5): session.run()                  # doctest: +SKIP
        >>> tables, totals = session.finish()                 # doctest: +SKIP
    """

    def __init__(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                 optimization: str = "all") -> None:
        self._named = _named_copy(model)
        self._shapes = {k: tuple(v.shape) for k, v in feeds.items()}
        self._tmp = tempfile.TemporaryDirectory(prefix="edgecut-profile-")
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(self._tmp.name) / "ort")
        options.graph_optimization_level = _LEVELS[optimization]
        options.log_severity_level = 3
        self._session = ort.InferenceSession(self._named.SerializeToString(), options,
                                             providers=["CPUExecutionProvider"])
        inputs = {i.name for i in self._session.get_inputs()}
        self._feeds = {k: v for k, v in feeds.items() if k in inputs}

    def run(self) -> float:
        """One run; returns its wall time in ms (profiling included)."""
        import time

        start = time.perf_counter()
        self._session.run(None, self._feeds)
        return (time.perf_counter() - start) * 1e3

    def finish(self, skip: int = 0) -> tuple[list[dict[str, float]], list[float]]:
        """(per-node ms of each run after the first `skip`, each run's `model_run` ms); ends
        profiling and removes the trace."""
        try:
            trace = json.loads(Path(self._session.end_profiling()).read_text())
        finally:
            self._tmp.cleanup()
        runs = sorted((e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"),
                      key=lambda e: e["ts"])[skip:]
        events = [e for e in trace
                  if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
        work = _work(self._named, self._shapes)
        tables = []
        for e in runs:
            window = [(e["ts"], e["ts"] + e["dur"])]
            inside = [x for x in events if window[0][0] <= x.get("ts", 0) <= window[0][1]]
            tables.append(_attribute(inside, self._named.graph, window, work)[0])
        return tables, [e["dur"] / 1e3 for e in runs]


def attach_model_profile(device: DeviceProfile, profile: ModelProfile) -> DeviceProfile:
    """`device` with `profile`'s per-node table (what `edgecut profile --model` saves)."""
    return replace(device, per_node_ms=dict(profile.node_ms), per_node_model_sha256=profile.model_sha256)


def predict_for_device(model: onnx.ModelProto | str | os.PathLike[str], input_shapes: InputShapes,
                       device: DeviceProfile) -> dict[str, float]:
    """Predicted ms of every main-graph node of `model` on `device`.

    Uses the device's measured `per_node_ms` for nodes it has when the table was measured on
    this very model (sha256 match), and the roofline of `estimate_node_ms` for the rest.

    Example:
        >>> from edgecut.profiles import load_device
        >>> predict_for_device("cnn.onnx", {"x": (1, 3, 32, 32)}, load_device("phone"))  # doctest: +SKIP
        {'conv1': 0.41, ...}
    """
    loaded = _load(model)
    measured: Mapping[str, float] = {}
    if device.per_node_ms and device.per_node_model_sha256 == model_sha256(model):
        measured = device.per_node_ms
    costs = estimate_costs(loaded, input_shapes)
    return {name: measured[name] if name in measured
            else estimate_node_ms(cost.op_class, cost.flops, cost.bytes_moved, device,  # type: ignore[attr-defined]
                                  cost.kernels, cost.small_kernels)  # type: ignore[attr-defined]
            for name, cost in costs.items()}
