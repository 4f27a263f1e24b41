"""Operator classes, FLOPs and bytes moved of ONNX nodes, and a roofline time estimate. Pure.

`classify_node(node, shapes)` maps a NodeProto and the known shapes of the tensors it touches
to `NodeCost(op_class, flops, bytes_moved)`:

- FLOPs count a multiply-add as 2. Conv: 2*N*Cout*Hout*Wout*(Cin/group)*prod(kernel), plus
  N*Cout*spatial for a bias. ConvTranspose: the same with input and output roles swapped.
  Gemm: 2*M*N*K (+ M*N with C). MatMul: 2*prod(batch)*M*N*K. Einsum: 2*prod(sizes of all its
  distinct indices). Elementwise: one per output element per extra input (at least one).
  Pooling: output elements x window (global: input elements). Norms: 5 per element
  (BatchNormalization: 2, it is a scale and shift at inference). Softmax: 5 per element.
  Reductions count as "pool" (a sum over a window).
- Bytes moved: every input (weights included) and every output read or written once, at
  4 bytes per element unless `itemsizes` says otherwise. View ops (Reshape, Flatten, Squeeze,
  Unsqueeze, Identity, Dropout) and metadata ops (Shape, Size, Constant) move nothing:
  onnxruntime aliases or folds them.
- A tensor without a known shape counts as empty (0 elements). A dimension that is not a
  positive int (symbolic, unknown) counts as 1.
- If: the most expensive branch (only one runs). Loop: its body times the trip count when
  `constants` holds input M, else one iteration. Scan: its body times the length of the first
  scan input's scan axis. When no body node has a known shape, the node falls back to class
  "other" with the bytes of its own inputs and outputs and one FLOP per output element.
  Shapes of body values are looked up in the same `shapes` mapping (ONNX shape inference
  fills a subgraph's value_info; `graph_shapes` collects them).

`estimate_node_ms(op_class, flops, bytes_moved, device)` is a roofline: the node takes as long
as the slower of its arithmetic at the device's GFLOP/s for its class and its traffic at the
device's memory bandwidth, `max(flops / (gflops*1e9), bytes / (memory_gbps*1e9))` in ms.

Example:
    >>> from onnx import helper
    >>> node = helper.make_node("MatMul", ["a", "b"], ["c"])
    >>> classify_node(node, {"a": (8, 16), "b": (16, 4), "c": (8, 4)}).flops
    1024
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import onnx
from onnx import helper

from edgecut.profiles.schema import DeviceProfile

__all__ = [
    "SMALL_KERNEL_BYTES",
    "NodeCost",
    "classify_node",
    "estimate_node_ms",
    "graph_shapes",
    "op_class_of",
]

Shape = Sequence[object]

_CONV = {"Conv", "ConvInteger", "QLinearConv", "DeformConv"}
_CONV_TRANSPOSE = {"ConvTranspose"}
_GEMM = {"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "Einsum"}
_POOL = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
         "MaxRoiPool", "RoiAlign", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
         "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax",
         "ArgMin"}
_NORM = {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
         "LpNormalization", "LRN", "MeanVarianceNormalization", "SimplifiedLayerNormalization",
         "RMSNormalization", "SkipLayerNormalization"}
_SOFTMAX = {"Softmax", "LogSoftmax", "Hardmax"}
_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Mean", "Sum", "Where", "Equal", "Less",
    "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor", "Relu", "LeakyRelu",
    "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "FastGelu", "BiasGelu", "Mish", "Swish", "ThresholdedRelu", "Clip", "Exp",
    "Log", "Sqrt", "Reciprocal", "Abs", "Neg", "Sign", "Floor", "Ceil", "Round", "Erf", "Sin", "Cos",
    "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "IsNaN", "IsInf",
    "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "QuantizeLinear",
    "DequantizeLinear", "DynamicQuantizeLinear", "Resize", "Upsample", "CumSum",
}
_VIEW = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Shape", "Size",
         "Constant", "Optional", "OptionalGetElement"}
_DATA = {"Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND", "Scatter",
         "ScatterElements", "ScatterND", "Pad", "Tile", "Expand", "Cast", "CastLike",
         "ConstantOfShape", "DepthToSpace", "SpaceToDepth", "Range", "NonZero", "TopK", "Compress",
         "ReverseSequence", "Trilu", "OneHot", "EyeLike", "Unique", "SequenceAt",
         "SequenceConstruct", "SplitToSequence", "ConcatFromSequence", "MemcpyToHost",
         "MemcpyFromHost"} | _VIEW
_CONTROL = {"If", "Loop", "Scan"}


SMALL_KERNEL_BYTES = 32 * 1024
"""A kernel moving less than this runs on the calling thread: onnxruntime does not split it
over its thread pool, so it costs a device's `small_node_overhead_ms`, not `node_overhead_ms`."""


