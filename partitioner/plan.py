"""Plan folders (docs/plan-format.md): the file-in/file-out shell around the pure core.

`load_model` checks a model on the way in; `write_plan` splits it at the requested cuts,
checks every head and tail with the full ONNX checker, verifies head-then-tail against the
full model on a sample input, and only then writes the folder.

Example:
    >>> plan = write_plan("chain_cnn.onnx", "plan/", cut_ids=[3], chosen=3)  # doctest: +SKIP
    >>> plan["cuts"][0]["max_abs_diff"] <= 1e-5  # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgecut.errors import BadModelError, UnknownCutError
from edgecut.partitioner.cuts import Cut, get_cut, list_cuts
from edgecut.partitioner.extract import split_model
from edgecut.partitioner.graph import analyse_graph
from edgecut.partitioner.runtime import (
    compare_outputs,
    run_model,
    run_split_locally,
    tolerance_for,
)
from edgecut.partitioner.shapes import (
    concrete_input_shapes,
    known_dim,
    resolve_tensors,
    run_on_samples,
    shapes_from_values,
)

__all__ = [
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "check_model",
    "load_model",
    "model_name",
    "verify_split",
    "write_plan",
]

PLAN_FORMAT = "edgecut-plan"
PLAN_VERSION = 1


def check_model(model: onnx.ModelProto, where: str) -> None:
    """The full ONNX checker, its error translated to one line of BadModelError."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadModelError(f"{where}: fails the ONNX checker: {first}") from exc


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read and check an ONNX file; BadModelError with one line if it is missing, not ONNX,
    or invalid."""
    p = Path(path)
    if not p.is_file():
        raise BadModelError(f"{p}: no such model file; give the path of an .onnx file")
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors alike
        raise BadModelError(f"{p}: not an ONNX model (cannot parse it as ModelProto)") from exc
    if not model.graph.node and not model.graph.output:
        raise BadModelError(f"{p}: not an ONNX model (it has no graph)")
    check_model(model, str(p))
    return model


def model_name(path: str | Path) -> str:
    """Endpoint name from a file name: its stem with characters outside [A-Za-z0-9_.-]
    replaced by `_`."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem)
    return name or "model"


def verify_split(
    model: onnx.ModelProto,
    head: onnx.ModelProto | None,
    tail: onnx.ModelProto | None,
    feeds: Mapping[str, np.ndarray],
    *,
    full_outputs: Mapping[str, np.ndarray] | None = None,
    where: str = "split",
) -> float:
    """Max |full - (head then tail)| over all outputs; BadModelError if over tolerance."""
    full = full_outputs if full_outputs is not None else run_model(model, feeds)
    split = run_split_locally(head, tail, feeds)
    diffs = compare_outputs(full, split)
    worst = max(diffs.values(), default=0.0)
    if worst > tolerance_for(full):
        bad = {k: v for k, v in diffs.items() if v > tolerance_for(full)}
        raise BadModelError(
            f"{where}: head then tail differs from the full model: max abs diff {bad} "
            f"(allowed {tolerance_for(full):.3g})"
        )
    return worst


def _io(vis: Sequence[onnx.ValueInfoProto], skip: set[str]) -> list[dict[str, Any]]:
    out = []
    for vi in vis:
        if vi.name in skip:
            continue
        t = vi.type.tensor_type
        dims: list[int | str | None] = [
            known_dim(d) if known_dim(d) is not None else (d.dim_param or None) for d in t.shape.dim
        ]
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)) if t.elem_type else None
        out.append({"name": vi.name, "dtype": dtype, "shape": dims})
    return out


