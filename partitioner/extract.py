"""Build the head (device) and tail (cloud) models of a cut.

Written from scratch rather than with `onnx.utils.extract_model`, which ignores the values
that If/Loop/Scan bodies read from the outer graph. Each part keeps the original
`ir_version`, `opset_import`, functions and metadata, carries only the initializers and
Constant nodes it reads (bodies included), and declares its new inputs and outputs with
their dtype and the most general shape known: symbolic dims where the model is dynamic,
concrete ones where it is static.

Example:
    >>> from edgecut.partitioner import list_cuts
    >>> from edgecut.zoo import chain_cnn
    >>> model = chain_cnn()
    >>> head, tail = split_model(model, list_cuts(model)[3])
    >>> [o.name for o in head.graph.output] == [i.name for i in tail.graph.input]
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, shape_inference

from edgecut.errors import UnknownCutError
from edgecut.partitioner.cuts import Cut
from edgecut.partitioner.graph import GraphInfo, analyse_graph
from edgecut.partitioner.shapes import TensorInfo, known_dim

__all__ = ["head_outputs", "split_model"]


def head_outputs(cut: Cut, graph: GraphInfo) -> tuple[str, ...]:
    """The head's outputs: crossing tensors it computes, then device outputs not yet listed."""
    inputs = set(graph.inputs)
    computed = [t for t in cut.crossing if t not in inputs]
    listed = set(computed)
    return tuple(computed + [o for o in cut.device_outputs if o not in listed])


def _is_static(model: onnx.ModelProto, graph: GraphInfo) -> bool:
    real = set(graph.inputs)
    for vi in model.graph.input:
        if vi.name in real:
            t = vi.type.tensor_type
            if not t.HasField("shape") or any(known_dim(d) is None for d in t.shape.dim):
                return False
    return True


class _Types:
    """ValueInfo for tensors that become inputs or outputs of a part."""

    def __init__(self, model: onnx.ModelProto, graph: GraphInfo) -> None:
        self.static = _is_static(model, graph)
        self.declared: dict[str, onnx.ValueInfoProto] = {}
        for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
            self.declared[vi.name] = vi
        self.model = model
        self._inferred: dict[str, onnx.ValueInfoProto] | None = None

    @property
    def inferred(self) -> dict[str, onnx.ValueInfoProto]:
        """Symbolic shape inference of the whole model, run once and only if needed."""
        if self._inferred is None:
            self._inferred = {}
            try:
                done = shape_inference.infer_shapes(self.model, strict_mode=False)
                self._inferred = {vi.name: vi for vi in done.graph.value_info}
            except Exception:  # a part is still valid with dtype + rank from the concrete info
                pass
        return self._inferred

    def value_info(self, name: str, concrete: TensorInfo | None) -> onnx.ValueInfoProto:
        declared = self.declared.get(name)
        if declared is not None and declared.type.WhichOneof("value") not in (None, "tensor_type"):
            return declared  # sequences, maps, optionals: as the model declares them
        if (
            declared is not None
            and declared.type.tensor_type.elem_type != 0
            and (declared.type.tensor_type.HasField("shape") or concrete is None)
        ):
            return declared
        base = declared if self.static and concrete is not None else self.inferred.get(name, declared)
        if concrete is None:
            if base is None or base.type.tensor_type.elem_type == 0:
                raise ValueError(f"no type known for tensor {name!r}")
            return base
        known = (
            list(base.type.tensor_type.shape.dim)
            if base is not None and base.type.tensor_type.HasField("shape")
            else []
        )
        if len(known) != len(concrete.shape):
            known = []
        dims: list[int | str | None] = []
        for axis, size in enumerate(concrete.shape):
            if self.static:
                dims.append(size)
            elif known and known_dim(known[axis]) is not None:
                dims.append(known[axis].dim_value)
            elif known and known[axis].HasField("dim_param"):
                dims.append(known[axis].dim_param)
            else:
                dims.append(None)
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(concrete.dtype))
        return helper.make_tensor_value_info(name, elem, dims)


