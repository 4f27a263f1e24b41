"""Pinned processes: the edgecut endpoint, onnxruntime alone, load generators.

The machine is split in two (layout()): the server (edgecut's, Triton, or onnxruntime alone) on
the server CPUs, the load generators on the client CPUs, each started under `taskset -c` so
every thread it makes stays there. By default the server has core 0 and the clients core 1;
`use_layout(CpuLayout(server=(0, 1, 2, 3), clients=tuple(range(4, 12))))` gives the server 4
cores (one model instance and one onnxruntime run per core) and starts one load generator
process per client core, their windows aligned, their latencies merged. `server_quota` also
limits each server to that many CPUs' worth of time (cgroups.CpuQuota, a container's CPU
limit, as Kubernetes' `resources.limits.cpu` sets one).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import psutil

from .cgroups import CpuQuota
from .loadgen import LoadResult, LoadSpec

__all__ = ["MALLOC_ENV", "REPO", "CpuLayout", "CpuSampler", "ForeignCpu", "PinnedServer", "endpoint_frontend",
           "endpoint_process", "http_address", "layout", "merge_loads", "ort_alone", "parse_cpus", "pinned",
           "run_json", "run_load_pinned", "server_allowance", "server_quota", "use_layout"]

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class CpuLayout:
    """Which CPUs the server gets and which the load generators get (disjoint)."""

    server: tuple[int, ...] = (0,)
    clients: tuple[int, ...] = (1,)
    # CPUs' worth of time each server may use on its CPUs (None: all of them).
    server_quota: float | None = None

    def __post_init__(self) -> None:
        if not self.server or not self.clients:
            raise ValueError("the server and the clients each need at least one CPU")
        if set(self.server) & set(self.clients):
            raise ValueError(f"server CPUs {self.server} and client CPUs {self.clients} overlap")
        if self.server_quota is not None and not 0 < self.server_quota <= len(self.server):
            raise ValueError(f"a server CPU quota must be above 0 and at most its "
                             f"{len(self.server)} CPU(s), got {self.server_quota}")

    def describe(self) -> str:
        def one(cpus: tuple[int, ...]) -> str:
            return f"core {cpus[0]}" if len(cpus) == 1 else f"cores {_cpu_list(cpus)}"
        limit = f" limited to {self.server_quota:g} CPU" if self.server_quota else ""
        return f"server on {one(self.server)}{limit}, clients on {one(self.clients)}"


_LAYOUT = CpuLayout()


def use_layout(new: CpuLayout) -> None:
    """Every process started from now on is pinned by `new`."""
    global _LAYOUT
    _LAYOUT = new


def layout() -> CpuLayout:
    return _LAYOUT


def parse_cpus(text: str) -> tuple[int, ...]:
    """`taskset -c` style: "0", "0-3", "4-11,14" -> the CPU numbers, in order."""
    cpus: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"CPU list must look like 0-3,6, got {text!r}")
        cpus += range(int(lo), int(hi or lo) + 1)
    return tuple(dict.fromkeys(cpus))


def _cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(map(str, cpus))


# glibc: keep buffers up to 64 MiB on the heap, and do not give the top of the heap back
# below 128 MiB, so 4 MiB messages reuse memory instead of mmap/munmap (and page faults) per call.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}


def pinned(cmd: list[str], cpus: Sequence[int]) -> list[str]:
    return ["taskset", "-c", _cpu_list(cpus), *cmd]


def server_allowance() -> float:
    """The CPUs' worth of time a server may use: its quota, else its CPUs."""
    return _LAYOUT.server_quota or float(len(_LAYOUT.server))


