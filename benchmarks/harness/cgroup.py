"""A cgroup v1 `cpu` group that limits a process to a fraction of one core, pinned by taskset.

    with CpuLimit(fraction=0.3) as cpu:                      # 30 % of one core
        proc = subprocess.Popen(cpu.wrap(["python", "device.py"], core=0))
        cpu.set_fraction(1.0)                                # change the speed in place

`wrap` starts the command through `sh`, which writes its own pid into the group's
`cgroup.procs` before `exec`ing `taskset -c CORE ...`: the process is limited from its first
instruction, and every thread and child it makes inherits the group and the core.

The period is short (10 ms by default) so that the limit bites within one inference: with
CFS's default 100 ms period a 20 ms head would run at full speed on a fresh quota and only
long loops (a profiler's) would see the limit. The group is removed on exit (its processes are
moved back to the root group first), also on error and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
from pathlib import Path
from types import TracebackType

from benchmarks.harness import HarnessUnavailable

__all__ = ["CPU_ROOT", "CpuLimit", "list_groups", "pinned"]

CPU_ROOT = Path("/sys/fs/cgroup/cpu")
PREFIX = "edgecut-bench-"
_counter = itertools.count()


def list_groups() -> list[str]:
    """Names of the benchmark's cpu groups that exist now (for leak checks)."""
    if not CPU_ROOT.is_dir():
        return []
    return sorted(p.name for p in CPU_ROOT.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def pinned(argv: list[str], core: int) -> list[str]:
    """`argv` run on one core only (no CPU limit): the cloud side."""
    return ["taskset", "-c", str(core), *argv]


class CpuLimit:
    """A cpu cgroup allowing `fraction` of one core per `period_us`."""

    def __init__(self, *, fraction: float, period_us: int = 10_000) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if period_us < 1000 or fraction * period_us < 1000:
            raise ValueError("the quota (fraction * period_us) must be at least 1000 us, the "
                             f"kernel's minimum; got {fraction} * {period_us}")
        self.fraction = fraction
        self.period_us = period_us
        self.path = CPU_ROOT / f"{PREFIX}{os.getpid()}-{next(_counter)}"

    def __enter__(self) -> CpuLimit:
        if os.geteuid() != 0:
            raise HarnessUnavailable("cgroup CPU limits need root; run as root")
        if not (CPU_ROOT / "cpu.cfs_quota_us").exists():
            raise HarnessUnavailable(f"no cgroup v1 cpu controller at {CPU_ROOT} "
                                     "(cpu.cfs_quota_us missing)")
        try:
            self.path.mkdir()
        except OSError as exc:
            raise HarnessUnavailable(f"cannot create {self.path}: {exc}") from exc
        try:
            (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
            self.set_fraction(self.fraction)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def set_fraction(self, fraction: float) -> None:
        """Change the limit in place; running processes feel it within one period."""
        quota = round(fraction * self.period_us)
        if not 0 < fraction <= 1 or quota < 1000:
            raise ValueError(f"fraction must be in (0, 1] with a quota >= 1000 us, got {fraction}")
        (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        self.fraction = fraction

    def statistics(self) -> dict[str, int]:
        """`cpu.stat` of the group: nr_periods, nr_throttled, throttled_time (ns)."""
        stat = (self.path / "cpu.stat").read_text().split()
        return {k: int(v) for k, v in zip(stat[::2], stat[1::2], strict=True)}

    def wrap(self, argv: list[str], *, core: int = 0) -> list[str]:
        """`argv` started inside this group, pinned to `core`."""
        procs = shlex.quote(str(self.path / "cgroup.procs"))
        command = " ".join(shlex.quote(a) for a in pinned(argv, core))
        return ["sh", "-c", f"echo $$ > {procs} && exec {command}"]

    def close(self) -> None:
        """Move any remaining processes to the root group and remove the group."""
        if not self.path.exists():
            return
        try:
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):  # it exited meanwhile
                    (CPU_ROOT / "cgroup.procs").write_text(pid)
            self.path.rmdir()
        except OSError:
            pass