def _part(
    model: onnx.ModelProto,
    graph: GraphInfo,
    nodes: Sequence[int],
    input_names: Iterable[str],
    output_names: Sequence[str],
    extra_reads: Iterable[str],
    types: _Types,
    concrete: dict[str, TensorInfo],
    suffix: str,
) -> onnx.ModelProto:
    g = model.graph
    reads: dict[str, None] = {}
    for i in nodes:
        for name in graph.node_inputs[i]:
            reads[name] = None
    for name in extra_reads:
        reads[name] = None
    constant_nodes = [graph.producer[name] for name in reads if name in graph.constants]
    body = [g.node[i] for i in sorted(set(constant_nodes))] + [g.node[i] for i in nodes]
    inits = [t for t in g.initializer if t.name in reads]
    sparse = [t for t in g.sparse_initializer if t.values.name in reads]

    inputs = [types.value_info(n, concrete.get(n)) for n in input_names]
    if model.ir_version < 4:  # IR < 4 requires every initializer to be listed as an input
        by_name = {vi.name: vi for vi in g.input}
        inputs += [by_name[t.name] for t in inits if t.name in by_name]
    outputs = [types.value_info(n, concrete.get(n)) for n in output_names]

    boundary = {vi.name for vi in inputs} | set(output_names)
    produced = {o for n in body for o in n.output if o}
    value_info = [vi for vi in g.value_info if vi.name in produced and vi.name not in boundary]
    part_graph = helper.make_graph(
        body,
        f"{g.name or 'graph'}_{suffix}",
        inputs,
        outputs,
        initializer=inits,
        value_info=value_info,
        sparse_initializer=sparse,
    )
    part = onnx.ModelProto()
    part.ir_version = model.ir_version
    part.opset_import.extend(model.opset_import)
    part.functions.extend(model.functions)
    part.metadata_props.extend(model.metadata_props)
    part.producer_name = model.producer_name
    part.producer_version = model.producer_version
    part.domain = model.domain
    part.model_version = model.model_version
    part.graph.CopyFrom(part_graph)
    return part


def split_model(
    model: onnx.ModelProto, cut: Cut, *, graph: GraphInfo | None = None
) -> tuple[onnx.ModelProto | None, onnx.ModelProto | None]:
    """Head and tail of `cut`; the head is None at cut 0, the tail None at the last cut.

    Head inputs: the graph inputs it reads (original order). Head outputs: `head_outputs`.
    Tail inputs: exactly `cut.crossing`. Tail outputs: `cut.cloud_outputs`.
    """
    info = graph if graph is not None else analyse_graph(model)
    # A prefix cut follows the model's order; a down-set cut (`cut_from_device_set`) follows
    # an order of the same nodes with its device nodes first.
    if len(cut.order) != len(info.order) or (
        cut.order != info.order and sorted(cut.order) != sorted(info.order)
    ):
        raise UnknownCutError(
            f"cut {cut.id} was listed for another model (its node order differs); "
            "list the cuts of this model with list_cuts(model)"
        )
    types = _Types(model, info)
    concrete = {t.name: t for t in cut.crossing_tensors}
    inputs = set(info.inputs)

    head = None
    if cut.device_nodes > 0:
        device = cut.device_node_indices
        reads = {name for i in device for name in info.node_inputs[i]}
        passthrough = [o for o in cut.device_outputs if o not in info.producer]
        head_in = [n for n in info.inputs if n in reads or n in passthrough]
        head = _part(
            model,
            info,
            device,
            head_in,
            head_outputs(cut, info),
            passthrough,
            types,
            concrete,
            "head",
        )
    tail = None
    if cut.cloud_nodes > 0 or cut.cloud_outputs:
        passthrough = [o for o in cut.cloud_outputs if o not in info.producer]
        tail = _part(
            model,
            info,
            cut.cloud_node_indices,
            cut.crossing,
            cut.cloud_outputs,
            [p for p in passthrough if p not in inputs],
            types,
            concrete,
            "tail",
        )
    return head, tail
