"""Processes pinned to one core: the edgecut endpoint, onnxruntime alone, load generators.

The machine is split in two: the server (edgecut's, Triton, or onnxruntime alone) on
SERVER_CORE, the load generator on CLIENT_CORE, each started under `taskset -c CORE` so every
thread it makes stays there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from .loadgen import LoadResult, LoadSpec

__all__ = ["CLIENT_CORE", "MALLOC_ENV", "REPO", "SERVER_CORE", "ForeignCpu", "PinnedServer",
           "endpoint_frontend", "endpoint_process", "ort_alone", "run_json", "run_load_pinned"]

REPO = Path(__file__).resolve().parents[2]
SERVER_CORE = 0
CLIENT_CORE = 1
# glibc: keep buffers up to 64 MiB on the heap, and do not give the top of the heap back
# below 128 MiB, so 4 MiB messages reuse memory instead of mmap/munmap (and page faults) per call.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}


def pinned(cmd: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *cmd]


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def run_json(module: str, args: list[str], *, core: int, timeout_s: float,
             env: dict[str, str] | None = None) -> Any:
    """Run `python -m module args` pinned to `core`; its last stdout line parsed as JSON."""
    proc = subprocess.run(pinned([sys.executable, "-m", module, *args], core), cwd=REPO,
                          env=python_env(env), capture_output=True, text=True, timeout=timeout_s,
                          check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{module} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


def run_load_pinned(spec: LoadSpec, *, env: dict[str, str] | None = None) -> LoadResult:
    """The load generator in its own process on CLIENT_CORE."""
    args = asdict(spec)
    timeout = spec.warmup_s + spec.duration_s + 2 * spec.timeout_s + 60
    out = run_json("benchmarks.serving.loadgen", [json.dumps(args)], core=CLIENT_CORE,
                   timeout_s=timeout, env=env)
    return LoadResult(**out)


def ort_alone(model: Path, batch_sizes: list[int], *, seconds: float) -> dict[int, float]:
    """Seconds per `session.run` at each batch size, onnxruntime alone on SERVER_CORE."""
    timeout = 60 + 3 * seconds * len(batch_sizes) + 30
    out = run_json("benchmarks.serving.ort_alone",
                   [str(model), "--batch-sizes", ",".join(map(str, batch_sizes)),
                    "--seconds", str(seconds)], core=SERVER_CORE, timeout_s=timeout)
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
    """`python -m module ARGS --port-file F` on SERVER_CORE, up once F holds its port."""

    def __init__(self, module: str, args: list[str], *, workdir: Path,
                 env: dict[str, str] | None = None, start_timeout_s: float = 60.0) -> None:
        port_file = workdir / f"port-{time.monotonic_ns()}"
        log = workdir / f"{module.rsplit('.', 1)[-1]}-server.log"
        self._proc = subprocess.Popen(
            pinned([sys.executable, "-m", module, *args, "--port-file", str(port_file)],
                   SERVER_CORE),
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

    def __enter__(self) -> PinnedServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def endpoint_frontend(server: PinnedServer) -> str:
    """The transport an endpoint_process runs ("native" or "grpcio"), as it wrote it."""
    return server.port_file.with_name(server.port_file.name + ".frontend").read_text()


def endpoint_process(repository: Path, tls_dir: Path, *, workdir: Path,
                     env: dict[str, str] | None = None,
                     extra_args: list[str] | None = None) -> PinnedServer:
    """edgecut's endpoint (benchmarks.serving.endpoint) on SERVER_CORE."""
    return PinnedServer("benchmarks.serving.endpoint",
                        ["--repository", str(repository), "--tls", str(tls_dir),
                         *(extra_args or [])], workdir=workdir, env=env)