class NodeCost(NamedTuple):
    """What one node costs: its operator class, FLOPs, bytes read plus written, and the
    kernels onnxruntime launches for it: `kernels` moving at least `SMALL_KERNEL_BYTES`,
    `small_kernels` moving less (a node is one kernel, a Constant none, If/Loop/Scan one plus
    their body's kernels per iteration)."""

    op_class: str
    flops: int
    bytes_moved: int
    kernels: int = 1
    small_kernels: int = 0


def op_class_of(op_type: str) -> str:
    """The operator class of an ONNX op type ("other" for unknown and control-flow ops).

    Example:
        >>> op_class_of("Conv"), op_class_of("Transpose"), op_class_of("NonMaxSuppression")
        ('conv', 'data', 'other')
    """
    for names, op_class in ((_CONV | _CONV_TRANSPOSE, "conv"), (_GEMM, "gemm"), (_POOL, "pool"),
                            (_NORM, "norm"), (_SOFTMAX, "softmax"), (_ELEMENTWISE, "elementwise"),
                            (_DATA, "data")):
        if op_type in names:
            return op_class
    return "other"


def _dims(shape: Shape | None) -> list[int] | None:
    if shape is None:
        return None
    return [d if isinstance(d, int) and d > 0 else 1 for d in shape]


def _numel(shape: Shape | None) -> int:
    dims = _dims(shape)
    return 0 if dims is None else math.prod(dims)


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _bytes(names: Iterable[str], shapes: Mapping[str, Shape], itemsizes: Mapping[str, int]) -> int:
    return sum(_numel(shapes.get(n)) * itemsizes.get(n, 4) for n in names if n)


CONV_FILTER_BLOCK = 16
"""onnxruntime's CPU convolution (MLAS) computes output channels in blocks, so a
convolution with fewer output channels than a block does a block's work: its FLOPs are
counted as if it had `CONV_FILTER_BLOCK`. Measured on this project's 2-core x86 VM (one
thread, 3x3 convolutions of 16 input channels at 16x16): 4, 8, 12 and 16 output channels ran
at 17, 46, 67 and 100 GFLOP/s, in proportion to the channels over 16. Depthwise and grouped
convolutions take other kernels and are counted as they are."""


def _conv_flops(node: onnx.NodeProto, shapes: Mapping[str, Shape], transpose: bool) -> int:
    x = _dims(shapes.get(node.input[0]))
    w = _dims(shapes.get(node.input[1])) if len(node.input) > 1 else None
    y = _dims(shapes.get(node.output[0]))
    if not x or not w or not y or len(w) < 2:
        return 0
    kernel = math.prod(w[2:])
    bias = len(node.input) > 2 and bool(node.input[2])
    if transpose:
        # every input element scatters into Cout/group x kernel outputs
        macs = math.prod(x) * w[1] * kernel
        return 2 * macs + (_numel(y) if bias else 0)
    macs = _numel(y) * w[1] * kernel  # the weight's dim 1 already is Cin / group
    group = _attr(node, "group", 1)
    if group == 1 and 0 < w[0] < CONV_FILTER_BLOCK:
        macs = macs * CONV_FILTER_BLOCK // w[0]  # the kernel computes a whole filter block
    return 2 * macs + (_numel(y) if bias else 0)


def _gemm_flops(node: onnx.NodeProto, shapes: Mapping[str, Shape]) -> int:
    a = _dims(shapes.get(node.input[0]))
    y = _dims(shapes.get(node.output[0]))
    if not a or not y:
        return 0
    if node.op_type == "Gemm":
        k = a[0] if _attr(node, "transA", 0) else a[-1]
        with_c = len(node.input) > 2 and bool(node.input[2])
        return 2 * _numel(y) * k + (_numel(y) if with_c else 0)
    if node.op_type == "Einsum":
        return _einsum_flops(node, shapes)
    # MatMul family (numpy semantics): output elements x K, K the last dim of A
    k = a[-1]
    return 2 * _numel(y) * k


