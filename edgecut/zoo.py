"""A zoo of small ONNX models built with onnx.helper, for tests, demos and benchmarks.

Every model is a pure function of nothing: fp32, weights drawn from a fixed seed, opset 17
unless its name says otherwise, 10-60 nodes, milliseconds to run. Together they cover the
graph shapes the partitioner must cut: chains, residual DAGs, multi-branch blocks, an FPN
with several outputs, attention with two inputs, symbolic dimensions, state in and out,
If and Loop nodes whose bodies read outer-scope values, Constant-node weights and an old
opset whose initializers are also listed as graph inputs.

`find_packaged_model()` locates a real trained model shipped inside a PyPI package.

Example:
    >>> from edgecut.zoo import ZOO, sample_inputs
    >>> model = ZOO["chain_cnn"]()
    >>> sorted(sample_inputs(model))
    ['x']
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecut.partitioner.shapes import sample_inputs as _sample_inputs

__all__ = [
    "PACKAGED_MODEL",
    "PACKAGED_MODEL_PACKAGE",
    "ZOO",
    "chain_cnn",
    "chain_cnn_opset11",
    "dynamic_cnn",
    "find_packaged_model",
    "fpn",
    "if_model",
    "loop_model",
    "multi_branch",
    "residual_dag",
    "sample_inputs",
    "stateful_rnn",
    "transformer_block",
]

F = TensorProto.FLOAT
Dims = Sequence[int | str | None]


class _Builder:
    """Accumulates nodes and seeded weights; `name()` hands out unique tensor names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def weight(self, shape: Sequence[int], scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        std = scale if scale is not None else (1.0 / max(fan_in, 1)) ** 0.5
        value = (self.rng.standard_normal(shape) * std).astype(np.float32)
        return self.const(value, "w")

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: object) -> str:
        outs = [self.name(op_type.lower() + "_") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0]

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, stride: int = 1) -> str:
        w = self.weight([c_out, c_in, k, k])
        b = self.const(np.zeros(c_out, np.float32) + 0.01, "b")
        pad = k // 2
        return self.op("Conv", [x, w, b], pads=[pad] * 4, strides=[stride, stride])

    def conv_relu(self, x: str, c_in: int, c_out: int, k: int = 3, stride: int = 1) -> str:
        return self.op("Relu", [self.conv(x, c_in, c_out, k, stride)])

    def gemm(self, x: str, n_in: int, n_out: int) -> str:
        w = self.weight([n_out, n_in])
        b = self.const(np.zeros(n_out, np.float32), "b")
        return self.op("Gemm", [x, w, b], transB=1)

    def model(
        self,
        name: str,
        inputs: Sequence[tuple[str, int, Dims]],
        outputs: Sequence[tuple[str, str, int, Dims]],
        opset: int = 17,
    ) -> onnx.ModelProto:
        """`outputs` are (tensor, public name, dtype, dims); the tensor is renamed."""
        rename = {tensor: public for tensor, public, _, _ in outputs}
        for node in self.nodes:
            for i, o in enumerate(node.output):
                if o in rename:
                    node.output[i] = rename[o]
            for i, o in enumerate(node.input):
                if o in rename:
                    node.input[i] = rename[o]
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(n, t, list(d)) for n, t, d in inputs],
            [helper.make_tensor_value_info(p, t, list(d)) for _, p, t, d in outputs],
            initializer=self.inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", opset)],
            producer_name="edgecut.zoo",
            ir_version=8 if opset >= 15 else 6,
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def chain_cnn() -> onnx.ModelProto:
    """A VGG-like chain: x [1,3,32,32] -> y [1,10]; the `edgecut demo` model."""
    b = _Builder(1)
    t = b.conv_relu("x", 3, 8)
    t = b.conv_relu(t, 8, 8)
    t = b.op("MaxPool", [t], kernel_shape=[2, 2], strides=[2, 2])
    t = b.conv_relu(t, 8, 16)
    t = b.conv_relu(t, 16, 16)
    t = b.op("MaxPool", [t], kernel_shape=[2, 2], strides=[2, 2])
    t = b.conv_relu(t, 16, 32)
    t = b.conv_relu(t, 32, 32)
    t = b.op("GlobalAveragePool", [t])
    t = b.op("Flatten", [t])
    t = b.op("Relu", [b.gemm(t, 32, 32)])
    y = b.gemm(t, 32, 10)
    return b.model("chain_cnn", [("x", F, [1, 3, 32, 32])], [(y, "y", F, [1, 10])])


