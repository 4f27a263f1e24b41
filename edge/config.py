"""How a Predictor runs: which plan, where, over what channel, how long, and how it adapts.

    >>> Config(plan=Path("plans/chain_cnn"), mode="local")  # doctest: +ELLIPSIS
    Config(plan=PosixPath('plans/chain_cnn'), mode='local', ...)
    >>> Config(plan=Path("plans/chain_cnn"), mode="split")
    Traceback (most recent call last):
    ...
    edgecut.errors.BadProfileError: Config: endpoint is required in mode 'split' ...
    >>> Config(plan=Path("p"), mode="adaptive", endpoint=["10.0.0.1:8001", "10.0.0.2:8001"]
    ...        ).fallback
    'local'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgecut.errors import BadProfileError
from edgecut.protocol.codecs import CODECS

__all__ = ["CASCADE_MEASURES", "CODEC_CHOICES", "FALLBACKS", "MODES", "Config", "Fallback", "Mode"]

Mode = Literal["split", "offload", "local", "adaptive", "cascade"]
MODES: tuple[str, ...] = ("split", "offload", "local", "adaptive", "cascade")
# How sure the cascade's small model is (edge/cascade.py).
CASCADE_MEASURES: tuple[str, ...] = ("max_prob", "margin", "entropy")
Fallback = Literal["local", "none"]
FALLBACKS: tuple[str, ...] = ("local", "none")
# The adaptive thresholds' built-in values, where neither Config nor the plan gives one.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "hysteresis": 0.25, "min_free_memory_mib": 256.0, "max_cpu_percent": 100.0,
    "min_battery_percent": 15.0, "max_cloud_queue_ms": 50.0,
}
# "auto" picks a lossless codec per tensor from the measured uplink (codecs.choose_codec).
# "plan": the lossy codec the plan measured within its accuracy budget (edge/lossy.py).
CODEC_CHOICES: tuple[str, ...] = ("auto", *CODECS, "plan")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A Predictor's settings.

    Where a run goes:
    - `plan`: the plan folder (`edgecut plan`).
    - `mode`: "split" runs the cut's head here and its tail on `endpoint`; "offload" sends
      the inputs to the full model on `endpoint`; "local" runs the full model here;
      "adaptive" chooses among those per request: the plan's envelope cut for the measured
      uplink, full offload under device pressure, local when the cloud is down or loaded;
      "cascade" runs a small model here and sends the request along the cut (as "split")
      only when that answer is not confident enough (edge/cascade.py).
    - `endpoint`: "host:port" of the cloud endpoint, or a list of them (gRPC round_robin over
      the replicas). Needed by every mode but "local"; it need not be up when the Predictor
      is created.
    - `tls_dir`, `device`: the folder from `edgecut certs` and the device certificate to
      present; without `tls_dir` the channel is plaintext (loopback and tests only).
    - `cut`: the cut id to run in split mode; None takes the plan's chosen cut. In adaptive
      mode it is the first choice, before anything is measured.
    - `codec`: how crossing tensors are encoded: "auto" (lossless, by bandwidth) or a codec;
      "fp16" applies to float32 tensors and the outputs sent back, lossless for the rest;
      "int8" to float32 crossing tensors (answers come back exact); "plan" sends the lossy
      codec the plan measured within its accuracy budget at the cut (`edgecut plan --data
      EVAL --accuracy-budget B`), "auto" where it names none.
    - `timeout_s`: the deadline of one `run`, head, transfer, tail and any fallback together.
    - `intra_op_threads`: onnxruntime threads for the device part; 0: one per CPU this
      process may use (its CPU affinity and cgroup quota), where onnxruntime alone would
      take one per core of the machine.
    - `quantized`: "int8" or "fp16" runs the plan's quantised device models (`edgecut plan
      --quantize`, e.g. cuts/3/head.int8.onnx) instead of the fp32 ones; None: fp32.

    Cascade mode (each None: from `cascade.json` beside the plan, `edgecut cascade calibrate`):
    - `small_model`: the device's model (.onnx), with the plan model's inputs and outputs.
    - `cascade_threshold`: confidence in [0, 1] below which a request escalates;
      `cascade_measure`: "max_prob", "margin" or "entropy"; `cascade_output`: the output
      whose scores are judged (default: the first).
    - `cascade_battery_percent`: at or below this charge (on battery) requests escalate
      without running the small model. `latency_budget_ms`: an unsure answer still stands
      when the strong model's measured time would overrun this budget.
    - `cascade_exit`: instead of a small model, an early exit: the name of an exit branch's
      output that the cut's head computes; a confident exit answers in place of the
      model's scores output and nothing is sent.
    - With fallback "local" (the default) a failed escalation answers with the small model's
      (or the exit's) answer; `last_run().answered_by` says which answered ("small",
      "exit" or "big").

    When the cloud fails (`fallback`; default "local" in adaptive and cascade modes, "none"
    otherwise):
    - "local": a request whose cloud part cannot finish by its deadline (unreachable,
      refused, overloaded, too slow, a corrupt answer) is finished here with the plan's full
      model; the cloud call is given the deadline less the time that takes.
    - "none": the run raises the typed error (CloudUnavailableError, DeadlineExceededError,
      OverloadedError, ProtocolError, RemoteError ...).
    - `breaker_failures` consecutive cloud failures open the circuit: cloud work is not
      tried for `breaker_reset_s` (doubling while it stays down, up to 4x), then a health
      probe (ServerReady) decides whether it closes again.

    Adaptive switching: the thresholds below left None are the plan's (its device profile's
    `[device.runtime]` table), else the built-in `DEFAULT_THRESHOLDS`; `thresholds(plan)`
    resolves them. A check is off at 0 (memory, battery), 100 (CPU) or inf (queue).
    - `hysteresis` (0.25): how far (relative) the uplink estimate must pass an envelope
      breakpoint before the cut moves, so that a noisy link does not make it flap.
    - `min_free_memory_mib` (256), `max_cpu_percent` (100: off), `min_battery_percent` (15,
      while unplugged): device pressure; while any holds, requests go whole to the cloud's
      full model. `pressure_recovery`: relative margin the readings must clear before
      pressure ends.
    - `max_cloud_queue_ms` (50): when the endpoint reports queueing longer than this, work
      comes back to the device (the local model, if it is predicted faster than waiting).
    - `probe_interval_s`: idle time after which the link is probed (round trip, and a small
      uplink transfer); `probe_max_share`: the largest share of the estimated uplink that
      probes may use.
    """

    plan: Path
    mode: Mode = "split"
    endpoint: str | Sequence[str] | None = None
    tls_dir: Path | None = None
    device: str | None = None
    cut: int | None = None
    codec: str = "auto"
    timeout_s: float = 30.0
    intra_op_threads: int = 0
    fallback: Fallback | None = None
    breaker_failures: int = 3
    breaker_reset_s: float = 1.0
    hysteresis: float | None = None
    min_free_memory_mib: float | None = None
    max_cpu_percent: float | None = None
    min_battery_percent: float | None = None
    pressure_recovery: float = 0.1
    max_cloud_queue_ms: float | None = None
    probe_interval_s: float = 5.0
    probe_max_share: float = 0.05
    small_model: Path | None = None
    cascade_threshold: float | None = None
    cascade_measure: str | None = None
    cascade_output: str | None = None
    cascade_battery_percent: float | None = None
    latency_budget_ms: float | None = None
    quantized: str | None = None
    cascade_exit: str | None = None

    def __post_init__(self) -> None:
        # Paths may arrive as strings (from a CLI or a TOML file); hold them as Paths.
        if isinstance(self.plan, str):
            object.__setattr__(self, "plan", Path(self.plan))
        if isinstance(self.tls_dir, str):
            object.__setattr__(self, "tls_dir", Path(self.tls_dir))
        if isinstance(self.small_model, str):
            object.__setattr__(self, "small_model", Path(self.small_model))
        if self.fallback is None:
            object.__setattr__(self, "fallback",
                               "local" if self.mode in ("adaptive", "cascade") else "none")
        problems = []
        if not isinstance(self.plan, Path):
            problems.append(f"plan must be a path to a plan folder, got {self.plan!r}")
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        elif self.mode != "local" and not self.endpoint:
            problems.append(f"endpoint is required in mode {self.mode!r} (give 'host:port' "
                            f"of the cloud endpoint, or use mode 'local')")
        problems += self._check_endpoint()
        if self.tls_dir is not None and not isinstance(self.tls_dir, Path):
            problems.append(f"tls_dir must be a path, got {self.tls_dir!r}")
        if self.device is not None and self.tls_dir is None:
            problems.append(f"device {self.device!r} needs tls_dir, the folder holding its "
                            f"certificate")
        if self.cut is not None and (not isinstance(self.cut, int) or isinstance(self.cut, bool)
                                     or self.cut < 0):
            problems.append(f"cut must be a non-negative cut id or None, got {self.cut!r}")
        if self.codec not in CODEC_CHOICES:
            problems.append(f"codec must be one of {', '.join(CODEC_CHOICES)}, "
                            f"got {self.codec!r}")
        if self.fallback not in FALLBACKS:
            problems.append(f"fallback must be one of {', '.join(FALLBACKS)}, "
                            f"got {self.fallback!r}")
        if not _positive(self.timeout_s):
            problems.append(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if not _integer(self.intra_op_threads) or self.intra_op_threads < 0:
            problems.append(f"intra_op_threads must be an integer >= 0, "
                            f"got {self.intra_op_threads!r}")
        if not _integer(self.breaker_failures) or self.breaker_failures < 1:
            problems.append(f"breaker_failures must be an integer >= 1, "
                            f"got {self.breaker_failures!r}")
        for name in ("breaker_reset_s", "probe_interval_s"):
            if not _positive(getattr(self, name)):
                problems.append(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("hysteresis", "pressure_recovery", "probe_max_share"):
            value = getattr(self, name)
            if value is None and name == "hysteresis":
                continue
            if not _number(value) or not 0 <= value < 1:
                problems.append(f"{name} must be a number in [0, 1), got {value!r}")
        for name in ("min_free_memory_mib", "max_cloud_queue_ms"):
            value = getattr(self, name)
            if value is not None and (not _number(value) or not value >= 0):
                problems.append(f"{name} must be a number >= 0 (inf: off) or None, "
                                f"got {value!r}")
        for name in ("max_cpu_percent", "min_battery_percent"):
            value = getattr(self, name)
            if value is not None and (not _number(value) or not 0 <= value <= 100):
                problems.append(f"{name} must be a percentage in [0, 100] or None, "
                                f"got {value!r}")
        problems += self._check_cascade()
        if self.quantized not in (None, "int8", "fp16"):
            problems.append(f"quantized must be 'int8', 'fp16' or None, got {self.quantized!r}")
        if problems:
            raise BadProfileError("Config: " + "; ".join(problems))

    def _check_cascade(self) -> list[str]:
        problems = []
        if self.small_model is not None and not isinstance(self.small_model, Path):
            problems.append(f"small_model must be a path to an .onnx file, got {self.small_model!r}")
        threshold = self.cascade_threshold
        if threshold is not None and (not _number(threshold) or not 0 <= threshold <= 1):
            problems.append(f"cascade_threshold must be a number in [0, 1] or None, "
                            f"got {threshold!r}")
        if self.cascade_measure is not None and self.cascade_measure not in CASCADE_MEASURES:
            problems.append(f"cascade_measure must be one of {', '.join(CASCADE_MEASURES)}, "
                            f"got {self.cascade_measure!r}")
        battery = self.cascade_battery_percent
        if battery is not None and (not _number(battery) or not 0 <= battery <= 100):
            problems.append(f"cascade_battery_percent must be a percentage in [0, 100] or "
                            f"None, got {battery!r}")
        if self.latency_budget_ms is not None and not _positive(self.latency_budget_ms):
            problems.append(f"latency_budget_ms must be > 0 or None, got "
                            f"{self.latency_budget_ms!r}")
        return problems

    def _check_endpoint(self) -> list[str]:
        """Problems with `endpoint`; a list of addresses is held as a tuple."""
        if self.endpoint is None:
            return []
        if isinstance(self.endpoint, str):
            addresses: Sequence[object] = [self.endpoint]
        elif isinstance(self.endpoint, Sequence) and self.endpoint:
            addresses = list(self.endpoint)
            object.__setattr__(self, "endpoint", tuple(addresses))
        else:
            return [f"endpoint must be 'host:port' or a non-empty list of them, "
                    f"got {self.endpoint!r}"]
        bad = [a for a in addresses if not isinstance(a, str) or ":" not in a
               or not a.rsplit(":", 1)[1].isdigit()]
        if bad:
            return [f"endpoint must be 'host:port' (or a list of them), got {bad[0]!r}"]
        return []

    def thresholds(self, from_plan: Mapping[str, float] | None = None) -> dict[str, float]:
        """Each adaptive threshold: this Config's, else the plan's, else the built-in one.

        >>> Config(plan=Path("p"), mode="local", hysteresis=0.1).thresholds(
        ...     {"hysteresis": 0.3, "max_cloud_queue_ms": 80.0})["max_cloud_queue_ms"]
        80.0
        """
        plan = from_plan or {}
        resolved = {}
        for name, default in DEFAULT_THRESHOLDS.items():
            mine = getattr(self, name)
            value = mine if mine is not None else plan.get(name, default)
            resolved[name] = float(value)
        return resolved

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoint addresses as a tuple (empty without an endpoint)."""
        if self.endpoint is None:
            return ()
        return (self.endpoint,) if isinstance(self.endpoint, str) else tuple(self.endpoint)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value: object) -> bool:
    return _number(value) and value > 0  # type: ignore[operator]
