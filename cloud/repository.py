"""A Triton-layout model repository loaded into onnxruntime sessions.

    REPO/
      chain_cnn/
        config.pbtxt            optional; not read yet
        1/model.onnx
        2/model.onnx
      chain_cnn.cut3/
        1/model.onnx

Every folder of REPO is a model; every positive-integer folder inside it is a version
(other folders, such as `notes/`, are ignored). Each version's `model.onnx` is loaded once,
when the repository is opened. A version that fails to load is logged and listed as not
ready with the reason, and the others still serve: one broken tail must not take down the
endpoint.

    >>> repo = ModelRepository(Path("models"))                      # doctest: +SKIP
    >>> model = repo.get("chain_cnn", "")                           # doctest: +SKIP
    >>> model.version, [s.name for s in model.inputs]               # doctest: +SKIP
    (2, ['x'])

Version choice lives in `choose_version`, a pure function, so that version policies,
load/unload and canary splits can replace it without touching the loading code.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edgecut.errors import BadModelError, ModelNotFoundError

__all__ = [
    "MODEL_FILENAME",
    "LoadedModel",
    "ModelRepository",
    "ModelVersionStatus",
    "RepositoryStatistics",
    "TensorSpec",
    "choose_version",
    "datatype_of_ort",
]

logger = logging.getLogger(__name__)

MODEL_FILENAME = "model.onnx"

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


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedModel:
    """One version of one model, ready to run. `session.run` is thread-safe."""

    name: str
    version: int
    path: Path
    session: ort.InferenceSession = field(repr=False, compare=False)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((s for s in self.outputs if s.name == name), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelVersionStatus:
    """What the repository found for one model version; `reason` says why it is not ready."""

    name: str
    version: int | None  # None: the model folder holds no version folder at all
    ready: bool
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RepositoryStatistics:
    root: Path
    ready_versions: int
    failed_versions: int
    models: tuple[ModelVersionStatus, ...]


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


def choose_version(name: str, requested: str, ready: Sequence[int],
                   failed: Mapping[int, str] | None = None) -> int:
    """The version to serve: `requested` if it is ready, the highest ready one when empty.

    >>> choose_version("m", "", [1, 3])
    3
    >>> choose_version("m", "1", [1, 3])
    1

    A failed newest version is skipped by "latest": the previous one keeps serving (and the
    failure is logged and shown by ModelReady/statistics). Raises ModelNotFoundError naming
    the model, the versions available, and the load failure if that is why.
    """
    failed = failed or {}
    available = ", ".join(str(v) for v in sorted(ready)) or "none"
    if requested == "":
        if ready:
            return max(ready)
        why = "; ".join(f"version {v} failed to load: {r}" for v, r in sorted(failed.items()))
        raise ModelNotFoundError(
            f"model {name!r} has no ready version" + (f" ({why})" if why else "")
        )
    try:
        version = int(requested)
    except ValueError:
        version = 0
    if version <= 0:
        raise ModelNotFoundError(
            f"model {name!r} version {requested!r} is not a version; expected a positive "
            f"integer or empty for the latest (available: {available})"
        )
    if version in ready:
        return version
    if version in failed:
        raise ModelNotFoundError(
            f"model {name!r} version {version} failed to load: {failed[version]} "
            f"(available: {available})"
        )
    raise ModelNotFoundError(
        f"model {name!r} has no version {version}; available versions: {available}"
    )


class ModelRepository:
    """Every model version under `root`, loaded into onnxruntime sessions at construction.

    `intra_op_threads` is onnxruntime's intra-op thread count per session; 0 lets
    onnxruntime choose (one per physical core), which is right for a dedicated server; set
    it lower when many models or worker threads share the cores.
    """

    def __init__(self, root: Path, *, intra_op_threads: int = 0) -> None:
        root = Path(root)
        if not root.is_dir():
            raise BadModelError(
                f"model repository {root} is not a directory; expected "
                f"REPO/<model>/<version>/{MODEL_FILENAME}"
            )
        if intra_op_threads < 0:
            raise BadModelError(f"intra_op_threads must be >= 0, got {intra_op_threads}")
        self._root = root
        self._intra_op_threads = intra_op_threads
        self._lock = threading.Lock()
        self._loaded: dict[str, dict[int, LoadedModel]] = {}
        self._failed: dict[str, dict[int, str]] = {}
        self._empty: dict[str, str] = {}
        self._scan()

    @property
    def root(self) -> Path:
        return self._root

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The model version to run; raises ModelNotFoundError (see choose_version)."""
        with self._lock:
            versions = self._loaded.get(name)
            failed = self._failed.get(name, {})
            if versions is None and not failed:
                if name in self._empty:
                    raise ModelNotFoundError(f"model {name!r} is not ready: {self._empty[name]}")
                known = ", ".join(sorted({*self._loaded, *self._failed, *self._empty}))
                raise ModelNotFoundError(
                    f"unknown model {name!r}; the repository has: {known or 'no models'}"
                )
            versions = versions or {}
            return versions[choose_version(name, version, list(versions), failed)]

    def ready_versions(self, name: str) -> tuple[int, ...]:
        with self._lock:
            return tuple(sorted(self._loaded.get(name, {})))

    def models(self) -> tuple[ModelVersionStatus, ...]:
        """Every model version found, ready or not, sorted by name and version."""
        with self._lock:
            rows = [
                ModelVersionStatus(name=n, version=v, ready=True)
                for n, vs in self._loaded.items() for v in vs
            ]
            rows += [
                ModelVersionStatus(name=n, version=v, ready=False, reason=r)
                for n, vs in self._failed.items() for v, r in vs.items()
            ]
            rows += [
                ModelVersionStatus(name=n, version=None, ready=False, reason=r)
                for n, r in self._empty.items()
            ]
        return tuple(sorted(rows, key=lambda r: (r.name, r.version or 0)))

    def statistics(self) -> RepositoryStatistics:
        rows = self.models()
        return RepositoryStatistics(
            root=self._root,
            ready_versions=sum(r.ready for r in rows),
            failed_versions=sum(not r.ready for r in rows),
            models=rows,
        )

    def _scan(self) -> None:
        for model_dir in sorted(p for p in self._root.iterdir() if p.is_dir()):
            name = model_dir.name
            if name.startswith("."):
                continue
            versions = sorted(
                int(p.name) for p in model_dir.iterdir()
                if p.is_dir() and p.name.isdigit() and int(p.name) > 0
            )
            if not versions:
                reason = f"{model_dir} holds no version folder (expected {name}/1/{MODEL_FILENAME})"
                logger.warning("model %r not loaded: %s", name, reason)
                self._empty[name] = reason
                continue
            for version in versions:
                path = model_dir / str(version) / MODEL_FILENAME
                try:
                    model = self._load(name, version, path)
                except BadModelError as exc:
                    logger.error("model %r version %d not loaded: %s", name, version, exc)
                    self._failed.setdefault(name, {})[version] = str(exc)
                else:
                    self._loaded.setdefault(name, {})[version] = model
                    logger.info("loaded model %r version %d from %s", name, version, path)

    def _load(self, name: str, version: int, path: Path) -> LoadedModel:
        if not path.is_file():
            raise BadModelError(f"{path} not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._intra_op_threads
        try:
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own pybind classes and RuntimeError
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadModelError(f"{path} cannot be loaded by onnxruntime: {first_line}") from exc
        return LoadedModel(
            name=name,
            version=version,
            path=path,
            session=session,
            inputs=tuple(_spec(a) for a in session.get_inputs()),
            outputs=tuple(_spec(a) for a in session.get_outputs()),
        )


def _spec(arg: Any) -> TensorSpec:
    """A TensorSpec from an onnxruntime NodeArg: symbolic or unknown dims become -1."""
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(name=arg.name, datatype=datatype_of_ort(arg.type), shape=shape)
