"""Analyse the main graph of an ONNX model: a deterministic topological order and data flow.

A node with subgraphs (If, Loop, Scan) is atomic: the names its bodies read from the outer
scope count as its inputs, so a cut can never separate a body from the values it uses.
`Constant` nodes are not placed in the order: like initializers, they are copied to every
side that reads them (sending weights over the network would never pay off).

Example:
    >>> from edgecut.zoo import chain_cnn
    >>> info = analyse_graph(chain_cnn())
    >>> info.inputs
    ('x',)
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import onnx

from edgecut.errors import BadModelError

__all__ = ["GraphInfo", "analyse_graph", "outer_scope_names"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphInfo:
    """Data flow of a model's main graph.

    `order` holds indices into `model.graph.node` of the placed (non-constant) nodes, in the
    topological order cuts are taken along; `node_inputs[i]` are the tensors node i reads
    (outer-scope reads of its subgraphs included, empty names dropped, deduplicated).
    """

    order: tuple[int, ...]
    constant_nodes: tuple[int, ...]
    node_inputs: tuple[tuple[str, ...], ...]
    node_outputs: tuple[tuple[str, ...], ...]
    inputs: tuple[str, ...]
    initializers: frozenset[str]
    constants: frozenset[str]
    outputs: tuple[str, ...]
    producer: Mapping[str, int]
    consumers: Mapping[str, tuple[int, ...]]

    def is_static(self, name: str) -> bool:
        """True for initializers and Constant outputs: copied to each side, never sent."""
        return name in self.initializers or name in self.constants


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def outer_scope_names(graph: onnx.GraphProto) -> tuple[str, ...]:
    """Names a (sub)graph reads but does not define, recursively through nested bodies.

    Example: the then-branch of an If that computes `Add(a, w)` where `a` comes from the
    main graph gives `('a', 'w')` unless `w` is an initializer of the branch itself.
    """
    defined: set[str] = {i.name for i in graph.input}
    defined.update(i.name for i in graph.initializer)
    defined.update(i.values.name for i in graph.sparse_initializer)
    seen: set[str] = set()
    outer: list[str] = []

    def read(name: str) -> None:
        if name and name not in defined and name not in seen:
            seen.add(name)
            outer.append(name)

    for node in graph.node:
        for name in node.input:
            read(name)
        for sub in _subgraphs(node):
            for name in outer_scope_names(sub):
                read(name)
        defined.update(o for o in node.output if o)
    # Graph outputs may name outer values directly (e.g. a branch returning an outer tensor).
    for out in graph.output:
        read(out.name)
    return tuple(outer)


def _reads(node: onnx.NodeProto) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for name in node.input:
        if name:
            names[name] = None
    for sub in _subgraphs(node):
        for name in outer_scope_names(sub):
            names[name] = None
    return tuple(names)


def analyse_graph(model: onnx.ModelProto) -> GraphInfo:
    """Order the main graph's nodes topologically (Kahn's, original position breaks ties).

    Raises BadModelError when a node reads a name nothing defines or the graph has a cycle.
    """
    graph = model.graph
    nodes = list(graph.node)
    initializers = frozenset(
        [i.name for i in graph.initializer] + [i.values.name for i in graph.sparse_initializer]
    )
    inputs = tuple(i.name for i in graph.input if i.name not in initializers)
    outputs = tuple(o.name for o in graph.output)
    output_set = set(outputs)

    node_inputs = tuple(_reads(n) for n in nodes)
    node_outputs = tuple(tuple(o for o in n.output if o) for n in nodes)

    producer: dict[str, int] = {}
    for i, outs in enumerate(node_outputs):
        for name in outs:
            if name in producer or name in initializers or name in inputs:
                raise BadModelError(
                    f"graph {graph.name!r}: tensor {name!r} is defined twice "
                    f"(node {i} {nodes[i].op_type}); ONNX requires single assignment"
                )
            producer[name] = i

    constant_nodes = tuple(
        i
        for i, n in enumerate(nodes)
        if n.op_type == "Constant"
        and n.domain in ("", "ai.onnx")
        and not any(o in output_set for o in node_outputs[i])
    )
    constant_set = set(constant_nodes)
    constants = frozenset(o for i in constant_nodes for o in node_outputs[i])
    known = set(inputs) | initializers | set(producer)

    consumers: dict[str, list[int]] = {}
    indegree = [0] * len(nodes)
    dependants: list[list[int]] = [[] for _ in nodes]
    for i, reads in enumerate(node_inputs):
        for name in reads:
            if name not in known:
                raise BadModelError(
                    f"graph {graph.name!r}: node {i} ({nodes[i].op_type} "
                    f"{nodes[i].name!r}) reads {name!r}, which no input, initializer or "
                    "node defines"
                )
            consumers.setdefault(name, []).append(i)
            src = producer.get(name)
            if src is not None:
                indegree[i] += 1
                dependants[src].append(i)

    heap = [i for i, d in enumerate(indegree) if d == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        i = heapq.heappop(heap)
        if i not in constant_set:
            order.append(i)
        for j in dependants[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                heapq.heappush(heap, j)
    if len(order) + len(constant_nodes) != len(nodes):
        raise BadModelError(f"graph {graph.name!r} has a cycle; ONNX graphs must be acyclic")

    return GraphInfo(
        order=tuple(order),
        constant_nodes=constant_nodes,
        node_inputs=node_inputs,
        node_outputs=node_outputs,
        inputs=inputs,
        initializers=initializers,
        constants=constants,
        outputs=outputs,
        producer=producer,
        consumers={k: tuple(v) for k, v in consumers.items()},
    )
