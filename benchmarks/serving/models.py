"""The models served by the benchmark, built with onnx.helper (nothing downloaded).

    small_cnn   x FP32 [b,32,32,32] -> y FP32 [b,10]    a CNN tail: 2 convs (28 MMAC), pool, fc
    wide_mlp    x FP32 [b,1024]     -> y FP32 [b,1024]  1024-4096-1024, 32 MiB of weights
    deep_mlp    8 layers of 1024x1024 (32 MiB); `mlp_tail(k)` is layers k..7 (a plan's tails)
    sink        x FP32 [b,1048576]  -> y FP32 [b,1]     4 MiB in, 4 bytes out (the channel)
    ppocr_cls   x FP32 [b,3,48,192] -> FP32 [b,2]       a real trained image model: PaddleOCR's
                text-direction classifier (MobileNetV3, Paddle2ONNX), shipped in the PyPI
                package rapidocr-onnxruntime 1.4.4 (the test extra); 110 KiB a request

On one onnxruntime thread the small CNN gains little from batching (its convolutions are
already compute-bound at batch 1); the wide MLP is a matrix-vector product at batch 1 (it
streams 32 MiB of weights per row) and a matrix product when batched, so it gains several times.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["MODELS", "ModelSpec", "deep_mlp", "mlp_tail", "sample_input", "save"]

F32 = np.float32


class ModelSpec:
    """A served model: its builder and the shape of one request's input (batch 1)."""

    __slots__ = ("build", "input_name", "name", "output_name", "row_shape")

    def __init__(self, name: str, build: Callable[[], onnx.ModelProto],
                 row_shape: tuple[int, ...], input_name: str = "x",
                 output_name: str = "y") -> None:
        self.name = name
        self.build = build
        self.row_shape = row_shape
        self.input_name = input_name
        self.output_name = output_name


def _model(nodes: list, inputs: list, outputs: list, inits: list, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _io(name: str, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def small_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array((rng.normal(size=(64, 32, 3, 3)) * 0.05).astype(F32), "w1"),
        numpy_helper.from_array((rng.normal(size=(64, 64, 3, 3)) * 0.05).astype(F32), "w2"),
        numpy_helper.from_array((rng.normal(size=(10, 64)) * 0.1).astype(F32), "fc_w"),
        numpy_helper.from_array(np.zeros(10, F32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    return _model(nodes, [_io("x", ["b", 32, 32, 32])], [_io("y", ["b", 10])], inits,
                  "small_cnn")


def _dense_chain(widths: list[int], seed: int, name: str, prefix: str = "l",
                 first: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "x"
    for i, (w_in, w_out) in enumerate(itertools.pairwise(widths)):
        layer = first + i
        w, b = f"{prefix}{layer}_w", f"{prefix}{layer}_b"
        inits.append(numpy_helper.from_array(
            (rng.normal(size=(w_in, w_out)) / np.sqrt(w_in)).astype(F32), w))
        inits.append(numpy_helper.from_array(np.zeros(w_out, F32), b))
        last = i == len(widths) - 2
        out = "y" if last else f"h{layer}"
        nodes.append(helper.make_node("MatMul", [current, w], [f"m{layer}"]))
        nodes.append(helper.make_node("Add", [f"m{layer}", b], [out if last else f"a{layer}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{layer}"], [out]))
        current = out
    return _model(nodes, [_io("x", ["b", widths[0]])], [_io("y", ["b", widths[-1]])], inits,
                  name)


def wide_mlp() -> onnx.ModelProto:
    return _dense_chain([1024, 4096, 1024], seed=2, name="wide_mlp")


DEEP_LAYERS = 8
DEEP_WIDTH = 1024


def deep_mlp() -> onnx.ModelProto:
    """8 layers of 1024x1024 fp32: 32 MiB of weights."""
    return mlp_tail(0)


def mlp_tail(first: int) -> onnx.ModelProto:
    """Layers `first`..7 of deep_mlp, with the same initializer names and bytes (as a plan's
    tails carry them): tail 0 is the full model."""
    full_rng_layers = _deep_weights()
    nodes, inits = [], []
    current = "x"
    for layer in range(first, DEEP_LAYERS):
        w, b = f"l{layer}_w", f"l{layer}_b"
        inits.append(numpy_helper.from_array(full_rng_layers[layer], w))
        inits.append(numpy_helper.from_array(np.zeros(DEEP_WIDTH, F32), b))
        last = layer == DEEP_LAYERS - 1
        out = "y" if last else f"h{layer}"
        nodes.append(helper.make_node("MatMul", [current, w], [f"m{layer}"]))
        nodes.append(helper.make_node("Add", [f"m{layer}", b], [out if last else f"a{layer}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{layer}"], [out]))
        current = out
    return _model(nodes, [_io("x", ["b", DEEP_WIDTH])], [_io("y", ["b", DEEP_WIDTH])], inits,
                  f"deep_mlp_tail{first}")


_DEEP_CACHE: list[np.ndarray] = []


def _deep_weights() -> list[np.ndarray]:
    if not _DEEP_CACHE:
        rng = np.random.default_rng(3)
        _DEEP_CACHE.extend((rng.normal(size=(DEEP_WIDTH, DEEP_WIDTH)) / 32).astype(F32)
                           for _ in range(DEEP_LAYERS))
    return _DEEP_CACHE


SINK_ELEMENTS = 1 << 20  # 4 MiB of fp32


def sink() -> onnx.ModelProto:
    """4 MiB in, one number out: the channel benchmark's model (the upload is the cost)."""
    nodes = [helper.make_node("ReduceMax", ["x"], ["y"], axes=[1], keepdims=1)]
    return _model(nodes, [_io("x", ["b", SINK_ELEMENTS])], [_io("y", ["b", 1])], [], "sink")


PPOCR_CLS = "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"


def ppocr_cls() -> onnx.ModelProto:
    """The packaged classifier as it ships (its H and W are free; served at 48x192, the size
    PaddleOCR feeds it)."""
    from edgecut.zoo import find_packaged_model

    path = find_packaged_model(relative_path=PPOCR_CLS)
    if path is None:
        raise FileNotFoundError("ppocr_cls needs rapidocr-onnxruntime 1.4.4 (pip install "
                                "-e '.[test]'): it ships the model file")
    return onnx.load(str(path))


MODELS: dict[str, ModelSpec] = {
    "small_cnn": ModelSpec("small_cnn", small_cnn, (32, 32, 32)),
    "wide_mlp": ModelSpec("wide_mlp", wide_mlp, (1024,)),
    "sink": ModelSpec("sink", sink, (SINK_ELEMENTS,)),
    "ppocr_cls": ModelSpec("ppocr_cls", ppocr_cls, (3, 48, 192),
                           output_name="save_infer_model/scale_0.tmp_1"),
}


def sample_input(spec: ModelSpec, rows: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, *spec.row_shape), dtype=F32)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
