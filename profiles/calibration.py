"""Fit a device profile's launch cost and memory efficiency to a reference network timed here.

Micro-benchmarks (one operator class repeated on tensors that stay in cache) measure the
arithmetic rate well but miss what a real model pays between and around its kernels: the
thread pool's fork and join on every node, layout reorders, tensors that no longer fit in
cache. Measured on this project's 2-core VM, a profile built from micro-benchmarks alone
predicted PP-OCRv4's detector heads at 0.33-0.49x their real time and the zoo's at 0.2-0.5x.

So `profile_device` also times a reference network, `reference_network(side)`, at two input
sizes (a small one where launch costs dominate and a large one where bandwidth does), with
a Predictor's session options, and fits two figures of the cost model to both times:

- `node_overhead_ms`, the cost of each kernel (`NodeCost.kernels`), and
- the effective memory bandwidth, as a fraction (0.1 to 1) of the streaming rate the
  elementwise micro-benchmark read,

choosing the bandwidth fraction whose fitted overhead predicts both runs best (the largest
relative error of the two is minimised; the overhead is the mean of the two that each run
alone would need, within 0 to `MAX_NODE_OVERHEAD_MS`).

The reference network is a mobile-style CNN built here with onnx.helper, like the networks
edge devices run (and unlike any model edgecut is measured on): a strided stem, inverted
residual blocks (1x1 expand, depthwise 3x3, squeeze-and-excitation, 1x1 project, residual
Add), hard-swish activations written as Paddle2ONNX and PyTorch export them
(Add, Clip, Mul, Div), BatchNormalization, a top-down path with Resize and Concat, and a
1x1 head.

Example:
    >>> model = reference_network(32)
    >>> sum(1 for n in model.graph.node if n.op_type == "Conv") > 20
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecut.profiles.opclass import NodeCost, estimate_node_ms
from edgecut.profiles.schema import DeviceProfile

__all__ = ["REFERENCE_SIDES", "fit_to_reference", "predict_total_ms", "reference_network"]

REFERENCE_SIDES = (64, 256)  # input sides: launch-bound, then bandwidth-bound
_FRACTIONS = tuple(0.1 * (10 ** (k / 399)) for k in range(400))  # 0.1 .. 1, geometric
MAX_NODE_OVERHEAD_MS = 0.05  # a fit beyond this is noise (seen on this VM: 2-10 us per node)


class _Net:
    def __init__(self) -> None:
        self.rng = np.random.default_rng(7)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def _init(self, array: np.ndarray, kind: str) -> str:
        name = self._name(kind)
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, c_in: int, c_out: int, k: int = 1, stride: int = 1,
             group: int = 1) -> str:
        w = self._init(self.rng.standard_normal((c_out, c_in // group, k, k))
                       * math.sqrt(2.0 / (c_in // group * k * k)), "w")
        b = self._init(np.zeros(c_out), "b")
        return self.node("Conv", [x, w, b], pads=[k // 2] * 4, strides=[stride, stride],
                         group=group)

    def bn(self, x: str, c: int) -> str:
        params = [self._init(v, "bn") for v in (np.ones(c), np.zeros(c), np.zeros(c), np.ones(c))]
        return self.node("BatchNormalization", [x, *params])

    def hardswish(self, x: str) -> str:
        three, six = self._init(np.array(3.0), "c"), self._init(np.array(6.0), "c")
        zero = self._init(np.array(0.0), "c")
        shifted = self.node("Add", [x, three])
        clipped = self.node("Clip", [shifted, zero, six])
        return self.node("Div", [self.node("Mul", [x, clipped]), six])

    def block(self, x: str, c_in: int, c_out: int, stride: int, expand: int = 3) -> str:
        c = c_in * expand
        y = self.hardswish(self.bn(self.conv(x, c_in, c), c))
        y = self.node("Relu", [self.bn(self.conv(y, c, c, 3, stride, group=c), c)])
        squeezed = self.node("GlobalAveragePool", [y])
        s = self.node("Relu", [self.conv(squeezed, c, max(4, c // 4))])
        s = self.node("HardSigmoid", [self.conv(s, max(4, c // 4), c)])
        y = self.bn(self.conv(self.node("Mul", [y, s]), c, c_out), c_out)
        return self.node("Add", [x, y]) if stride == 1 and c_in == c_out else y


def reference_network(side: int) -> onnx.ModelProto:
    """The mobile-style reference CNN (see the module docstring): x [1,3,side,side] -> y.

    `side` must be a multiple of 16.
    """
    if side % 16:
        raise ValueError(f"side must be a multiple of 16, got {side}")
    net = _Net()
    x = net.hardswish(net.bn(net.conv("x", 3, 16, 3, 2), 16))
    c2 = net.block(net.block(x, 16, 24, 2), 24, 24, 1)
    c3 = net.block(net.block(c2, 24, 40, 2), 40, 40, 1)
    c4 = net.block(net.block(c3, 40, 64, 2), 64, 64, 1)
    lateral = net.conv(c4, 64, 40)
    scales = net._init(np.array([1.0, 1.0, 2.0, 2.0]), "scales")
    up = net.node("Resize", [lateral, "", scales], mode="nearest")
    merged = net.node("Add", [up, net.conv(c3, 40, 40)])
    up2 = net.node("Resize", [net.conv(merged, 40, 24), "", scales], mode="nearest")
    fused = net.node("Concat", [up2, c2], axis=1)
    y = net.node("Sigmoid", [net.conv(net.node("Relu", [net.conv(fused, 48, 24, 3)]), 24, 1)])
    graph = helper.make_graph(
        net.nodes, "edgecut_reference",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 1, side // 4, side // 4])],
        net.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _costs(model: onnx.ModelProto) -> list[NodeCost]:
    from edgecut.profiles.model_profiler import estimate_costs

    shapes = {vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
              for vi in model.graph.input}
    return list(estimate_costs(model, shapes).values())  # type: ignore[arg-type]


def _sums(costs: Sequence[NodeCost], device: DeviceProfile) -> tuple[float, int]:
    """(roofline ms with the small kernels' launch costs, other kernels) of a model."""
    roof = sum(estimate_node_ms(c.op_class, c.flops, c.bytes_moved, device, 0, c.small_kernels)
               for c in costs)
    return roof, sum(c.kernels for c in costs)


def predict_total_ms(model: onnx.ModelProto, device: DeviceProfile) -> float:
    """What the cost model predicts for one run of a whole static-shaped `model`.

    Example:
        >>> from edgecut.profiles import load_device
        >>> predict_total_ms(reference_network(32), load_device("raspberry-pi-4")) > 0
        True
    """
    roof, kernels = _sums(_costs(model), device)
    return device.run_overhead_ms + roof + kernels * device.node_overhead_ms


def fit_to_reference(device: DeviceProfile, models: Sequence[onnx.ModelProto],
                     measured_ms: Sequence[float]) -> tuple[float, float]:
    """(node_overhead_ms, memory_gbps) that make `device` predict `measured_ms` for `models`
    best (see the module docstring); `device.memory_gbps` is the streaming rate measured."""
    costs = [_costs(m) for m in models]
    best: tuple[float, float, float] | None = None
    for fraction in _FRACTIONS:
        trial = replace(device, memory_gbps=device.memory_gbps * fraction, node_overhead_ms=0.0)
        sums = [_sums(c, trial) for c in costs]
        needed = [(ms - device.run_overhead_ms - roof) / max(1, kernels)
                  for (roof, kernels), ms in zip(sums, measured_ms, strict=True)]
        overhead = min(MAX_NODE_OVERHEAD_MS, max(0.0, sum(needed) / len(needed)))
        error = max(abs((device.run_overhead_ms + roof + kernels * overhead) / ms - 1)
                    for (roof, kernels), ms in zip(sums, measured_ms, strict=True))
        if best is None or error < best[0]:
            best = (error, overhead, trial.memory_gbps)
    assert best is not None
    return best[1], best[2]
