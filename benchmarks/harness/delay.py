"""A user-space TCP proxy that delays each direction by a fixed one-way time.

The `netem` qdisc is not available on these machines, so round-trip delay is added here: run
the proxy in the device namespace, point the device at `127.0.0.1:<listen port>`, and the proxy
forwards to the cloud endpoint over the shaped veth. Each chunk read is stamped on arrival and
written `one_way_ms` later, by a separate writer thread per direction, so the delay does not
serialise with the transfer: a stream keeps its bandwidth and pays the delay once each way, as
on a long link.

    with DelayProxy(("10.77.0.2", 8001), one_way_ms=20) as proxy:   # rtt 40 ms
        channel = grpc.secure_channel(f"127.0.0.1:{proxy.port}", ...)

As a program (what the benchmark runs inside `ip netns exec`):

    python -m benchmarks.harness.delay --listen 127.0.0.1:0 --target 10.77.0.2:8001 --one-way-ms 20

prints `listening on HOST:PORT` once ready, and runs until SIGTERM or stdin closes.

Limits: TCP's congestion control on the shaped hop sees the veth's tiny round trip, not the
added delay, so slow start ends sooner than on a real long link. A connection's half-close
is forwarded (shutdown of the write side once the reader sees EOF).
"""

from __future__ import annotations

import argparse
import queue
import signal
import socket
import sys
import threading
import time

from benchmarks.harness.tcp import TcpServer

__all__ = ["DelayProxy", "main"]

_CHUNK = 256 * 1024
_EOF = b""


class _Pipe:
    """One direction of one connection: a reader stamps chunks, a writer releases them late."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay_s: float,
                 on_done: threading.Event) -> None:
        self.src, self.dst, self.delay_s = src, dst, delay_s
        self.pending: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self.on_done = on_done
        self.bytes = 0
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                data = self.src.recv(_CHUNK)
                self.pending.put((time.monotonic() + self.delay_s, data))
                if not data:
                    return
        except OSError:
            self.pending.put((time.monotonic(), _EOF))

    def _write(self) -> None:
        try:
            while True:
                due, data = self.pending.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    self.dst.shutdown(socket.SHUT_WR)
                    return
                self.dst.sendall(data)
                self.bytes += len(data)
        except OSError:
            pass
        finally:
            self.on_done.set()


class DelayProxy(TcpServer):
    """Listens on `listen`, forwards each connection to `target`, delaying both directions."""

    def __init__(self, target: tuple[str, int], *, one_way_ms: float,
                 listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        if one_way_ms < 0:
            raise ValueError(f"one_way_ms must be >= 0, got {one_way_ms}")
        super().__init__(listen)
        self.target = target
        self.delay_s = one_way_ms / 1000.0

    def __enter__(self) -> DelayProxy:
        super().__enter__()
        return self

    def _handle(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        client.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._track(upstream)
        done = threading.Event()
        _Pipe(client, upstream, self.delay_s, done)
        _Pipe(upstream, client, self.delay_s, done)


def measure_overhead(one_way_ms: float = 0.0, rounds: int = 200) -> dict[str, float]:
    """Median extra round-trip time the proxy adds over a direct loopback connection, in ms.

    Uses a tiny echo server; the configured delay is subtracted, so the figure is the proxy's
    own cost (two extra hops through Python threads).
    """
    echo = socket.create_server(("127.0.0.1", 0))
    port = echo.getsockname()[1]

    def serve() -> None:
        conns = []
        try:
            while True:
                conn, _ = echo.accept()
                conns.append(conn)
                threading.Thread(target=_echo, args=(conn,), daemon=True).start()
        except OSError:
            for c in conns:
                c.close()

    threading.Thread(target=serve, daemon=True).start()

    def rtts(address: tuple[str, int]) -> list[float]:
        with socket.create_connection(address) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            out = []
            for _ in range(rounds):
                start = time.perf_counter()
                s.sendall(b"x" * 64)
                got = 0
                while got < 64:
                    got += len(s.recv(64))
                out.append((time.perf_counter() - start) * 1e3)
            return sorted(out)

    try:
        direct = rtts(("127.0.0.1", port))
        with DelayProxy(("127.0.0.1", port), one_way_ms=one_way_ms) as proxy:
            proxied = rtts(("127.0.0.1", proxy.port))
    finally:
        echo.close()
    med = len(direct) // 2
    return {"direct_rtt_ms": direct[med], "proxied_rtt_ms": proxied[med],
            "overhead_ms": proxied[med] - direct[med] - 2 * one_way_ms}


def _echo(conn: socket.socket) -> None:
    try:
        while data := conn.recv(65536):
            conn.sendall(data)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--target", required=True, metavar="HOST:PORT")
    parser.add_argument("--one-way-ms", type=float, required=True)
    args = parser.parse_args(argv)
    lhost, _, lport = args.listen.rpartition(":")
    thost, _, tport = args.target.rpartition(":")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with DelayProxy((thost, int(tport)), one_way_ms=args.one_way_ms,
                    listen=(lhost, int(lport))) as proxy:
        print(f"listening on {proxy.host}:{proxy.port}", flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
