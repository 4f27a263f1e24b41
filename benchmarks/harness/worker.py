"""The benchmark's device (and cloud-profiling) process: JSON commands in, JSON answers out.

Started by the benchmark inside the device namespace and CPU cgroup (or pinned to the cloud's
core for `profile`), it reads one JSON object per line on stdin and answers one per line on
stdout:

    {"cmd": "profile", "model": PATH, "shapes": {"x": [1, 3, 64, 64]}, "runs": 10}
        -> {"node_ms": {...}, "total_ms": ...}             edgecut.profiles.profile_model
    {"cmd": "device_profile"}
        -> {"device": BASE64 pickle of a DeviceProfile}    edgecut.profiles.profile_device
    {"cmd": "probe", "endpoint": "127.0.0.1:PORT", "tls_dir": DIR, "rounds": 20}
        -> {"rtt_ms": [...]}                               ServerLive round trips
    {"cmd": "measure", "plan": DIR, "cut": 3, "endpoint": ..., "tls_dir": ..., "codec": "raw",
     "min_runs": 3, "max_runs": 15, "budget_s": 4.0, "warmup": 1}
        -> {"runs": [{"total_ms", "head_ms", "encode_ms", "rpc_ms", "decode_ms", ...}]}
    {"cmd": "quit"}

Errors come back as {"error": "..."}; the process keeps serving.
"""

from __future__ import annotations

import base64
import json
import pickle
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np


def _profile(req: dict[str, Any]) -> dict[str, Any]:
    from edgecut.profiles import profile_model

    shapes = {k: tuple(v) for k, v in req["shapes"].items()}
    p = profile_model(req["model"], input_shapes=shapes, runs=int(req.get("runs", 10)),
                      warmup=int(req.get("warmup", 3)),
                      intra_op_threads=int(req.get("intra_op_threads", 0)))
    return {"node_ms": p.node_ms, "total_ms": p.total_ms, "unattributed_ms": p.unattributed_ms}


def _device_profile(req: dict[str, Any]) -> dict[str, Any]:
    from edgecut.profiles import profile_device

    device = profile_device(name=req.get("name", "bench-device"), quick=bool(req.get("quick", True)))
    return {"device": base64.b64encode(pickle.dumps(device)).decode()}


def _probe(req: dict[str, Any]) -> dict[str, Any]:
    from edgecut.edge import CloudClient

    tls = Path(req["tls_dir"]) if req.get("tls_dir") else None
    with CloudClient(req["endpoint"], tls_dir=tls, timeout_s=10) as client:
        client.server_live()
        rtts = []
        for _ in range(int(req.get("rounds", 20))):
            start = time.perf_counter()
            client.server_live()
            rtts.append((time.perf_counter() - start) * 1e3)
    return {"rtt_ms": rtts}


def _feeds(plan: Path) -> dict[str, np.ndarray]:
    spec = json.loads((plan / "plan.json").read_text())
    rng = np.random.default_rng(0)
    feeds = {}
    for item in spec["model"]["inputs"]:
        shape = spec["input_shapes"].get(item["name"], item["shape"])
        dtype = np.dtype(item["dtype"])
        if dtype.kind == "f":
            feeds[item["name"]] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[item["name"]] = np.zeros(shape, dtype)
    return feeds


_FEEDS: dict[str, dict[str, np.ndarray]] = {}


def _measure(req: dict[str, Any]) -> dict[str, Any]:
    from edgecut.edge import Config, Predictor

    plan = Path(req["plan"])
    feeds = _FEEDS.setdefault(str(plan), _feeds(plan))
    config = Config(plan=plan, mode="split", endpoint=req["endpoint"],
                    tls_dir=Path(req["tls_dir"]) if req.get("tls_dir") else None,
                    cut=int(req["cut"]), codec=req.get("codec", "raw"),
                    timeout_s=float(req.get("timeout_s", 120)),
                    intra_op_threads=int(req.get("intra_op_threads", 0)))
    runs = []
    min_runs, max_runs = int(req.get("min_runs", 3)), int(req.get("max_runs", 15))
    budget_s = float(req.get("budget_s", 5.0))
    def record() -> None:
        s = predictor.last_run()
        assert s is not None
        runs.append({"total_ms": s.total_ms, "head_ms": s.head_ms, "encode_ms": s.encode_ms,
                     "rpc_ms": s.rpc_ms, "decode_ms": s.decode_ms,
                     "wire_bytes_up": s.wire_bytes_up, "wire_bytes_down": s.wire_bytes_down,
                     "raw_bytes_up": s.raw_bytes_up, "raw_bytes_down": s.raw_bytes_down})

    with Predictor(config) as predictor:
        # Warm-up: the first run pays the channel's TLS handshake and onnxruntime's first-run
        # allocations; it is never counted.
        for _ in range(int(req.get("warmup", 1))):
            predictor.run(None, feeds)
        predictor.run(None, feeds)
        record()
        # A cut slower than `skip_above_ms` in its first measured run is clearly not the best:
        # that run is its only one (it still counts for the rank correlation).
        limit = req.get("skip_above_ms")
        if limit is not None and runs[0]["total_ms"] > float(limit):
            return {"runs": runs, "single_run": True}
        start = time.perf_counter()
        while len(runs) < max_runs and (len(runs) < min_runs
                                        or time.perf_counter() - start < budget_s):
            predictor.run(None, feeds)
            record()
    return {"runs": runs, "single_run": False}


_COMMANDS = {"profile": _profile, "device_profile": _device_profile, "probe": _probe,
             "measure": _measure}


def main() -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("cmd") == "quit":
            break
        try:
            answer = _COMMANDS[req["cmd"]](req)
        except Exception as exc:  # reported to the parent, which decides what to do
            answer = {"error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc(limit=5)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
