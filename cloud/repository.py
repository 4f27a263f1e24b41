"""A Triton-layout model repository: versions, policies, load/unload, polling, canaries.

    REPO/
      chain_cnn/
        config.pbtxt            optional (edgecut.cloud.model_config): policy, batching, …
        1/model.onnx
        2/model.onnx
      chain_cnn.cut3/
        1/model.onnx

Every folder of REPO is a model; every positive-integer folder inside it is a version
(other folders, such as `notes/`, are ignored). The model's version policy (Triton's; latest 1
by default, edgecut.cloud.versions) picks the versions to load. A version that fails to load
is logged and listed as not ready with the reason, and the others still serve: one broken
tail must not take down the endpoint.

    >>> repo = ModelRepository(Path("models"), control_mode="poll", poll_interval_s=2.0)  # doctest: +SKIP
    >>> model = repo.route("chain_cnn", "")         # the version this request runs on    # doctest: +SKIP
    >>> repo.start_canary("chain_cnn", candidate=3, percent=10)                           # doctest: +SKIP
    >>> repo.promote("chain_cnn")                                                         # doctest: +SKIP
    >>> repo.close()                                                                      # doctest: +SKIP

Lifecycle, as Triton's model control modes:
- `none`: everything is loaded at start and never changes; load/unload/canary are refused.
- `explicit` (the default): everything is loaded at start; then only `load(name)` (load or
  reload from disk, reapplying the policy), `unload(name)` and the canary calls change it.
- `poll`: as explicit, plus a background thread calls `poll()` every `poll_interval_s`: new
  and removed versions and models, and changed model or config files, are picked up. Unlike
  Triton, the API still works in poll mode; the poller leaves alone a model that was unloaded
  by request, and keeps the versions pinned by a canary, a promote or a rollback until the
  next `load(name)`, or until a version folder it had not seen appears (a new release: the
  version policy applies again), or none of the pinned versions is left on disk.

A reload that fails keeps the previous copy serving (Triton's rule), and under `latest N`
a version that does not load is skipped for the next lower one. Nothing a request holds is
ever closed under it: a request keeps its LoadedModel (and so its onnxruntime session) alive
until it finishes, so unloading or replacing a version lets in-flight requests complete;
the index lists such a version as UNLOADING until they have. Loading happens outside the lock
that requests take, so serving goes on while a model loads.

Initializers that several models hold with identical bytes (the tails of one plan) are kept
once in memory (edgecut.cloud.shared_weights).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgecut.errors import BadModelError, ModelNotFoundError, UserInputError
from edgecut.protocol.model_config_pb2 import ModelConfig

from .allocator import release_free_memory
from .canary import CanaryRoute, CanaryStatus, VersionStatistics
from .loaded_model import (
    LoadedModel,
    TensorSpec,
    TrackedSession,
    datatype_of_ort,
)
from .loader import has_plan_siblings, load_version
from .model_config import CONFIG_FILENAME, ModelSettings, load_model_config
from .shared_weights import WeightPool, WeightPoolStatistics
from .versions import choose_version, missing_versions, select_versions

__all__ = [
    "MODEL_FILENAME",
    "ControlMode",
    "LoadedModel",
    "ModelRepository",
    "ModelVersionStatus",
    "RepositoryStatistics",
    "TensorSpec",
    "TrackedSession",
    "choose_version",
    "datatype_of_ort",
]

ControlMode = Literal["none", "explicit", "poll"]
READY, UNAVAILABLE, UNLOADING = "READY", "UNAVAILABLE", "UNLOADING"

logger = logging.getLogger(__name__)

MODEL_FILENAME = "model.onnx"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelVersionStatus:
    """What the repository holds for one model version; `reason` says why it is not ready.

    `state` is Triton's: READY, UNAVAILABLE, or UNLOADING (unloaded or replaced, still
    finishing requests that started on it).
    """

    name: str
    version: int | None  # None: a model-level row (no version folder, bad config, unloaded)
    ready: bool
    reason: str = ""
    state: str = ""

    def __post_init__(self) -> None:
        if not self.state:
            object.__setattr__(self, "state", READY if self.ready else UNAVAILABLE)


@dataclass(frozen=True, slots=True, kw_only=True)
class RepositoryStatistics:
    root: Path
    ready_versions: int
    failed_versions: int
    models: tuple[ModelVersionStatus, ...]
    shared_weights: WeightPoolStatistics | None = None


@dataclass(slots=True)
class _Model:
    """Everything the repository holds about one model folder; guarded by the repository."""

    name: str
    config: ModelConfig = field(default_factory=ModelConfig)
    settings: ModelSettings | None = None
    config_fingerprint: tuple[int, ...] | None = None
    loaded: dict[int, LoadedModel] = field(default_factory=dict)
    fingerprints: dict[int, tuple[int, ...] | None] = field(default_factory=dict)
    # version -> (fingerprint of the file that failed, reason)
    failed: dict[int, tuple[tuple[int, ...] | None, str]] = field(default_factory=dict)
    notes: dict[int, str] = field(default_factory=dict)  # READY but worth saying (reload failed)
    missing: tuple[int, ...] = ()
    reason: str = ""  # a model-level problem: no version folder
    config_error: str = ""  # config.pbtxt did not load (the previous settings stay)
    unloaded: bool = False
    pinned: frozenset[int] | None = None
    pinned_seen: frozenset[int] = frozenset()  # the version folders on disk when pinned
    canary: CanaryRoute | None = None
    # Whether the canary loaded its candidate (rollback then unloads it) or found it served.
    canary_loaded: bool = False


class ModelRepository:
    """The models under `root`, loaded into onnxruntime sessions (see the module docstring).

    `intra_op_threads` is onnxruntime's intra-op thread count per session; 0 sizes it to
    the CPUs this process may use (its affinity and cgroup CPU quota, edgecut.cpu_budget)
    shared by each model's instances; set it lower when many models share the cores. `share_weights` keeps one
    copy of the initializers that the models of one plan hold: a model `NAME` and its tails
    `NAME.cutK`, as `edgecut deploy` names them (edgecut.cloud.shared_weights). A model with no
    such sibling keeps its weights to itself, so onnxruntime may pre-pack them: measured on a
    wide MLP, pre-packing off makes a batch of 4 three times slower (5.6 ms against 1.8 ms).
    """

    def __init__(self, root: Path, *, intra_op_threads: int = 0,
                 control_mode: ControlMode = "explicit", poll_interval_s: float = 5.0,
                 share_weights: bool = True) -> None:
        root = Path(root)
        if not root.is_dir():
            raise BadModelError(
                f"model repository {root} is not a directory; expected "
                f"REPO/<model>/<version>/{MODEL_FILENAME}"
            )
        problems = []
        if intra_op_threads < 0:
            problems.append(f"intra_op_threads must be >= 0, got {intra_op_threads}")
        if control_mode not in ("none", "explicit", "poll"):
            problems.append(f"control_mode must be none, explicit or poll, got {control_mode!r}")
        if not poll_interval_s > 0:
            problems.append(f"poll_interval_s must be > 0, got {poll_interval_s}")
        if problems:
            raise BadModelError("; ".join(problems))
        self._root = root
        self._intra_op_threads = intra_op_threads
        self._control_mode = control_mode
        self._pool = WeightPool() if share_weights else None
        self._lock = threading.Lock()  # guards _models' contents; held only briefly
        self._control = threading.RLock()  # serialises load/unload/poll/canary changes
        self._models: dict[str, _Model] = {}
        self._draining: list[LoadedModel] = []
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        with self._control:
            for name in self._model_names_on_disk():
                self._sync(name)
        release_free_memory()
        if control_mode == "poll":
            self._poller = threading.Thread(target=self._poll_loop, args=(poll_interval_s,),
                                            name="edgecut-repository-poll", daemon=True)
            self._poller.start()

    @property
    def root(self) -> Path:
        return self._root

    @property
    def control_mode(self) -> ControlMode:
        return self._control_mode

    # -- serving -------------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The model version `version` names, or the default one (the highest served, or a
        canary's stable version) when empty; raises ModelNotFoundError (see choose_version)."""
        with self._lock:
            model = self._find(name)
            if version == "" and model.canary is not None:
                return model.loaded[model.canary.stable]
            return model.loaded[self._choose(model, version)]

    def route(self, name: str, version: str = "") -> LoadedModel:
        """The model version a request runs on: as `get`, except that an unversioned request
        to a model with a canary goes to the candidate for the canary's share of traffic."""
        with self._lock:
            model = self._find(name)
            if version == "" and model.canary is not None:
                return model.loaded[model.canary.pick()]
            return model.loaded[self._choose(model, version)]

    def route_many(self, name: str, version: str, count: int) -> list[LoadedModel]:
        """route() for `count` requests that arrived together, in order: with a canary, each
        takes its turn in the canary's share, as it would one at a time."""
        with self._lock:
            model = self._find(name)
            if version == "" and model.canary is not None:
                return [model.loaded[model.canary.pick()] for _ in range(count)]
            return [model.loaded[self._choose(model, version)]] * count

    def ready_versions(self, name: str) -> tuple[int, ...]:
        with self._lock:
            model = self._models.get(name)
            return tuple(sorted(model.loaded)) if model else ()

    def model_config(self, name: str) -> ModelConfig:
        """The model's config.pbtxt as parsed (a copy); ModelNotFoundError if unknown."""
        with self._lock:
            if name not in self._models:
                raise ModelNotFoundError(self._unknown(name))
            config = ModelConfig()
            config.CopyFrom(self._models[name].config)
            return config

    # -- lifecycle -----------------------------------------------------------------------

    def load(self, name: str) -> None:
        """Load or reload `name` from disk, reapplying its config and version policy.

        Unchanged versions stay loaded; pins left by a canary, promote or rollback are
        cleared, and a running canary ends. Raises ModelNotFoundError when REPO/<name> does
        not exist, BadModelError naming every version that failed (the versions that did
        load, or the previous copies, keep serving).
        """
        self._check_control("load")
        if not name or Path(name).name != name or "\\" in name or name.startswith("."):
            # A path would load a folder elsewhere, or one model under several names.
            raise UserInputError(f"model name {name!r} must be a folder name in the "
                                 f"repository (no '/', '..' or leading '.')")
        with self._control:
            if not (self._root / name).is_dir():
                raise ModelNotFoundError(
                    f"no model folder {self._root / name}; expected "
                    f"{self._root}/{name}/<version>/{MODEL_FILENAME}"
                )
            problems = self._sync(name, reset=True)
        release_free_memory()
        if problems:
            raise BadModelError(f"model {name!r}: " + "; ".join(problems))

    def unload(self, name: str) -> None:
        """Stop serving every version of `name`; requests already running on it finish.

        The model stays in the index as UNAVAILABLE (unloaded) until `load(name)`.
        """
        self._check_control("unload")
        with self._control, self._lock:
            model = self._models.get(name)
            if model is None:
                raise ModelNotFoundError(self._unknown(name))
            self._retire(model.loaded.values())
            model.loaded, model.fingerprints, model.notes = {}, {}, {}
            model.unloaded, model.canary, model.pinned = True, None, None
        logger.info("unloaded model %r", name)

    def poll(self) -> None:
        """Pick up what changed on disk since the last look: new or removed models and
        versions, changed model files and configs. Failures are logged and keep the previous
        copies serving. Called by the poller thread in `poll` mode; callable any time."""
        with self._control:
            on_disk = set(self._model_names_on_disk())
            for name in sorted(on_disk):
                self._sync(name)
            with self._lock:
                for name in sorted(set(self._models) - on_disk):
                    logger.info("model folder %r is gone; unloading it", name)
                    self._retire(self._models.pop(name).loaded.values())
        release_free_memory()

    def close(self) -> None:
        """Stop the poller thread (if any). Loaded models stay usable."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30.0)

    # -- canary --------------------------------------------------------------------------

    def start_canary(self, name: str, *, candidate: int, percent: int) -> CanaryStatus:
        """Send `percent` % of `name`'s unversioned traffic to version `candidate`.

        The stable side is the version unversioned requests go to now (or the running
        canary's stable version: calling again changes the share or the candidate). The
        candidate is loaded from disk if needed, whatever the version policy; a failure
        raises BadModelError and changes nothing. Requests never fail because of the switch.
        """
        self._check_control("canary")
        if candidate < 1:
            raise UserInputError(f"canary version must be a positive integer, got {candidate}")
        with self._control:
            with self._lock:
                model = self._find(name)
                stable = (model.canary.stable if model.canary is not None
                          else self._choose(model, ""))
                route = CanaryRoute(stable=stable, candidate=candidate, percent=percent)
                loaded = model.loaded.get(candidate)
                previous = model.canary
                # Served before the canary (by the policy, or the running canary): it stays.
                loaded_by_canary = loaded is None or (
                    previous is not None and previous.candidate == candidate
                    and model.canary_loaded)
                config, settings = model.config, model.settings or ModelSettings()
            if loaded is None:
                folders = version_folders(self._root / name)
                if candidate not in folders:
                    raise ModelNotFoundError(
                        f"model {name!r} has no version {candidate} on disk (version folders: "
                        f"{', '.join(map(str, sorted(folders))) or 'none'})")
                path = folders[candidate] / settings.default_model_filename
                loaded = self._load(name, candidate, path, config, settings)
            with self._lock:
                previous = model.canary
                dropped: set[int] = set()
                if (previous is not None and previous.candidate != candidate
                        and model.canary_loaded):
                    dropped = {previous.candidate}
                    self._retire([model.loaded.pop(previous.candidate)])
                model.loaded[candidate] = loaded
                model.fingerprints.setdefault(candidate, _fingerprint(loaded.path))
                model.failed.pop(candidate, None)
                base = set(model.pinned or model.loaded) - dropped
                self._pin(model, base | {stable, candidate})
                model.canary, model.canary_loaded = route, loaded_by_canary
        logger.info("model %r: canary version %d gets %d%% of traffic (stable %d)",
                    name, candidate, percent, stable)
        return self.canary_status(name)

    def promote(self, name: str) -> None:
        """Make the canary's candidate the only version served; the others drain and go."""
        self._check_control("promote")
        with self._control, self._lock:
            model = self._find(name)
            route = self._require_canary(model, "promote")
            self._retire(m for v, m in model.loaded.items() if v != route.candidate)
            model.loaded = {route.candidate: model.loaded[route.candidate]}
            self._pin(model, {route.candidate})
            model.canary = None
        logger.info("model %r: promoted version %d", name, route.candidate)

    def rollback(self, name: str) -> None:
        """End the canary: every request goes back to the stable version; the candidate goes."""
        self._check_control("rollback")
        with self._control, self._lock:
            model = self._find(name)
            route = self._require_canary(model, "roll back")
            if model.canary_loaded:  # else the policy served it before: it stays
                self._retire([model.loaded.pop(route.candidate)])
            self._pin(model, set(model.loaded))
            model.canary = None
        logger.info("model %r: rolled back to version %d", name, route.stable)

    def canary_status(self, name: str) -> CanaryStatus | None:
        """The model's running canary and each side's traffic, None when there is none."""
        with self._lock:
            model = self._find(name)
            route = model.canary
            if route is None:
                return None
            stable, candidate = model.loaded[route.stable], model.loaded[route.candidate]
        return CanaryStatus(name=name, stable=route.stable, candidate=route.candidate,
                            percent=route.percent, stable_traffic=stable.statistics(),
                            candidate_traffic=candidate.statistics())

    # -- listing -------------------------------------------------------------------------

    def models(self) -> tuple[ModelVersionStatus, ...]:
        """Every model version known, ready or not, sorted by name and version."""
        rows: list[ModelVersionStatus] = []
        with self._lock:
            for model in self._models.values():
                rows += self._rows(model)
            self._draining = [m for m in self._draining if m.session.in_flight_count() > 0]
            loaded = {(n, v) for n, m in self._models.items() for v in m.loaded}
            rows += [
                ModelVersionStatus(name=m.name, version=m.version, ready=False, state=UNLOADING,
                                   reason=f"finishing {m.session.in_flight_count()} requests")
                for m in self._draining if (m.name, m.version) not in loaded
            ]
        return tuple(sorted(rows, key=lambda r: (r.name, r.version or 0, r.state)))

    def version_statistics(self, name: str = "", version: str = "") -> tuple[VersionStatistics, ...]:
        """Traffic of the loaded versions (of `name`, of `version`; empty: all)."""
        with self._lock:
            if name and name not in self._models:
                raise ModelNotFoundError(self._unknown(name))
            chosen = [self._models[name]] if name else list(self._models.values())
            if name and version:
                models = [chosen[0].loaded[self._choose(chosen[0], version)]]
            else:
                models = [m for model in chosen for m in model.loaded.values()]
        return tuple(sorted((m.statistics() for m in models), key=lambda s: (s.name, s.version)))

    def statistics(self) -> RepositoryStatistics:
        rows = self.models()
        return RepositoryStatistics(
            root=self._root,
            ready_versions=sum(r.ready for r in rows),
            failed_versions=sum(r.state == UNAVAILABLE for r in rows),
            models=rows,
            shared_weights=self._pool.statistics() if self._pool else None,
        )

    # -- internals -----------------------------------------------------------------------

    def _find(self, name: str) -> _Model:
        """The model entry with at least one version to serve; ModelNotFoundError saying why
        not otherwise. Call with the lock held."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFoundError(self._unknown(name))
        if not model.loaded:
            if model.unloaded:
                raise ModelNotFoundError(f"model {name!r} is unloaded; load it to serve it again")
            if (model.config_error or model.reason) and not model.failed:
                raise ModelNotFoundError(
                    f"model {name!r} is not ready: {model.config_error or model.reason}")
        return model

    def _choose(self, model: _Model, version: str) -> int:
        failed = {v: r for v, (_, r) in model.failed.items()}
        return choose_version(model.name, version, list(model.loaded), failed)

    def _unknown(self, name: str) -> str:
        known = ", ".join(sorted(self._models))
        return f"unknown model {name!r}; the repository has: {known or 'no models'}"

    def _check_control(self, action: str) -> None:
        if self._control_mode == "none":
            raise UserInputError(
                f"cannot {action} models: model control is off (--model-control-mode none); "
                f"start the endpoint with --model-control-mode explicit or poll"
            )

    def _pin(self, model: _Model, versions: set[int]) -> None:
        """Serve `versions` of `model` whatever its policy says (see poll). Holds the lock."""
        model.pinned = frozenset(versions)
        model.pinned_seen = frozenset(version_folders(self._root / model.name))

    def _require_canary(self, model: _Model, action: str) -> CanaryRoute:
        if model.canary is None:
            raise UserInputError(f"cannot {action} model {model.name!r}: it has no canary; "
                                 f"start one with a candidate version first")
        return model.canary

    def _retire(self, models: Any) -> None:
        """Versions leaving service: listed as UNLOADING while requests still run on them.
        Call with the lock held."""
        self._draining += [m for m in models if m.session.in_flight_count() > 0]

    def _rows(self, model: _Model) -> list[ModelVersionStatus]:
        name = model.name
        rows = []
        for v in sorted(model.loaded):
            note = model.notes.get(v, "") or (
                f"config not reloaded: {model.config_error}" if model.config_error else "")
            if model.canary is not None and v == model.canary.candidate:
                note = f"canary: {model.canary.percent}% of unversioned requests" + (
                    f"; {note}" if note else "")
            rows.append(ModelVersionStatus(name=name, version=v, ready=True, reason=note))
        rows += [ModelVersionStatus(name=name, version=v, ready=False, reason=r)
                 for v, (_, r) in sorted(model.failed.items()) if v not in model.loaded]
        rows += [ModelVersionStatus(name=name, version=v, ready=False,
                                    reason="named by version_policy but not on disk")
                 for v in model.missing]
        if model.unloaded:
            rows.append(ModelVersionStatus(name=name, version=None, ready=False,
                                           reason="unloaded by request; load it to serve it"))
        elif (model.config_error or model.reason) and not model.loaded:
            rows.append(ModelVersionStatus(name=name, version=None, ready=False,
                                           reason=model.config_error or model.reason))
        return rows

    def _model_names_on_disk(self) -> list[str]:
        return sorted(p.name for p in self._root.iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    def _sync(self, name: str, *, reset: bool = False) -> list[str]:
        """Bring model `name` in line with its folder; returns the problems met (also logged
        and shown in the index). Call with the control lock held, not the serving lock."""
        model_dir = self._root / name
        with self._lock:
            model = self._models.setdefault(name, _Model(name=name))
            if reset:
                model.unloaded, model.pinned, model.canary = False, None, None
                model.failed = {}
            if model.unloaded:
                return []
        config_fingerprint = _fingerprint(model_dir / CONFIG_FILENAME)
        config_changed = (reset or model.settings is None
                          or config_fingerprint != model.config_fingerprint)
        if config_changed:
            try:
                config, settings = load_model_config(model_dir)
            except BadModelError as exc:
                logger.error("model %r: %s%s", name, exc, "; the previous configuration keeps "
                             "serving" if model.loaded else "")
                with self._lock:
                    model.config_fingerprint, model.config_error = config_fingerprint, str(exc)
                return [str(exc)]
        elif model.config_error:
            return []  # the same broken config: nothing changes until it is fixed
        else:
            config, settings = model.config, model.settings
        assert settings is not None  # for type checkers: parsed now or on an earlier sync

        folders = version_folders(model_dir)
        on_disk = sorted(folders)
        paths = {v: folders[v] / settings.default_model_filename for v in on_disk}
        fingerprints = {v: _fingerprint(p) for v, p in paths.items()}
        if model.pinned is not None and model.canary is None:
            released = set(on_disk) - model.pinned_seen
            if released or not model.pinned & set(on_disk):
                why = (f"version {max(released)} appeared" if released
                       else "no pinned version is left on disk")
                logger.info("model %r: %s; its version policy (%s) applies again", name, why,
                            settings.version_policy.describe())
                with self._lock:
                    model.pinned = None
        fixed = set(model.pinned or ()) | set(model.canary.versions if model.canary else ())
        old = dict(model.loaded)
        loaded: dict[int, LoadedModel] = {}
        failed: dict[int, tuple[tuple[int, ...] | None, str]] = {}
        notes: dict[int, str] = {}
        problems: list[str] = []

        def known_failure(v: int) -> bool:
            # A failure is not retried until its file (or the config) changes.
            return (not config_changed and v in model.failed
                    and model.failed[v][0] == fingerprints.get(v))

        target: Sequence[int] = ()
        while on_disk:
            excluded = {v for v in on_disk if v not in old and (known_failure(v) or v in failed)}
            target = (sorted(fixed & set(on_disk)) if fixed
                      else select_versions(settings.version_policy, on_disk, excluded))
            pending = [v for v in target if v not in loaded and v not in excluded]
            if not pending:
                break
            for v in pending:
                if v in old and not config_changed:
                    if model.fingerprints.get(v) == fingerprints[v]:
                        loaded[v] = old[v]
                        continue
                    if known_failure(v):
                        loaded[v], failed[v] = old[v], model.failed[v]
                        notes[v] = model.notes.get(v, "")
                        continue
                if known_failure(v):
                    failed[v] = model.failed[v]
                    continue
                try:
                    loaded[v] = self._load(name, v, paths[v], config, settings)
                except BadModelError as exc:
                    failed[v] = (fingerprints[v], str(exc))
                    if v in old:
                        loaded[v] = old[v]  # a failed reload keeps the previous copy serving
                        notes[v] = f"reload failed, the previous copy keeps serving: {exc}"
                        logger.error("model %r version %d not reloaded (the previous copy "
                                     "keeps serving): %s", name, v, exc)
                        problems.append(f"version {v} not reloaded: {exc}")
                    else:
                        logger.error("model %r version %d not loaded: %s", name, v, exc)
                        problems.append(f"version {v} failed to load: {exc}")
                else:
                    logger.info("loaded model %r version %d from %s", name, v, paths[v])
        for v in on_disk:
            if v not in failed and known_failure(v):
                failed[v] = model.failed[v]
        reason = "" if on_disk else (f"{model_dir} holds no version folder (expected "
                                     f"{name}/1/{settings.default_model_filename})")
        if reason:
            logger.warning("model %r not loaded: %s", name, reason)
            problems.append(reason)
        serve = {v: m for v, m in loaded.items() if v in set(target)}
        with self._lock:
            self._retire(m for v, m in old.items() if serve.get(v) is not m)
            model.fingerprints = {
                v: model.fingerprints.get(v) if m is old.get(v) else fingerprints[v]
                for v, m in serve.items()
            }
            model.loaded, model.failed, model.notes = serve, failed, notes
            model.missing = () if fixed else missing_versions(settings.version_policy, on_disk)
            model.config, model.settings = config, settings
            model.config_fingerprint, model.config_error = config_fingerprint, ""
            model.reason = reason
            if model.canary is not None and not set(model.canary.versions) <= set(serve):
                logger.error("model %r: a canary version left the disk; the canary ended", name)
                model.canary = None
        return problems

    def _load(self, name: str, version: int, path: Path, config: ModelConfig,
              settings: ModelSettings) -> LoadedModel:
        # `config` is the one just read from disk: the model's own is replaced after loading.
        return load_version(name, version, path, settings=settings, config=config,
                            intra_op_threads=self._intra_op_threads,
                            pool=self._pool if has_plan_siblings(self._root, name) else None)

    def _poll_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.poll()
            except Exception:  # the poller must outlive a bad day on disk
                logger.exception("polling the model repository %s failed", self._root)


def version_folders(model_dir: Path) -> dict[int, Path]:
    """The version folders of a model, by version: folders named by a positive number, read
    as Triton reads them (`002` is version 2; `2` wins over it); others are not versions."""
    folders: dict[int, Path] = {}
    if not model_dir.is_dir():
        return folders
    for path in sorted(model_dir.iterdir(), key=lambda p: (len(p.name), p.name), reverse=True):
        if path.is_dir() and path.name.isdigit() and int(path.name) > 0:
            folders[int(path.name)] = path  # shortest name last: the canonical one wins
    return folders


def _fingerprint(path: Path) -> tuple[int, ...] | None:
    """What tells a changed file from an unchanged one without reading it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