def _einsum_flops(node: onnx.NodeProto, shapes: Mapping[str, Shape]) -> int:
    raw = _attr(node, "equation", b"")
    equation = raw.decode() if isinstance(raw, bytes) else str(raw)
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for term, name in zip(inputs, node.input, strict=False):
        dims = _dims(shapes.get(name)) or []
        letters = [c for c in term if c.isalpha()]
        if "..." in term or len(letters) != len(dims):
            return 2 * _numel(shapes.get(node.output[0]))
        sizes.update(zip(letters, dims, strict=True))
    return 2 * math.prod(sizes.values()) if sizes else 0


def _pool_flops(node: onnx.NodeProto, shapes: Mapping[str, Shape]) -> int:
    if node.op_type.startswith(("Global", "Reduce", "Arg")):
        return _numel(shapes.get(node.input[0]))
    kernel = _attr(node, "kernel_shape")
    window = math.prod(kernel) if kernel else 1  # type: ignore[arg-type]
    return _numel(shapes.get(node.output[0])) * window


def _subgraph_cost(graph: onnx.GraphProto, shapes: Mapping[str, Shape],
                   itemsizes: Mapping[str, int], constants: Mapping[str, object]) -> NodeCost | None:
    costs = [classify_node(n, shapes, itemsizes=itemsizes, constants=constants) for n in graph.node]
    if not any(any(o in shapes for o in n.output) for n in graph.node) and graph.node:
        return None
    return NodeCost("other", sum(c.flops for c in costs), sum(c.bytes_moved for c in costs),
                    sum(c.kernels for c in costs), sum(c.small_kernels for c in costs))


def _control_cost(node: onnx.NodeProto, shapes: Mapping[str, Shape], itemsizes: Mapping[str, int],
                  constants: Mapping[str, object]) -> NodeCost | None:
    bodies = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
    costs = {name: _subgraph_cost(g, shapes, itemsizes, constants) for name, g in bodies.items()}
    if not costs or any(c is None for c in costs.values()):
        return None
    if node.op_type == "If":
        worst = max(costs.values(), key=lambda c: (c.flops, c.bytes_moved))  # type: ignore[union-attr]
        return NodeCost("other", worst.flops, worst.bytes_moved, worst.kernels,  # type: ignore[union-attr]
                        1 + worst.small_kernels)  # type: ignore[union-attr]
    body = costs.get("body")
    if body is None:
        return None
    trips = 1
    if node.op_type == "Loop" and node.input and node.input[0] in constants:
        try:
            trips = max(1, int(constants[node.input[0]]))  # type: ignore[call-overload]
        except (TypeError, ValueError):
            trips = 1
    elif node.op_type == "Scan":
        n_scan = int(_attr(node, "num_scan_inputs", 1) or 1)  # type: ignore[call-overload]
        state = len(node.input) - n_scan
        first = node.input[state] if state < len(node.input) else ""
        axes = _attr(node, "scan_input_axes") or [0]
        dims = _dims(shapes.get(first))
        if dims:
            trips = dims[int(axes[0]) % len(dims)]  # type: ignore[index]
    return NodeCost("other", body.flops * trips, body.bytes_moved * trips, body.kernels * trips,
                    1 + body.small_kernels * trips)


