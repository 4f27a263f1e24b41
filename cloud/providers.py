"""onnxruntime session settings for serving: options, execution providers, instances.

    >>> providers_for(["TensorrtExecutionProvider", "CUDAExecutionProvider",
    ...                "CPUExecutionProvider"])
    ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']
    >>> providers_for(["AzureExecutionProvider", "CPUExecutionProvider"])
    ['CPUExecutionProvider']

Session options (`session_options`):
- graph optimisation level ALL (constant folding, fusions, layout changes): done once at load;
- `intra_op_threads` as the loader chose them (edgecut.cpu_budget: by default the CPUs
  the process may use, shared by the model's instances; 0 here is onnxruntime's own default
  of one per physical core), `inter_op` 1: a served model runs sequentially inside, and concurrency comes from
  several instances instead of onnxruntime's inter-op pool;
- memory pattern on: it plans one allocation per run, and is reused while the input shapes
  repeat; with dynamic batching the batch dimension varies, and onnxruntime then falls back
  to the arena for the shapes it has not seen;
- the CPU arena on: it keeps the buffers of past runs and reuses them, so a run does not call
  malloc for each tensor. Left alone it never gives memory back, and a burst of large or
  unusual batches leaves it holding more than the steady load needs. So each session asks
  onnxruntime, on one run every ARENA_SHRINK_INTERVAL_S (`ArenaShrinker`), to free the
  arena's regions that no run is using; the server's periodic malloc_trim then returns them
  to the system. Measured (small CNN, 2,400 runs alternating batches of 1-7 and 16-32 rows):
  RSS 95 MiB without, 68 MiB with a shrink every 50 runs, at the same speed; in a soak, glibc's
  in-use memory went back to 27 MiB after each backlog where it had stayed at 31-39 MiB.
  Shrinking on every run instead costs up to 7% (4.1 against 4.4 ms at batch 8), as the
  arena regrows each time.

Instances: `instance_count` N runs at once. Measured on this 2-core machine (onnxruntime
1.32, intra_op 1 per run, 2 instances, runs/s over 1 s windows, best of 2): one shared
session vs two sessions gave, for a wide MLP (512-2048-256) at batch 1 and 8, 11151 vs 10636
and 6050 vs 4230; for a small CNN (2 convs, 64x64) 2176 vs 1274 and 155 vs 149. An earlier,
noisier run had two sessions ahead by up to 1.5x on the MLP: on 2 cores neither wins
consistently, and separate sessions duplicate the weights. So the endpoint runs N threads
over one shared session by default (`separate_sessions=False`), N sessions when asked.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

__all__ = [
    "ARENA_SHRINK_INTERVAL_S",
    "GPU_PROVIDERS",
    "ArenaShrinker",
    "create_session",
    "providers_for",
    "session_options",
]

# In order of preference: TensorRT compiles subgraphs it supports and hands the rest to CUDA,
# which hands what it cannot run to the CPU; the CPU provider is always last.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_CPU = "CPUExecutionProvider"

ARENA_SHRINK_INTERVAL_S = 5.0
# onnxruntime's run option (onnxruntime_run_options_config_keys.h): at the end of the run,
# free the named arenas' regions that hold no live tensor. The CPU arena only: session_options
# always enables it, and a GPU arena's memory is not what the endpoint's RSS counts.
_ARENA_SHRINKAGE_KEY = "memory.enable_memory_arena_shrinkage"
_CPU_ARENA = "cpu:0"


def providers_for(available: Sequence[str] | None = None, *, use_gpu: bool = True,
                  use_tensorrt: bool = True) -> list[str]:
    """The execution providers a session should ask for, best first, CPU always last.

    `available` defaults to `onnxruntime.get_available_providers()`. Providers that serve no
    purpose here (Azure, which calls remote endpoints) are left out.
    """
    if available is None:
        available = ort.get_available_providers()
    chosen = []
    if use_gpu:
        chosen = [p for p in GPU_PROVIDERS if p in available
                  and (use_tensorrt or p != "TensorrtExecutionProvider")]
    return [*chosen, _CPU]


def session_options(*, intra_op_threads: int = 0) -> ort.SessionOptions:
    """SessionOptions tuned for serving (see the module docstring for why each is set)."""
    if intra_op_threads < 0:
        raise ValueError(f"intra_op_threads must be >= 0, got {intra_op_threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_mem_pattern = True
    options.enable_cpu_mem_arena = True
    return options


class ArenaShrinker:
    """Decides which run of a session also shrinks its CPU arena: one per `interval_s`.

    `run_options(given)` is what to pass to `session.run`: the caller's own options when it
    has some (they are left alone), else shrinking options when a shrink is due, else None.
    Two threads may both see a shrink due at once; both shrinking is harmless.

        >>> shrinker = ArenaShrinker(interval_s=0.0)
        >>> shrinker.run_options(None) is not None
        True
    """

    __slots__ = ("_due_at", "_interval_s")

    def __init__(self, interval_s: float = ARENA_SHRINK_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._due_at = time.monotonic() + interval_s

    def run_options(self, given: ort.RunOptions | None = None) -> ort.RunOptions | None:
        if given is not None:
            return given
        now = time.monotonic()
        if now < self._due_at:
            return None
        self._due_at = now + self._interval_s
        # A fresh RunOptions each time (once per interval): never shared between runs.
        options = ort.RunOptions()
        options.add_run_config_entry(_ARENA_SHRINKAGE_KEY, _CPU_ARENA)
        return options


def create_session(path: Path, *, intra_op_threads: int = 0,
                   providers: Sequence[str] | None = None) -> ort.InferenceSession:
    """An InferenceSession on `path` with session_options and providers_for.

    onnxruntime's own errors pass through: callers translate them where they load models.
    """
    return ort.InferenceSession(
        str(path),
        sess_options=session_options(intra_op_threads=intra_op_threads),
        providers=list(providers) if providers is not None else providers_for(),
    )
