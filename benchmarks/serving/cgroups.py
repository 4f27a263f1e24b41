"""A CPU quota for a server process, as a container's CPU limit gives it (`--server-cpu-quota`).

A server in a container is often given less than a core: a Kubernetes CPU limit (`500m`) is
a CFS bandwidth quota on its cgroup, so many milliseconds of CPU per 100 ms period. This puts
a benchmarked server under the same limit:

    with CpuQuota("edgecut-core", cpus=0.4) as quota:
        subprocess.Popen(quota.wrap(cmd))                  # the process and all it starts
        ...
        quota.throttled()                                  # periods the server hit its limit

cgroup v1's `cpu` hierarchy is used where it is mounted, else cgroup v2's `cpu.max`. Creating
a group needs root; without it, or without either hierarchy, CpuQuotaUnavailable says why.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from types import TracebackType

from edgecut.cpu_budget import cgroup_mounts

__all__ = ["DEFAULT_PERIOD_US", "CpuQuota", "CpuQuotaUnavailable"]

# Kubernetes' and Docker's CFS period.
DEFAULT_PERIOD_US = 100_000


class CpuQuotaUnavailable(RuntimeError):
    """No CPU quota can be set here; the message says why."""


class CpuQuota:
    """A cgroup of its own with `cpus` CPUs' worth of time per period (see the module)."""

    def __init__(self, name: str, *, cpus: float, period_us: int = DEFAULT_PERIOD_US,
                 mountinfo: Path = Path("/proc/self/mountinfo")) -> None:
        if cpus <= 0:
            raise ValueError(f"a CPU quota must be above 0 CPUs, got {cpus}")
        self.cpus = cpus
        self.period_us = period_us
        try:
            mounts = cgroup_mounts(mountinfo.read_text())
        except OSError as exc:
            raise CpuQuotaUnavailable(f"cannot read {mountinfo}: {exc}") from exc
        if "v1" in mounts:
            self.version = "v1"
            root = Path(mounts["v1"][0])
        elif "v2" in mounts:
            self.version = "v2"
            root = Path(mounts["v2"][0])
        else:
            raise CpuQuotaUnavailable("no cgroup hierarchy with the cpu controller is mounted")
        self.group = root / f"edgecut-bench-{name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            self.group.mkdir()
            quota_us = max(1000, round(cpus * period_us))
            if self.version == "v1":
                (self.group / "cpu.cfs_period_us").write_text(str(period_us))
                (self.group / "cpu.cfs_quota_us").write_text(str(quota_us))
            else:
                (self.group / "cpu.max").write_text(f"{quota_us} {period_us}")
        except OSError as exc:
            self.close()
            raise CpuQuotaUnavailable(f"cannot make a CPU-limited cgroup at {self.group} "
                                      f"(root is needed): {exc}") from exc
        self._procs = str(self.group / "cgroup.procs")

    def wrap(self, cmd: list[str]) -> list[str]:
        """`cmd` run inside the group: a shell joins it, then execs `cmd` (same pid), so all
        it runs and starts is limited from its first instruction. (A shell, not a Popen
        preexec_fn, which is unsafe in a process with threads.)"""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', self._procs, *cmd]

    def throttled(self) -> tuple[int, int]:
        """(periods the group ran in, periods it was throttled in) so far."""
        stats: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError):
            for line in (self.group / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                stats[key] = int(value)
        return stats.get("nr_periods", 0), stats.get("nr_throttled", 0)

    def close(self) -> None:
        """Remove the group. Only an empty one can go: its processes have ended by now (the
        caller stopped them), but the kernel may take a moment to let the last one go."""
        for _ in range(50):
            try:
                self.group.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)

    def __enter__(self) -> CpuQuota:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
