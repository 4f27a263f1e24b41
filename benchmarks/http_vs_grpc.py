"""The endpoint's two bindings side by side, and Triton's beside them: requests/s and latency
of the same model over gRPC (tritonclient.grpc) and HTTP/REST (tritonclient.http, binary
tensors and JSON), from one `edgecut serve --http-address` process.

    python benchmarks/http_vs_grpc.py --seconds 4 --out /tmp/http_vs_grpc.json
    python benchmarks/http_vs_grpc.py --triton /tmp/pytriton     # Triton 2.51 too (pytriton wheel)

The server runs on core 0 and the load generator on core 1 (taskset), each client thread
with a client of its own calling `infer` in a loop; both servers run onnxruntime on one
thread (Triton through its Python backend, benchmarks/serving/repo.py). Models: `tiny` (16
floats in, 4 out: the protocol's own cost) and the serving benchmark's `small_cnn` (128 KiB
in, a CNN tail), both without batching. gRPC and edgecut's HTTP are over TLS; Triton's HTTP
endpoint has no TLS, so the `http-plain` rows compare both servers' HTTP without it. Prints
a table and writes JSON; asserts nothing about timing.
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
PROTOCOLS = ("grpc", "http-binary", "http-json", "http-plain")
LISTENING = re.compile(r"listening on (\S+) .*HTTP/REST on https?://(\S+?)[;\s]")


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


def _repository(root: Path, *, backend: str = "onnxruntime") -> dict[str, tuple[int, ...]]:
    """Write the models (for edgecut, or Triton's Python backend); returns each one's input
    shape (batch 1)."""
    from benchmarks.serving.models import MODELS, ModelSpec
    from benchmarks.serving.repo import write_model

    specs = {"tiny": ModelSpec("tiny", _tiny_model, (16,)), "small_cnn": MODELS["small_cnn"]}
    for name, spec in specs.items():
        write_model(root, name, spec, spec.build(), batching=False, backend=backend)
    return {name: (1, *spec.row_shape) for name, spec in specs.items()}


class Server:
    """`edgecut serve` with gRPC and HTTP over TLS, pinned to the server core."""

    def __init__(self, repo: Path, tls: Path | None, frontend: str, log: Path) -> None:
        cmd = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "edgecut.cli", "serve",
               "--repository", str(repo), "--address", "127.0.0.1:0", "--threads", "1",
               "--http-address", "127.0.0.1:0", "--frontend", frontend,
               *(["--tls", str(tls)] if tls is not None else []),
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
        self.pid = self._proc.pid

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (taskset execs it: the same pid)."""

        return _tree_cpu_s(self.pid)

    def stop(self) -> None:
        _stop(self._proc, self._log)


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (Triton's Python backend stubs)."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


class Triton:
    """tritonserver 2.51 (from the nvidia-pytriton wheel) on the server core: gRPC over TLS,
    HTTP without (Triton's HTTP endpoint has no TLS)."""

    def __init__(self, scratch: Path, repo: Path, tls: Path, log: Path) -> None:
        from benchmarks.serving.triton import find_triton

        home = find_triton(scratch, download=False)
        root = home / "pytriton" / "tritonserver"
        tag = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "backends" / "python" / "triton_python_backend_stub"
        if not stub.is_file():
            shutil.copy2(root / "python_backend_stubs" / tag / "triton_python_backend_stub", stub)
            stub.chmod(0o755)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(home / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH")) if p)
        grpc_port, http_port = _free_port(), _free_port()
        self.grpc, self.http = f"localhost:{grpc_port}", f"localhost:{http_port}"
        cmd = ["taskset", "-c", SERVER_CPU, str(root / "bin" / "tritonserver"),
               f"--model-repository={repo}", f"--backend-directory={root / 'backends'}",
               f"--cache-directory={root / 'caches'}", "--allow-metrics=false",
               f"--grpc-port={grpc_port}", "--grpc-address=127.0.0.1", "--grpc-use-ssl=true",
               f"--grpc-server-cert={tls / 'server.crt'}",
               f"--grpc-server-key={tls / 'server.key'}", f"--http-port={http_port}",
               "--http-address=127.0.0.1", "--pinned-memory-pool-byte-size=0"]
        self._log = open(log, "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self._log)
        self.pid = self._proc.pid
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.http}/v2/health/ready", timeout=2):
                    break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tritonserver did not start; see {log}") from None
                time.sleep(0.3)

    def cpu_s(self) -> float:
        return _tree_cpu_s(self.pid)

    def stop(self) -> None:
        _stop(self._proc, self._log)


def _stop(proc: subprocess.Popen[Any], log: Any) -> None:
    """SIGTERM (a drain, for edgecut), then SIGKILL if it takes longer than 40 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

            secure = protocol != "http-plain"
            client = client_module.InferenceServerClient(
                spec["http"], ssl=secure,
                ssl_options={"ca_certs": str(tls / "ca.crt")} if secure else None,
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
    cpu_started = time.process_time()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    client_busy = (time.process_time() - cpu_started) / wall
    merged = np.array([v for per in latencies for v in per]) * 1e3
    return {"requests": int(merged.size), "rps": merged.size / wall,
            "p50_ms": float(np.percentile(merged, 50)) if merged.size else None,
            "p99_ms": float(np.percentile(merged, 99)) if merged.size else None,
            "client_cpu_share": client_busy, "errors": errors[:3]}


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = ["taskset", "-c", CLIENT_CPU, sys.executable, __file__, "--client", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=spec["seconds"] + 120,
                          cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"client failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _run_server(server: Any, name: str, protocols: list[str], shapes: dict[str, tuple[int, ...]],
                args: argparse.Namespace, tls: Path, rows: list[dict[str, Any]]) -> None:
    """Every model x client count x protocol against one running server."""
    for model, shape in shapes.items():
        if model not in args.models:
            continue
        for threads in args.threads:
            for protocol in protocols:
                spec = {"protocol": protocol, "model": model, "shape": list(shape),
                        "threads": threads, "seconds": args.seconds, "grpc": server.grpc,
                        "http": server.http, "tls": str(tls)}
                cpu_before = server.cpu_s()
                result = _measure(spec)
                # Warm-up calls included: a few of thousands.
                result["server_cpu_us_per_request"] = (
                    (server.cpu_s() - cpu_before) / max(result["requests"], 1) * 1e6)
                row = {"model": model, "clients": threads, "server": name,
                       "protocol": protocol, **result}
                rows.append(row)
                print(f"{model:10} {threads:3} {name:16} {protocol:12} {result['rps']:7.0f} "
                      f"req/s  p50 {result['p50_ms'] or 0:6.2f} ms  p99 "
                      f"{result['p99_ms'] or 0:6.2f} ms  server CPU "
                      f"{result['server_cpu_us_per_request']:5.0f} us/req  client CPU "
                      f"{result['client_cpu_share']:4.0%}  "
                      f"{result['errors'] or ''}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--frontends", nargs="+", default=["grpcio", "native"])
    parser.add_argument("--models", nargs="+", default=["tiny", "small_cnn"])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--triton", type=Path, metavar="DIR",
                        help="folder with the nvidia-pytriton 0.7.0 wheel (pip download "
                             "--no-deps nvidia-pytriton==0.7.0 -d DIR): Triton's rows too")
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
        secure = [p for p in args.protocols if p != "http-plain"]
        for frontend in args.frontends:
            if frontend == "native" and not available():
                continue
            # HTTP does not depend on the gRPC transport: measured with the first one.
            first = frontend == args.frontends[0]
            server = Server(work / "repo", tls, frontend, work / "server.log")
            try:
                _run_server(server, f"edgecut {frontend}",
                            secure if first else [p for p in secure if p == "grpc"],
                            shapes, args, tls, rows)
            finally:
                server.stop()
        if "http-plain" in args.protocols:
            server = Server(work / "repo", None, args.frontends[0], work / "server.log")
            try:
                _run_server(server, "edgecut", ["http-plain"], shapes, args, tls, rows)
            finally:
                server.stop()
        if args.triton is not None:
            _repository(work / "triton-repo", backend="python")
            triton = Triton(args.triton, work / "triton-repo", tls, work / "triton.log")
            try:
                _run_server(triton, "triton 2.51",
                            [p for p in args.protocols if p in ("grpc", "http-plain")],
                            shapes, args, tls, rows)
            finally:
                triton.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "seconds": args.seconds}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
