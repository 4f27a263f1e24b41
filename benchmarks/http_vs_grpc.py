"""The endpoint's two bindings side by side: requests/s and latency of the same model over
gRPC (tritonclient.grpc) and HTTP/REST (tritonclient.http, binary tensors and JSON), TLS on
both, from one `edgecut serve --http-address` process.

    python benchmarks/http_vs_grpc.py --seconds 4 --out /tmp/http_vs_grpc.json

The server runs on core 0 and the load generator on core 1 (taskset), each client thread
with a client of its own calling `infer` in a loop. Models: `tiny` (16 floats in, 4 out: the
protocol's own cost) and the serving benchmark's `small_cnn` (128 KiB in, a CNN tail), both
without batching. Prints a table and writes JSON; asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

SERVER_CPU, CLIENT_CPU = os.environ.get("HVG_SERVER_CPUS", "0"), os.environ.get("HVG_CLIENT_CPUS", "1")
PROTOCOLS = ("grpc", "http-binary", "http-json")
LISTENING = re.compile(r"listening on (\S+) .*HTTP/REST on https://(\S+?)[;\s]")


def _tiny_model() -> Any:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(3).normal(size=(16, 4)).astype(np.float32),
                                "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4])],
                              [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _repository(root: Path) -> dict[str, tuple[int, ...]]:
    """Write the models; returns each one's input shape (batch 1)."""
    import onnx

    from benchmarks.serving.models import MODELS
    from benchmarks.serving.repo import write_model

    spec = MODELS["small_cnn"]
    write_model(root, "small_cnn", spec, spec.build(), batching=False)
    (root / "tiny" / "1").mkdir(parents=True)
    onnx.save(_tiny_model(), str(root / "tiny" / "1" / "model.onnx"))
    return {"tiny": (1, 16), "small_cnn": (1, *spec.row_shape)}


