"""One loaded model version and how it is described: tensor specs, the tracked onnxruntime
session, and the check of a model against its config.pbtxt (the repository is in repository.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edgecut.errors import BadModelError
from edgecut.protocol.model_config_pb2 import ModelConfig

from .canary import VersionStatistics, VersionTraffic
from .model_config import CONFIG_FILENAME, ModelSettings
from .providers import ARENA_SHRINK_INTERVAL_S, ArenaShrinker

# onnxruntime's element type strings -> Open Inference Protocol datatypes. BYTES and BF16 are
# listed so a model that uses them reports them honestly; requests for them are refused by
# edgecut.protocol.tensors.dtype_of with "not supported".
_ORT_TO_OIP: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorSpec:
    """A model input or output as the protocol describes it: -1 marks a symbolic dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        """Whether a concrete `shape` fits this spec (same rank, fixed dims equal).

        >>> TensorSpec(name="x", datatype="FP32", shape=(-1, 4)).accepts_shape((7, 4))
        True
        """
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )

    def describe(self) -> str:
        """`FP32 [1,3,32,32]`, the form error messages use."""
        return f"{self.datatype} {format_shape(self.shape)}"


def format_shape(shape: Sequence[int]) -> str:
    """`[1,3,32,32]`: compact, as shapes appear in messages.

    >>> format_shape((-1, 4))
    '[-1,4]'
    """
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


