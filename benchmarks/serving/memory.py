"""Resident memory of K tails of one model against the full model alone.

    python -m benchmarks.serving.memory REPO --variant repository

loads every model of REPO in a fresh process, runs each once (batch 1: the arena's buffers
are allocated on the first run, not at load), gives freed heap back (malloc_trim) and prints
the RSS it added over the same process before loading (Python, numpy, onnxruntime and
edgecut imported). The benchmark runs it on a repository with the full model only, and on
one with K tails of it (the model cut after 0..K-1 layers, as a plan's tails: same
initializer names and bytes), and reports the ratio.

Variants (what is tried to close the gap):
  repository            edgecut's ModelRepository as shipped (shared weights: WeightPool)
  unshared              ModelRepository(share_weights=False): every session its own copy
  pool_no_arena         WeightPool + sessions without the CPU arena (plain malloc per run)
  pool_env_allocator    WeightPool + one arena for all sessions (`session.use_env_allocators`
                        with an allocator registered on the environment)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil

from edgecut.cloud.repository import ModelRepository
from edgecut.cloud.shared_weights import WeightPool

VARIANTS = ("repository", "unshared", "pool_no_arena", "pool_env_allocator")


def _rss() -> int:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss


def _feed(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    arg = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in arg.shape]
    return {arg.name: np.ones(shape, np.float32)}


def load_and_run(repo: Path, variant: str, *, intra_op_threads: int = 1) -> tuple[int, int]:
    """(sessions loaded, RSS bytes added) for every model under `repo`."""
    paths = sorted(repo.glob("*/1/model.onnx"))
    keep: list[object] = []
    if variant == "pool_env_allocator":
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                 ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
    before = _rss()
    if variant in ("repository", "unshared"):
        repository = ModelRepository(repo, intra_op_threads=intra_op_threads,
                                     share_weights=variant == "repository")
        sessions = [repository.get(p.parent.parent.name).session for p in paths]
        keep.append(repository)
    else:
        pool = WeightPool()
        sessions = []
        for path in paths:
            options = ort.SessionOptions()
            options.intra_op_num_threads = intra_op_threads
            keep.append(pool.share(path, options))
            if variant == "pool_no_arena":
                options.enable_cpu_mem_arena = False
            else:
                options.add_session_config_entry("session.use_env_allocators", "1")
            keep.append(options)
            sessions.append(ort.InferenceSession(str(path), options,
                                                 providers=["CPUExecutionProvider"]))
    for session in sessions:
        session.run(None, _feed(session))
    added = _rss() - before
    del keep
    return len(sessions), added


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("repo", type=Path)
    p.add_argument("--variant", choices=VARIANTS, default="repository")
    p.add_argument("--intra-op-threads", type=int, default=1,
                   help="onnxruntime threads per session (0: its default, one per core)")
    args = p.parse_args(argv)
    count, added = load_and_run(args.repo, args.variant, intra_op_threads=args.intra_op_threads)
    print(json.dumps({"sessions": count, "rss_added_bytes": added}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