def server_quota(name: str) -> CpuQuota | None:
    """The CPU quota a server started now runs under (its own cgroup), None without one;
    raises cgroups.CpuQuotaUnavailable where none can be set."""
    quota = _LAYOUT.server_quota
    return CpuQuota(name, cpus=quota) if quota else None


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def run_json(module: str, args: list[str], *, cpus: Sequence[int], timeout_s: float,
             env: dict[str, str] | None = None) -> Any:
    """Run `python -m module args` pinned to `cpus`; its last stdout line parsed as JSON."""
    proc = subprocess.run(pinned([sys.executable, "-m", module, *args], cpus), cwd=REPO,
                          env=python_env(env), capture_output=True, text=True, timeout=timeout_s,
                          check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{module} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


def run_load_pinned(spec: LoadSpec, *, env: dict[str, str] | None = None) -> LoadResult:
    """The load from processes of its own: one per client CPU (no more than there are
    clients), each pinned to its CPU with its share of the clients and of the rate. Their
    measured windows start at the same instant; their latencies are merged."""
    cpus = _LAYOUT.clients[:max(1, spec.clients)]
    timeout = spec.warmup_s + spec.duration_s + 2 * spec.timeout_s + 60
    if len(cpus) == 1:
        out = run_json("benchmarks.serving.loadgen", [json.dumps(asdict(spec))], cpus=cpus,
                       timeout_s=timeout, env=env)
        return LoadResult(**out)
    shares = [spec.clients // len(cpus) + (i < spec.clients % len(cpus)) for i in range(len(cpus))]
    # Connecting (a TLS handshake per channel) takes each process a moment: start together.
    start_at = time.time() + 3.0

    def part(i: int) -> LoadResult:
        share = replace(spec, clients=shares[i], keep_latencies=True, start_at=start_at,
                        max_requests=max(1, spec.max_requests * shares[i] // spec.clients),
                        rate_per_s=spec.rate_per_s * shares[i] / spec.clients
                        if spec.rate_per_s else None)
        out = run_json("benchmarks.serving.loadgen", [json.dumps(asdict(share))],
                       cpus=[cpus[i]], timeout_s=timeout + 5.0, env=env)
        return LoadResult(**out)

    with ThreadPoolExecutor(len(cpus)) as pool:
        return merge_loads(list(pool.map(part, range(len(cpus)))))


def merge_loads(parts: list[LoadResult]) -> LoadResult:
    """One result of load generators that measured the same window side by side."""
    lat = np.array([x for p in parts for x in (p.latencies_ms or ())]) if parts else np.array([])
    if lat.size == 0:
        lat = np.array([np.nan])
    return LoadResult(
        requests=sum(p.requests for p in parts), failures=sum(p.failures for p in parts),
        throughput_rps=sum(p.throughput_rps for p in parts),
        p50_ms=float(np.percentile(lat, 50)), p99_ms=float(np.percentile(lat, 99)),
        mean_ms=float(np.mean(lat)), window_s=max(p.window_s for p in parts),
        late_ms_p99=max(p.late_ms_p99 for p in parts),
        empty_outputs=sum(p.empty_outputs for p in parts),
        # each generator's own p99; the worst of them (no raw samples are kept for it)
        p99_from_schedule_ms=max(p.p99_from_schedule_ms for p in parts),
        errors=[e for p in parts for e in p.errors][:5], processes=len(parts),
        window_started_at=min(p.window_started_at for p in parts))


def ort_alone(model: Path, batch_sizes: list[int], *, seconds: float,
              row_shape: Sequence[int] | None = None) -> dict[int, float]:
    """Seconds per `session.run` at each batch size, onnxruntime alone on the server CPUs:
    with several, one run in flight per CPU at once (what one instance per CPU can reach),
    and the seconds are the window over all runs."""
    timeout = 60 + 3 * seconds * len(batch_sizes) + 30
    cpus = _LAYOUT.server
    out = run_json("benchmarks.serving.ort_alone",
                   [str(model), "--batch-sizes", ",".join(map(str, batch_sizes)),
                    "--seconds", str(seconds), "--parallel", str(len(cpus)),
                    *(["--row-shape", ",".join(map(str, row_shape))] if row_shape else [])],
                   cpus=cpus, timeout_s=timeout)
    return {int(k): float(v) for k, v in out.items()}


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


class CpuSampler:
    """A process tree's CPU seconds, sampled every `interval_s` from a thread of its own, so
    that its use within a window known only afterwards (a load's measured window) can be read:

        with CpuSampler(server.pid) as cpu:
            result = run_load_pinned(spec)
        cpu.busy(result.window_started_at, result.window_s, allowance_cpus=1.0)
    """

    def __init__(self, pid: int, *, interval_s: float = 0.1) -> None:
        self._pid = pid
        self._interval_s = interval_s
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        while True:
            self._samples.append((time.time(), _tree_cpu_s(self._pid)))
            if self._stop.wait(self._interval_s):
                return

    def _at(self, t: float) -> float:
        """CPU seconds at wall-clock time `t`, interpolated between the samples."""
        samples = self._samples
        times = [x for x, _ in samples]
        return float(np.interp(t, times, [c for _, c in samples])) if samples else 0.0

    def busy(self, start: float, seconds: float, *, allowance_cpus: float) -> float:
        """The tree's CPU time from `start` for `seconds` over `allowance_cpus` CPUs' worth
        (0 where the window is not covered by samples)."""
        if not self._samples or seconds <= 0 or start < self._samples[0][0]:
            return 0.0
        used = self._at(start + seconds) - self._at(start)
        return used / (seconds * allowance_cpus)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


class ForeignCpu:
    """CPU seconds other people's processes used while a measurement ran.

    The machine's busy time (/proc/stat) minus this process, its finished children (the load
    generators: RUSAGE_CHILDREN) and the server's process tree. On a quiet machine it stays
    near 0; anything else on either core shows up here, and in the timings.

        with ForeignCpu(server_pid) as foreign: ...;  foreign.seconds
    """

    def __init__(self, server_pid: int | None = None) -> None:
        self._pid = server_pid
        self.seconds = 0.0
        self.wall_s = 0.0

    def _mine(self) -> float:
        import resource

        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
                + _tree_cpu_s(self._pid))

    def __enter__(self) -> ForeignCpu:
        self._start = (time.perf_counter(), _busy_cpu_s(), self._mine())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, busy, mine = self._start
        self.wall_s = time.perf_counter() - wall
        self.seconds = max(0.0, (_busy_cpu_s() - busy) - (self._mine() - mine))

    @property
    def fraction(self) -> float:
        """Of the machine's CPU time in the window (all cores)."""
        return self.seconds / (self.wall_s * (os.cpu_count() or 1)) if self.wall_s else 0.0


class PinnedServer:
    """`python -m module ARGS --port-file F` on the server CPUs, up once F holds its port."""

    def __init__(self, module: str, args: list[str], *, workdir: Path,
                 env: dict[str, str] | None = None, start_timeout_s: float = 60.0) -> None:
        port_file = workdir / f"port-{time.monotonic_ns()}"
        log = workdir / f"{module.rsplit('.', 1)[-1]}-server.log"
        self.quota = server_quota(module.rsplit(".", 1)[-1])
        cmd = pinned([sys.executable, "-m", module, *args, "--port-file", str(port_file)],
                     _LAYOUT.server)
        self._proc = subprocess.Popen(
            self.quota.wrap(cmd) if self.quota else cmd,
            cwd=REPO, env=python_env(env), stdout=subprocess.DEVNULL,
            stderr=open(log, "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + start_timeout_s
        while not port_file.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{module} did not start; see {log}")
            time.sleep(0.05)
        self.port_file = port_file
        self.port = int(port_file.read_text())
        self.address = f"localhost:{self.port}"
        self.pid = self._proc.pid

    def rss_bytes(self) -> int:
        """Resident memory of the server process (taskset execs it: same pid)."""
        return psutil.Process(self.pid).memory_info().rss

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        if self.quota is not None:
            self.quota.close()

    def __enter__(self) -> PinnedServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def endpoint_frontend(server: PinnedServer) -> str:
    """The transport an endpoint_process runs ("native" or "grpcio"), as it wrote it."""
    return server.port_file.with_name(server.port_file.name + ".frontend").read_text()


def endpoint_process(repository: Path, tls_dir: Path | None, *, workdir: Path,
                     env: dict[str, str] | None = None, http: bool = False,
                     extra_args: list[str] | None = None) -> PinnedServer:
    """edgecut's endpoint (benchmarks.serving.endpoint) on the server CPUs; `tls_dir` None:
    plaintext; `http`: HTTP/REST beside gRPC (http_address())."""
    return PinnedServer("benchmarks.serving.endpoint",
                        ["--repository", str(repository),
                         *(["--tls", str(tls_dir)] if tls_dir is not None else []),
                         *(["--http"] if http else []), *(extra_args or [])],
                        workdir=workdir, env=env)


def http_address(server: PinnedServer) -> str:
    """The HTTP/REST address of an endpoint_process started with `http`."""
    port = server.port_file.with_name(server.port_file.name + ".http").read_text()
    return f"localhost:{port}"