class TrackedSession:
    """An onnxruntime session that counts its runs, their rows and time (per model version).

    These are Triton's executions (`execution_count`, `inference_count`, `batch_stats`): one
    per run, however many requests it carried. Requests are counted by whoever answers them
    (LoadedModel.request_succeeded / request_failed).

    `run` has InferenceSession's signature and raises what it raises; every other attribute
    is the session's own. `inner` is the bare InferenceSession. A run that comes without
    run options shrinks the session's CPU arena when its ArenaShrinker says one is due (never,
    for a session without the arena: onnxruntime refuses to shrink one it does not have).
    """

    __slots__ = ("_batched", "_session", "_shrinker", "_traffic")

    def __init__(self, session: ort.InferenceSession, traffic: VersionTraffic, *,
                 batched: bool, arena_shrink_interval_s: float = ARENA_SHRINK_INTERVAL_S
                 ) -> None:
        self._session = session
        self._traffic = traffic
        self._batched = batched
        has_arena = session.get_session_options().enable_cpu_mem_arena
        self._shrinker = ArenaShrinker(arena_shrink_interval_s if has_arena else math.inf)

    @property
    def inner(self) -> ort.InferenceSession:
        return self._session

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any],
            run_options: ort.RunOptions | None = None) -> list[Any]:
        started = self._traffic.run_started()
        ok = False
        try:
            outputs = self._session.run(output_names, input_feed,
                                        self._shrinker.run_options(run_options))
            ok = True
            return outputs
        finally:
            self._traffic.run_finished(started, ok=ok, batch_size=self._batch_size(input_feed))

    def _batch_size(self, input_feed: Mapping[str, Any]) -> int:
        if not self._batched or not input_feed:
            return 1
        shape = getattr(next(iter(input_feed.values())), "shape", ())
        return int(shape[0]) if shape else 1

    def in_flight_count(self) -> int:
        """Runs going on right now."""
        return self._traffic.in_flight

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedModel:
    """One version of one model, ready to run. `session.run` is thread-safe.

    `settings` are the model's config.pbtxt settings (batching, instances) as loaded with
    this version; `statistics()` is this version's traffic since it was loaded: its session
    counts runs, and whoever answers a request counts it once, with request_succeeded or
    request_failed.
    """

    name: str
    version: int
    path: Path
    session: TrackedSession = field(repr=False, compare=False)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    settings: ModelSettings = field(default_factory=ModelSettings, compare=False)
    traffic: VersionTraffic | None = field(default=None, repr=False, compare=False)
    # onnxruntime requires shared initializers (and so their options) to outlive the session.
    keep_alive: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    # Request layouts this version has accepted (cloud/infer_lane.py, LayoutMemo): they
    # depend on nothing else, so they are checked once per version.
    accepted_layouts: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def input(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((s for s in self.outputs if s.name == name), None)

    def statistics(self) -> VersionStatistics:
        if self.traffic is None:
            return VersionStatistics(name=self.name, version=self.version)
        return self.traffic.snapshot()

    def request_succeeded(self, *, request_s: float, queue_s: float = 0.0,
                          compute_s: float = 0.0, count: int = 1) -> None:
        """Count answered requests: `request_s` in the endpoint, of which `queue_s` waiting
        for its run and `compute_s` in that run (all of it, even when other requests shared it).

        Counted per request, not per run: a batch of four requests is four (`count` counts
        requests with the same times at once).
        """
        if self.traffic is not None:
            self.traffic.request_succeeded(request_s=request_s, queue_s=queue_s,
                                           compute_s=compute_s, count=count)

    def request_failed(self, *, request_s: float) -> None:
        """Count one request that failed after it was routed to this version."""
        if self.traffic is not None:
            self.traffic.request_failed(request_s=request_s)


def datatype_of_ort(type_string: str) -> str:
    """The OIP datatype of an onnxruntime type string.

    >>> datatype_of_ort("tensor(float)")
    'FP32'

    Raises BadModelError for non-tensor types (sequences, maps), which the protocol cannot carry.
    """
    datatype = _ORT_TO_OIP.get(type_string)
    if datatype is None:
        raise BadModelError(
            f"type {type_string} cannot be carried by the Open Inference Protocol; "
            f"expected a tensor of a numeric or bool type"
        )
    return datatype




_OIP_TO_CONFIG = {"BYTES": "TYPE_STRING"}


def check_against_config(path: Path, config: ModelConfig, settings: ModelSettings,
                          inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
    """The inputs/outputs config.pbtxt declares must be the model's (name, type, dims)."""
    from edgecut.protocol.model_config_pb2 import DataType

    problems = []
    batch = [-1] if settings.max_batch_size > 0 else []
    for kind, declared, actual in (("input", config.input, inputs),
                                   ("output", config.output, outputs)):
        by_name = {s.name: s for s in actual}
        for tensor in declared:
            spec = by_name.get(tensor.name)
            if spec is None:
                problems.append(f"{kind} {tensor.name!r} is not in the model (its {kind}s: "
                                f"{', '.join(repr(n) for n in by_name)})")
                continue
            want_type = _OIP_TO_CONFIG.get(spec.datatype, f"TYPE_{spec.datatype}")
            got_type = DataType.Name(tensor.data_type)
            dims = [*batch, *tensor.dims]
            fits = len(dims) == len(spec.shape) and all(
                -1 in (a, b) or a == b for a, b in zip(dims, spec.shape, strict=True))
            if got_type != want_type or not fits:
                problems.append(f"{kind} {tensor.name!r} is declared {got_type} "
                                f"{format_shape(dims)} but the model has {want_type} "
                                f"{format_shape(spec.shape)}")
    if settings.max_batch_size > 0:
        fixed = [s.name for s in inputs if not s.shape or s.shape[0] != -1]
        if fixed:
            problems.append(f"max_batch_size {settings.max_batch_size} needs a variable first "
                            f"(batch) dimension, but inputs {fixed} have none; set "
                            f"max_batch_size: 0")
    if problems:
        raise BadModelError(f"{path.parent.parent / CONFIG_FILENAME} does not match {path}: "
                            + "; ".join(problems))




def tensor_spec(arg: Any) -> TensorSpec:
    """A TensorSpec from an onnxruntime NodeArg: symbolic or unknown dims become -1."""
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(name=arg.name, datatype=datatype_of_ort(arg.type), shape=shape)
