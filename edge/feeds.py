"""The onnxruntime.InferenceSession surface of a plan, and the checks of a run's arguments.

A Predictor describes its inputs and outputs as onnxruntime does (`TensorInfo`), and refuses
a call whose arguments do not fit the plan's model before any work, with every problem in
one BadInputError. The same tensor check guards what the cloud answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgecut.errors import BadInputError

from .plan import TensorSpec

__all__ = ["TensorInfo", "check_call", "check_tensor", "tensor_info"]

_ORT_TYPES = {
    "bool": "tensor(bool)", "uint8": "tensor(uint8)", "uint16": "tensor(uint16)",
    "uint32": "tensor(uint32)", "uint64": "tensor(uint64)", "int8": "tensor(int8)",
    "int16": "tensor(int16)", "int32": "tensor(int32)", "int64": "tensor(int64)",
    "float16": "tensor(float16)", "float32": "tensor(float)", "float64": "tensor(double)",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorInfo:
    """What onnxruntime's NodeArg says of an input or output: name, type and shape.

    Symbolic dims are strings, unknown ones None, as in onnxruntime.
    """

    name: str
    type: str
    dims: tuple[int | str | None, ...]

    @property
    def shape(self) -> list[int | str | None]:
        return list(self.dims)


def tensor_info(spec: TensorSpec) -> TensorInfo:
    """`spec` as onnxruntime describes it: a negative (unknown) dim is None."""
    dims = tuple(None if isinstance(d, int) and d < 0 else d for d in spec.shape)
    return TensorInfo(name=spec.name, type=_ORT_TYPES[spec.dtype], dims=dims)


def check_call(model: str, specs: Mapping[str, TensorSpec], known_outputs: Sequence[str],
               output_names: Sequence[str] | None,
               input_feed: Mapping[str, np.ndarray]) -> list[str]:
    """The output names a run returns; every problem with its arguments in one
    BadInputError, before any work."""
    if not isinstance(input_feed, Mapping):
        raise BadInputError(f"input_feed must be a dict of input name to numpy array, got "
                            f"{type(input_feed).__name__}")
    if isinstance(output_names, str):
        raise BadInputError(f"output_names must be a list of names, got the string "
                            f"{output_names!r}; write [{output_names!r}]")
    known_outputs = list(known_outputs)
    names = list(output_names) if output_names else known_outputs
    problems = []
    unknown_out = [n for n in names if n not in known_outputs]
    if unknown_out:
        problems.append(f"unknown output names {unknown_out}; the model's outputs are "
                        f"{known_outputs}")
    unknown_in = [n for n in input_feed if n not in specs]
    if unknown_in:
        problems.append(f"unknown input names {unknown_in}; the model's inputs are "
                        f"{list(specs)}")
    missing = [n for n in specs if n not in input_feed]
    if missing:
        problems.append(f"missing inputs {missing}")
    for name, spec in specs.items():
        if name in input_feed:
            problems += check_tensor(spec, input_feed[name])
    if problems:
        raise BadInputError(f"{model}: " + "; ".join(problems))
    return names


def check_tensor(spec: TensorSpec, value: object, role: str = "input") -> list[str]:
    """What is wrong with `value` as the tensor `spec` ("input" or "output"): its type, dtype,
    rank and fixed dims; an empty list when nothing is."""
    if not isinstance(value, np.ndarray):
        return [f"{role} {spec.name!r} must be a numpy array, got {type(value).__name__}"]
    problems = []
    if value.dtype != np.dtype(spec.dtype):
        problems.append(f"{role} {spec.name!r} must be {spec.dtype}, got {value.dtype}"
                        + (f"; convert it with .astype(np.{spec.dtype})" if role == "input" else ""))
    if value.ndim != len(spec.shape) or any(
            isinstance(d, int) and d >= 0 and d != n for d, n in zip(spec.shape, value.shape,
                                                                     strict=False)):
        problems.append(f"{role} {spec.name!r} must have shape {list(spec.shape)}, "
                        f"got {list(value.shape)}")
    return problems
