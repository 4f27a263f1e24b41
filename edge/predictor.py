"""Predictor: a plan run like a local model, its head here and its tail in the cloud.

It mirrors onnxruntime.InferenceSession, so code written against one runs against the other:

    >>> predictor = Predictor(Config(plan=Path("plans/chain_cnn"), endpoint="cloud:8001",
    ...                              tls_dir=Path("tls")))  # doctest: +SKIP
    >>> [i.name for i in predictor.get_inputs()]  # doctest: +SKIP
    ['x']
    >>> (y,) = predictor.run(["y"], {"x": x})  # doctest: +SKIP
    >>> predictor.last_run().rpc_ms  # doctest: +SKIP
    1.9

A run checks its inputs against the plan before any work, then, by mode: runs the full model
here ("local"); sends the inputs to the full model on the endpoint ("offload"); or runs the
cut's head here, sends the crossing tensors to the tail and merges the outputs both sides
computed ("split"). It returns the outputs or raises a typed error by its deadline.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from edgecut.errors import (
    BadInputError,
    BadModelError,
    BadPlanError,
    DeadlineExceededError,
    EdgecutError,
)
from edgecut.protocol.codecs import choose_codec

from .client import CloudClient
from .config import Config
from .plan import Plan, PlanCut, TensorSpec, load_plan
from .stats import PredictorStatistics, RunStatistics

__all__ = ["Predictor", "TensorInfo"]

_ORT_TYPES = {
    "bool": "tensor(bool)", "uint8": "tensor(uint8)", "uint16": "tensor(uint16)",
    "uint32": "tensor(uint32)", "uint64": "tensor(uint64)", "int8": "tensor(int8)",
    "int16": "tensor(int16)", "int32": "tensor(int32)", "int64": "tensor(int64)",
    "float16": "tensor(float16)", "float32": "tensor(float)", "float64": "tensor(double)",
}
_ORT_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, *(
    getattr(_ort_state, name) for name in (
        "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
        "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    if hasattr(_ort_state, name)))
_FP16_MAX = 65504.0
# Transfers smaller than this say more about round trip than bandwidth.
_MIN_PROBE_BYTES = 64 * 1024
_UPLINK_SMOOTHING = 0.3


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


class Predictor:
    """Runs a plan in the mode of `config`; see the module docstring."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.plan: Plan = load_plan(config.plan)
        cut_id = self.plan.chosen if config.cut is None else config.cut
        self.cut: PlanCut = self.plan.cut(cut_id)
        self._inputs = tuple(_info(s) for s in self.plan.model.inputs)
        self._outputs = tuple(_info(s) for s in self.plan.model.outputs)
        self._specs = {s.name: s for s in self.plan.model.inputs}
        self._output_dtypes = {s.name: s.dtype for s in self.plan.model.outputs}
        self._session: ort.InferenceSession | None = None
        if config.mode == "local":
            self._session = self._load(self.plan.model.file)
        elif config.mode == "split" and self.cut.head is not None:
            self._session = self._load(self.cut.head)
        self._session_inputs = (
            [i.name for i in self._session.get_inputs()] if self._session else [])
        self._session_outputs = (
            [o.name for o in self._session.get_outputs()] if self._session else [])
        self._client = None if config.mode == "local" or config.endpoint is None else CloudClient(
            config.endpoint, tls_dir=config.tls_dir, device=config.device,
            timeout_s=config.timeout_s)
        self._lock = threading.Lock()
        self._closed = False
        self._stats = PredictorStatistics(mode=config.mode,
                                          cut=self.cut.id if config.mode == "split" else None)

    # -- the onnxruntime.InferenceSession surface -----------------------------------------

    def get_inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    def run(self, output_names: Sequence[str] | None,
            input_feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs named in `output_names` (all, when None or empty), in that order.

        Raises BadInputError (before any work) for unknown, missing or mistyped inputs and
        unknown output names; CloudUnavailableError, DeadlineExceededError,
        ModelNotFoundError or RemoteError when the cloud part fails. Outputs that came from
        the cloud uncompressed are read-only views over the response (no copy): copy one
        before writing into it. Safe to call from several threads.
        """
        if self._closed:
            raise EdgecutError(f"Predictor for {self.plan.directory} is closed; create a new one")
        start = time.perf_counter()
        names = self._check(output_names, input_feed)
        try:
            if self.config.mode == "local":
                outputs = dict(zip(names, self._run_session(names, input_feed), strict=True))
                # The whole model ran on the device: that is the device ("head") time.
                stats = RunStatistics(mode="local", cut=None,
                                      head_ms=(time.perf_counter() - start) * 1e3)
            elif self.config.mode == "offload":
                outputs, stats = self._run_cloud(self.plan.model.name, dict(input_feed), names,
                                                 start, RunStatistics(mode="offload", cut=None))
            else:
                outputs, stats = self._run_split(names, input_feed, start)
        except EdgecutError:
            with self._lock:
                self._stats = dataclasses.replace(self._stats, failures=self._stats.failures + 1)
            raise
        stats = dataclasses.replace(stats, total_ms=(time.perf_counter() - start) * 1e3)
        with self._lock:
            self._stats = self._stats.add(stats)
        return [outputs[n] for n in names]

    # -- statistics and lifecycle ---------------------------------------------------------

    def last_run(self) -> RunStatistics | None:
        """Timings and bytes of the latest successful run (None before the first)."""
        return self._stats.last

    def statistics(self) -> PredictorStatistics:
        """Totals since this Predictor was created."""
        return self._stats

    def close(self) -> None:
        self._closed = True
        if self._client is not None:
            self._client.close()
        self._session = None

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the modes ------------------------------------------------------------------------

    def _run_split(self, names: list[str], feed: Mapping[str, np.ndarray], start: float
                   ) -> tuple[dict[str, np.ndarray], RunStatistics]:
        cut = self.cut
        stats = RunStatistics(mode="split", cut=cut.id)
        device: dict[str, np.ndarray] = {}
        if self._session is not None:
            head_start = time.perf_counter()
            values = self._run_session(None, {n: feed[n] for n in self._session_inputs})
            device = dict(zip(self._session_outputs, values, strict=True))
            stats = dataclasses.replace(stats, head_ms=(time.perf_counter() - head_start) * 1e3)
        cloud_names = list(dict.fromkeys(n for n in names if n in cut.cloud_outputs))
        cloud: dict[str, np.ndarray] = {}
        if cloud_names:
            missing = [n for n in cut.crossing if n not in device and n not in feed]
            if missing or cut.endpoint_model is None:
                raise BadPlanError(f"{self.plan.directory}: cut {cut.id} sends {missing} to the "
                                   f"cloud, but neither its head nor the inputs produce them")
            crossing = {n: device[n] if n in device else feed[n] for n in cut.crossing}
            cloud, stats = self._run_cloud(cut.endpoint_model, crossing, cloud_names, start,
                                           stats)
        outputs = {}
        for n in names:
            for source in (cloud, device, feed):
                if n in source:
                    outputs[n] = source[n]
                    break
            else:
                raise BadPlanError(f"{self.plan.directory}: cut {cut.id} computes output {n!r} "
                                   f"neither on the device nor in the cloud")
        return outputs, stats

    def _run_cloud(self, model: str, inputs: dict[str, np.ndarray], names: list[str],
                   start: float, stats: RunStatistics
                   ) -> tuple[dict[str, np.ndarray], RunStatistics]:
        if self._client is None:
            raise EdgecutError(f"mode {self.config.mode!r} needs an endpoint")
        remaining = self.config.timeout_s - (time.perf_counter() - start)
        if remaining <= 0:
            raise DeadlineExceededError(
                f"run of {self.plan.model.name!r} (cut {self.cut.id}): the head used up the "
                f"{self.config.timeout_s} s deadline before the cloud call; raise timeout_s "
                f"or use a cut with less work on the device")
        codecs = {n: self._codec_for(a) for n, a in inputs.items()}
        wanted = list(dict.fromkeys(names))
        result = self._client.infer(model, inputs, outputs=wanted, codec=codecs,
                                    response_codec=self._response_codecs(wanted),
                                    timeout_s=remaining)
        self._observe_uplink(result.wire_bytes_up, result.rpc_ms)
        return result.outputs, dataclasses.replace(
            stats, encode_ms=result.encode_ms, rpc_ms=result.rpc_ms,
            decode_ms=result.decode_ms, raw_bytes_up=result.raw_bytes_up,
            wire_bytes_up=result.wire_bytes_up, raw_bytes_down=result.raw_bytes_down,
            wire_bytes_down=result.wire_bytes_down, cloud_calls=1, codecs=result.codecs)

    def _codec_for(self, array: np.ndarray) -> str:
        codec = self.config.codec
        if codec == "auto":
            return choose_codec(array, uplink_mbps=self._stats.uplink_mbps)
        if codec == "fp16" and not _fits_fp16(array):
            # fp16 only where it is defined; anything else still goes compressed, losslessly.
            return "shuffle_zstd" if array.dtype.kind == "f" else "zstd"
        return codec

    def _response_codecs(self, names: list[str]) -> dict[str, str] | None:
        """The codec asked for each output: the configured one, fp16 only on float32."""
        codec = self.config.codec
        if codec in ("auto", "raw"):
            # The device cannot size outputs before they exist; raw is never the wrong call.
            return None
        if codec != "fp16":
            return dict.fromkeys(names, codec)
        return {n: "fp16" if self._output_dtypes[n] == "float32" else "zstd" for n in names}

    def _observe_uplink(self, wire_bytes: int, rpc_ms: float) -> None:
        if wire_bytes < _MIN_PROBE_BYTES or rpc_ms <= 0:
            return
        sample = wire_bytes * 8 / 1e6 / (rpc_ms / 1e3)
        with self._lock:
            old = self._stats.uplink_mbps
            new = sample if old is None else old + _UPLINK_SMOOTHING * (sample - old)
            self._stats = dataclasses.replace(self._stats, uplink_mbps=new)

    # -- onnxruntime and input checks -----------------------------------------------------

    def _load(self, relative: str) -> ort.InferenceSession:
        path = self.plan.path(relative)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.config.intra_op_threads
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except _ORT_ERRORS as exc:
            raise BadModelError(f"{path}: onnxruntime cannot load it: {exc}") from exc

    def _run_session(self, names: list[str] | None, feed: Mapping[str, np.ndarray]
                     ) -> list[np.ndarray]:
        if self._session is None:
            raise EdgecutError(f"Predictor for {self.plan.directory} is closed")
        try:
            return list(self._session.run(names, dict(feed)))
        except _ORT_ERRORS as exc:
            if isinstance(exc, getattr(_ort_state, "InvalidArgument", ())):
                raise BadInputError(f"onnxruntime rejected the inputs: {exc}") from exc
            raise BadModelError(f"onnxruntime failed to run the device part of "
                                f"{self.plan.model.name!r}: {exc}") from exc

    def _check(self, output_names: Sequence[str] | None,
               input_feed: Mapping[str, np.ndarray]) -> list[str]:
        """Every problem with the call's arguments, in one BadInputError, before any work."""
        if not isinstance(input_feed, Mapping):
            raise BadInputError(f"input_feed must be a dict of input name to numpy array, got "
                                f"{type(input_feed).__name__}")
        if isinstance(output_names, str):
            raise BadInputError(f"output_names must be a list of names, got the string "
                                f"{output_names!r}; write [{output_names!r}]")
        known_outputs = [o.name for o in self._outputs]
        names = list(output_names) if output_names else known_outputs
        problems = []
        unknown_out = [n for n in names if n not in known_outputs]
        if unknown_out:
            problems.append(f"unknown output names {unknown_out}; the model's outputs are "
                            f"{known_outputs}")
        unknown_in = [n for n in input_feed if n not in self._specs]
        if unknown_in:
            problems.append(f"unknown input names {unknown_in}; the model's inputs are "
                            f"{list(self._specs)}")
        missing = [n for n in self._specs if n not in input_feed]
        if missing:
            problems.append(f"missing inputs {missing}")
        for name, spec in self._specs.items():
            if name in input_feed:
                problems += _check_tensor(spec, input_feed[name])
        if problems:
            raise BadInputError(f"{self.plan.model.name}: " + "; ".join(problems))
        return names


def _check_tensor(spec: TensorSpec, value: object) -> list[str]:
    if not isinstance(value, np.ndarray):
        return [f"input {spec.name!r} must be a numpy array, got {type(value).__name__}"]
    problems = []
    if value.dtype != np.dtype(spec.dtype):
        problems.append(f"input {spec.name!r} must be {spec.dtype}, got {value.dtype}; "
                        f"convert it with .astype(np.{spec.dtype})")
    if value.ndim != len(spec.shape) or any(
            isinstance(d, int) and d >= 0 and d != n for d, n in zip(spec.shape, value.shape,
                                                                     strict=False)):
        problems.append(f"input {spec.name!r} must have shape {list(spec.shape)}, "
                        f"got {list(value.shape)}")
    return problems


def _fits_fp16(array: np.ndarray) -> bool:
    if array.dtype != np.float32:
        return False
    if array.size == 0:
        return True
    # NaN compares False here, and goes lossless: fp16 would keep it, but saying so costs a pass.
    return bool(array.max() <= _FP16_MAX and array.min() >= -_FP16_MAX)


def _info(spec: TensorSpec) -> TensorInfo:
    dims = tuple(None if isinstance(d, int) and d < 0 else d for d in spec.shape)
    return TensorInfo(name=spec.name, type=_ORT_TYPES[spec.dtype], dims=dims)
