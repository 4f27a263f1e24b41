"""Model repositories for the benchmark: the same models, batching off and on, for edgecut
(onnxruntime_onnx) and for Triton (Python backend whose model.py calls onnxruntime).

    REPO/<model>_nb/1/model.onnx     max_batch_size 32, no dynamic_batching: one request a run
    REPO/<model>_b/1/model.onnx      max_batch_size 32, dynamic_batching {} (no queue delay)

Both get one instance per server core (`instance_group [{count: N, kind: KIND_CPU}]`), one
onnxruntime thread each.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from .models import ModelSpec

__all__ = ["MAX_BATCH", "TRITON_MODEL_PY", "write_model"]

MAX_BATCH = 32

# The Triton Python backend's model: joins the requests of a batch, runs onnxruntime once on
# one thread, splits the outputs back (what edgecut's scheduler does).
TRITON_MODEL_PY = '''
import os
import sys

# The stub embeds the system's libpython and does not pass PYTHONPATH on: find our packages.
sys.path[:0] = [p for p in {site_packages!r} if p not in sys.path]

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        rows = [a.shape[0] for a in arrays]
        joined = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        out = self.session.run([self.output], {self.input: joined})[0]
        responses, start = [], 0
        for n in rows:
            tensor = pb_utils.Tensor(self.output, out[start:start + n].copy())
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += n
        return responses
'''


def _config(name: str, spec: ModelSpec, model: onnx.ModelProto, *, batching: bool,
            backend: str, instances: int) -> str:
    out_dims = ", ".join(str(d.dim_value) for d in
                         model.graph.output[0].type.tensor_type.shape.dim[1:])
    head = 'backend: "python"' if backend == "python" else 'platform: "onnxruntime_onnx"'
    dims = ", ".join(str(d) for d in spec.row_shape)
    return (
        f'name: "{name}"\n{head}\nmax_batch_size: {MAX_BATCH}\n'
        f'input [ {{ name: "{spec.input_name}" data_type: TYPE_FP32 dims: [ {dims} ] }} ]\n'
        f'output [ {{ name: "{spec.output_name}" data_type: TYPE_FP32 dims: [ {out_dims} ] }} ]\n'
        + ("dynamic_batching { }\n" if batching else "")
        + f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
    )


def write_model(root: Path, name: str, spec: ModelSpec, model: onnx.ModelProto, *,
                batching: bool, backend: str = "onnxruntime", instances: int = 1) -> Path:
    """REPO/name/{config.pbtxt, 1/model.onnx[, 1/model.py]}; returns the model folder."""
    folder = root / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "1" / "model.onnx"))
    if backend == "python":
        import site

        (folder / "1" / "model.py").write_text(
            TRITON_MODEL_PY.replace("{site_packages!r}", repr(site.getsitepackages())))
    config = _config(name, spec, model, batching=batching, backend=backend, instances=instances)
    (folder / "config.pbtxt").write_text(config)
    return folder
