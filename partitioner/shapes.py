"""Concrete shapes, dtypes and byte sizes of every main-graph tensor at given input shapes.

ONNX shape inference runs first with the symbolic input dimensions replaced by numbers;
tensors it leaves without a concrete shape are measured by running the model once in
onnxruntime on a sample input with every such tensor exposed as an output.

Symbolic input dimensions not given in `input_shapes` default to 1 on axis 0 (the batch)
and to 32 elsewhere (`DEFAULT_BATCH`, `DEFAULT_DIM`).

Example:
    >>> parse_input_shape("x=1x3x224x224")
    ('x', (1, 3, 224, 224))
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, shape_inference

from edgecut.errors import BadShapeError

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_DIM",
    "TensorInfo",
    "concrete_input_shapes",
    "parse_input_shape",
    "resolve_tensors",
    "sample_inputs",
]

DEFAULT_BATCH = 1
DEFAULT_DIM = 32

_NAME_RE = re.compile(r"^[^\s=]+$")


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorInfo:
    """A tensor at concrete shapes: `nbytes` = prod(shape) * itemsize."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if any(d < 0 for d in self.shape):
            raise BadShapeError(f"tensor {self.name!r}: negative dimension in {self.shape}")

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse `NAME=1x3x224x224` into `('NAME', (1, 3, 224, 224))`; `NAME=` is a scalar."""
    name, sep, dims = text.strip().rpartition("=")
    if not sep:
        raise BadShapeError(f"input shape {text!r}: expected NAME=DxDx..., e.g. x=1x3x224x224 (missing '=')")
    if not name or not _NAME_RE.match(name):
        raise BadShapeError(
            f"input shape {text!r}: expected NAME=DxDx... with a non-empty input name "
            "before '=', e.g. x=1x3x224x224"
        )
    if not dims:
        return name, ()
    shape: list[int] = []
    for part in dims.split("x"):
        if not part.isdigit():
            raise BadShapeError(
                f"input shape {text!r}: dimension {part!r} is not a non-negative integer; "
                "write dimensions separated by 'x', e.g. x=1x3x224x224"
            )
        shape.append(int(part))
    return name, tuple(shape)


def _dtype_name(elem_type: int) -> str:
    return str(helper.tensor_dtype_to_np_dtype(elem_type))


def _declared_dims(vi: onnx.ValueInfoProto) -> list[int | None] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def concrete_input_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Concrete shape of each real graph input: given ones checked, the rest defaulted."""
    given = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    names = {i.name for i in graph_inputs}
    unknown = sorted(set(given) - names)
    if unknown:
        raise BadShapeError(
            f"shape given for {', '.join(map(repr, unknown))}, but the model's inputs are "
            f"{', '.join(map(repr, sorted(names)))}"
        )
    result: dict[str, tuple[int, ...]] = {}
    problems: list[str] = []
    for vi in graph_inputs:
        dims = _declared_dims(vi)
        if vi.name in given:
            shape = given[vi.name]
            if dims is not None and len(dims) != len(shape):
                problems.append(
                    f"input {vi.name!r} has rank {len(dims)} but the shape given has "
                    f"rank {len(shape)} ({'x'.join(map(str, shape)) or 'scalar'})"
                )
                continue
            for axis, (want, got) in enumerate(zip(dims or [], shape, strict=False)):
                if want is not None and want != got:
                    problems.append(
                        f"input {vi.name!r} axis {axis} is fixed to {want} by the model, got {got}"
                    )
            result[vi.name] = shape
        elif dims is None:
            problems.append(f"input {vi.name!r} has no declared shape; give one, e.g. {vi.name}=1x3x32x32")
        else:
            result[vi.name] = tuple(
                d if d is not None else (DEFAULT_BATCH if axis == 0 else DEFAULT_DIM)
                for axis, d in enumerate(dims)
            )
    if problems:
        raise BadShapeError("; ".join(problems))
    return result


def sample_inputs(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random inputs of the declared dtypes: floats ~ N(0, 1), integers in [0, 4), bools."""
    rng = np.random.default_rng(seed)
    shapes = concrete_input_shapes(model, input_shapes)
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name not in shapes:
            continue
        dtype = np.dtype(_dtype_name(vi.type.tensor_type.elem_type))
        shape = shapes[vi.name]
        if dtype == np.bool_:
            feeds[vi.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            feeds[vi.name] = rng.integers(0, 4, size=shape).astype(dtype)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _with_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for vi in fixed.graph.input:
        if vi.name in shapes:
            shape = vi.type.tensor_type.shape
            shape.Clear()
            for d in shapes[vi.name]:
                shape.dim.add().dim_value = d
    return fixed


def _concrete(vi: onnx.ValueInfoProto) -> TensorInfo | None:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or t.elem_type == 0 or not t.HasField("shape"):
        return None
    if not all(d.HasField("dim_value") for d in t.shape.dim):
        return None
    return TensorInfo(
        name=vi.name,
        dtype=_dtype_name(t.elem_type),
        shape=tuple(d.dim_value for d in t.shape.dim),
    )


def _measure(
    model: onnx.ModelProto, names: Sequence[str], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, TensorInfo]:
    from edgecut.partitioner.runtime import run_model  # onnxruntime only when needed

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in names:
        if name not in present:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    feeds = sample_inputs(model, shapes)
    values = run_model(probe, feeds, output_names=list(names))
    return {
        name: TensorInfo(name=name, dtype=str(v.dtype), shape=tuple(v.shape)) for name, v in values.items()
    }


def resolve_tensors(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, TensorInfo]:
    """TensorInfo of every graph input, initializer and main-graph node output."""
    shapes = concrete_input_shapes(model, input_shapes)
    fixed = _with_input_shapes(model, shapes)
    try:
        inferred = shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    except Exception:  # inference is an optimisation; measuring below covers every tensor
        inferred = fixed
    g = inferred.graph
    found: dict[str, TensorInfo] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        info = _concrete(vi)
        if info is not None:
            found[vi.name] = info
    for init in model.graph.initializer:
        found[init.name] = TensorInfo(
            name=init.name, dtype=_dtype_name(init.data_type), shape=tuple(init.dims)
        )
    for name, shape in shapes.items():
        vi = next(i for i in model.graph.input if i.name == name)
        found[name] = TensorInfo(name=name, dtype=_dtype_name(vi.type.tensor_type.elem_type), shape=shape)
    wanted = [o for n in model.graph.node for o in n.output if o]
    missing = [name for name in wanted if name not in found]
    if missing:
        found.update(_measure(model, missing, shapes))
    return found
