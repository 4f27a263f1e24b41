"""Two network namespaces joined by a veth pair whose two directions are shaped with `tbf`.

    with ShapedLink(up_mbps=5, down_mbps=5) as link:
        subprocess.run([*link.device_exec(), "python", "client.py"])   # device side, 10.77.0.1
        subprocess.Popen([*link.cloud_exec(), "edgecut", "serve", ...])  # cloud side, 10.77.0.2
        link.set_rate(up_mbps=100, down_mbps=100)                      # no re-creation

The device's veth egress is the uplink, the cloud's veth egress the downlink. Names carry the
process id and a counter, so parallel runs do not collide (veth names stay within Linux's 15
characters). `netem` is not available on these machines: add round-trip delay with
`benchmarks.harness.delay`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from types import TracebackType

from benchmarks.harness import HarnessUnavailable

__all__ = ["CLOUD_ADDRESS", "DEVICE_ADDRESS", "ShapedLink", "list_namespaces"]

DEVICE_ADDRESS = "10.77.0.1"
CLOUD_ADDRESS = "10.77.0.2"
_counter = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def list_namespaces() -> list[str]:
    """Names of the network namespaces that exist now (`ip netns list`)."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _tbf_args(mbps: float) -> list[str]:
    # burst must hold at least one MTU and about a millisecond of traffic; the queue holds
    # 400 ms (enough for TCP's window at 1 Mbit/s without tail drops in steady state).
    rate_bits = int(mbps * 1e6)
    burst = max(16 * 1024, rate_bits // 8 // 500)
    return ["tbf", "rate", f"{rate_bits}bit", "burst", str(burst), "latency", "400ms"]


class ShapedLink:
    """A shaped veth link between namespaces `<prefix>d` (device) and `<prefix>c` (cloud)."""

    def __init__(self, *, up_mbps: float, down_mbps: float, prefix: str | None = None) -> None:
        self.prefix = prefix or f"ec{os.getpid() % 100000}x{next(_counter)}"
        self.device_ns = f"{self.prefix}d"
        self.cloud_ns = f"{self.prefix}c"
        self.device_if = f"{self.prefix}v0"[:15]
        self.cloud_if = f"{self.prefix}v1"[:15]
        self.up_mbps = up_mbps
        self.down_mbps = down_mbps
        self._created: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> ShapedLink:
        if os.geteuid() != 0:
            raise HarnessUnavailable("shaped links need root (ip netns, tc); run as root")
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

    def _create(self) -> None:
        for ns in (self.device_ns, self.cloud_ns):
            result = _ip("netns", "add", ns, check=False)
            if result.returncode:
                raise HarnessUnavailable(f"ip netns add {ns} failed: {result.stderr.strip()}")
            self._created.append(ns)
        steps = [
            ("link", "add", self.device_if, "type", "veth", "peer", "name", self.cloud_if),
            ("link", "set", self.device_if, "netns", self.device_ns),
            ("link", "set", self.cloud_if, "netns", self.cloud_ns),
            ("-n", self.device_ns, "addr", "add", f"{DEVICE_ADDRESS}/24", "dev", self.device_if),
            ("-n", self.cloud_ns, "addr", "add", f"{CLOUD_ADDRESS}/24", "dev", self.cloud_if),
            ("-n", self.device_ns, "link", "set", self.device_if, "up"),
            ("-n", self.cloud_ns, "link", "set", self.cloud_if, "up"),
            ("-n", self.device_ns, "link", "set", "lo", "up"),
            ("-n", self.cloud_ns, "link", "set", "lo", "up"),
        ]
        for step in steps:
            result = _ip(*step, check=False)
            if result.returncode:
                raise HarnessUnavailable(f"ip {' '.join(step)} failed: {result.stderr.strip()}")
        self._qdisc("add", self.device_ns, self.device_if, self.up_mbps)
        self._qdisc("add", self.cloud_ns, self.cloud_if, self.down_mbps)

    def close(self) -> None:
        """Delete both namespaces (which deletes the veth pair); safe to call twice."""
        while self._created:
            _ip("netns", "del", self._created.pop(), check=False)

    # -- use ------------------------------------------------------------------------------

    def _qdisc(self, verb: str, ns: str, dev: str, mbps: float) -> None:
        cmd = ["ip", "netns", "exec", ns, "tc", "qdisc", verb, "dev", dev, "root", *_tbf_args(mbps)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode:
            raise HarnessUnavailable(f"{' '.join(cmd)} failed: {result.stderr.strip()}")

    def set_rate(self, *, up_mbps: float, down_mbps: float) -> None:
        """Change both directions' rates in place (`tc qdisc change`)."""
        self._qdisc("change", self.device_ns, self.device_if, up_mbps)
        self._qdisc("change", self.cloud_ns, self.cloud_if, down_mbps)
        self.up_mbps, self.down_mbps = up_mbps, down_mbps

    def device_exec(self) -> list[str]:
        """Argv prefix that runs a command inside the device namespace."""
        return ["ip", "netns", "exec", self.device_ns]

    def cloud_exec(self) -> list[str]:
        """Argv prefix that runs a command inside the cloud namespace."""
        return ["ip", "netns", "exec", self.cloud_ns]

    def qdisc_statistics(self) -> str:
        """`tc -s qdisc` of both ends (sent bytes, drops, overlimits), for reports."""
        return "\n".join(
            subprocess.run([*prefix, "tc", "-s", "qdisc", "show", "dev", dev],
                           capture_output=True, text=True, check=False).stdout
            for prefix, dev in ((self.device_exec(), self.device_if),
                                (self.cloud_exec(), self.cloud_if)))
