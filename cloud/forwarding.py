"""A served slice that forwards: a helper runs its part of a chain and sends the rest on.

`edgecut chain deploy` writes `REPO/<model>/forward.json` beside a chain stage's versions;
when the endpoint loads such a model it wraps the model's session so that one run is:

    run the slice ──sends──▶ next hop's ModelInfer (same protocol, same mutual TLS, codecs)
                 ◀─────────── its outputs (its own returns and everything after it)
    answer = this slice's returns + the next hop's outputs

so the answer comes back along the chain, and the model is described (ModelMetadata, the
outputs a request may ask for) by what it answers, not by what the slice computes. Everything
else (batching, instances, statistics, deduplication of retried ids) is the endpoint's as for
any model: the wrapping is at the session, which every path runs through.

The next hop's call carries on the incoming request's `id` and deadline, which the session
reads from the scheduler's context of the run (edgecut.cloud.scheduler.current_run): a device's
retried id is deduplicated, and named in the request logs, at every hop, and every hop answers
within the device's deadline. The call's timeout is the shorter of `timeout_s` and the time
the caller has left (gRPC's deadline of the incoming call; an HTTP call has none, so
`timeout_s` alone); a deadline that passed while the slice ran fails the call with
DeadlineExceededError (DEADLINE_EXCEEDED) without calling the next hop. A batch of several
requests run together is sent on as one request with no id (an id names one request of one
caller) and the earliest deadline among them.

The next hop is called with the protocol's stubs and codecs directly (edgecut.cloud never
imports the device runtime): tensors in `raw_input_contents`, encoded with `codec` when the
next hop announced it in its ServerMetadata extensions, raw otherwise. A next hop that fails
makes this hop's answer fail: UNAVAILABLE, DEADLINE_EXCEEDED and the rest come back to the
caller as CloudUnavailableError / DeadlineExceededError, which the device's fallback policy
handles (skip the helpers, or finish locally).

    >>> spec = load_forward_spec(Path("repo/fpn.stage1"))             # doctest: +SKIP
    >>> spec.next_model, spec.next_endpoints                          # doctest: +SKIP
    ('fpn.stage2', ('10.0.0.9:8001',))
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from edgecut.errors import (
    BadModelError,
    CloudUnavailableError,
    DeadlineExceededError,
    ProtocolError,
)
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol import grpc_service_pb2_grpc as pb_grpc
from edgecut.protocol.codecs import (
    CODEC_PARAMETER,
    CODECS,
    decode_tensor,
    encode_tensor,
    set_parameter,
)
from edgecut.protocol.tls import channel_credentials

from .loaded_model import LoadedModel, TensorSpec
from .scheduler import current_run

__all__ = ["FORWARD_FILE", "ForwardSpec", "ForwardingSession", "NextHop", "attach_forwarding",
           "load_forward_spec", "write_forward_spec"]

FORWARD_FILE = "forward.json"
FORWARD_FORMAT = "edgecut-forward"
_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_NUMPY_TO_OIP = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
                 "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32",
                 "int64": "INT64", "float16": "FP16", "float32": "FP32", "float64": "FP64"}


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardSpec:
    """Where a chain stage sends its result, and what it answers (forward.json)."""

    next_endpoints: tuple[str, ...]
    next_model: str
    sends: tuple[str, ...]  # slice outputs the next hop receives, in its input order
    returns: tuple[str, ...]  # graph outputs this slice computes and answers itself
    outputs: tuple[TensorSpec, ...]  # what this model answers: returns, then the next hop's
    tls_dir: Path | None = None
    device: str | None = None  # the certificate this hop presents to the next one
    codec: str = "raw"
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        if not self.next_endpoints or not all(isinstance(e, str) and ":" in e
                                              for e in self.next_endpoints):
            problems.append(f"next endpoints must be 'host:port' strings, got "
                            f"{list(self.next_endpoints)}")
        if not self.next_model:
            problems.append("next model must be a non-empty name")
        if self.codec not in CODECS:
            problems.append(f"codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if not self.timeout_s > 0:
            problems.append(f"timeout_s must be > 0, got {self.timeout_s}")
        names = {s.name for s in self.outputs}
        missing = [n for n in self.returns if n not in names]
        if missing:
            problems.append(f"returns {missing} are not among the outputs {sorted(names)}")
        if problems:
            raise BadModelError(f"{FORWARD_FILE}: " + "; ".join(problems))

    @property
    def downstream(self) -> tuple[str, ...]:
        """The outputs the next hop answers (every output this slice does not compute)."""
        own = set(self.returns)
        return tuple(s.name for s in self.outputs if s.name not in own)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORWARD_FORMAT, "version": 1,
            "next": {"endpoints": list(self.next_endpoints), "model": self.next_model,
                     "tls_dir": None if self.tls_dir is None else str(self.tls_dir),
                     "device": self.device},
            "sends": list(self.sends), "returns": list(self.returns),
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                        for s in self.outputs],
            "codec": self.codec, "timeout_s": self.timeout_s,
        }


def write_forward_spec(model_dir: Path, spec: ForwardSpec) -> Path:
    """Write `model_dir/forward.json` atomically (a polling endpoint never reads half)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / FORWARD_FILE
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".forward.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(spec.to_json(), indent=2) + "\n")
    os.replace(tmp, target)
    return target


