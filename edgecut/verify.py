"""Check that a plan's head→tail reproduces its full model, locally or through an endpoint."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecut.edge import Config, Predictor
from edgecut.edge.plan import Plan, load_plan
from edgecut.errors import BadPlanError
from edgecut.partitioner import (
    compare_outputs,
    load_model,
    run_split_locally,
    sample_inputs,
    within_tolerance,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CutCheck:
    cut: int
    max_abs_diff: dict[str, float]
    ok: bool


def saved_samples(plan: Plan) -> dict[str, np.ndarray]:
    """The sample values the plan was written with (`edgecut plan --input`), by input name."""
    doc = json.loads((plan.directory / "plan.json").read_text())
    files = doc.get("sample_inputs") or {}
    if not isinstance(files, dict):
        raise BadPlanError(f"{plan.directory}/plan.json: sample_inputs must be an object of "
                           f"input name: file, got {json.dumps(files)[:80]}")
    values = {}
    for name, relative in files.items():
        path = plan.directory / str(relative)
        try:
            values[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BadPlanError(f"{path}: sample input {name!r} of the plan cannot be read as "
                               f".npy ({exc}); write the plan again") from exc
    return values


def random_inputs(plan: Plan, input_shapes: Mapping[str, Sequence[int]] | None = None,
                  *, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the plan's declared dtypes, at `input_shapes` or the plan's own shapes: the
    plan's saved sample values (`edgecut plan --input`) where their shapes fit, random
    values for the rest."""
    shapes = {**plan.input_shapes, **(input_shapes or {})}
    saved = {n: v for n, v in saved_samples(plan).items()
             if tuple(shapes.get(n, v.shape)) == v.shape}
    return sample_inputs(load_model(plan.directory / plan.model.file), shapes, seed=seed,
                         values=saved)


def verify_plan(
    plan_dir: Path,
    inputs: Mapping[str, np.ndarray],
    *,
    endpoint: str | None = None,
    tls_dir: Path | None = None,
    device: str | None = None,
    cut_ids: Sequence[int] | None = None,
    codec: str = "raw",
) -> list[CutCheck]:
    """Run the full model and every (or the given) cut's head→tail on `inputs`; compare outputs.

    Without `endpoint` the tail runs here in onnxruntime; with it, the tail runs on the endpoint
    (deployed with `edgecut deploy`) through the device runtime, exactly as `edgecut run` would.
    """
    plan = load_plan(plan_dir)
    reference = run_split_locally(None, plan.directory / plan.model.file, inputs)
    checks = []
    for cut in [plan.cut(i) for i in cut_ids] if cut_ids else plan.cuts:
        if endpoint is None:
            head = plan.directory / cut.head if cut.head else None
            tail = plan.directory / cut.tail if cut.tail else None
            outputs = run_split_locally(head, tail, inputs)
        else:
            config = Config(plan=plan.directory, mode="split", endpoint=endpoint, tls_dir=tls_dir,
                            device=device, cut=cut.id, codec=codec)
            with Predictor(config) as predictor:
                names = [o.name for o in predictor.get_outputs()]
                outputs = dict(zip(names, predictor.run(names, dict(inputs)), strict=True))
        diffs = compare_outputs(reference, outputs)
        checks.append(CutCheck(cut=cut.id, max_abs_diff=diffs,
                               ok=within_tolerance(reference, outputs)))
    return checks
