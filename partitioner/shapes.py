"""Concrete shapes, dtypes and byte sizes of every main-graph tensor at given input shapes.

ONNX shape inference, with data propagation (`infer_shapes(..., data_prop=True)`: shapes
computed by Shape/Gather/Concat/... subgraphs are settled statically), runs first with the
symbolic input dimensions replaced by numbers; only the tensors it leaves without a concrete
shape (an `If` whose branches differ, a data-dependent size) are measured, by running the
model once in onnxruntime on a sample input with every such tensor exposed as an output.

Sample values. `values` (the CLI's `--input NAME=FILE.npy`) are real inputs: their shapes fix
the symbolic dimensions (`shapes_from_values`) and they replace the generated random inputs
wherever the model runs, so a model that branches on an input's value (a sample rate, a mode
flag) takes the right branch. When the model fails on generated inputs, the error is one line
naming the inputs whose values it reads (`value_read_inputs`), never onnxruntime's text.

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
    "known_dim",
    "parse_input_shape",
    "resolve_tensors",
    "run_on_samples",
    "sample_inputs",
    "shapes_from_values",
    "static_tensors",
    "value_read_inputs",
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
    return [known_dim(d) for d in t.shape.dim]


def known_dim(dim: onnx.TensorShapeProto.Dimension) -> int | None:
    """A dimension's size, or None when it is symbolic or unknown.

    Paddle2ONNX and some other exporters write a dynamic dimension as `dim_value: -1`; a
    negative size means unknown, exactly like a `dim_param` or an empty dimension.

    Example:
        >>> from onnx import TensorShapeProto
        >>> known_dim(TensorShapeProto.Dimension(dim_value=-1)) is None
        True
    """
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value >= 0 else None


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


def shapes_from_values(
    model: onnx.ModelProto,
    values: Mapping[str, np.ndarray] | None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, tuple[int, ...]]:
    """`input_shapes` with the shape of every sample value added; BadShapeError names an
    input given twice with different shapes, or a value for no model input.

    Example:
        >>> from edgecut.zoo import dynamic_cnn
        >>> shapes_from_values(dynamic_cnn(), {"x": np.zeros((2, 3, 8, 8), np.float32)})
        {'x': (2, 3, 8, 8)}
    """
    shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    problems = []
    for name, value in (values or {}).items():
        shape = tuple(np.shape(value))
        if name not in names:
            problems.append(f"--input {name!r} names no model input; the inputs are "
                            f"{', '.join(map(repr, names))}")
        elif name in shapes and shapes[name] != shape:
            problems.append(f"input {name!r}: --input-shape gives {'x'.join(map(str, shapes[name]))} "
                            f"but its --input value has shape {'x'.join(map(str, shape)) or 'scalar'}; "
                            "give one of them")
        else:
            shapes[name] = shape
    if problems:
        raise BadShapeError("; ".join(problems))
    return shapes


def sample_inputs(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    values: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Random inputs of the declared dtypes: floats ~ N(0, 1), integers in [0, 4), bools.

    Inputs named in `values` take those values instead (cast to the declared dtype); their
    shapes fix the inputs' symbolic dimensions.
    """
    rng = np.random.default_rng(seed)
    shapes = concrete_input_shapes(model, shapes_from_values(model, values, input_shapes))
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name not in shapes:
            continue
        dtype = np.dtype(_dtype_name(vi.type.tensor_type.elem_type))
        shape = shapes[vi.name]
        # drawn even for a given input, so that the other inputs keep the same values
        if dtype == np.bool_:
            feeds[vi.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            feeds[vi.name] = rng.integers(0, 4, size=shape).astype(dtype)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        if values and vi.name in values:
            given = np.asarray(values[vi.name])
            if given.dtype != dtype and not np.can_cast(given.dtype, dtype, casting="same_kind"):
                raise BadShapeError(f"--input {vi.name!r}: the model takes {dtype}, the value given "
                                    f"is {given.dtype}; save it as {dtype}")
            feeds[vi.name] = given.astype(dtype, copy=False)
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
    for vi in fixed.graph.output:
        # a declared -1 would clash with the inferred size and stop inference altogether
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                d.Clear()
    return fixed


def _concrete(vi: onnx.ValueInfoProto) -> TensorInfo | None:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or t.elem_type == 0 or not t.HasField("shape"):
        return None
    dims = [known_dim(d) for d in t.shape.dim]
    if any(d is None for d in dims):
        return None
    return TensorInfo(name=vi.name, dtype=_dtype_name(t.elem_type), shape=tuple(dims))  # type: ignore[arg-type]


def value_read_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs whose values (not only shapes) the model reads, in input order.

    An input counts when it reaches, through main-graph nodes, an `If` condition, a `Loop`
    trip count or condition, or an operand that onnxruntime reads as numbers to size or index
    something (Reshape's shape, Slice's starts, Gather's indices, Range, TopK's k ...): random
    values there take a wrong branch or index out of range.

    Example:
        >>> from edgecut.zoo import chain_cnn
        >>> value_read_inputs(chain_cnn())
        []
    """
    producer = {o: n for n in model.graph.node for o in n.output if o}
    inits = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    seeds = [node.input[k] for node in model.graph.node
             for k in _VALUE_OPERANDS.get(node.op_type, ()) if k < len(node.input) and node.input[k]]
    seen: set[str] = set()
    while seeds:
        name = seeds.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is not None and node.op_type not in ("Shape", "Size"):  # they read shapes only
            seeds.extend(i for i in node.input if i)
    return [name for name in inputs if name in seen]


_VALUE_OPERANDS: dict[str, tuple[int, ...]] = {
    "If": (0,), "Loop": (0, 1), "Reshape": (1,), "Expand": (1,), "Tile": (1,),
    "ConstantOfShape": (0,), "Range": (0, 1, 2), "Slice": (1, 2, 3, 4), "TopK": (1,),
    "OneHot": (1,), "Pad": (1, 2, 3), "Resize": (1, 2, 3), "Upsample": (1,), "Squeeze": (1,),
    "Unsqueeze": (1,), "Split": (1,), "Gather": (1,), "GatherElements": (1,), "GatherND": (1,),
    "ScatterElements": (1,), "ScatterND": (1,), "Compress": (1,), "NonZero": (0,),
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,),
    "ReduceProd": (1,), "CumSum": (1,), "Trilu": (1,),
}


def _run_on_samples(
    model: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    generated: Sequence[str],
    output_names: Sequence[str] | None = None,
    where: str = "model",
) -> dict[str, np.ndarray]:
    """Run `model` once; when it fails on generated inputs, one line naming those to give."""
    from edgecut.errors import BadInputError
    from edgecut.partitioner.runtime import run_model  # onnxruntime only when needed

    try:
        return run_model(model, feeds, output_names=output_names)
    except BadInputError as exc:
        if not generated:
            raise
        read = [n for n in value_read_inputs(model) if n in generated] or list(generated)
        described = ", ".join(f"{n}=FILE.npy ({_describe(feeds[n])})" for n in read)
        raise BadInputError(
            f"{where}: onnxruntime cannot run the model on generated random inputs (the model "
            f"reads the values of some inputs); give real sample values with --input {described}"
        ) from exc


def _describe(value: np.ndarray) -> str:
    shape = "x".join(map(str, value.shape)) if value.ndim else "scalar"
    return f"{value.dtype} {shape}"


def run_on_samples(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    values: Mapping[str, np.ndarray] | None = None,
    *,
    seed: int = 0,
    output_names: Sequence[str] | None = None,
    where: str = "model",
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the feeds, the outputs) of one run on `values` completed by `sample_inputs`.

    BadInputError when onnxruntime fails on generated inputs names the inputs to give with
    `--input` (`value_read_inputs`), without onnxruntime's own message.
    """
    feeds = sample_inputs(model, input_shapes, seed, values=values)
    generated = [n for n in feeds if n not in (values or {})]
    return feeds, _run_on_samples(model, feeds, generated, output_names, where)


def _measure(
    model: onnx.ModelProto,
    names: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    values: Mapping[str, np.ndarray] | None,
) -> dict[str, TensorInfo]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in names:
        if name not in present:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    _, outputs = run_on_samples(probe, shapes, values, output_names=list(names),
                                where="sizing the tensors that shape inference leaves open")
    return {
        name: TensorInfo(name=name, dtype=str(v.dtype), shape=tuple(v.shape)) for name, v in outputs.items()
    }


def static_tensors(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, TensorInfo]:
    """The tensors ONNX shape inference with data propagation settles at `input_shapes`
    (graph inputs, initializers and every main-graph value it gives a concrete shape)."""
    shapes = concrete_input_shapes(model, input_shapes)
    fixed = _with_input_shapes(model, shapes)
    try:
        inferred = shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    except Exception:  # inference is an optimisation; measuring covers every tensor
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
    return found


def resolve_tensors(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    values: Mapping[str, np.ndarray] | None = None,
) -> dict[str, TensorInfo]:
    """TensorInfo of every graph input, initializer and main-graph node output.

    Shape inference settles what it can (`static_tensors`); the model runs, on `values`
    completed by generated inputs, only when some tensor is left open.
    """
    shapes = concrete_input_shapes(model, shapes_from_values(model, values, input_shapes))
    found = static_tensors(model, shapes)
    wanted = [o for n in model.graph.node for o in n.output if o]
    missing = [name for name in wanted if name not in found]
    if missing:
        found.update(_measure(model, missing, shapes, values))
    return found
