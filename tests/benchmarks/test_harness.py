"""The benchmark harness, for real: shaped links, the delay proxy, CPU-limited processes.

No timing is asserted (benchmarks measure, tests check behaviour): bytes arrive intact through
a 1 Mbit/s link and the proxy, and nothing is left behind (namespaces, cgroups). Tests that
need root or `ip netns` skip with the reason.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.harness import HarnessUnavailable  # noqa: E402
from benchmarks.harness.cgroup import CpuLimit, list_groups  # noqa: E402
from benchmarks.harness.delay import DelayProxy, measure_overhead  # noqa: E402
from benchmarks.harness.netns import CLOUD_ADDRESS, ShapedLink, list_namespaces  # noqa: E402
from benchmarks.harness.stats import ranks, spearman  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ip netns, tc, cgroups)")

_SINK = """
import socket, sys
srv = socket.create_server(("0.0.0.0", 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
total = 0
while data := conn.recv(65536):
    total += len(data)
conn.sendall(str(total).encode())
conn.close()
"""

_SEND = """
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
start = time.perf_counter()
with socket.create_connection((host, port), timeout=20) as s:
    s.sendall(bytes(range(256)) * (n // 256))
    s.shutdown(socket.SHUT_WR)
    got = s.recv(64)
print(got.decode(), time.perf_counter() - start, flush=True)
"""


def _enter(link: ShapedLink) -> ShapedLink:
    try:
        return link.__enter__()
    except HarnessUnavailable as exc:
        pytest.skip(str(exc))


@needs_root
def test_shaped_link_delivers_bytes_and_cleans_up() -> None:
    before = set(list_namespaces())
    link = _enter(ShapedLink(up_mbps=1, down_mbps=1))
    try:
        assert {link.device_ns, link.cloud_ns} <= set(list_namespaces())
        sink = subprocess.Popen([*link.cloud_exec(), sys.executable, "-c", _SINK],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert sink.stdout is not None
            port = sink.stdout.readline().strip()
            n = 64 * 1024  # 0.5 s at 1 Mbit/s
            out = subprocess.run([*link.device_exec(), sys.executable, "-c", _SEND, CLOUD_ADDRESS,
                                  port, str(n)], capture_output=True, text=True, timeout=20,
                                 check=True).stdout.split()
            assert int(out[0]) == n
            # Not asserted: 64 KiB at 1 Mbit/s takes about 0.52 s plus TCP's start-up.
            print(f"64 KiB over 1 Mbit/s took {float(out[1]):.3f} s")
            link.set_rate(up_mbps=100, down_mbps=100)
            assert "100Mbit" in link.qdisc_statistics()
        finally:
            sink.wait(timeout=10)
            sink.stdout.close()
    finally:
        link.close()
    assert set(list_namespaces()) == before


@needs_root
def test_shaped_link_is_removed_on_error() -> None:
    before = set(list_namespaces())
    with pytest.raises(RuntimeError, match="boom"), ShapedLink(up_mbps=5, down_mbps=5) as link:
        assert link.device_ns in list_namespaces()
        raise RuntimeError("boom")
    assert set(list_namespaces()) == before


def _echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            conn.sendall(data[::-1])  # reversed: proves the reply is not the request echoed back

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_delay_proxy_forwards_both_ways_intact() -> None:
    server, port = _echo_server()
    payload = os.urandom(300_000)
    try:
        with DelayProxy(("127.0.0.1", port), one_way_ms=10) as proxy, \
                socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            start = time.perf_counter()
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
            elapsed = time.perf_counter() - start
    finally:
        server.close()
    assert got == payload[::-1]
    print(f"300 kB through the proxy (rtt 20 ms): {elapsed * 1e3:.1f} ms")


def test_delay_proxy_reports_its_overhead() -> None:
    figures = measure_overhead(0.0, rounds=20)
    assert set(figures) == {"direct_rtt_ms", "proxied_rtt_ms", "overhead_ms"}
    assert figures["proxied_rtt_ms"] > 0


@needs_root
def test_cpu_limit_runs_a_process_and_cleans_up() -> None:
    before = list_groups()
    try:
        cpu = CpuLimit(fraction=0.3).__enter__()
    except HarnessUnavailable as exc:
        pytest.skip(str(exc))
    try:
        code = "import os; print(open('/proc/self/cgroup').read(), os.sched_getaffinity(0))"
        out = subprocess.run(cpu.wrap([sys.executable, "-c", code], core=0), capture_output=True,
                             text=True, check=True, timeout=20).stdout
        assert cpu.path.name in out
        assert "{0}" in out
        cpu.set_fraction(1.0)
        assert (cpu.path / "cpu.cfs_quota_us").read_text().strip() == str(cpu.period_us)
    finally:
        cpu.close()
    assert list_groups() == before


def test_rank_correlation_matches_definition() -> None:
    assert ranks([3.0, 1.0, 2.0, 2.0]) == [4.0, 1.0, 2.5, 2.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None
