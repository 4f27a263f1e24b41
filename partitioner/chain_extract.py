"""The slices of a chain: the nodes between two cuts of the topological order, as models.

Slice [a, b) runs the nodes at positions a..b-1 of `GraphInfo.order`, or of another
topological order given (`order=`: nested down-sets that are no prefixes of the default one,
as the min-cut chain solver finds, are prefixes of such an order). Its inputs are what it
*receives*: every tensor made before a (graph inputs included) that a node at a or later
reads, so a slice also carries what it does not use itself but a later hop does (a skip
connection over a helper). Its outputs are what it *sends* (every tensor made before b and
read at b or later: the next slice's inputs, received ones passed through under their own
names) then what it *returns* (graph outputs it computes, not already sent; a graph output
a later hop reads is both sent and returned). So the slices
chain by name, each one's sends exactly the next one's inputs, and a hop needs nothing but
its slice and the tensors that arrive.

Built like the head and tail of one cut (`edgecut.partitioner.extract`): the original
opset, functions and metadata, only the initializers and Constant nodes the slice reads,
outer-scope values of If/Loop/Scan bodies counted as their node's inputs.

Example:
    >>> from edgecut.zoo import chain_cnn
    >>> model = chain_cnn()
    >>> slices = chain_slices(model, (2, 5))
    >>> [i.name for i in slices[1].model.graph.input] == list(slices[0].sends)
    True
    >>> verify_chain(model, [s.model for s in slices], seed=0) <= 1e-5
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from edgecut.errors import BadModelError, UnknownCutError
from edgecut.partitioner.extract import _part, _Types
from edgecut.partitioner.graph import GraphInfo, analyse_graph
from edgecut.partitioner.runtime import compare_outputs, run_model, tolerance_for
from edgecut.partitioner.shapes import TensorInfo, resolve_tensors, run_on_samples

__all__ = ["Slice", "along", "chain_slices", "run_chain_locally", "slice_boundaries",
           "verify_chain"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Slice:
    """One hop's part: positions [start, end), what it receives, sends and returns."""

    start: int
    end: int
    receives: tuple[str, ...]
    sends: tuple[str, ...]
    returns: tuple[str, ...]
    model: onnx.ModelProto | None = field(repr=False, compare=False)  # None: nothing to do

    @property
    def nodes(self) -> int:
        return self.end - self.start


def slice_boundaries(graph: GraphInfo, position: int) -> tuple[str, ...]:
    """The tensors crossing position p of the order: made before p, read at p or later
    (sorted). At p = 0 these are the graph inputs some node reads."""
    at = {node: k for k, node in enumerate(graph.order)}
    crossing = set()
    for name, users in graph.consumers.items():
        if graph.is_static(name):
            continue
        readers = [at[u] for u in users if u in at]
        if not readers or max(readers) < position:
            continue
        producer = graph.producer.get(name)
        if producer is None and name not in graph.inputs:
            continue
        if producer is None or at.get(producer, -1) < position:
            crossing.add(name)
    return tuple(sorted(crossing))


def along(graph: GraphInfo, order: Sequence[int]) -> GraphInfo:
    """`graph` cut along another topological order of its placed nodes (indices into
    `model.graph.node`); its other fields do not depend on the order. UnknownCutError when
    `order` is not one."""
    order = tuple(int(i) for i in order)
    if sorted(order) != sorted(graph.order):
        raise UnknownCutError(f"a chain order must list each of the model's {len(graph.order)} "
                              "placed nodes once")
    at = {node: k for k, node in enumerate(order)}
    for node in order:
        for name in graph.node_inputs[node]:
            p = graph.producer.get(name)
            if p in at and at[p] > at[node]:
                raise UnknownCutError(f"a chain order must be topological: node {node} reads "
                                      f"{name!r}, made later by node {p}")
    return dataclasses.replace(graph, order=order)


def chain_slices(model: onnx.ModelProto, cuts: Sequence[int], *,
                 graph: GraphInfo | None = None,
                 tensors: Mapping[str, TensorInfo] | None = None,
                 order: Sequence[int] | None = None) -> list[Slice]:
    """The len(cuts) + 1 slices of `model` at non-decreasing positions `cuts` of the order:
    `order` (indices into `model.graph.node`, topological) when given, else `graph.order`."""
    info = graph if graph is not None else analyse_graph(model)
    if order is not None:
        info = along(info, order)
    n = len(info.order)
    cuts = tuple(int(c) for c in cuts)
    if any(not 0 <= c <= n for c in cuts) or list(cuts) != sorted(cuts):
        raise UnknownCutError(f"chain cuts must be non-decreasing positions in 0..{n}, "
                              f"got {list(cuts)}")
    sizes = tensors if tensors is not None else resolve_tensors(model, None)
    types = _Types(model, info)
    at = {node: k for k, node in enumerate(info.order)}
    bounds = [0, *cuts, n]
    slices = []
    for j in range(len(bounds) - 1):
        a, b = bounds[j], bounds[j + 1]
        receives = slice_boundaries(info, a) if j else _graph_inputs_read(info)
        sends = slice_boundaries(info, b) if b < n else ()
        returns = tuple(o for o in info.outputs
                        if (p := info.producer.get(o)) is not None and a <= at[p] < b)
        nodes = info.order[a:b]
        concrete = {name: sizes[name] for name in (*receives, *sends, *returns) if name in sizes}
        outputs = (*sends, *(o for o in returns if o not in sends))
        if not nodes and not receives:  # past the last cut at N: this hop is not used
            slices.append(Slice(start=a, end=b, receives=(), sends=(), returns=(), model=None))
            continue
        part = _part(model, info, nodes, receives, outputs, (), types, concrete,
                     f"slice{j}")
        slices.append(Slice(start=a, end=b, receives=receives, sends=sends, returns=returns,
                            model=part))
    return slices


def _graph_inputs_read(info: GraphInfo) -> tuple[str, ...]:
    return tuple(i for i in info.inputs if info.consumers.get(i))


def run_chain_locally(slices: Sequence[onnx.ModelProto | None],
                      feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the slices one after the other, each on what the previous sent; every graph
    output any slice returned."""
    carried = dict(feeds)
    returned: dict[str, np.ndarray] = {}
    for part in slices:
        if part is None:
            continue
        wanted = [i.name for i in part.graph.input]
        outputs = run_model(part, {n: carried[n] for n in wanted})
        carried = outputs
        returned.update(outputs)
    return returned


def verify_chain(model: onnx.ModelProto, slices: Sequence[onnx.ModelProto | None], *,
                 feeds: Mapping[str, np.ndarray] | None = None, seed: int = 0,
                 where: str = "chain") -> float:
    """Max |full - slices chained| over the graph outputs; BadModelError over tolerance."""
    if feeds is None:
        feeds, full = run_on_samples(model, None, seed=seed, where=where)
    else:
        full = run_model(model, feeds)
    chained = run_chain_locally(slices, feeds)
    # Graph outputs that are graph inputs come back as given.
    for name in full:
        if name not in chained and name in feeds:
            chained[name] = np.asarray(feeds[name])
    diffs = compare_outputs(full, chained)
    worst = max(diffs.values(), default=0.0)
    if worst > tolerance_for(full):
        raise BadModelError(f"{where}: the slices chained differ from the full model: max abs "
                            f"diff {diffs} (allowed {tolerance_for(full):.3g})")
    return worst
