"""Candidate cuts: the prefixes of one topological order, one per distinct crossing set.

Prefix k puts the first k nodes of `GraphInfo.order` on the device. Its crossing set is
every tensor the device has (graph inputs and tensors its nodes produce) that a cloud node
reads; initializers and Constant outputs never cross, each side carries its own copy. The
sets are updated incrementally as the prefix grows, so listing costs O(N * crossing size).

Prefixes 0 (all cloud) and N (all device) are always kept; between them a prefix is kept
only when its crossing set was not seen before, its head has something to send or return
and its tail has something to return (otherwise one side runs dead code only). Ids are
renumbered 0..K-1 along the order, so device work grows with the id; `Cut.position` keeps
the prefix length.

`cut_from_device_set` builds a Cut from any set of device nodes closed under predecessors
(a down-set, such as the min-cut's optimum on a DAG): its `order` lists the device nodes,
then the cloud nodes, each in the topological order, which is again a topological order, so
the head and tail are its prefix and suffix like any other cut's.

Example:
    >>> from edgecut.zoo import chain_cnn
    >>> cuts = list_cuts(chain_cnn())
    >>> cuts[0].crossing, cuts[-1].crossing
    (('x',), ())
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from edgecut.errors import BadShapeError, UnknownCutError
from edgecut.partitioner.graph import GraphInfo, analyse_graph
from edgecut.partitioner.shapes import TensorInfo, resolve_tensors

__all__ = ["Cut", "cut_from_device_set", "get_cut", "list_cuts"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Cut:
    """One candidate cut. `bytes` go up (crossing), `down_bytes` come back (cloud outputs)."""

    id: int
    position: int
    crossing: tuple[str, ...]
    crossing_tensors: tuple[TensorInfo, ...]
    bytes: int
    down_bytes: int
    device_nodes: int
    cloud_nodes: int
    device_outputs: tuple[str, ...]
    cloud_outputs: tuple[str, ...]
    order: tuple[int, ...] = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.device_nodes + self.cloud_nodes != len(self.order):
            raise ValueError(
                f"cut {self.id}: device_nodes + cloud_nodes must be {len(self.order)}, got "
                f"{self.device_nodes} + {self.cloud_nodes}"
            )
        if tuple(sorted(self.crossing)) != self.crossing:
            raise ValueError(f"cut {self.id}: crossing must be sorted, got {self.crossing}")

    def to_json(self) -> dict[str, object]:
        """What `edgecut cuts --json` and plan.json say of every cut (keys only ever added)."""
        return {
            "id": self.id,
            "crossing": list(self.crossing),
            "bytes": self.bytes,
            "down_bytes": self.down_bytes,
            "device_nodes": self.device_nodes,
            "cloud_nodes": self.cloud_nodes,
            "device_outputs": list(self.device_outputs),
            "cloud_outputs": list(self.cloud_outputs),
        }

    @property
    def device_node_indices(self) -> tuple[int, ...]:
        """Indices into `model.graph.node` of the nodes run on the device, in run order."""
        return self.order[: self.device_nodes]

    @property
    def cloud_node_indices(self) -> tuple[int, ...]:
        """Indices into `model.graph.node` of the nodes run in the cloud, in run order."""
        return self.order[self.device_nodes :]


def get_cut(cuts: Sequence[Cut], cut_id: int) -> Cut:
    """The cut with this id; UnknownCutError naming the valid range otherwise."""
    for cut in cuts:
        if cut.id == cut_id:
            return cut
    raise UnknownCutError(
        f"cut {cut_id} does not exist; this model has cuts 0..{len(cuts) - 1} "
        "(list them with `edgecut cuts MODEL`)"
    )


def list_cuts(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    graph: GraphInfo | None = None,
    tensors: Mapping[str, TensorInfo] | None = None,
    values: Mapping[str, np.ndarray] | None = None,
) -> list[Cut]:
    """Every distinct cut along the topological order, with bytes at `input_shapes`.

    `values` are sample inputs (`--input`): their shapes fix symbolic dims, and the model runs
    on them where shape inference leaves a tensor open (`resolve_tensors`).
    """
    info = graph if graph is not None else analyse_graph(model)
    sizes = tensors if tensors is not None else resolve_tensors(model, input_shapes, values=values)
    order = info.order
    n = len(order)

    inputs = set(info.inputs)
    # Graph outputs that no node computes (an input or initializer returned as is) belong to
    # the device once it runs anything, and to the cloud at cut 0.
    produced_by = {o: info.producer.get(o) for o in info.outputs}
    passthrough = {o for o, p in produced_by.items() if p is None}
    position = {node: k for k, node in enumerate(order)}
    output_position = {o: (position[p] if p is not None else 0) for o, p in produced_by.items()}

    # How many graph outputs the device holds after each prefix.
    outputs_by = [0] * (n + 1)
    for p in produced_by.values():
        if p is not None:
            outputs_by[position[p] + 1] += 1
        else:
            outputs_by[1] += 1
    for k in range(1, n + 1):
        outputs_by[k] += outputs_by[k - 1]

    remaining = {name: len(users) for name, users in info.consumers.items()}
    crossing = {t for t in info.inputs if remaining.get(t, 0) > 0}
    at_zero = crossing | (passthrough & inputs)
    kept: list[tuple[int, frozenset[str]]] = [(0, frozenset(at_zero))]
    seen = {frozenset(at_zero)}

    computed = 0  # crossing tensors that device nodes produced (not graph inputs)
    for k, node in enumerate(order, start=1):
        for t in info.node_inputs[node]:
            if info.is_static(t):
                continue
            remaining[t] -= 1
            if remaining[t] == 0 and t in crossing:
                crossing.discard(t)
                computed -= t not in inputs
        for o in info.node_outputs[node]:
            if remaining.get(o, 0) > 0:
                crossing.add(o)
                computed += 1
        if k == n:
            kept.append((k, frozenset(crossing)))
        elif (computed or outputs_by[k]) and outputs_by[k] < len(info.outputs):
            # A head with nothing to send or return, or a tail with nothing to return, runs
            # only dead code: such prefixes are skipped.
            key = frozenset(crossing)
            if key not in seen:
                seen.add(key)
                kept.append((k, key))

    if n == 0:
        kept = kept[:1]
    elif kept[-1][1] in {key for _, key in kept[:-1]} and len(kept) > 2:
        # Only the all-device cut can repeat an earlier set (an earlier prefix whose cloud part
        # read nothing from the device); the all-device cut wins.
        last = kept[-1]
        kept = [c for c in kept[:-1] if c[0] == 0 or c[1] != last[1]] + [last]

    cuts: list[Cut] = []
    for cut_id, (k, key) in enumerate(kept):
        names = tuple(sorted(key))
        infos = tuple(_tensor_info(sizes, t) for t in names)
        device_outputs: list[str] = []
        cloud_outputs: list[str] = []
        for o in info.outputs:
            on_device = output_position[o] < k if o not in passthrough else k > 0
            (device_outputs if on_device else cloud_outputs).append(o)
        cuts.append(
            Cut(
                id=cut_id,
                position=k,
                crossing=names,
                crossing_tensors=infos,
                bytes=sum(t.nbytes for t in infos),
                down_bytes=sum(_tensor_info(sizes, o).nbytes for o in cloud_outputs),
                device_nodes=k,
                cloud_nodes=n - k,
                device_outputs=tuple(device_outputs),
                cloud_outputs=tuple(cloud_outputs),
                order=order,
            )
        )
    return cuts


def cut_from_device_set(
    model: onnx.ModelProto,
    device_nodes: Iterable[int],
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    cut_id: int,
    graph: GraphInfo | None = None,
    tensors: Mapping[str, TensorInfo] | None = None,
) -> Cut:
    """The cut running `device_nodes` (indices into `model.graph.node`) on the device.

    The set must be closed under predecessors (UnknownCutError names the first node whose
    input would come back from the cloud). `position` is the number of device nodes.

    Example:
        >>> from edgecut.zoo import multi_branch
        >>> model = multi_branch()
        >>> info = analyse_graph(model)
        >>> cut = cut_from_device_set(model, info.order[:3], cut_id=99)
        >>> cut.device_nodes, cut.id
        (3, 99)
    """
    info = graph if graph is not None else analyse_graph(model)
    sizes = tensors if tensors is not None else resolve_tensors(model, input_shapes)
    device = set(device_nodes)
    placed = set(info.order)
    stray = sorted(device - placed)
    if stray:
        raise UnknownCutError(f"cut {cut_id}: node indices {stray} are not placed nodes of the model")
    for i in sorted(device):
        for name in info.node_inputs[i]:
            p = info.producer.get(name)
            if p is not None and p in placed and p not in device:
                raise UnknownCutError(
                    f"cut {cut_id}: node {model.graph.node[i].name or i!r} is on the device but "
                    f"reads {name!r} from node {model.graph.node[p].name or p!r} in the cloud; "
                    "a device set must be closed under predecessors"
                )
    order = tuple(i for i in info.order if i in device) + tuple(
        i for i in info.order if i not in device
    )
    inputs = set(info.inputs)

    def on_device(name: str) -> bool:
        p = info.producer.get(name)
        return (p is None and name in inputs) or (p is not None and p in device)

    crossing: set[str] = set()
    for i in info.order:
        if i in device:
            continue
        for name in info.node_inputs[i]:
            if not info.is_static(name) and on_device(name):
                crossing.add(name)
    device_outputs: list[str] = []
    cloud_outputs: list[str] = []
    for o in info.outputs:
        p = info.producer.get(o)
        held = (p is not None and p in device) or (p is None and bool(device))
        (device_outputs if held else cloud_outputs).append(o)
    if not device:  # everything in the cloud: graph inputs returned as outputs go up too
        crossing |= {o for o in cloud_outputs if o in inputs}

    names = tuple(sorted(crossing))
    infos = tuple(_tensor_info(sizes, t) for t in names)
    return Cut(
        id=cut_id,
        position=len(device),
        crossing=names,
        crossing_tensors=infos,
        bytes=sum(t.nbytes for t in infos),
        down_bytes=sum(_tensor_info(sizes, o).nbytes for o in cloud_outputs),
        device_nodes=len(device),
        cloud_nodes=len(order) - len(device),
        device_outputs=tuple(device_outputs),
        cloud_outputs=tuple(cloud_outputs),
        order=order,
    )


def _tensor_info(sizes: Mapping[str, TensorInfo], name: str) -> TensorInfo:
    try:
        return sizes[name]
    except KeyError:
        raise BadShapeError(f"no shape known for tensor {name!r}; give the input shapes explicitly") from None