def load_forward_spec(model_dir: Path) -> ForwardSpec | None:
    """The model folder's forward.json, or None when it has none (an ordinary model)."""
    path = Path(model_dir) / FORWARD_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORWARD_FORMAT or doc.get("version") != 1:
            raise ValueError(f"format must be {FORWARD_FORMAT!r} version 1")
        nxt = doc["next"]
        return ForwardSpec(
            next_endpoints=tuple(nxt["endpoints"]), next_model=str(nxt["model"]),
            tls_dir=None if nxt.get("tls_dir") is None else Path(nxt["tls_dir"]),
            device=nxt.get("device"), sends=tuple(doc["sends"]), returns=tuple(doc["returns"]),
            outputs=tuple(TensorSpec(name=o["name"], datatype=o["datatype"],
                                     shape=tuple(int(d) for d in o["shape"]))
                          for o in doc["outputs"]),
            codec=doc.get("codec", "raw"), timeout_s=float(doc.get("timeout_s", 30.0)))
    except BadModelError as exc:
        raise BadModelError(f"{path}: {exc}") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadModelError(f"{path}: not a forward file written by `edgecut chain deploy` "
                            f"({type(exc).__name__}: {exc}); deploy the stage again") from exc


def oip_spec(name: str, dtype: str, shape: Sequence[int | str | None]) -> TensorSpec:
    """A TensorSpec from a plan's numpy dtype and shape (symbolic dims become -1)."""
    return TensorSpec(name=name, datatype=_NUMPY_TO_OIP[dtype],
                      shape=tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape))


