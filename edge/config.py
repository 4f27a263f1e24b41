"""How a Predictor runs: which plan, where, over what channel, and how long it may take.

    >>> Config(plan=Path("plans/chain_cnn"), mode="local")  # doctest: +ELLIPSIS
    Config(plan=PosixPath('plans/chain_cnn'), mode='local', ...)
    >>> Config(plan=Path("plans/chain_cnn"), mode="split")
    Traceback (most recent call last):
    ...
    edgecut.errors.BadProfileError: Config: endpoint is required in mode 'split' ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgecut.errors import BadProfileError
from edgecut.protocol.codecs import CODECS

__all__ = ["CODEC_CHOICES", "MODES", "Config", "Mode"]

Mode = Literal["split", "offload", "local"]
MODES: tuple[str, ...] = ("split", "offload", "local")
# "auto" picks a lossless codec per tensor from the measured uplink (codecs.choose_codec).
CODEC_CHOICES: tuple[str, ...] = ("auto", *CODECS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A Predictor's settings.

    - `plan`: the plan folder (`edgecut plan`).
    - `mode`: "split" runs the cut's head here and its tail on `endpoint`; "offload" sends
      the inputs to the full model on `endpoint`; "local" runs the full model here.
    - `endpoint`: "host:port" of the cloud endpoint (split and offload).
    - `tls_dir`, `device`: the folder from `edgecut certs` and the device certificate to
      present; without `tls_dir` the channel is plaintext (loopback and tests only).
    - `cut`: the cut id to run in split mode; None takes the plan's chosen cut.
    - `codec`: how crossing tensors are encoded: "auto" (lossless, by bandwidth) or a codec;
      "fp16" applies to float32 tensors and the outputs sent back, lossless for the rest.
    - `timeout_s`: the deadline of one `run`, head, transfer and tail together.
    - `intra_op_threads`: onnxruntime threads for the device part; 0 lets it choose.
    """

    plan: Path
    mode: Mode = "split"
    endpoint: str | None = None
    tls_dir: Path | None = None
    device: str | None = None
    cut: int | None = None
    codec: str = "auto"
    timeout_s: float = 30.0
    intra_op_threads: int = 0

    def __post_init__(self) -> None:
        # Paths may arrive as strings (from a CLI or a TOML file); hold them as Paths.
        if isinstance(self.plan, str):
            object.__setattr__(self, "plan", Path(self.plan))
        if isinstance(self.tls_dir, str):
            object.__setattr__(self, "tls_dir", Path(self.tls_dir))
        problems = []
        if not isinstance(self.plan, Path):
            problems.append(f"plan must be a path to a plan folder, got {self.plan!r}")
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        elif self.mode != "local" and not self.endpoint:
            problems.append(f"endpoint is required in mode {self.mode!r} (give 'host:port' "
                            f"of the cloud endpoint, or use mode 'local')")
        if self.endpoint is not None and (not isinstance(self.endpoint, str)
                                          or ":" not in self.endpoint):
            problems.append(f"endpoint must be 'host:port', got {self.endpoint!r}")
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
        if (not isinstance(self.timeout_s, (int, float)) or isinstance(self.timeout_s, bool)
                or not self.timeout_s > 0):
            problems.append(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if (not isinstance(self.intra_op_threads, int) or isinstance(self.intra_op_threads, bool)
                or self.intra_op_threads < 0):
            problems.append(f"intra_op_threads must be an integer >= 0, "
                            f"got {self.intra_op_threads!r}")
        if problems:
            raise BadProfileError("Config: " + "; ".join(problems))
