"""Built-in models a scenario can name with `[model] zoo = NAME`, written once to a cache file.

`vision_cnn` is an image classifier of 1.1 GFLOP at 224x224 (6 MiB of seeded weights) whose
cheap head squeezes its activations to 100 KB (a 1x1 bottleneck) before the heavy layers: the
shape that makes a split worth simulating. Every `edgecut.zoo` model can be named too. The
file is built from a fixed seed, so its bytes (and the plan's model hash) are the same on every
machine; it lives under the system temporary folder (or `EDGECUT_SIM_MODELS`), written
atomically.

Example:
    >>> "vision_cnn" in model_names() and "chain_cnn" in model_names()
    True
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["model_names", "model_path", "vision_cnn"]


def vision_cnn() -> onnx.ModelProto:
    """x [1,3,224,224] -> y [1,1000]: stem, bottleneck, conv stages 128-256, pooling, classifier."""
    rng = np.random.default_rng(18)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(value: np.ndarray, name: str) -> str:
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(x: str, c_in: int, c_out: int, k: int, stride: int, i: int) -> str:
        w = const(rng.standard_normal((c_out, c_in, k, k)) * (1.0 / (k * k * c_in)) ** 0.5,
                  f"w{i}")
        b = const(np.full(c_out, 0.01), f"b{i}")
        nodes.append(helper.make_node("Conv", [x, w, b], [f"conv{i}"], pads=[k // 2] * 4,
                                      strides=[stride, stride], name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        return f"relu{i}"

    t = "x"
    # (c_in, c_out, kernel, stride): a cheap stem down to 56x56, a 1x1 bottleneck to 8 channels
    # (100 KB: the natural cut), then the heavy 28x28 and 14x14 stages.
    layers = [(3, 16, 3, 2), (16, 32, 3, 2), (32, 8, 1, 1), (8, 128, 3, 2), (128, 128, 3, 1),
              (128, 128, 3, 1), (128, 128, 3, 1), (128, 256, 3, 2), (256, 256, 3, 1)]
    for i, (c_in, c_out, k, stride) in enumerate(layers):
        t = conv(t, c_in, c_out, k, stride, i)
    nodes.append(helper.make_node("GlobalAveragePool", [t], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flat"))
    w = const(rng.standard_normal((1000, 256)) * (1.0 / 256) ** 0.5, "fc_w")
    b = const(np.zeros(1000), "fc_b")
    nodes.append(helper.make_node("Gemm", ["flat", w, b], ["y"], transB=1, name="fc"))
    graph = helper.make_graph(
        nodes, "vision_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1000])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="edgecut.simulations", ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _builders() -> dict[str, Callable[[], onnx.ModelProto]]:
    from edgecut.zoo import ZOO

    return {"vision_cnn": vision_cnn, **ZOO}


def model_names() -> list[str]:
    """Names `[model] zoo = NAME` accepts, sorted."""
    return sorted(_builders())


def model_path(name: str) -> Path:
    """The ONNX file of built-in model `name`, built and cached on first use."""
    builders = _builders()
    if name not in builders:
        raise KeyError(name)
    data = builders[name]().SerializeToString(deterministic=True)
    digest = hashlib.sha256(data).hexdigest()[:16]
    folder = Path(os.environ.get("EDGECUT_SIM_MODELS") or Path(tempfile.gettempdir())
                  / "edgecut-sim-models")
    path = folder / f"{name}-{digest}.onnx"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(data)
        os.replace(partial, path)
    return path
