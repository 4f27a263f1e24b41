"""The value the cost model and the cut search work on: nodes with costs, tensors with sizes.

A `CostGraph` knows nothing of ONNX: node i has a device time, a cloud time and weight bytes;
each tensor has a size, the node that makes it (None for a graph input) and the nodes that read
it. `costgraph_from_model` builds one from an ONNX model with the graph analysis and shape code
of this package; node i of the result is `model.graph.node[analyse_graph(model).order[i]]`.

Example:
    >>> g = chain_costgraph(device_ms=[1, 2], cloud_ms=[0.1, 0.2], tensor_bytes=[12, 8, 4])
    >>> [t.name for t in g.tensors], g.order
    (['t0', 't1', 't2'], (0, 1))
    >>> g.is_down_set(frozenset({1}))
    False
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgecut.errors import BadInputError, BadProfileError, BadShapeError, UserInputError

if TYPE_CHECKING:
    import onnx

    from edgecut.partitioner.shapes import TensorInfo

__all__ = [
    "CostGraph",
    "CostNode",
    "CostTensor",
    "chain_costgraph",
    "costgraph_from_model",
    "node_names",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class CostNode:
    """One node: what it costs on each side, and the weights it needs on the device."""

    index: int
    name: str
    device_ms: float
    cloud_ms: float
    weight_bytes: int = 0
    model_index: int | None = None  # index into model.graph.node, when built from a model

    def __post_init__(self) -> None:
        for name in ("device_ms", "cloud_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UserInputError(f"node {self.name!r}: {name} must be finite and >= 0, got {value}")
        if self.weight_bytes < 0:
            raise UserInputError(f"node {self.name!r}: weight_bytes must be >= 0, got {self.weight_bytes}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CostTensor:
    """One tensor that may cross the cut (initializers and constants never do: not listed)."""

    name: str
    bytes: int
    producer: int | None  # None: a graph input, which lives on the device
    consumers: tuple[int, ...] = ()
    is_graph_output: bool = False
    pinned_on_device: bool = False  # a graph input that must not leave the device (privacy)

    def __post_init__(self) -> None:
        if self.bytes < 0:
            raise UserInputError(f"tensor {self.name!r}: bytes must be >= 0, got {self.bytes}")
        if len(set(self.consumers)) != len(self.consumers):
            raise UserInputError(f"tensor {self.name!r}: consumers repeat: {self.consumers}")
        if self.pinned_on_device and self.producer is not None:
            raise UserInputError(
                f"tensor {self.name!r}: only graph inputs can be pinned on the device, but node "
                f"{self.producer} produces it"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class CostGraph:
    """Nodes, tensors and a topological order of the nodes (the order prefix cuts follow)."""

    nodes: tuple[CostNode, ...]
    tensors: tuple[CostTensor, ...]
    order: tuple[int, ...]
    # Derived in __post_init__: tensor indices each node reads / makes, producers of its inputs.
    inputs_of: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)
    outputs_of: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)
    predecessors: tuple[frozenset[int], ...] = field(init=False, repr=False, compare=False)
    position: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.nodes)
        problems = [
            f"nodes[{i}] has index {node.index}" for i, node in enumerate(self.nodes) if node.index != i
        ]
        if sorted(self.order) != list(range(n)):
            problems.append(f"order must list each node index 0..{n - 1} once, got {self.order}")
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            repeated = sorted({x for x in names if names.count(x) > 1})
            problems.append("tensor names repeat: " + ", ".join(repeated))
        position = [0] * n
        if not problems:
            for k, v in enumerate(self.order):
                position[v] = k
        inputs_of: list[list[int]] = [[] for _ in range(n)]
        outputs_of: list[list[int]] = [[] for _ in range(n)]
        preds: list[set[int]] = [set() for _ in range(n)]
        for ti, t in enumerate(self.tensors):
            ends = [t.producer] if t.producer is not None else []
            if any(not 0 <= i < n for i in [*ends, *t.consumers]):
                problems.append(f"tensor {t.name!r} names a node outside 0..{n - 1}")
                continue
            if t.producer is not None:
                outputs_of[t.producer].append(ti)
            for c in t.consumers:
                inputs_of[c].append(ti)
                if t.producer is not None:
                    preds[c].add(t.producer)
                    # Checking every edge against the order also proves the graph acyclic.
                    if not problems and position[t.producer] >= position[c]:
                        problems.append(
                            f"tensor {t.name!r} flows from node {t.producer} to node {c}, which "
                            "does not come later in the order (a cycle, or a wrong order)"
                        )
        if problems:
            raise UserInputError("cost graph: " + "; ".join(problems))
        object.__setattr__(self, "inputs_of", tuple(tuple(x) for x in inputs_of))
        object.__setattr__(self, "outputs_of", tuple(tuple(x) for x in outputs_of))
        object.__setattr__(self, "predecessors", tuple(frozenset(p) for p in preds))
        object.__setattr__(self, "position", tuple(position))

    def is_down_set(self, device_nodes: Iterable[int]) -> bool:
        """True when every predecessor of a device node is on the device too."""
        chosen = set(device_nodes)
        return all(0 <= v < len(self.nodes) and self.predecessors[v] <= chosen for v in chosen)

    def check_device_set(self, device_nodes: Iterable[int]) -> None:
        """UserInputError naming the first node whose input would come back from the cloud."""
        chosen = set(device_nodes)
        for v in sorted(chosen):
            if not 0 <= v < len(self.nodes):
                raise UserInputError(f"device node {v} is not a node index 0..{len(self.nodes) - 1}")
            missing = self.predecessors[v] - chosen
            if missing:
                u = min(missing)
                raise UserInputError(
                    f"node {self.nodes[v].name!r} is on the device but reads from node "
                    f"{self.nodes[u].name!r} in the cloud; a device set must be closed under "
                    "predecessors"
                )

    def prefix(self, k: int) -> frozenset[int]:
        """The device set of the first `k` nodes of the order."""
        return frozenset(self.order[:k])


def chain_costgraph(
    *, device_ms: Sequence[float], cloud_ms: Sequence[float], tensor_bytes: Sequence[int]
) -> CostGraph:
    """A chain t0 -> n0 -> t1 -> n1 ... -> tN (tN the output), handy in examples and tests."""
    n = len(device_ms)
    if len(cloud_ms) != n or len(tensor_bytes) != n + 1:
        raise UserInputError("chain: need as many cloud_ms as device_ms and one more tensor size")
    nodes = tuple(
        CostNode(index=i, name=f"n{i}", device_ms=float(d), cloud_ms=float(c))
        for i, (d, c) in enumerate(zip(device_ms, cloud_ms, strict=True))
    )
    tensors = tuple(
        CostTensor(
            name=f"t{i}", bytes=int(b), producer=i - 1 if i else None,
            consumers=(i,) if i < n else (), is_graph_output=i == n,
        )
        for i, b in enumerate(tensor_bytes)
    )
    return CostGraph(nodes=nodes, tensors=tensors, order=tuple(range(n)))


def node_names(model: onnx.ModelProto) -> tuple[str, ...]:
    """The names `costgraph_from_model` keys its time tables by, in the order of its nodes."""
    from edgecut.partitioner.graph import analyse_graph

    return _names(model, analyse_graph(model).order)


def _names(model: onnx.ModelProto, order: Sequence[int]) -> tuple[str, ...]:
    # One naming scheme for every per-node table: the profiler's.
    from edgecut.profiles.model_profiler import node_names as profiler_names

    names = profiler_names(model.graph)
    return tuple(names[i] for i in order)


def costgraph_from_model(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None,
    device_ms: Mapping[str, float],
    cloud_ms: Mapping[str, float],
    pinned_inputs: Iterable[str] = (),
    *,
    tensors: Mapping[str, TensorInfo] | None = None,
) -> CostGraph:
    """A CostGraph of `model` at `input_shapes`, timed by per-node tables keyed by node name.

    A node's name is its ONNX name, or `OpType#i` (i its index in `model.graph.node`) when it
    has none or shares it with another node. Constant nodes and initializers are not nodes or
    tensors here (each side has its own copy); the weights a node reads count in its
    `weight_bytes`. A weight read by several nodes counts in each: memory is over-, never
    under-estimated, so a memory limit is never broken for lack of accounting.
    """
    from edgecut.partitioner.graph import analyse_graph
    from edgecut.partitioner.shapes import resolve_tensors

    info = analyse_graph(model)
    sizes = tensors if tensors is not None else resolve_tensors(model, input_shapes)
    names = _names(model, info.order)
    for table, label in ((device_ms, "device_ms"), (cloud_ms, "cloud_ms")):
        missing = [x for x in names if x not in table]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            shown = ", ".join(map(repr, missing[:5])) + more
            raise BadProfileError(f"{label}: no time for node(s) {shown}; give one per node name")
    pinned = set(pinned_inputs)
    unknown = sorted(pinned - set(info.inputs))
    if unknown:
        raise BadInputError(
            f"pinned inputs {', '.join(map(repr, unknown))} are not graph inputs; the model's "
            f"inputs are {', '.join(map(repr, info.inputs))}"
        )

    def nbytes(name: str) -> int:
        try:
            return sizes[name].nbytes
        except KeyError:
            raise BadShapeError(f"no shape known for tensor {name!r}; give the input shapes") from None

    position = {model_index: k for k, model_index in enumerate(info.order)}
    nodes = tuple(
        CostNode(
            index=k, name=names[k], device_ms=float(device_ms[names[k]]),
            cloud_ms=float(cloud_ms[names[k]]), model_index=i,
            weight_bytes=sum(nbytes(x) for x in info.node_inputs[i] if info.is_static(x)),
        )
        for k, i in enumerate(info.order)
    )
    outputs = set(info.outputs)
    tensor_names = [*info.inputs, *(o for i in info.order for o in info.node_outputs[i])]
    tensors = tuple(
        CostTensor(
            name=x,
            bytes=nbytes(x),
            producer=position[info.producer[x]] if x in info.producer else None,
            consumers=tuple(position[c] for c in info.consumers.get(x, ()) if c in position),
            is_graph_output=x in outputs,
            pinned_on_device=x in pinned,
        )
        for x in tensor_names
    )
    return CostGraph(nodes=nodes, tensors=tensors, order=tuple(range(len(nodes))))
