"""Read a plan folder (docs/plan-format.md) on the device, with `json` alone.

The device must not import onnx, so this module knows the plan only as JSON: it checks every
key it relies on, reports all problems of a plan.json at once, and checks that the model files
a plan names are present in its folder.

    >>> plan = load_plan(Path("plans/chain_cnn"))  # doctest: +SKIP
    >>> plan.model.name, plan.chosen, [c.id for c in plan.cuts]
    ('chain_cnn', 3, [0, 3, 7])
    >>> plan.cut(3).crossing
    ('t1', 't2')
    >>> plan.cut_for_bandwidth(12.5)   # from the plan's envelope, by bisection
    3

Plans written by `edgecut plan --device ... --network ...` also hold `envelope` (the best cut
per uplink range, [0, inf)), each cut's `predicted` costs and `kind`; older plans without them
still load (`envelope` is then empty and `cut_for_bandwidth` answers `chosen`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgecut.errors import BadPlanError, UnknownCutError

__all__ = ["PLAN_FILE", "PLAN_FORMAT", "PLAN_VERSION", "EnvelopeRange", "Plan", "PlanCut",
           "PlanModel", "PlanStage", "TensorSpec", "load_plan"]

PLAN_FILE = "plan.json"
PLAN_FORMAT = "edgecut-plan"
PLAN_VERSION = 1

# numpy dtype names a plan may declare; kept as strings so this module needs no numpy.
DTYPES = frozenset({
    "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "float32", "float64",
})

Dim = int | str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorSpec:
    """A graph input or output: its name, numpy dtype name and shape (symbolic dims as str)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if not self.name:
            raise BadPlanError("a tensor spec needs a non-empty name")
        if self.dtype not in DTYPES:
            raise BadPlanError(f"tensor {self.name!r}: dtype {self.dtype!r} is not one of "
                               f"{', '.join(sorted(DTYPES))}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanModel:
    """The full model: the endpoint name it is served under and its file in the plan folder."""

    name: str
    file: str
    sha256: str
    opset: int | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanCut:
    """One candidate cut. `head`/`tail` are paths relative to the plan folder, or None."""

    id: int
    crossing: tuple[str, ...]
    bytes: int
    down_bytes: int
    device_nodes: int
    cloud_nodes: int
    head: str | None
    tail: str | None
    device_outputs: tuple[str, ...]
    cloud_outputs: tuple[str, ...]
    endpoint_model: str | None
    max_abs_diff: float | None = None
    kind: str = "prefix"  # "downset": a cut beyond the prefixes of the order (the min-cut's)
    predicted: Mapping[str, Any] | None = None  # {"model": {...}, "corrected": {...} or None}

    def __post_init__(self) -> None:
        if self.tail is not None and self.endpoint_model is None:
            raise BadPlanError(f"cut {self.id} has a tail but no endpoint_model to serve it")
        if self.tail is None and self.cloud_outputs:
            raise BadPlanError(f"cut {self.id} has cloud_outputs {list(self.cloud_outputs)} "
                               f"but no tail to compute them")


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopeRange:
    """Cut `cut` is the fastest for uplink bandwidths in [min_mbps, max_mbps) (inf: no end)."""

    cut: int
    min_mbps: float
    max_mbps: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanStage:
    """One hop of a chain plan (`edgecut chain plan`): where it runs, its slice, what it
    receives, sends on to the next stage and returns to the caller (docs/plan-format.md)."""

    index: int
    hop: str
    where: str  # "device", "helper" or "cloud"
    model: str
    receives: tuple[str, ...]
    sends: tuple[str, ...]
    returns: tuple[str, ...]
    endpoint_model: str | None
    nodes: int = 0

    def __post_init__(self) -> None:
        if self.where not in ("device", "helper", "cloud"):
            raise BadPlanError(f"stage {self.index}: where must be 'device', 'helper' or "
                               f"'cloud', got {self.where!r}")
        if self.where != "device" and self.endpoint_model is None:
            raise BadPlanError(f"stage {self.index} runs on a {self.where} but has no "
                               f"endpoint_model to serve it under")


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A loaded plan folder; `directory` is where its model files are."""

    directory: Path
    model: PlanModel
    input_shapes: Mapping[str, tuple[int, ...]]
    cuts: tuple[PlanCut, ...]
    chosen: int
    envelope: tuple[EnvelopeRange, ...] = ()
    # The device runtime's thresholds from the device profile ([device.runtime]), by name.
    runtime: Mapping[str, float] = dataclasses.field(default_factory=dict)
    stages: tuple[PlanStage, ...] = ()  # a chain plan's hops; () for a single-cut plan
    # The onnxruntime threads the device profile was measured with: what the plan's device
    # times are predicted for (planner.device_threads); None where the plan does not say.
    device_threads: int | None = None

    def __post_init__(self) -> None:
        ids = [c.id for c in self.cuts]
        if len(set(ids)) != len(ids):
            raise BadPlanError(f"{self.directory / PLAN_FILE}: cut ids repeat: {ids}")
        if self.chosen not in ids:
            raise BadPlanError(f"{self.directory / PLAN_FILE}: chosen cut {self.chosen} is not "
                               f"among the cut ids {ids}")
        stray = sorted({r.cut for r in self.envelope} - set(ids))
        if stray:
            raise BadPlanError(f"{self.directory / PLAN_FILE}: envelope names cuts {stray} that "
                               f"are not among the cut ids {ids}")
        object.__setattr__(self, "_starts", [r.min_mbps for r in self.envelope])

    _starts: list[float] = dataclasses.field(default_factory=list, init=False, repr=False,
                                             compare=False)

    def cut_for_bandwidth(self, uplink_mbps: float) -> int:
        """The envelope's cut at this uplink bandwidth, by bisection: O(log n).

        At a breakpoint the faster-link cut answers (ranges are [min, max)). A plan without
        an envelope answers `chosen`.
        """
        if not uplink_mbps >= 0:
            raise ValueError(f"uplink bandwidth must be >= 0 Mbps, got {uplink_mbps}")
        if not self.envelope:
            return self.chosen
        i = bisect_right(self._starts, uplink_mbps) - 1
        return self.envelope[max(i, 0)].cut

    @property
    def cut_ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.cuts)

    def cut(self, cut_id: int) -> PlanCut:
        """The cut with this id; UnknownCutError lists the ids the plan has."""
        for c in self.cuts:
            if c.id == cut_id:
                return c
        raise UnknownCutError(f"{self.directory / PLAN_FILE}: no cut with id {cut_id!r}; "
                              f"the plan has cuts {list(self.cut_ids)}")

    def path(self, relative: str) -> Path:
        """A file named in plan.json, as a path on this machine."""
        return self.directory / relative


def load_plan(directory: Path | str) -> Plan:
    """Load and check the plan folder at `directory` (BadPlanError says what is wrong where).

    >>> load_plan("plans/chain_cnn").cut(3).endpoint_model  # doctest: +SKIP
    'chain_cnn.cut3'
    """
    directory = Path(directory)
    file = directory / PLAN_FILE
    if not directory.is_dir():
        raise BadPlanError(f"{directory}: plan folder not found; expected a folder written by "
                           f"`edgecut plan` holding {PLAN_FILE}")
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise BadPlanError(f"{file}: not found; a plan folder must hold {PLAN_FILE} "
                           f"(write one with `edgecut plan`)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BadPlanError(f"{file}: cannot be read: {exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadPlanError(f"{file}: not valid JSON: {exc}") from exc
    plan = _Reader(file).plan(doc, directory)
    missing = [f"{key}: file {rel!r} not found in the plan folder"
               for key, rel in _model_files(plan) if not (directory / rel).is_file()]
    if missing:
        raise BadPlanError("\n".join(f"{file}: {m}" for m in missing))
    return plan


def _model_files(plan: Plan) -> list[tuple[str, str]]:
    files = [("model.file", plan.model.file)]
    for i, c in enumerate(plan.cuts):
        files += [(f"cuts[{i}].{k}", v) for k, v in (("head", c.head), ("tail", c.tail)) if v]
    files += [(f"stages[{i}].model", s.model) for i, s in enumerate(plan.stages)]
    return files


class _Reader:
    """Pulls typed values out of the parsed JSON, recording every problem by its key."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.file}: {key} {message}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise BadPlanError("\n".join(self.problems))

    def get(self, obj: Mapping[str, Any], key: str, where: str, kind: str) -> Any:
        """obj[key] if it has the expected kind, else None (and a problem is recorded)."""
        path = f"{where}.{key}" if where else key
        if key not in obj:
            self.problem(path, f"is missing; expected {kind}")
            return None
        value = obj[key]
        if value is None and kind.endswith(" or null"):
            return None
        if not _is_kind(value, kind.removesuffix(" or null")):
            self.problem(path, f"must be {kind}, got {json.dumps(value)[:80]}")
            return None
        return value

    def plan(self, doc: Any, directory: Path) -> Plan:
        """The Plan in `doc`; raises BadPlanError listing every problem found."""
        if not isinstance(doc, dict):
            self.problem("(top level)", "must be a JSON object")
            self.raise_if_any()
        fmt = doc.get("format")
        if fmt != PLAN_FORMAT:
            self.problem("format", f"must be {PLAN_FORMAT!r}, got {json.dumps(fmt)}")
        version = doc.get("version")
        if version != PLAN_VERSION:
            self.problem("version", f"must be {PLAN_VERSION} (this edgecut reads plan format "
                                    f"{PLAN_VERSION}), got {json.dumps(version)}; re-plan the "
                                    f"model with this edgecut version")
            self.raise_if_any()
        model = self.model(self.get(doc, "model", "", "an object"))
        shapes = self.get(doc, "input_shapes", "", "an object")
        input_shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in (shapes or {}).items():
            if _is_kind(shape, "a list of non-negative integers"):
                input_shapes[name] = tuple(shape)
            else:
                self.problem(f"input_shapes.{name}", "must be a list of non-negative integers, "
                                                     f"got {json.dumps(shape)[:80]}")
        raw_cuts = self.get(doc, "cuts", "", "a non-empty list") or []
        cuts = [self.cut(c, f"cuts[{i}]") for i, c in enumerate(raw_cuts)]
        chosen = self.get(doc, "chosen", "", "an integer")
        envelope = self.envelope(doc.get("envelope"))
        runtime = self.runtime(doc.get("runtime"))
        stages = self.stages(doc.get("stages"))
        planner = doc.get("planner")
        threads = planner.get("device_threads") if isinstance(planner, dict) else None
        if threads is not None and not (isinstance(threads, int) and threads >= 1):
            self.problem("planner.device_threads", f"must be an integer >= 1 or null, got "
                                                   f"{json.dumps(threads)[:80]}")
            threads = None
        self.raise_if_any()
        if model is None or chosen is None or None in cuts:
            raise BadPlanError(f"{self.file}: malformed")  # unreachable: a problem was recorded
        return Plan(directory=directory, model=model, input_shapes=input_shapes,
                    cuts=tuple(c for c in cuts if c is not None), chosen=chosen,
                    envelope=envelope, runtime=runtime, stages=stages,
                    device_threads=threads)

    def stages(self, items: Any) -> tuple[PlanStage, ...]:
        """The optional chain: stages 0.. in order, each one's sends the next one's receives."""
        if items is None:
            return ()
        if not isinstance(items, list) or not items:
            self.problem("stages", "must be a non-empty list of stage objects or absent")
            return ()
        stages: list[PlanStage] = []
        for i, item in enumerate(items):
            key = f"stages[{i}]"
            if not isinstance(item, dict):
                self.problem(key, "must be an object")
                return ()
            before = len(self.problems)
            values = {
                "index": self.get(item, "index", key, "a non-negative integer"),
                "hop": self.get(item, "hop", key, "a non-empty string"),
                "where": self.get(item, "where", key, "a non-empty string"),
                "model": self.get(item, "model", key, "a relative path inside the plan folder"),
                "receives": self.get(item, "receives", key, "a list of strings"),
                "sends": self.get(item, "sends", key, "a list of strings"),
                "returns": self.get(item, "returns", key, "a list of strings"),
                "endpoint_model": self.get(item, "endpoint_model", key,
                                           "a non-empty string or null"),
            }
            nodes = item.get("nodes", 0)
            if len(self.problems) > before:
                return ()
            if values["index"] != i:
                self.problem(f"{key}.index", f"must be {i} (stages are listed in order), got "
                                             f"{values['index']}")
                return ()
            if stages and tuple(values["receives"]) != stages[-1].sends:
                self.problem(f"{key}.receives", f"must be stage {i - 1}'s sends "
                                                f"{list(stages[-1].sends)}, got "
                                                f"{values['receives']}")
                return ()
            for name in ("receives", "sends", "returns"):
                values[name] = tuple(values[name])
            try:
                stages.append(PlanStage(**values, nodes=nodes if _is_kind(
                    nodes, "a non-negative integer") else 0))
            except BadPlanError as exc:
                self.problem(key, f"is inconsistent: {exc}")
                return ()
        return tuple(stages)

    def runtime(self, table: Any) -> dict[str, float]:
        """The optional runtime thresholds: names to numbers (the Predictor knows the names)."""
        if table is None:
            return {}
        if not isinstance(table, dict) or not all(
                isinstance(k, str) and _is_kind(v, "a number") for k, v in table.items()):
            self.problem("runtime", f"must be an object of threshold names to numbers, got "
                                    f"{json.dumps(table)[:80]}")
            return {}
        return {k: float(v) for k, v in table.items()}

    def envelope(self, items: Any) -> tuple[EnvelopeRange, ...]:
        """The optional envelope: contiguous ranges from 0 to null (infinity)."""
        if items is None:
            return ()
        if not isinstance(items, list) or not items:
            self.problem("envelope", "must be a non-empty list of {cut, min_mbps, max_mbps}")
            return ()
        ranges: list[EnvelopeRange] = []
        expected = 0.0
        for i, item in enumerate(items):
            key = f"envelope[{i}]"
            if not isinstance(item, dict):
                self.problem(key, "must be an object with cut, min_mbps and max_mbps")
                return ()
            cut = self.get(item, "cut", key, "a non-negative integer")
            low = self.get(item, "min_mbps", key, "a number")
            high = self.get(item, "max_mbps", key, "a number or null")
            if cut is None or low is None or ("max_mbps" in item and high is None
                                              and item["max_mbps"] is not None):
                return ()
            top = math.inf if high is None else float(high)
            last = i == len(items) - 1
            if float(low) != expected or not top > low or (top == math.inf) != last:
                self.problem(key, f"must continue the ranges from {expected} Mbps, end after it, "
                                  "and only the last may have max_mbps null (infinity), got "
                                  f"{json.dumps(item)}")
                return ()
            ranges.append(EnvelopeRange(cut=cut, min_mbps=float(low), max_mbps=top))
            expected = top
        return tuple(ranges)

    def model(self, obj: Mapping[str, Any] | None) -> PlanModel | None:
        if obj is None:
            return None
        name = self.get(obj, "name", "model", "a non-empty string")
        file = self.get(obj, "file", "model", "a relative path inside the plan folder")
        sha256 = self.get(obj, "sha256", "model", "a string")
        opset = obj.get("opset")
        inputs = self.specs(self.get(obj, "inputs", "model", "a non-empty list"), "model.inputs")
        outputs = self.specs(self.get(obj, "outputs", "model", "a non-empty list"),
                             "model.outputs")
        if None in (name, file, sha256, inputs, outputs):
            return None
        return PlanModel(name=name, file=file, sha256=sha256,
                         opset=opset if isinstance(opset, int) else None,
                         inputs=inputs, outputs=outputs)

    def specs(self, items: list[Any] | None, where: str) -> tuple[TensorSpec, ...] | None:
        if items is None:
            return None
        specs = []
        for i, item in enumerate(items):
            key = f"{where}[{i}]"
            if not isinstance(item, dict):
                self.problem(key, "must be an object with name, dtype and shape")
                continue
            name = self.get(item, "name", key, "a non-empty string")
            dtype = self.get(item, "dtype", key, "a numpy dtype name")
            shape = self.get(item, "shape", key, "a list of dims (integers, names or null)")
            if None not in (name, dtype, shape):
                specs.append(TensorSpec(name=name, dtype=dtype, shape=tuple(shape)))
        return tuple(specs) if len(specs) == len(items) else None

    def cut(self, obj: Any, where: str) -> PlanCut | None:
        if not isinstance(obj, dict):
            self.problem(where, "must be an object")
            return None
        before = len(self.problems)
        values = {
            "id": self.get(obj, "id", where, "a non-negative integer"),
            "crossing": self.get(obj, "crossing", where, "a list of strings"),
            "bytes": self.get(obj, "bytes", where, "a non-negative integer"),
            "down_bytes": self.get(obj, "down_bytes", where, "a non-negative integer"),
            "device_nodes": self.get(obj, "device_nodes", where, "a non-negative integer"),
            "cloud_nodes": self.get(obj, "cloud_nodes", where, "a non-negative integer"),
            "device_outputs": self.get(obj, "device_outputs", where, "a list of strings"),
            "cloud_outputs": self.get(obj, "cloud_outputs", where, "a list of strings"),
        }
        optional = {
            "head": self.get(obj, "head", where,
                             "a relative path inside the plan folder or null"),
            "tail": self.get(obj, "tail", where,
                             "a relative path inside the plan folder or null"),
            "endpoint_model": self.get(obj, "endpoint_model", where,
                                       "a non-empty string or null"),
        }
        diff = obj.get("max_abs_diff")
        kind = obj.get("kind", "prefix")
        if kind not in ("prefix", "downset"):
            self.problem(f"{where}.kind", f"must be 'prefix' or 'downset', got {json.dumps(kind)}")
        predicted = obj.get("predicted")
        if predicted is not None and not isinstance(predicted, dict):
            self.problem(f"{where}.predicted", "must be an object or absent")
        if len(self.problems) > before:
            return None
        for key in ("crossing", "device_outputs", "cloud_outputs"):
            values[key] = tuple(values[key])
        try:
            return PlanCut(**values, **optional,
                           max_abs_diff=float(diff) if _is_kind(diff, "a number") else None,
                           kind=kind, predicted=predicted)
        except BadPlanError as exc:
            self.problem(where, f"is inconsistent: {exc}")
            return None


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "an object":
        return isinstance(value, dict)
    if kind in ("a string", "a non-empty string"):
        return isinstance(value, str) and (kind == "a string" or bool(value))
    if kind in ("an integer", "a non-negative integer"):
        return (isinstance(value, int) and not isinstance(value, bool)
                and (kind == "an integer" or value >= 0))
    if kind == "a number":
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind == "a numpy dtype name":
        return value in DTYPES
    if kind == "a relative path inside the plan folder":
        if not isinstance(value, str) or not value:
            return False
        parts = PurePosixPath(value).parts
        return not PurePosixPath(value).is_absolute() and ".." not in parts and "\\" not in value
    if kind in ("a list", "a non-empty list"):
        return isinstance(value, list) and (kind == "a list" or bool(value))
    if kind == "a list of strings":
        return isinstance(value, list) and all(isinstance(v, str) and v for v in value)
    if kind == "a list of non-negative integers":
        return isinstance(value, list) and all(_is_kind(v, "a non-negative integer")
                                               for v in value)
    if kind == "a list of dims (integers, names or null)":
        return isinstance(value, list) and all(
            v is None or (isinstance(v, str) and v) or _is_kind(v, "an integer") for v in value)
    raise AssertionError(f"unknown kind {kind!r}")