def chain_cnn_opset11() -> onnx.ModelProto:
    """chain_cnn's shape at opset 11 (IR 6): half the weights are Constant nodes and the
    initializers are also listed as graph inputs, as old exporters wrote them."""
    model = chain_cnn()
    model.graph.name = "chain_cnn_opset11"
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 11))
    model.ir_version = 6
    inits = list(model.graph.initializer)
    as_nodes = {t.name for t in inits[::2]}
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in inits if t.name in as_nodes]
    kept = [t for t in inits if t.name not in as_nodes]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    # Each Constant right before its first reader, as exporters emit them.
    placed: set[str] = set()
    for node in nodes:
        for name in node.input:
            if name in as_nodes and name not in placed:
                placed.add(name)
                model.graph.node.append(next(c for c in constants if c.output[0] == name))
        model.graph.node.append(node)
    for t in kept:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    onnx.checker.check_model(model, full_check=True)
    return model


def residual_dag() -> onnx.ModelProto:
    """Three residual blocks (conv-relu-conv + skip, relu): x [1,3,16,16] -> y [1,10]."""
    b = _Builder(2)
    t = b.conv_relu("x", 3, 8)
    for _ in range(3):
        r = b.conv_relu(t, 8, 8)
        r = b.conv(r, 8, 8)
        t = b.op("Relu", [b.op("Add", [t, r])])
    skip = t
    t = b.conv_relu(t, 8, 8, k=1)
    t = b.op("Add", [t, skip])
    t = b.op("Flatten", [b.op("GlobalAveragePool", [t])])
    y = b.gemm(t, 8, 10)
    return b.model("residual_dag", [("x", F, [1, 3, 16, 16])], [(y, "y", F, [1, 10])])


def _inception(b: _Builder, x: str, c_in: int, c: int) -> str:
    b1 = b.conv_relu(x, c_in, c, k=1)
    b2 = b.conv_relu(b.conv_relu(x, c_in, c, k=1), c, c)
    b3 = b.conv_relu(
        b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        c_in,
        c,
        k=1,
    )
    b4 = b.conv_relu(b.conv_relu(b.conv_relu(x, c_in, c, k=1), c, c), c, c)
    return b.op("Concat", [b1, b2, b3, b4], axis=1)


def multi_branch() -> onnx.ModelProto:
    """Two inception-like blocks (4 branches + Concat) with an auxiliary head:
    x [1,3,16,16] -> aux [1,10], y [1,10]."""
    b = _Builder(3)
    t = b.conv_relu("x", 3, 8)
    t = _inception(b, t, 8, 4)
    aux = b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [t])]), 16, 10)
    t = b.op("MaxPool", [t], kernel_shape=[2, 2], strides=[2, 2])
    t = _inception(b, t, 16, 8)
    y = b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [t])]), 32, 10)
    return b.model(
        "multi_branch",
        [("x", F, [1, 3, 16, 16])],
        [(aux, "aux", F, [1, 10]), (y, "y", F, [1, 10])],
    )


def fpn() -> onnx.ModelProto:
    """A feature pyramid: strided backbone, 1x1 laterals, top-down Resize + Add, 3x3 output
    convs: x [1,3,32,32] -> p1 [1,8,16,16], p2 [1,8,8,8], p3 [1,8,4,4]."""
    b = _Builder(4)
    c1 = b.conv_relu(b.conv_relu("x", 3, 8, stride=2), 8, 8)
    c2 = b.conv_relu(b.conv_relu(c1, 8, 16, stride=2), 16, 16)
    c3 = b.conv_relu(b.conv_relu(c2, 16, 32, stride=2), 32, 32)
    scales = b.const(np.array([1, 1, 2, 2], np.float32), "scales")
    l3 = b.conv(c3, 32, 8, k=1)
    l2 = b.conv(c2, 16, 8, k=1)
    l1 = b.conv(c1, 8, 8, k=1)
    up3 = b.op("Resize", [l3, "", scales], mode="nearest")
    m2 = b.op("Add", [l2, up3])
    up2 = b.op("Resize", [m2, "", scales], mode="nearest")
    m1 = b.op("Add", [l1, up2])
    p3 = b.conv(l3, 8, 8)
    p2 = b.conv(m2, 8, 8)
    p1 = b.conv(m1, 8, 8)
    return b.model(
        "fpn",
        [("x", F, [1, 3, 32, 32])],
        [(p1, "p1", F, [1, 8, 16, 16]), (p2, "p2", F, [1, 8, 8, 8]), (p3, "p3", F, [1, 8, 4, 4])],
    )


