"""Load from a process of its own, pinned to the core the server does not use.

    python -m benchmarks.serving.loadgen '{"client": "triton", "address": ..., ...}'

prints one JSON line: requests and failures in the measured window, throughput (rows/s),
p50/p99 latency (ms), and the first few error messages. `client` is `triton` (stock
`tritonclient.grpc`, a real peer client), `triton-http` (stock `tritonclient.http` with
Triton's binary tensors, over HTTPS, or plain HTTP with `tls: false`) or `edgecut` (the
device's own CloudClient); all but plain HTTP speak TLS with the fleet's CA. `bare` sends
the same bytes to channel.py's bare grpcio handler (no model): the floor of a Python gRPC
server on this core. `clients` threads each keep one request in flight (closed loop); with
`rate_per_s` they send on a fixed schedule instead (open loop, for the soak) and fall
behind rather than drop when the server is slower. Every loop is bounded in time
(`warmup_s` + `duration_s`) and count (`max_requests`).

Channels: one per client thread up to `channels` (default 16), shared round-robin beyond;
an HTTP client is one connection per thread, never shared (gevent ties it to its thread).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LoadResult", "LoadSpec", "run_load"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSpec:
    client: str  # "triton" | "triton-http" | "edgecut" | "bare"
    address: str
    tls_dir: str
    model: str
    row_shape: tuple[int, ...]
    clients: int
    duration_s: float
    warmup_s: float = 1.0
    max_requests: int = 10_000_000
    rate_per_s: float | None = None
    channels: int = 16
    timeout_s: float = 30.0
    input_name: str = "x"
    output_name: str = "y"
    # False: plaintext (HTTP without TLS, as Triton's HTTP endpoint serves; triton-http only).
    tls: bool = True
    # False: an answer without output bytes is counted in `empty_outputs`, not as a failure
    # (Triton 2.51's Python backend on a machine without CUDA answers so, see triton.py).
    check_output: bool = True
    # Several generators side by side (processes.run_load_pinned): each returns its window's
    # latencies for merging, and starts its clock at the same wall-clock instant (time.time()).
    keep_latencies: bool = False
    start_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadResult:
    requests: int  # completed in the window (successes)
    failures: int  # anywhere (window, warm-up or tail): a failure is never excused
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    window_s: float
    late_ms_p99: float = 0.0  # open loop: how far behind schedule sends went
    empty_outputs: int = 0
    # open loop: latency counted from when the request was due, not when it was sent (a
    # generator that fell behind would otherwise hide the wait: coordinated omission)
    p99_from_schedule_ms: float = 0.0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] | None = None  # the window's, when the spec keeps them
    processes: int = 1  # load generator processes merged into this result
    # When the measured window opened, by the wall clock (time.time()): others' measurements
    # of the same window (the server's CPU, processes.CpuSampler) line up with it.
    window_started_at: float = 0.0


def _make_call(spec: LoadSpec) -> Any:
    """A function that sends one request on the given client object, and the client maker."""
    x = np.random.default_rng(0).standard_normal((1, *spec.row_shape), dtype=np.float32)
    if spec.client == "triton":
        import tritonclient.grpc as tc

        def make() -> Any:
            return tc.InferenceServerClient(
                spec.address, ssl=True, root_certificates=str(Path(spec.tls_dir) / "ca.crt"))

        def call(client: Any) -> bool:
            tensor = tc.InferInput(spec.input_name, list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            result = client.infer(spec.model, [tensor], client_timeout=spec.timeout_s)
            response = result.get_response()
            if not spec.check_output and not any(response.raw_output_contents):
                return False
            out = result.as_numpy(spec.output_name)
            if out is None or out.shape[0] != 1:
                raise RuntimeError(f"bad output {None if out is None else out.shape}")
            return True
    elif spec.client == "triton-http":
        import tritonclient.http as th

        ca = str(Path(spec.tls_dir) / "ca.crt")

        def make() -> Any:
            return th.InferenceServerClient(
                spec.address, ssl=spec.tls, ssl_options={"ca_certs": ca} if spec.tls else None,
                network_timeout=spec.timeout_s, connection_timeout=spec.timeout_s)

        wanted = [th.InferRequestedOutput(spec.output_name, binary_data=True)]

        def call(client: Any) -> bool:
            tensor = th.InferInput(spec.input_name, list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            result = client.infer(spec.model, [tensor], outputs=wanted)
            described = result.get_output(spec.output_name) or {}
            if (not spec.check_output
                    and described.get("parameters", {}).get("binary_data_size") == 0):
                return False
            out = result.as_numpy(spec.output_name)
            if out is None or out.shape[0] != 1:
                raise RuntimeError(f"bad output {None if out is None else out.shape}")
            return True
    elif spec.client == "edgecut":
        from edgecut.edge.client import CloudClient

        def make() -> Any:
            return CloudClient(spec.address, tls_dir=Path(spec.tls_dir), timeout_s=spec.timeout_s)

        def call(client: Any) -> bool:
            out = client.infer(spec.model, {spec.input_name: x}).outputs[spec.output_name]
            if out.shape[0] != 1:
                raise RuntimeError(f"bad output {out.shape}")
            return True
    elif spec.client == "bare":
        import grpc

        from edgecut.protocol.tls import channel_credentials

        from .channel import BARE_METHOD, MAX_MESSAGE

        payload = x.tobytes()

        def make() -> Any:
            channel = grpc.secure_channel(
                spec.address, channel_credentials(Path(spec.tls_dir)),
                options=[("grpc.max_send_message_length", MAX_MESSAGE)])
            return channel.unary_unary(BARE_METHOD)

        def call(client: Any) -> bool:
            if client(payload, timeout=spec.timeout_s) != b"ok":
                raise RuntimeError("bare call: bad answer")
            return True
    else:
        raise ValueError(f"client must be 'triton', 'triton-http', 'edgecut' or 'bare', "
                         f"got {spec.client!r}")
    return make, call


def run_load(spec: LoadSpec) -> LoadResult:
    make, call = _make_call(spec)
    # tritonclient.http's connection belongs to the thread that made it (gevent's hub): each
    # worker makes and warms its own. The others' are made here and shared round-robin.
    own = spec.client == "triton-http"
    clients = [] if own else [make() for _ in range(max(1, min(spec.clients, spec.channels)))]
    for client in clients:  # connect (TLS handshake) before the clock starts
        call(client)
    lock = threading.Lock()
    done: list[tuple[float, float]] = []  # (finished at, latency s)
    late: list[float] = []
    from_schedule: list[float] = []
    errors: list[str] = []
    failures = 0
    empty = 0
    issued = 0
    start = window_start = stop_at = window_wall = 0.0

    def open_window() -> None:  # once every client is connected
        nonlocal start, window_start, stop_at, window_wall
        if spec.start_at is not None:
            time.sleep(max(0.0, spec.start_at - time.time()))
        window_wall = time.time() + spec.warmup_s
        start = time.perf_counter()
        window_start = start + spec.warmup_s
        stop_at = window_start + spec.duration_s

    connected = threading.Barrier(spec.clients + 1, action=open_window)

    def worker(i: int) -> None:
        nonlocal failures, issued, empty
        if own:
            try:
                client = make()
                call(client)
            except Exception as exc:  # this client cannot connect: a failure, and it stops
                with lock:
                    failures += 1
                    if len(errors) < 5:
                        errors.append(f"connecting: {type(exc).__name__}: {str(exc)[:300]}")
                connected.wait()
                return
            connected.wait()
        else:
            client = clients[i % len(clients)]
            connected.wait()
        k = 0
        while True:
            now = time.perf_counter()
            due = now
            if spec.rate_per_s:
                due = start + (i + k * spec.clients) / spec.rate_per_s
                k += 1
                if due >= stop_at:
                    return
                if due > now:
                    time.sleep(due - now)
                    now = time.perf_counter()
                elif now >= window_start:
                    late.append(now - due)
            if now >= stop_at:
                return
            with lock:
                if issued >= spec.max_requests:
                    return
                issued += 1
            try:
                full = call(client)
            except Exception as exc:  # every failure is counted, whatever its kind
                with lock:
                    failures += 1
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
                continue
            end = time.perf_counter()
            with lock:
                done.append((end, end - now))
                empty += not full
                if spec.rate_per_s and window_start <= end <= stop_at:
                    from_schedule.append(end - due)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(spec.clients)]
    for t in threads:
        t.start()
    connected.wait(timeout=len(threads) * spec.timeout_s + 60.0)
    for t in threads:
        t.join(timeout=max(0.0, stop_at - time.perf_counter()) + spec.timeout_s + 5.0)
    window = [lat for end, lat in done if window_start <= end <= stop_at]
    lat_ms = np.array(window) * 1e3 if window else np.array([np.nan])
    late_ms = np.array(late) * 1e3 if late else np.array([0.0])
    return LoadResult(
        requests=len(window), failures=failures,
        throughput_rps=len(window) / spec.duration_s,
        p50_ms=float(np.percentile(lat_ms, 50)), p99_ms=float(np.percentile(lat_ms, 99)),
        mean_ms=float(np.mean(lat_ms)), window_s=spec.duration_s,
        late_ms_p99=float(np.percentile(late_ms, 99)), errors=errors, empty_outputs=empty,
        p99_from_schedule_ms=float(np.percentile(np.array(from_schedule) * 1e3, 99))
        if from_schedule else 0.0,
        latencies_ms=[round(x, 4) for x in lat_ms.tolist()] if spec.keep_latencies and window
        else None,
        window_started_at=window_wall,
    )


def main(argv: list[str] | None = None) -> int:
    args = json.loads((argv or sys.argv[1:])[0])
    args["row_shape"] = tuple(args["row_shape"])
    result = run_load(LoadSpec(**args))
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
