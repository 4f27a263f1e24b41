"""A link whose bandwidth changes while requests run: a shaped veth to a namespace, or a proxy.

    with NamespaceLink(up_mbps=100, down_mbps=100) as link:      # root only
        endpoint = EndpointProcess(..., host=link.cloud_address, netns=link.namespace)
        link.set_rate(up_mbps=1, down_mbps=1)                    # tc qdisc change, in place

    with ThrottleProxy("127.0.0.1:8001", up_mbps=100, down_mbps=100) as proxy:   # anywhere
        Config(..., endpoint=proxy.address)
        proxy.set_rate(up_mbps=1, down_mbps=1)

`NamespaceLink` is one network namespace joined to the caller's by a veth pair: the caller
(the device, in this process) keeps its own namespace, so a Predictor under test runs here and
its events can be read; the endpoint runs inside the namespace (`ip netns exec`). The egress
of the caller's end is the uplink, the namespace end's egress the downlink, each a `tbf` whose
bucket holds 1 ms of traffic (two frames at least), so that a request after an idle pause does
not cross at the veth's own speed. `netem` is not available on these machines; no delay is added.

`ThrottleProxy` is the fallback where there is no root or no `ip netns`: a loopback TCP proxy
with one token bucket per direction, shared by every connection through it, changeable at run
time, its bucket as deep as the tbf's. It shapes what Python threads can (sleeps of a
fraction of a millisecond), enough to move a 10 KiB tensor from under a millisecond to tens of
them.

Addresses: slot N gives 10.201.N.1 (caller) and 10.201.N.2 (namespace); the server's
certificate must name the namespace's address (`init_ca(..., hosts=[cloud_address(N)])`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from types import TracebackType

from benchmarks.harness import HarnessUnavailable
from benchmarks.harness.tcp import TcpServer

__all__ = ["NamespaceLink", "ThrottleProxy", "TokenBucket", "burst_bytes", "cloud_address",
           "default_slot"]


def default_slot() -> int:
    """A subnet slot from this process's id, so parallel runs on one machine do not collide."""
    return 1 + os.getpid() % 250


def cloud_address(slot: int) -> str:
    """The address the namespace's end of slot `slot` has."""
    return f"10.201.{slot}.2"


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def burst_bytes(mbps: float) -> float:
    """The token bucket's depth at `mbps`: 1 ms of traffic."""
    return mbps * 1e6 / 8 * 1e-3


def _tbf(mbps: float) -> list[str]:
    # At least two full frames, otherwise 1 ms of traffic (12.5 KB at 100 Mbit/s): a larger
    # bucket lets a whole 20 KB request or probe cross at the veth's own speed after a pause,
    # and the device would measure a 100 Mbit/s link at a Gbit/s.
    burst = int(max(3028, burst_bytes(mbps)))
    return ["tbf", "rate", f"{int(mbps * 1e6)}bit", "burst", str(burst), "latency", "100ms"]


