"""The channel: ModelInfer with a 4 MiB fp32 tensor against a bare grpcio call of 4 MiB.

Both go over TLS to a server process on the server core, from a client process on the other
core, one call at a time (the channel's own throughput, not the model's: the `sink` model
reads 4 MiB and answers one number). The bare call is the floor: a generic grpcio handler
that takes the request bytes as they arrive and answers 2 bytes, with a request serialised
once before the clock starts.

    python -m benchmarks.serving.channel serve --tls DIR --port-file F   # the bare server
    python -m benchmarks.serving.channel serve --native ...             # same, C++ transport
    python -m benchmarks.serving.channel call '{"kind": "bare", ...}'    # one client run

Copies of the 4 MiB on the ModelInfer path (read from the code, per call):
  client (edgecut CloudClient): the array into the request bytes (edge/wire.py, 1); grpc's
    Python layer hands the bytes object to core (no copy); TLS encrypts into its frames (1).
  server: TLS decrypts into slices (1); grpc's Python layer joins the slices into one bytes
    object (1); edgecut.protocol.rawfields takes `raw_input_contents` as a view of it (0;
    protobuf's parser would copy it into its arena and again on every read: 2);
    np.frombuffer views it (0).
  tritonclient: `tobytes()` (1), protobuf serialises the message (1), then as above.
Every such buffer is over glibc's default mmap threshold (128 KiB, raised dynamically up to
32 MiB after the first free), so each may be mmap'd and munmap'd (page faults on first touch)
per call unless MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ keep them on the heap.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from edgecut.protocol.tls import channel_credentials, server_credentials

BARE_METHOD = "/edgecut.bench.Bare/Upload"
MAX_MESSAGE = 64 << 20


def serve_bare(tls_dir: Path, port_file: Path) -> None:
    def upload(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"ok" if len(request) else b""

    handler = grpc.method_handlers_generic_handler("edgecut.bench.Bare", {
        "Upload": grpc.unary_unary_rpc_method_handler(upload)})
    server = grpc.server(ThreadPoolExecutor(max_workers=4), options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls_dir, mutual=False))
    server.start()
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.rename(port_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop(2).wait(5)


def call_run(spec: dict) -> dict:
    """Sequential calls for `seconds` (at most `max_calls`); MB/s of payload and latencies."""
    tls = Path(spec["tls_dir"])
    nbytes = int(spec["nbytes"])
    x = np.random.default_rng(0).standard_normal((1, nbytes // 4), dtype=np.float32)
    options = [("grpc.max_send_message_length", MAX_MESSAGE),
               ("grpc.max_receive_message_length", MAX_MESSAGE)]
    kind = spec["kind"]
    if kind == "bare":
        channel = grpc.secure_channel(spec["address"], channel_credentials(tls), options=options)
        upload = channel.unary_unary(BARE_METHOD)
        payload = x.tobytes()

        def call() -> None:
            if upload(payload, timeout=30) != b"ok":
                raise RuntimeError("bare call: bad answer")
    elif kind == "edgecut":
        from edgecut.edge.client import CloudClient

        client = CloudClient(spec["address"], tls_dir=tls, timeout_s=30)

        def call() -> None:
            client.infer(spec["model"], {"x": x})
    elif kind == "triton":
        import tritonclient.grpc as tc

        tclient = tc.InferenceServerClient(spec["address"], ssl=True,
                                           root_certificates=str(tls / "ca.crt"))

        def call() -> None:
            tensor = tc.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            tclient.infer(spec["model"], [tensor], client_timeout=30)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    for _ in range(3):
        call()
    latencies = []
    start = time.perf_counter()
    while len(latencies) < int(spec.get("max_calls", 100_000)):
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
        if t0 - start >= float(spec["seconds"]):
            break
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1e3
    return {"calls": len(latencies), "mb_per_s": len(latencies) * nbytes / elapsed / 1e6,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def serve_bare_native(tls_dir: Path, port_file: Path) -> None:
    """The same bare handler over edgecut's C++ transport: each group of received calls is
    answered from Python, one GIL acquisition per group, as the endpoint's dispatcher runs."""
    from edgecut.cloud import _frontend

    frontend = _frontend.Frontend("127.0.0.1:0", str(tls_dir), False, False, MAX_MESSAGE)

    def dispatch(calls: list, ended: list, infers: list = ()) -> None:  # no infer lane here
        # (id, method, payload, metadata, peer, time left, address ...): only the first
        # three matter here, and the transport may add fields after them.
        for call_id, _method, payload, *_rest in calls:
            frontend.finish(call_id, 0, "", b"ok" if len(payload) else b"")

    frontend.start(dispatch)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(frontend.port))
    tmp.rename(port_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    frontend.stop(2.0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "call":
        print(json.dumps(call_run(json.loads(argv[1]))), flush=True)
        return 0
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["serve"])
    p.add_argument("--tls", type=Path, required=True)
    p.add_argument("--port-file", type=Path, required=True)
    p.add_argument("--native", action="store_true",
                   help="serve over edgecut's C++ transport instead of grpcio")
    args = p.parse_args(argv)
    (serve_bare_native if args.native else serve_bare)(args.tls, args.port_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