def classify_node(node: onnx.NodeProto, shapes: Mapping[str, Shape], *,
                  itemsizes: Mapping[str, int] | None = None,
                  constants: Mapping[str, object] | None = None) -> NodeCost:
    """The operator class, FLOPs and bytes moved of `node` at the given tensor shapes.

    `shapes` maps tensor names (inputs, outputs, initializers, subgraph values) to shapes;
    `itemsizes` maps tensor names to bytes per element (default 4); `constants` maps tensor
    names to known scalar values (used for Loop trip counts).

    Example:
        >>> from onnx import helper
        >>> conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
        >>> shapes = {"x": (1, 3, 8, 8), "w": (16, 3, 3, 3), "y": (1, 16, 8, 8)}
        >>> classify_node(conv, shapes).flops == 2 * 16 * 8 * 8 * 3 * 3 * 3
        True
    """
    itemsizes = itemsizes or {}
    constants = constants or {}
    op = node.op_type
    op_class = op_class_of(op)
    out_elems = sum(_numel(shapes.get(o)) for o in node.output if o)
    moved = _bytes(node.input, shapes, itemsizes) + _bytes(node.output, shapes, itemsizes)
    if op in _CONTROL:
        cost = _control_cost(node, shapes, itemsizes, constants)
        return cost if cost is not None else NodeCost("other", out_elems, moved)
    small = moved < SMALL_KERNEL_BYTES
    if op in _VIEW:
        return NodeCost("data", 0, 0, 0, 0 if op == "Constant" else 1)
    if op_class == "conv":
        flops = _conv_flops(node, shapes, transpose=op in _CONV_TRANSPOSE)
    elif op_class == "gemm":
        flops = _gemm_flops(node, shapes)
    elif op_class == "pool":
        flops = _pool_flops(node, shapes)
    elif op_class == "norm":
        flops = (2 if op == "BatchNormalization" else 5) * _numel(shapes.get(node.input[0]))
    elif op_class == "softmax":
        flops = 5 * _numel(shapes.get(node.input[0]))
    elif op_class == "elementwise":
        flops = out_elems * max(1, len([i for i in node.input if i]) - 1)
        if op in ("Resize", "Upsample"):
            mode = _attr(node, "mode", b"nearest")
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            flops = out_elems * {"nearest": 1, "linear": 4, "cubic": 16}.get(mode, 4)
    elif op_class == "data":
        flops = 0
    else:
        flops = out_elems
    return NodeCost(op_class, int(flops), int(moved), 0 if small else 1, 1 if small else 0)


def estimate_node_ms(op_class: str, flops: float, bytes_moved: float, device: DeviceProfile,
                     kernels: int = 0, small_kernels: int = 0) -> float:
    """Roofline time of one node on `device`, in milliseconds, plus its launch cost.

    max(flops / class GFLOP/s, bytes / memory GB/s): a node is either compute- or memory-bound.
    "data" nodes are timed by their bytes alone (their FLOPs are 0). Each of its `kernels`
    adds the device's `node_overhead_ms`, each of its `small_kernels` the device's
    `small_node_overhead_ms` (`NodeCost`; both 0 where not measured).

    Example:
        >>> from edgecut.profiles import load_device
        >>> pi = load_device("raspberry-pi-4")
        >>> estimate_node_ms("conv", 2e9, 0, pi) == 2e9 / (pi.gflops_for("conv") * 1e9) * 1e3
        True
    """
    compute_s = flops / (device.gflops_for(op_class) * 1e9) if flops else 0.0
    memory_s = bytes_moved / (device.memory_gbps * 1e9) if bytes_moved else 0.0
    return (max(compute_s, memory_s) * 1e3 + kernels * device.node_overhead_ms
            + small_kernels * device.small_node_overhead_ms)


def graph_shapes(model: onnx.ModelProto) -> tuple[dict[str, tuple[object, ...]], dict[str, int]]:
    """Shapes and item sizes of every value the model declares, subgraphs included.

    Reads graph inputs, outputs, value_info and initializers (run ONNX shape inference first
    to fill value_info); dimensions without a value are None.
    """
    shapes: dict[str, tuple[object, ...]] = {}
    itemsizes: dict[str, int] = {}

    def visit(graph: onnx.GraphProto) -> None:
        for init in graph.initializer:
            shapes[init.name] = tuple(init.dims)
            itemsizes[init.name] = _itemsize(init.data_type)
        for vi in (*graph.input, *graph.output, *graph.value_info):
            tensor = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and tensor.HasField("shape"):
                # a negative dim_value (Paddle2ONNX's -1) is unknown, like a dim_param
                shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0
                                        else None for d in tensor.shape.dim)
                itemsizes[vi.name] = _itemsize(tensor.elem_type)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)
                for sub in attribute.graphs:
                    visit(sub)

    visit(model.graph)
    return shapes, itemsizes


def _itemsize(elem_type: int) -> int:
    try:
        return int(helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return 4