class NamespaceLink:
    """A veth from this namespace to a new one, both directions shaped by `tbf`."""

    def __init__(self, *, up_mbps: float, down_mbps: float, slot: int | None = None) -> None:
        self.slot = default_slot() if slot is None else slot
        if not 1 <= self.slot <= 254:
            raise ValueError(f"slot must be in 1..254, got {self.slot}")
        self.namespace = f"ecfault{self.slot}"
        self.device_if = f"ecf{self.slot}d"
        self.cloud_if = f"ecf{self.slot}c"
        self.device_address = f"10.201.{self.slot}.1"
        self.cloud_address = cloud_address(self.slot)
        self.up_mbps, self.down_mbps = up_mbps, down_mbps
        self._made_ns = self._made_link = False

    def __enter__(self) -> NamespaceLink:
        if os.geteuid() != 0:
            raise HarnessUnavailable("a shaped namespace link needs root (ip netns, tc)")
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                raise HarnessUnavailable(f"{tool!r} is not installed (iproute2)")
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _step(self, *cmd: str) -> None:
        result = _run(list(cmd))
        if result.returncode:
            raise HarnessUnavailable(f"{' '.join(cmd)} failed: {result.stderr.strip()}")

    def _create(self) -> None:
        # Leftovers of a killed run with the same slot would make every step below fail.
        _run(["ip", "netns", "del", self.namespace])
        _run(["ip", "link", "del", self.device_if])
        self._step("ip", "netns", "add", self.namespace)
        self._made_ns = True
        self._step("ip", "link", "add", self.device_if, "type", "veth", "peer", "name",
                   self.cloud_if)
        self._made_link = True
        self._step("ip", "link", "set", self.cloud_if, "netns", self.namespace)
        self._step("ip", "addr", "add", f"{self.device_address}/30", "dev", self.device_if)
        self._step("ip", "link", "set", self.device_if, "up")
        ns = ["ip", "-n", self.namespace]
        self._step(*ns, "addr", "add", f"{self.cloud_address}/30", "dev", self.cloud_if)
        self._step(*ns, "link", "set", self.cloud_if, "up")
        self._step(*ns, "link", "set", "lo", "up")
        self._qdisc("add", self.up_mbps, self.down_mbps)

    def _qdisc(self, verb: str, up_mbps: float, down_mbps: float) -> None:
        self._step("tc", "qdisc", verb, "dev", self.device_if, "root", *_tbf(up_mbps))
        self._step("ip", "netns", "exec", self.namespace, "tc", "qdisc", verb, "dev",
                   self.cloud_if, "root", *_tbf(down_mbps))

    def set_rate(self, *, up_mbps: float, down_mbps: float) -> None:
        """Both directions' rates, changed in place (connections stay up)."""
        self._qdisc("change", up_mbps, down_mbps)
        self.up_mbps, self.down_mbps = up_mbps, down_mbps

    def exec_prefix(self) -> list[str]:
        """Argv prefix that runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.namespace]

    def close(self) -> None:
        """Delete the namespace and the veth pair; safe to call twice."""
        if self._made_ns:
            _run(["ip", "netns", "del", self.namespace])
            self._made_ns = False
        if self._made_link:
            # Deleting the namespace removes the pair, but asynchronously: do not leave it to
            # collide with the next link of this slot.
            _run(["ip", "link", "del", self.device_if])
            self._made_link = False


class TokenBucket:
    """`rate_mbps` on average with bursts of `burst_bytes`; take() blocks until the bytes fit.

    Thread-safe; the rate can change at any time (waiters see it at their next check).
    """

    def __init__(self, rate_mbps: float) -> None:
        self._lock = threading.Lock()
        self.set_rate(rate_mbps)
        self._tokens = float(self.burst_bytes)
        self._stamp = time.monotonic()

    def set_rate(self, rate_mbps: float) -> None:
        """The rate, and the depth with it (as the tbf of NamespaceLink: 1 ms, >= 3028 B)."""
        if not rate_mbps > 0:
            raise ValueError(f"rate_mbps must be > 0, got {rate_mbps}")
        with self._lock:
            self._rate = rate_mbps * 1e6 / 8  # bytes per second
            self.rate_mbps = rate_mbps
            self.burst_bytes = int(max(3028, burst_bytes(rate_mbps)))

    def take(self, nbytes: int, stop: threading.Event) -> None:
        """Wait until `nbytes` may pass (returns early when `stop` is set)."""
        while not stop.is_set():
            with self._lock:
                now = time.monotonic()
                self._tokens = min(float(max(self.burst_bytes, nbytes)),
                                   self._tokens + (now - self._stamp) * self._rate)
                self._stamp = now
                if self._tokens >= nbytes:
                    self._tokens -= nbytes
                    return
                wait = (nbytes - self._tokens) / self._rate
            time.sleep(min(wait, 0.05))


class ThrottleProxy(TcpServer):
    """A loopback TCP proxy to `target` whose two directions are token-bucket limited."""

    _CHUNK = 16 * 1024

    def __init__(self, target: str, *, up_mbps: float, down_mbps: float) -> None:
        super().__init__()
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.up = TokenBucket(up_mbps)
        self.down = TokenBucket(down_mbps)

    @property
    def up_mbps(self) -> float:
        return self.up.rate_mbps

    @property
    def down_mbps(self) -> float:
        return self.down.rate_mbps

    def set_rate(self, *, up_mbps: float, down_mbps: float) -> None:
        self.up.set_rate(up_mbps)
        self.down.set_rate(down_mbps)

    def __enter__(self) -> ThrottleProxy:
        super().__enter__()
        return self

    def _handle(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._track(upstream)
        threading.Thread(target=self._pipe, args=(client, upstream, self.up),
                         daemon=True).start()
        self._pipe(upstream, client, self.down)

    def _pipe(self, src: socket.socket, dst: socket.socket, bucket: TokenBucket) -> None:
        try:
            while not self._stop.is_set():
                data = src.recv(self._CHUNK)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                # In pieces no larger than the bucket: a chunk must not cross in one burst.
                view = memoryview(data)
                while view:
                    piece = view[:bucket.burst_bytes]
                    bucket.take(len(piece), self._stop)
                    dst.sendall(piece)
                    view = view[len(piece):]
        except OSError:
            with contextlib.suppress(OSError):
                dst.close()
