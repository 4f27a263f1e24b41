"""onnxruntime alone, the limit a server on the same core is measured against.

`python -m benchmarks.serving.ort_alone MODEL.onnx --batch-sizes 1,8,32 --seconds 0.5`
(`--row-shape 3,48,192` where the model's own dims beyond the batch are free) prints one
JSON object: seconds per run for each batch size (one intra-op thread, inputs made once,
outputs ignored: nothing but `session.run`). Run it pinned to the server's core.
`--parallel N` keeps N runs in flight at once from N threads (pinned to N cores: the most N
single-threaded instances can do); the seconds per run are then the window over all runs.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import onnxruntime as ort


def seconds_per_run(session: ort.InferenceSession, x: np.ndarray, *, seconds: float,
                    max_runs: int = 100_000) -> float:
    """Mean seconds of one `session.run` over a window of `seconds` (after one warm run)."""
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    runs, start = 0, time.perf_counter()
    while runs < max_runs:
        session.run(None, {name: x})
        runs += 1
        if time.perf_counter() - start >= seconds:
            break
    return (time.perf_counter() - start) / runs


def seconds_per_run_parallel(session: ort.InferenceSession, x: np.ndarray, *, seconds: float,
                             parallel: int, max_runs: int = 100_000) -> float:
    """Wall seconds of the window over the runs `parallel` threads finished in it."""
    if parallel <= 1:
        return seconds_per_run(session, x, seconds=seconds, max_runs=max_runs)
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    counts = [0] * parallel
    start = time.perf_counter()
    stop_at = start + seconds

    def loop(i: int) -> None:  # onnxruntime lets go of the GIL while it runs
        while counts[i] < max_runs // parallel and time.perf_counter() < stop_at:
            session.run(None, {name: x})
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - start) / max(1, sum(counts))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--batch-sizes", required=True)
    p.add_argument("--seconds", type=float, default=0.5)
    p.add_argument("--parallel", type=int, default=1, help="runs in flight at once")
    p.add_argument("--row-shape", help="one row's input shape, e.g. 3,48,192 (default: the "
                                       "model's, free dims 1)")
    args = p.parse_args(argv)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    if args.row_shape:
        shape = [1, *(int(d) for d in args.row_shape.split(","))]
    rng = np.random.default_rng(0)
    result = {}
    for b in sorted({int(s) for s in args.batch_sizes.split(",")}):
        x = rng.standard_normal((b, *shape[1:]), dtype=np.float32)
        result[str(b)] = seconds_per_run_parallel(session, x, seconds=args.seconds,
                                                  parallel=args.parallel)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
