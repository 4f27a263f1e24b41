"""Model management over the protocol: what the repository RPCs do, and a client for them.

Server side (edgecut.cloud.server's handlers call these):

    repository_index(repo, ready_only)        -> RepositoryIndexResponse
    apply_load(repo, name, parameters)        load / reload, or canary control (below)
    apply_unload(repo, name, parameters)
    control_action(parameters)                what a load asks for, as a verb for messages
    model_config(repo, name, version)         -> ModelConfigResponse (config.pbtxt, completed)
    model_statistics(repo, name, version)     -> ModelStatisticsResponse (per version)

Canary control rides on RepositoryModelLoad's parameters, so stock clients can drive it
(tritonclient has no `parameters=` on load_model, but any gRPC client of the proto does):

    edgecut_canary_version  string or int64   start (or change) a canary of this version
    edgecut_canary_percent  int64 or string   0..100, its share of unversioned requests
                                              (default 10)
    edgecut_promote         bool              the candidate becomes the only version served
    edgecut_rollback        bool              back to the stable version; the candidate goes

With none of them a load is a plain (re)load from disk. Any other parameter is refused
(INVALID_ARGUMENT) rather than ignored: Triton's `config` and `file:` overrides are not served.
Per-version traffic, to compare the two sides of a canary, is in ModelStatistics.

Client side (the `edgecut models` commands): ModelControl(endpoint, tls_dir, device).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc

from edgecut.errors import CloudUnavailableError, DeadlineExceededError, RemoteError, UserInputError
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from edgecut.protocol.model_config_pb2 import DataType, ModelConfig, ModelInput, ModelOutput
from edgecut.protocol.tls import channel_credentials, device_names

from .loaded_model import LoadedModel, TensorSpec
from .model_config import BACKEND, PLATFORM
from .repository import ModelRepository

__all__ = [
    "CANARY_PERCENT",
    "CANARY_VERSION",
    "DEFAULT_CANARY_PERCENT",
    "PROMOTE",
    "ROLLBACK",
    "LoadAction",
    "ModelControl",
    "apply_load",
    "apply_unload",
    "complete_config",
    "control_action",
    "model_config",
    "model_statistics",
    "parse_load_parameters",
    "repository_index",
]

CANARY_VERSION = "edgecut_canary_version"
CANARY_PERCENT = "edgecut_canary_percent"
PROMOTE = "edgecut_promote"
ROLLBACK = "edgecut_rollback"
DEFAULT_CANARY_PERCENT = 10
_KNOWN = (CANARY_VERSION, CANARY_PERCENT, PROMOTE, ROLLBACK)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadAction:
    """What a RepositoryModelLoad asks for."""

    kind: Literal["load", "canary", "promote", "rollback"] = "load"
    version: int = 0
    percent: int = DEFAULT_CANARY_PERCENT


def parse_load_parameters(parameters: Mapping[str, pb.ModelRepositoryParameter]) -> LoadAction:
    """The action a load's parameters ask for; UserInputError naming every problem.

    >>> parse_load_parameters({PROMOTE: pb.ModelRepositoryParameter(bool_param=True)}).kind
    'promote'
    """
    problems = []
    overrides = sorted(k for k in parameters if k == "config" or k.startswith("file:"))
    if overrides:
        problems.append(f"Triton's config and file overrides ({', '.join(overrides)}) are not "
                        f"supported; edit the model's config.pbtxt or files in the repository, "
                        f"then load it")
    unknown = sorted(k for k in parameters if k not in _KNOWN and k not in overrides)
    if unknown:
        problems.append(f"parameter(s) {', '.join(map(repr, unknown))} not supported; edgecut "
                        f"takes {', '.join(_KNOWN)}")
    values = {k: _value(parameters[k]) for k in _KNOWN if k in parameters}
    flags = [k for k in (PROMOTE, ROLLBACK) if values.get(k) is True]
    for k in (PROMOTE, ROLLBACK):
        if k in values and not isinstance(values[k], bool):
            problems.append(f"parameter {k!r} must be a bool, got {values[k]!r}")
    canary = CANARY_VERSION in values
    if len(flags) + canary > 1:
        problems.append(f"give only one of {CANARY_VERSION}, {PROMOTE}, {ROLLBACK}")
    if CANARY_PERCENT in values and not canary:
        problems.append(f"{CANARY_PERCENT} needs {CANARY_VERSION}")
    version = _int(values.get(CANARY_VERSION, 0), CANARY_VERSION, problems)
    percent = _int(values.get(CANARY_PERCENT, DEFAULT_CANARY_PERCENT), CANARY_PERCENT, problems)
    if canary and version < 1:
        problems.append(f"{CANARY_VERSION} must be a positive integer, got {version}")
    if not 0 <= percent <= 100:
        problems.append(f"{CANARY_PERCENT} must be in 0..100, got {percent}")
    if problems:
        raise UserInputError("; ".join(problems))
    if canary:
        return LoadAction(kind="canary", version=version, percent=percent)
    return LoadAction(kind=flags[0].removeprefix("edgecut_")) if flags else LoadAction()  # type: ignore[arg-type]


def apply_load(repository: ModelRepository, name: str,
               parameters: Mapping[str, pb.ModelRepositoryParameter]) -> LoadAction:
    """Do what a RepositoryModelLoad asks for; returns the action done."""
    action = parse_load_parameters(parameters)
    if action.kind == "canary":
        repository.start_canary(name, candidate=action.version, percent=action.percent)
    elif action.kind == "promote":
        repository.promote(name)
    elif action.kind == "rollback":
        repository.rollback(name)
    else:
        repository.load(name)
    return action


_VERBS = {"load": "load", "canary": "start a canary of", "promote": "promote",
          "rollback": "roll back"}


def control_action(parameters: Mapping[str, pb.ModelRepositoryParameter]) -> str:
    """What a RepositoryModelLoad asks for, as the verb a PERMISSION_DENIED message gives.

    Malformed parameters read as a plain "load": rights are checked first, and only a caller
    who may control the repository learns from apply_load what is wrong with them.

    >>> control_action({ROLLBACK: pb.ModelRepositoryParameter(bool_param=True)})
    'roll back'
    """
    try:
        kind = parse_load_parameters(parameters).kind
    except UserInputError:
        kind = "load"
    return _VERBS[kind]


def apply_unload(repository: ModelRepository, name: str,
                 parameters: Mapping[str, pb.ModelRepositoryParameter]) -> None:
    """Unload every version of `name`; `unload_dependents` (Triton's) is accepted and moot."""
    unknown = sorted(k for k in parameters if k != "unload_dependents")
    if unknown:
        raise UserInputError(f"unload parameters {unknown} are not supported")
    repository.unload(name)


def repository_index(repository: ModelRepository, *, ready_only: bool = False
                     ) -> pb.RepositoryIndexResponse:
    response = pb.RepositoryIndexResponse()
    for row in repository.models():
        if ready_only and not row.ready:
            continue
        response.models.add(name=row.name, version="" if row.version is None else str(row.version),
                            state=row.state, reason=row.reason)
    return response


def model_config(repository: ModelRepository, name: str, version: str = ""
                 ) -> pb.ModelConfigResponse:
    """The model's config.pbtxt, completed from the model as Triton does for ONNX."""
    model = repository.get(name, version)
    config = complete_config(repository.model_config(name), model)
    return pb.ModelConfigResponse(config=config)


def complete_config(config: ModelConfig, model: LoadedModel) -> ModelConfig:
    """Fill what config.pbtxt left out from the model itself: name, platform, backend, and
    the inputs and outputs (without the batch dimension when max_batch_size > 0)."""
    completed = ModelConfig()
    completed.CopyFrom(config)
    completed.name = model.name
    completed.platform = completed.platform or PLATFORM
    completed.backend = completed.backend or BACKEND
    skip = 1 if completed.max_batch_size > 0 else 0
    if not completed.input:
        completed.input.extend(ModelInput(name=s.name, data_type=_data_type(s),
                                          dims=list(s.shape[skip:])) for s in model.inputs)
    if not completed.output:
        completed.output.extend(ModelOutput(name=s.name, data_type=_data_type(s),
                                            dims=list(s.shape[skip:])) for s in model.outputs)
    if not completed.HasField("version_policy"):
        completed.version_policy.latest.num_versions = 1
    return completed


def model_statistics(repository: ModelRepository, name: str = "", version: str = ""
                     ) -> pb.ModelStatisticsResponse:
    """Triton's per-version statistics from each loaded version's own counters.

    Requests and model executions are counted apart, as Triton's statistics extension counts
    them (its docs/protocol/extension_statistics.md). Four 2-row requests batched into one
    run add, per request (inference_stats):

        success          4: answered requests, and their time in the endpoint
        fail             0: requests routed to the version that failed, and their time
        queue            4: answered requests' wait for their run
        compute_infer    4: answered requests' run time (each is charged the whole run)

    and per execution:

        execution_count  1: successful model runs
        inference_count  8: rows of those runs
        batch_stats      {batch_size 8: compute_infer.count 1}: runs by batch size, and
                         their time

    compute_input and compute_output stay empty: joining a batch's inputs and splitting its
    outputs is timed as part of the request's compute_infer, not apart.
    """
    response = pb.ModelStatisticsResponse()
    for stats in repository.version_statistics(name, version):
        entry = response.model_stats.add(
            name=stats.name, version=str(stats.version), last_inference=stats.last_inference_ms,
            inference_count=stats.inferences, execution_count=stats.executions,
        )
        requests = entry.inference_stats
        requests.success.count, requests.success.ns = stats.successes, stats.success_ns
        requests.fail.count, requests.fail.ns = stats.failures, stats.failure_ns
        requests.queue.count, requests.queue.ns = stats.successes, stats.queue_ns
        requests.compute_infer.count, requests.compute_infer.ns = stats.successes, stats.compute_ns
        for size, (runs, ns) in sorted(stats.batches.items()):
            batch = entry.batch_stats.add(batch_size=size)
            batch.compute_infer.count, batch.compute_infer.ns = runs, ns
    return response


class ModelControl:
    """A management client for a running endpoint (what `edgecut models` uses).

    >>> with ModelControl("127.0.0.1:8001", tls_dir=Path("tls")) as control:   # doctest: +SKIP
    ...     control.canary("chain_cnn", version=3, percent=10)

    Under mutual TLS it presents `device`'s certificate from `tls_dir` (or the folder's only
    one); an endpoint with an auth file takes load, unload and canary control only from an
    operator's (edgecut.cloud.auth).

    Errors: CloudUnavailableError (cannot connect), DeadlineExceededError, RemoteError (the
    endpoint refused; its code and message, PERMISSION_DENIED for a non-operator's control).
    """

    def __init__(self, endpoint: str, *, tls_dir: Path | None = None, device: str | None = None,
                 timeout_s: float = 60.0) -> None:
        self._endpoint = endpoint
        self._timeout_s = timeout_s
        self._hint = _connect_hint(tls_dir, device)
        if tls_dir is None:
            self._channel = grpc.insecure_channel(endpoint)
        else:
            self._channel = grpc.secure_channel(
                endpoint, channel_credentials(Path(tls_dir), device=device))
        self._stub = GRPCInferenceServiceStub(self._channel)

    def index(self, *, ready_only: bool = False) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        request = pb.RepositoryIndexRequest(ready=ready_only)
        return list(self._call("RepositoryIndex", request).models)

    def load(self, name: str) -> None:
        self._call("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=name))

    def unload(self, name: str) -> None:
        self._call("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=name))

    def canary(self, name: str, *, version: int, percent: int = DEFAULT_CANARY_PERCENT) -> None:
        request = pb.RepositoryModelLoadRequest(model_name=name)
        request.parameters[CANARY_VERSION].string_param = str(version)
        request.parameters[CANARY_PERCENT].int64_param = percent
        self._call("RepositoryModelLoad", request)

    def promote(self, name: str) -> None:
        request = pb.RepositoryModelLoadRequest(model_name=name)
        request.parameters[PROMOTE].bool_param = True
        self._call("RepositoryModelLoad", request)

    def rollback(self, name: str) -> None:
        request = pb.RepositoryModelLoadRequest(model_name=name)
        request.parameters[ROLLBACK].bool_param = True
        self._call("RepositoryModelLoad", request)

    def statistics(self, name: str = "") -> list[pb.ModelStatistics]:
        return list(self._call("ModelStatistics", pb.ModelStatisticsRequest(name=name)).model_stats)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ModelControl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, rpc: str, request: object) -> pb.RepositoryIndexResponse:
        try:
            return getattr(self._stub, rpc)(request, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code == grpc.StatusCode.UNAVAILABLE:
                # Connection refused: nothing listens there, whatever the TLS set-up.
                hint = "" if "refused" in (details or "").lower() else self._hint
                raise CloudUnavailableError(
                    f"cannot reach the endpoint at {self._endpoint}: {details}{hint}") from exc
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceededError(
                    f"{rpc} to {self._endpoint} took over {self._timeout_s:g} s") from exc
            raise RemoteError(details or f"{rpc} failed", code=code.name) from exc


def _connect_hint(tls_dir: Path | None, device: str | None) -> str:
    """What an unreachable endpoint may be down to, said where the caller's set-up suggests
    it: a handshake refused for want of a certificate reads as a closed socket."""
    if tls_dir is None:
        return " (if the endpoint serves TLS, give --tls DIR)"
    names = device_names(Path(tls_dir)) if device is None else []
    if len(names) > 1:
        return (f" (no client certificate was sent: {tls_dir} holds several; if the endpoint "
                f"requires one, choose it with --device: {', '.join(names)})")
    return ""


def _value(parameter: pb.ModelRepositoryParameter) -> object:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def _int(value: object, key: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        problems.append(f"parameter {key!r} must be an integer, got {value!r}")
        return 0
    try:
        return int(value)
    except ValueError:
        problems.append(f"parameter {key!r} must be an integer, got {value!r}")
        return 0


def _data_type(spec: TensorSpec) -> int:
    return DataType.Value("TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}")