def transformer_block() -> onnx.ModelProto:
    """Pre-norm attention block, 2 heads: tokens [1,16,32] + mask [1,16,16] (bool, True =
    attend) -> y [1,16,32]. MatMul attention, Softmax, LayerNormalization, residuals."""
    b = _Builder(5)
    d, heads, seq = 32, 2, 16
    hd = d // heads

    def proj(x: str) -> str:
        return b.op("Add", [b.op("MatMul", [x, b.weight([d, d])]), b.const(np.zeros(d, np.float32), "b")])

    def layer_norm(x: str) -> str:
        return b.op(
            "LayerNormalization",
            [x, b.const(np.ones(d, np.float32), "g"), b.const(np.zeros(d, np.float32), "b")],
            axis=-1,
            epsilon=1e-5,
        )

    split_shape = b.const(np.array([1, seq, heads, hd], np.int64), "shape")
    merge_shape = b.const(np.array([1, seq, d], np.int64), "shape")

    def split_heads(x: str) -> str:
        return b.op("Transpose", [b.op("Reshape", [x, split_shape])], perm=[0, 2, 1, 3])

    h = layer_norm("tokens")
    q, k, v = (split_heads(proj(h)) for _ in range(3))
    scores = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
    scores = b.op("Mul", [scores, b.const(np.array(hd**-0.5, np.float32), "scale")])
    mask = b.op("Unsqueeze", ["mask", b.const(np.array([1], np.int64), "axes")])
    scores = b.op("Where", [mask, scores, b.const(np.array(-1e4, np.float32), "neg")])
    attn = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
    attn = b.op("Reshape", [b.op("Transpose", [attn], perm=[0, 2, 1, 3]), merge_shape])
    t = b.op("Add", ["tokens", proj(attn)])
    h = layer_norm(t)
    ff = b.op("Relu", [b.op("MatMul", [h, b.weight([d, 2 * d])])])
    ff = b.op("MatMul", [ff, b.weight([2 * d, d])])
    y = b.op("Add", [t, ff])
    return b.model(
        "transformer_block",
        [("tokens", F, [1, seq, d]), ("mask", TensorProto.BOOL, [1, seq, seq])],
        [(y, "y", F, [1, seq, d])],
    )


def dynamic_cnn() -> onnx.ModelProto:
    """A CNN with symbolic batch and spatial dims: x [N,3,H,W] -> y [N,10], feat [N,16,?,?]."""
    b = _Builder(6)
    t = b.conv_relu("x", 3, 8)
    t = b.conv_relu(t, 8, 8)
    t = b.op("MaxPool", [t], kernel_shape=[2, 2], strides=[2, 2])
    t = b.conv_relu(t, 8, 16)
    feat = b.conv_relu(t, 16, 16)
    t = b.op("Flatten", [b.op("GlobalAveragePool", [feat])])
    y = b.gemm(t, 16, 10)
    return b.model(
        "dynamic_cnn",
        [("x", F, ["N", 3, "H", "W"])],
        [(y, "y", F, ["N", 10]), (feat, "feat", F, ["N", 16, None, None])],
    )


def stateful_rnn() -> onnx.ModelProto:
    """An Elman RNN unrolled over 4 steps: x [1,4,16] + h_in [1,32] -> y [1,8], h_out [1,32]."""
    b = _Builder(7)
    wx, wh = b.weight([16, 32]), b.weight([32, 32])
    bias = b.const(np.zeros(32, np.float32), "b")
    h = "h_in"
    for step in range(4):
        x_t = b.op("Gather", ["x", b.const(np.array(step, np.int64), "t")], axis=1)
        pre = b.op("Add", [b.op("MatMul", [x_t, wx]), b.op("MatMul", [h, wh])])
        h = b.op("Tanh", [b.op("Add", [pre, bias])])
    h_out = b.op("Identity", [h])
    y = b.gemm(h, 32, 8)
    return b.model(
        "stateful_rnn",
        [("x", F, [1, 4, 16]), ("h_in", F, [1, 32])],
        [(y, "y", F, [1, 8]), (h_out, "h_out", F, [1, 32])],
    )