class Server:
    """`edgecut serve` with gRPC and HTTP over TLS, pinned to the server core."""

    def __init__(self, repo: Path, tls: Path, frontend: str, log: Path) -> None:
        cmd = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "edgecut.cli", "serve",
               "--repository", str(repo), "--tls", str(tls), "--address", "127.0.0.1:0",
               "--http-address", "127.0.0.1:0", "--frontend", frontend,
               *os.environ.get("HVG_SERVER_ARGS", "").split()]
        self._log = open(log, "ab")  # noqa: SIM115
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                      cwd=REPO)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        match = LISTENING.search(line)
        if not match:
            self.stop()
            raise RuntimeError(f"server did not start: {line!r}; see {log}")
        self.grpc, self.http = match.group(1), match.group(2)

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (taskset execs it: the same pid)."""
        import psutil

        times = psutil.Process(self._proc.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._log.close()


def run_client(spec: dict[str, Any]) -> dict[str, Any]:
    """In the client process: `threads` clients calling infer for `seconds`."""
    if os.environ.get("HVG_CLIENT_NODELAY"):
        import socket

        from geventhttpclient import connectionpool

        create = connectionpool.ConnectionPool._create_tcp_socket

        def nodelay(self: Any, *args: Any) -> Any:
            sock = create(self, *args)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock

        connectionpool.ConnectionPool._create_tcp_socket = nodelay  # type: ignore[method-assign]
    protocol, model, tls = spec["protocol"], spec["model"], Path(spec["tls"])
    x = np.random.default_rng(0).standard_normal(spec["shape"], dtype=np.float32)
    stop_at: list[float] = []
    latencies: list[list[float]] = [[] for _ in range(spec["threads"])]
    errors: list[str] = []
    # The window opens as the last thread arrives, before any of them goes on.
    ready = threading.Barrier(spec["threads"] + 1, action=lambda: stop_at.append(
        time.perf_counter() + spec["seconds"]))

    def worker(i: int) -> None:
        if protocol == "grpc":
            import tritonclient.grpc as client_module

            client = client_module.InferenceServerClient(spec["grpc"], ssl=True,
                                                         root_certificates=str(tls / "ca.crt"))
        else:
            import tritonclient.http as client_module  # type: ignore[no-redef]

            client = client_module.InferenceServerClient(
                spec["http"], ssl=True, ssl_options={"ca_certs": str(tls / "ca.crt")},
                network_timeout=60)
        binary = protocol != "http-json"
        tensor = client_module.InferInput("x", list(x.shape), "FP32")
        if protocol == "grpc":
            tensor.set_data_from_numpy(x)
            outputs = None
        else:
            tensor.set_data_from_numpy(x, binary_data=binary)
            outputs = [client_module.InferRequestedOutput("y", binary_data=binary)]
        for _ in range(3):  # warm: connection, TLS, first runs
            client.infer(model, [tensor], outputs=outputs)
        ready.wait()
        mine = latencies[i]
        try:
            while time.perf_counter() < stop_at[0]:
                started = time.perf_counter()
                client.infer(model, [tensor], outputs=outputs)
                mine.append(time.perf_counter() - started)
        except Exception as exc:
            errors.append(repr(exc)[:300])
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(spec["threads"])]
    for t in threads:
        t.start()
    ready.wait()
    started = stop_at[0] - spec["seconds"]
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    merged = np.array([v for per in latencies for v in per]) * 1e3
    return {"requests": int(merged.size), "rps": merged.size / wall,
            "p50_ms": float(np.percentile(merged, 50)) if merged.size else None,
            "p99_ms": float(np.percentile(merged, 99)) if merged.size else None,
            "errors": errors[:3]}


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = ["taskset", "-c", CLIENT_CPU, sys.executable, __file__, "--client", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=spec["seconds"] + 120,
                          cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"client failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--frontends", nargs="+", default=["grpcio", "native"])
    parser.add_argument("--models", nargs="+", default=["tiny", "small_cnn"])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        print(json.dumps(run_client(json.loads(args.client))))
        return 0
    if (os.cpu_count() or 1) < 2:
        print("needs 2 cores: the server on one, the clients on the other", file=sys.stderr)
        return 2
    from edgecut.cloud.native_server import available
    from edgecut.protocol.pki import init_ca

    work = Path(tempfile.mkdtemp(prefix="http-vs-grpc-"))
    rows: list[dict[str, Any]] = []
    try:
        tls = work / "tls"
        init_ca(tls)
        shapes = _repository(work / "repo")
        for frontend in args.frontends:
            if frontend == "native" and not available():
                continue
            server = Server(work / "repo", tls, frontend, work / "server.log")
            try:
                # HTTP does not depend on the gRPC transport: measured once, with grpcio.
                protocols = (args.protocols if frontend == args.frontends[0]
                             else [p for p in args.protocols if p == "grpc"])
                for model, shape in shapes.items():
                    if model not in args.models:
                        continue
                    for threads in args.threads:
                        for protocol in protocols:
                            spec = {"protocol": protocol, "model": model, "shape": list(shape),
                                    "threads": threads, "seconds": args.seconds,
                                    "grpc": server.grpc, "http": server.http, "tls": str(tls)}
                            cpu_before = server.cpu_s()
                            result = _measure(spec)
                            # Warm-up calls included: a few of thousands.
                            result["server_cpu_us_per_request"] = (
                                (server.cpu_s() - cpu_before) / max(result["requests"], 1) * 1e6)
                            row = {"model": model, "clients": threads,
                                   "protocol": protocol if protocol != "grpc"
                                   else f"grpc ({frontend})", **result}
                            rows.append(row)
                            print(f"{model:10} {threads:3} {row['protocol']:14} "
                                  f"{result['rps']:8.0f} req/s  p50 {result['p50_ms'] or 0:.2f} "
                                  f"ms  p99 {result['p99_ms'] or 0:.2f} ms  server CPU "
                                  f"{result['server_cpu_us_per_request']:.0f} us/request  "
                                  f"{result['errors'] or ''}", flush=True)
            finally:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for model in {r["model"] for r in rows}:
        for threads in args.threads:
            base = [r for r in rows if r["model"] == model and r["clients"] == threads
                    and r["protocol"] == f"grpc ({args.frontends[0]})"]
            for r in rows:
                if base and r["model"] == model and r["clients"] == threads:
                    r["vs_grpc"] = r["rps"] / base[0]["rps"] if base[0]["rps"] else None
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "seconds": args.seconds}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