class NextHop:
    """A channel to the next hop's endpoint(s); `infer` is thread-safe."""

    def __init__(self, spec: ForwardSpec) -> None:
        self.spec = spec
        endpoints = spec.next_endpoints
        if len(endpoints) == 1:
            target = endpoints[0]
        else:
            target = "ipv4:" + ",".join(e.replace("localhost", "127.0.0.1") for e in endpoints)
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if spec.tls_dir is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            if len(endpoints) > 1:
                options.append(("grpc.ssl_target_name_override", "localhost"))
            self._channel = grpc.secure_channel(
                target, channel_credentials(spec.tls_dir, device=spec.device), options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._codec: str | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._channel.close()

    def _negotiated_codec(self, timeout_s: float) -> str:
        if self.spec.codec == "raw":
            return "raw"
        with self._lock:
            if self._codec is None:
                try:
                    meta = self._stub.ServerMetadata(pb.ServerMetadataRequest(),
                                                     timeout=timeout_s)
                    known = set(meta.extensions)
                except grpc.RpcError:
                    return "raw"  # asked again on the next call
                wanted = f"{CODEC_PARAMETER}_{self.spec.codec}"
                self._codec = self.spec.codec if wanted in known else "raw"
            return self._codec

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], *,
              request_id: str = "", deadline: float | None = None) -> dict[str, np.ndarray]:
        """The next hop's `outputs` for `inputs`; typed edgecut errors on failure.

        `request_id` goes on as the request's id; `deadline` (a time.monotonic() reading, the
        caller's) bounds the call's timeout, `spec.timeout_s` otherwise: DeadlineExceededError
        at once, the next hop not called, when it has passed already.
        """
        where = f"next hop {self.spec.next_model!r} on {','.join(self.spec.next_endpoints)}"
        timeout_s, bound = self.spec.timeout_s, f"forward.json's timeout_s {self.spec.timeout_s:g} s"
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceededError(
                    f"{where} not called: the caller's deadline had passed {-left:.3g} s "
                    f"before this hop's slice was done; give the call a longer deadline")
            if left < timeout_s:
                timeout_s, bound = left, f"the caller's deadline, {left:.3g} s left"
        codec = self._negotiated_codec(timeout_s)
        request = pb.ModelInferRequest(model_name=self.spec.next_model, id=request_id)
        for name, array in inputs.items():
            use = codec if codec not in ("fp16", "int8") or array.dtype == np.float32 else "zstd"
            enc = encode_tensor(np.asarray(array), use)
            tensor = request.inputs.add(name=name, datatype=enc.datatype, shape=enc.shape)
            for key, value in enc.parameters.items():
                set_parameter(tensor.parameters[key], value)
            request.raw_input_contents.append(enc.data)
        for name in outputs:
            request.outputs.add(name=name)
        if deadline is not None:  # the codec's question took some of the time left
            timeout_s = min(timeout_s, max(0.0, deadline - time.monotonic()))
        try:
            response = self._stub.ModelInfer(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceededError(f"{where}: no answer within {timeout_s:.3g} s "
                                            f"({bound}; {details})") from exc
            raise CloudUnavailableError(f"{where} failed: {code.name}: {details}; the chain "
                                        f"cannot finish through this hop") from exc
        raw = response.raw_output_contents
        if len(raw) != len(response.outputs):
            raise ProtocolError(f"{where}: {len(response.outputs)} outputs but {len(raw)} "
                                f"raw_output_contents")
        decoded = {t.name: decode_tensor(raw[i], datatype=t.datatype, shape=t.shape,
                                         parameters=t.parameters,
                                         max_nbytes=4 * _MAX_MESSAGE_BYTES)
                   for i, t in enumerate(response.outputs)}
        missing = [n for n in outputs if n not in decoded]
        if missing:
            raise ProtocolError(f"{where} did not return {missing}")
        return decoded


class ForwardingSession:
    """A model's session that runs the slice, then the rest of the chain (module docstring).

    `run` has InferenceSession's signature; other attributes are the wrapped session's. The
    next hop's call takes its id and deadline from the scheduler's run (current_run).
    """

    __slots__ = ("_inner", "_next", "_spec")

    def __init__(self, inner: Any, spec: ForwardSpec, next_hop: NextHop | None = None) -> None:
        self._inner = inner
        self._spec = spec
        self._next = next_hop or NextHop(spec)

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any],
            run_options: Any = None) -> list[Any]:
        names = list(output_names) if output_names else [s.name for s in self._spec.outputs]
        slice_names = [o.name for o in self._inner.get_outputs()]
        values = dict(zip(slice_names, self._inner.run(None, input_feed, run_options),
                          strict=True))
        answer = {n: values[n] for n in self._spec.returns}
        downstream = [n for n in self._spec.downstream if n in names]
        if downstream:
            sent = {n: values[n] for n in self._spec.sends}
            run = current_run()
            if run is None:  # not run by the scheduler (a warm-up): nothing to carry on
                answer.update(self._next.infer(sent, downstream))
            else:
                answer.update(self._next.infer(sent, downstream, request_id=run.request_id,
                                               deadline=run.deadline))
        return [answer[n] for n in names]

    def sibling(self, inner: Any) -> ForwardingSession:
        """Another instance's session of the same slice, forwarding over the same next hop
        (a scheduler with a session per instance makes these)."""
        return ForwardingSession(inner, self._spec, self._next)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def attach_forwarding(model: LoadedModel) -> LoadedModel:
    """`model` with a ForwardingSession when its folder holds forward.json, else as is."""
    spec = load_forward_spec(model.path.parent.parent)
    if spec is None:
        return model
    slice_outputs = {o.name for o in model.session.get_outputs()}
    missing = [n for n in (*spec.sends, *spec.returns) if n not in slice_outputs]
    if missing:
        raise BadModelError(f"{model.path.parent.parent / FORWARD_FILE}: the slice "
                            f"{model.path} does not compute {missing}; deploy the stage again")
    session = ForwardingSession(model.session, spec)
    return dataclasses.replace(model, session=session, outputs=spec.outputs,  # type: ignore[arg-type]
                               keep_alive=(*model.keep_alive, session))
