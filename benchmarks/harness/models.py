"""The benchmark's models: two built here with onnx.helper, and the packaged PP-OCRv4 detector.

The zoo's models are tiny (microseconds per node), too small for a cut to matter; these take
tens of milliseconds on one core (more when limited to 30 %), with activations of a hundred
kilobytes to a megabyte, so both compute and transfer shape the best cut. They are heavy on
purpose: a cgroup CPU quota is enforced at the kernel's tick, so a head of a few milliseconds
can run at full speed on a fresh quota; long heads see the limit on average.

- `wide_cnn`: a VGG-like chain of eleven Conv+Relu (3 -> 512 channels, four stride-2 steps),
  pooling and a classifier; input 1x3x128x128 (about 3.6 GFLOP).
- `resnet_dag`: a residual network (three stages of two blocks, each block's input skips to
  an Add), so most cuts send two tensors; input 1x3x128x128.
- `ppocr_det`: PaddleOCR's PP-OCRv4 text detector (FPN + DB head) from `rapidocr-onnxruntime`,
  a real trained model (331 candidate cuts); input 1x3x160x160.

Every node built here has a unique name (the profiler and the cost graph key nodes by name).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["MODELS", "BenchModel", "build"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchModel:
    name: str
    path: Path
    shapes: dict[str, tuple[int, ...]]
    trained: bool


class _Net:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def conv(self, x: str, c_in: int, c_out: int, stride: int = 1, relu: bool = True) -> str:
        name = self._name("conv")
        scale = np.sqrt(2.0 / (c_in * 9))
        w = (self.rng.standard_normal((c_out, c_in, 3, 3)) * scale).astype(np.float32)
        b = np.zeros(c_out, np.float32)
        self.inits += [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
        self.nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_out"],
                                           name=name, pads=[1, 1, 1, 1], strides=[stride, stride]))
        return self.relu(f"{name}_out") if relu else f"{name}_out"

    def relu(self, x: str) -> str:
        name = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [f"{name}_out"], name=name))
        return f"{name}_out"

    def add(self, a: str, b: str) -> str:
        name = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [f"{name}_out"], name=name))
        return f"{name}_out"

    def head(self, x: str, channels: int, classes: int) -> str:
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
        self.nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"))
        w = (self.rng.standard_normal((channels, classes)) * 0.05).astype(np.float32)
        self.inits += [numpy_helper.from_array(w, "fc_w"),
                       numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b")]
        self.nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc"))
        return "y"

    def model(self, name: str, side: int, classes: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def wide_cnn(side: int = 128) -> onnx.ModelProto:
    net = _Net(1)
    x = net.conv("x", 3, 64, 2)
    plan = [(64, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 128, 1), (128, 256, 2),
            (256, 256, 1), (256, 256, 1), (256, 512, 2), (512, 512, 1)]
    for c_in, c_out, stride in plan:
        x = net.conv(x, c_in, c_out, stride)
    net.head(x, 512, 100)
    return net.model("wide_cnn", side, 100)


def resnet_dag(side: int = 128) -> onnx.ModelProto:
    net = _Net(2)
    x = net.conv("x", 3, 64, 2)
    channels = 64
    for stage, width in enumerate((64, 128, 256)):
        if stage:
            x = net.conv(x, channels, width, 2)
            channels = width
        for _ in range(2):
            inner = net.conv(x, width, width)
            inner = net.conv(inner, width, width, relu=False)
            x = net.relu(net.add(inner, x))
    net.head(x, channels, 100)
    return net.model("resnet_dag", side, 100)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _ppocr(folder: Path) -> BenchModel | None:
    from edgecut.zoo import find_packaged_model

    found = find_packaged_model()
    if found is None:
        return None
    return BenchModel(name="ppocr_det", path=found, shapes={"x": (1, 3, 160, 160)}, trained=True)


MODELS: dict[str, Callable[[Path], BenchModel | None]] = {
    "wide_cnn": lambda d: BenchModel(name="wide_cnn", path=_save(wide_cnn(), d / "wide_cnn.onnx"),
                                     shapes={"x": (1, 3, 128, 128)}, trained=False),
    "resnet_dag": lambda d: BenchModel(name="resnet_dag",
                                       path=_save(resnet_dag(), d / "resnet_dag.onnx"),
                                       shapes={"x": (1, 3, 128, 128)}, trained=False),
    "ppocr_det": _ppocr,
}


def build(name: str, folder: Path) -> BenchModel | None:
    """The model `name` written under `folder` (None: the packaged model is not installed)."""
    return MODELS[name](folder)