def _save_samples(out: Path, values: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Write each sample value as samples/<n>.npy (numbered: input names may hold '/')."""
    folder = out / "samples"
    if folder.exists():
        shutil.rmtree(folder)
    if not values:
        return {}
    folder.mkdir(parents=True)
    files = {}
    for i, (name, value) in enumerate(sorted(values.items())):
        np.save(folder / f"{i}.npy", np.asarray(value), allow_pickle=False)
        files[name] = f"samples/{i}.npy"
    return files


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def write_plan(
    model_path: str | Path,
    out_dir: str | Path,
    *,
    cut_ids: Sequence[int] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    chosen: int | None = None,
    name: str | None = None,
    seed: int = 0,
    extra_cuts: Sequence[Cut] = (),
    cut_fields: Mapping[int, Mapping[str, Any]] | None = None,
    fields: Mapping[str, Any] | None = None,
    input_values: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write a plan folder for `cut_ids` (default: every cut) and return plan.json's dict.

    `chosen` defaults to the first of `cut_ids`; `name` to the sanitised file stem.
    `extra_cuts` are cuts beyond the prefixes of `list_cuts` (down-sets from
    `cut_from_device_set`, ids after the prefix ids); they are written too and may be chosen.
    `cut_fields[id]` adds keys to that cut's entry (`predicted`, ...), `fields` adds top-level
    keys (`envelope`, `profiles`, ...): the planner's, documented in docs/plan-format.md.
    `input_values` are sample inputs (`--input`): every cut is verified on them (generated
    values complete the rest), and they are saved in the folder as `samples/NAME.npy`, listed
    in plan.json's `sample_inputs`, for `edgecut verify` to use.
    """
    model = load_model(model_path)
    graph = analyse_graph(model)
    shapes = concrete_input_shapes(model, shapes_from_values(model, input_values, input_shapes))
    tensors = resolve_tensors(model, shapes, values=input_values)
    cuts = list_cuts(model, shapes, graph=graph, tensors=tensors)
    prefix_ids = {c.id for c in cuts}
    clash = sorted(c.id for c in extra_cuts if c.id in prefix_ids)
    if clash:
        raise UnknownCutError(f"extra cut ids {clash} repeat prefix cut ids 0..{len(cuts) - 1}")
    cuts = [*cuts, *extra_cuts]
    ids = list(cut_ids) if cut_ids is not None else [c.id for c in cuts]
    ids += [c.id for c in extra_cuts if c.id not in ids]
    selected: list[Cut] = [get_cut(cuts, i) for i in ids]
    if len(set(ids)) != len(ids):
        raise UnknownCutError(f"cut ids must be distinct, got {ids}")
    if chosen is None:
        chosen = ids[0] if ids else None
    if chosen is not None and chosen not in ids:
        raise UnknownCutError(f"chosen cut {chosen} is not among the cuts written {ids}")

    feeds, full_outputs = run_on_samples(model, shapes, input_values, seed=seed,
                                         where=f"{model_path}: verifying the cuts")
    parts: list[tuple[Cut, onnx.ModelProto | None, onnx.ModelProto | None, float]] = []
    for cut in selected:
        head, tail = split_model(model, cut, graph=graph)
        for part, role in ((head, "head"), (tail, "tail")):
            if part is not None:
                check_model(part, f"{model_path}: cut {cut.id} {role}")
        diff = verify_split(
            model,
            head,
            tail,
            feeds,
            full_outputs=full_outputs,
            where=f"{model_path}: cut {cut.id}",
        )
        parts.append((cut, head, tail, diff))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full_path = out / "full.onnx"
    shutil.copyfile(model_path, full_path)
    digest = hashlib.sha256(full_path.read_bytes()).hexdigest()
    samples = _save_samples(out, input_values or {})
    endpoint = name if name is not None else model_name(model_path)
    inits = set(graph.initializers)
    entries = []
    for cut, head, tail, diff in parts:
        folder = out / "cuts" / str(cut.id)
        folder.mkdir(parents=True, exist_ok=True)
        for part, role in ((head, "head"), (tail, "tail")):
            target = folder / f"{role}.onnx"
            if part is not None:
                onnx.save(part, str(target))
            elif target.exists():
                target.unlink()
        entries.append(
            {
                **cut.to_json(),
                "head": f"cuts/{cut.id}/head.onnx" if head is not None else None,
                "tail": f"cuts/{cut.id}/tail.onnx" if tail is not None else None,
                "endpoint_model": f"{endpoint}.cut{cut.id}" if tail is not None else None,
                "max_abs_diff": diff,
                "position": cut.position,
                "kind": "prefix" if cut.id in prefix_ids else "downset",
                "crossing_tensors": [
                    {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in cut.crossing_tensors
                ],
                **dict((cut_fields or {}).get(cut.id, {})),
            }
        )
    plan: dict[str, Any] = {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "model": {
            "name": endpoint,
            "file": "full.onnx",
            "sha256": digest,
            "opset": _opset(model),
            "inputs": _io(model.graph.input, inits),
            "outputs": _io(model.graph.output, set()),
        },
        "input_shapes": {k: list(v) for k, v in shapes.items()},
        **({"sample_inputs": samples} if samples else {}),
        "cuts": entries,
        "chosen": chosen,
        **dict(fields or {}),
    }
    (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    return plan