def if_model() -> onnx.ModelProto:
    """An If on the sign of a main-graph value; both branches read outer tensors (`a`,
    `x2`) and the initializer `shared`, which the main graph also reads before and after:
    x [1,16] -> y [1,16]."""
    b = _Builder(8)
    shared = b.const(np.linspace(-0.5, 0.5, 16).astype(np.float32), "shared")
    a = b.op("Relu", [b.op("Add", [b.op("MatMul", ["x", b.weight([16, 16])]), shared])])
    x2 = b.op("Mul", ["x", b.const(np.array(2.0, np.float32), "two")])
    score = b.op("ReduceSum", [b.op("Sub", [a, b.const(np.array(0.4, np.float32), "c")])], keepdims=0)
    cond = b.op("Greater", [score, b.const(np.array(0.0, np.float32), "zero")])
    w_then, w_else = b.weight([16, 16]), b.weight([16, 16])
    out_vi = [helper.make_tensor_value_info("branch_out", F, [1, 16])]
    then_graph = helper.make_graph(
        [
            helper.make_node("MatMul", [a, w_then], ["t0"]),
            helper.make_node("Add", ["t0", shared], ["t1"]),
            helper.make_node("Add", ["t1", x2], ["branch_out"]),
        ],
        "then_branch",
        [],
        out_vi,
    )
    else_graph = helper.make_graph(
        [
            helper.make_node("MatMul", [x2, w_else], ["e0"]),
            helper.make_node("Sub", ["e0", shared], ["e1"]),
            helper.make_node("Tanh", ["e1"], ["branch_out"]),
        ],
        "else_branch",
        [],
        out_vi,
    )
    r = b.op("If", [cond], then_branch=then_graph, else_branch=else_graph)
    t = b.op("Add", [b.op("Relu", [r]), shared])
    y = b.op("Add", [b.op("MatMul", [t, b.weight([16, 16])]), a])
    return b.model("if_model", [("x", F, [1, 16])], [(y, "y", F, [1, 16])])


def loop_model() -> onnx.ModelProto:
    """A Loop of 3 steps whose body reads the outer tensor `w` and the outer initializer
    `wb`: x [1,8] -> y [1,8], steps [3,1,8] (the scan output of every step)."""
    b = _Builder(9)
    w = b.op("Tanh", [b.op("MatMul", ["x", b.weight([8, 8])])])
    start = b.op("Relu", [b.op("Add", [b.op("MatMul", ["x", b.weight([8, 8])]), w])])
    wb = b.weight([8, 8])
    trips = b.const(np.array(3, np.int64), "trips")
    keep_going = b.const(np.array(True), "cond")
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["s_in", wb], ["m"]),
            helper.make_node("Add", ["m", w], ["a"]),
            helper.make_node("Tanh", ["a"], ["s_out"]),
            helper.make_node("Identity", ["s_out"], ["scan_out"]),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_in", F, [1, 8]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_out", F, [1, 8]),
            helper.make_tensor_value_info("scan_out", F, [1, 8]),
        ],
    )
    final = b.name("loop_")
    steps = b.name("loop_")
    b.nodes.append(helper.make_node("Loop", [trips, keep_going, start], [final, steps], body=body))
    t = b.op("Add", [b.op("Relu", [final]), w])
    t = b.op("Sigmoid", [b.op("MatMul", [t, b.weight([8, 8])])])
    y = b.op("MatMul", [t, b.weight([8, 8])])
    s = b.op("Identity", [steps])
    return b.model(
        "loop_model",
        [("x", F, [1, 8])],
        [(y, "y", F, [1, 8]), (s, "steps", F, [3, 1, 8])],
    )


ZOO: dict[str, Callable[[], onnx.ModelProto]] = {
    "chain_cnn": chain_cnn,
    "chain_cnn_opset11": chain_cnn_opset11,
    "residual_dag": residual_dag,
    "multi_branch": multi_branch,
    "fpn": fpn,
    "transformer_block": transformer_block,
    "dynamic_cnn": dynamic_cnn,
    "stateful_rnn": stateful_rnn,
    "if_model": if_model,
    "loop_model": loop_model,
}


def sample_inputs(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random inputs of the declared dtypes (floats N(0,1), ints in [0,4), bools).

    Symbolic dims come from `input_shapes`, else 1 on axis 0 and 32 elsewhere.
    """
    return _sample_inputs(model, input_shapes, seed)


PACKAGED_MODEL_PACKAGE = "rapidocr_onnxruntime"
PACKAGED_MODEL = "models/ch_PP-OCRv4_det_infer.onnx"


def find_packaged_model(
    package: str = PACKAGED_MODEL_PACKAGE, relative_path: str = PACKAGED_MODEL
) -> Path | None:
    """Path of an ONNX file shipped inside an installed package, or None if it is absent.

    The default is PaddleOCR's PP-OCRv4 text detector (an FPN/DB head, 672 nodes, 4.7 MB)
    from the PyPI package `rapidocr-onnxruntime` 1.4.4. The package is located with
    `importlib.util.find_spec`, which does not import it (its import pulls in OpenCV).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / relative_path
        if path.is_file():
            return path
    return None
