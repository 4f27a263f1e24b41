"""Run models and head/tail pairs locally in onnxruntime (CPU) and compare their outputs.

The one place where onnxruntime errors become edgecut errors. Sessions use one thread and
basic graph optimisations so that a full model and its parts run the same kernels.

Example:
    >>> out = run_split_locally("cuts/3/head.onnx", "cuts/3/tail.onnx", {"x": x})  # doctest: +SKIP
    >>> within_tolerance(full_out, out)  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgecut.errors import BadInputError, BadModelError

__all__ = [
    "RELATIVE_TOLERANCE",
    "compare_outputs",
    "make_session",
    "run_model",
    "run_split_locally",
    "tolerance_for",
    "within_tolerance",
]

RELATIVE_TOLERANCE = 1e-5


def make_session(model: onnx.ModelProto | str | Path) -> ort.InferenceSession:
    """A single-threaded CPU session; BadModelError if onnxruntime refuses the model."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # failures are raised (and translated) below, not logged
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        where = "model" if isinstance(model, onnx.ModelProto) else str(model)
        raise BadModelError(f"{where}: onnxruntime cannot load it: {exc}") from exc


def _run(
    session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    output_names: Sequence[str] | None,
    where: str,
) -> dict[str, np.ndarray]:
    wanted = [i.name for i in session.get_inputs()]
    missing = [n for n in wanted if n not in feeds]
    if missing:
        raise BadInputError(f"{where}: missing input(s) {', '.join(map(repr, missing))}")
    names = list(output_names) if output_names is not None else [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, {n: feeds[n] for n in wanted})
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise BadInputError(f"{where}: onnxruntime failed to run: {exc}") from exc
    return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}


def run_model(
    model: onnx.ModelProto | str | Path,
    feeds: Mapping[str, np.ndarray],
    *,
    output_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run a model once; returns {output name: array}."""
    where = "model" if isinstance(model, onnx.ModelProto) else str(model)
    return _run(make_session(model), feeds, output_names, where)


def run_split_locally(
    head: onnx.ModelProto | str | Path | None,
    tail: onnx.ModelProto | str | Path | None,
    inputs: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Run head then tail as the device and the cloud would; returns every graph output.

    The tail is fed from the head's outputs, and graph inputs it reads are forwarded from
    `inputs` under their own names.
    """
    if head is None and tail is None:
        raise BadInputError("run_split_locally needs a head, a tail or both; got neither")
    outputs: dict[str, np.ndarray] = {}
    available = dict(inputs)
    if head is not None:
        head_out = run_model(head, inputs)
        available.update(head_out)
        outputs.update(head_out)
    if tail is not None:
        tail_out = run_model(tail, available)
        outputs.update(tail_out)
    return outputs


def tolerance_for(reference: Mapping[str, np.ndarray]) -> float:
    """Largest allowed |full - split|: 1e-5 * max(1, max |full|) over all outputs."""
    scale = 1.0
    for v in reference.values():
        if v.size and np.issubdtype(v.dtype, np.number):
            scale = max(scale, float(np.max(np.abs(v.astype(np.float64)))))
    return RELATIVE_TOLERANCE * scale


def compare_outputs(full: Mapping[str, np.ndarray], split: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Max |full - split| per output of `full`; inf where shapes, dtypes or names differ."""
    diffs: dict[str, float] = {}
    for name, a in full.items():
        b = split.get(name)
        if b is None or a.shape != b.shape or a.dtype != b.dtype:
            diffs[name] = float("inf")
        elif a.size == 0:
            diffs[name] = 0.0
        elif a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number):
            diffs[name] = 0.0 if np.array_equal(a, b) else float("inf")
        else:
            d = np.abs(a.astype(np.float64) - b.astype(np.float64))
            both_nan = np.isnan(a.astype(np.float64)) & np.isnan(b.astype(np.float64))
            diffs[name] = float(np.max(np.where(both_nan, 0.0, d)))
    return diffs


def within_tolerance(full: Mapping[str, np.ndarray], split: Mapping[str, np.ndarray]) -> bool:
    """The acceptance rule: every output within `tolerance_for(full)`."""
    limit = tolerance_for(full)
    return all(d <= limit for d in compare_outputs(full, split).values())
