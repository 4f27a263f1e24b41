"""How many CPUs this process may use, and the onnxruntime intra-op threads that follow:
the endpoint's sessions (edgecut.cloud) and the device's (edgecut.edge.sessions) both size
their threads here.

onnxruntime sizes its intra-op pool to the machine's cores, not to the CPUs the process may
run on. Pinned to one core (a container's cpuset, `taskset`) or held to one CPU by a quota (a
Kubernetes CPU limit), its threads fight over that one: measured with 32 tritonclient
clients, intra_op_thread_count 1 lifted the endpoint from 348 to 546 requests/s (grpcio) and
438 to 655 (native) over onnxruntime's default (issue 17). So by default each session gets

    max(1, usable CPUs // instances)

where the usable CPUs are the least of the process's CPU affinity (os.sched_getaffinity) and
its cgroup CPU quota, rounded down to whole CPUs (at least 1): cgroup v1
`cpu.cfs_quota_us / cpu.cfs_period_us`, cgroup v2 `cpu.max`, each the tightest along the
group's ancestors. A model's instances (instance_group count) run at once, so they share
them. config.pbtxt's `intra_op_thread_count` and the server's thread setting (`--threads`)
still override it.

The core is pure (the parsers, `CpuBudget`, `intra_op_threads_for`); `read_cpu_budget` reads
/proc and /sys around it.

    >>> budget = CpuBudget(affinity_cpus=8, machine_cpus=8, quota_cpus=2.5, quota_source="cgroup v2")
    >>> budget.cpus, intra_op_threads_for(budget, instances=2)
    (2, 1)
    >>> budget.describe()
    '2 CPUs usable (affinity 8 of 8 CPUs; cgroup v2 CPU quota 2.5)'
    >>> quota_cpus_v1("50000", "100000"), quota_cpus_v1("-1", "100000"), quota_cpus_v2("max 100000")
    (0.5, None, None)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = [
    "CpuBudget",
    "cgroup_mounts",
    "cgroup_paths",
    "intra_op_threads_for",
    "quota_cpus_v1",
    "quota_cpus_v2",
    "read_cpu_budget",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuBudget:
    """What the process may use: `affinity_cpus` of the machine's `machine_cpus`, and a cgroup
    quota in CPUs (None: no quota), named by where it was read."""

    affinity_cpus: int
    machine_cpus: int
    quota_cpus: float | None = None
    quota_source: str | None = None

    def __post_init__(self) -> None:
        if self.affinity_cpus < 1 or self.machine_cpus < 1:
            raise ValueError(f"CPU counts must be >= 1, got affinity {self.affinity_cpus}, "
                             f"machine {self.machine_cpus}")
        if self.quota_cpus is not None and not self.quota_cpus > 0:
            raise ValueError(f"a CPU quota must be > 0 CPUs, got {self.quota_cpus}")

    @property
    def cpus(self) -> int:
        """Whole CPUs the process may keep busy: affinity, within the quota (at least 1)."""
        if self.quota_cpus is None:
            return self.affinity_cpus
        return max(1, min(self.affinity_cpus, math.floor(self.quota_cpus)))

    def describe(self) -> str:
        quota = (f"{self.quota_source} CPU quota {self.quota_cpus:g}"
                 if self.quota_cpus is not None else "no cgroup CPU quota")
        plural = "" if self.cpus == 1 else "s"
        return (f"{self.cpus} CPU{plural} usable (affinity {self.affinity_cpus} of "
                f"{self.machine_cpus} CPUs; {quota})")


def intra_op_threads_for(budget: CpuBudget, *, instances: int) -> int:
    """onnxruntime intra-op threads per session for a model whose `instances` run at once."""
    if instances < 1:
        raise ValueError(f"instances must be >= 1, got {instances}")
    return max(1, budget.cpus // instances)


def quota_cpus_v1(quota_us: str, period_us: str) -> float | None:
    """cgroup v1's cpu.cfs_quota_us / cpu.cfs_period_us in CPUs; None for no quota (-1)."""
    quota, period = int(quota_us.strip()), int(period_us.strip())
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def quota_cpus_v2(cpu_max: str) -> float | None:
    """cgroup v2's cpu.max ("QUOTA PERIOD", QUOTA "max" for none) in CPUs.

    >>> quota_cpus_v2("150000 100000")
    1.5
    """
    fields = cpu_max.split()
    if not fields or fields[0] == "max":
        return None
    period = int(fields[1]) if len(fields) > 1 else 100_000
    quota = int(fields[0])
    return quota / period if quota > 0 and period > 0 else None


def cgroup_paths(proc_self_cgroup: str) -> dict[str, str]:
    """/proc/self/cgroup's lines as {controller: path}; cgroup v2's under "".

    >>> cgroup_paths("4:cpu,cpuacct:/kube/pod1\\n0::/system.slice\\n")
    {'cpu': '/kube/pod1', 'cpuacct': '/kube/pod1', '': '/system.slice'}
    """
    paths: dict[str, str] = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def cgroup_mounts(mountinfo: str) -> dict[str, tuple[str, str]]:
    """Where the cgroup hierarchies that matter are mounted, from /proc/self/mountinfo:
    {"v1": (mount point, root), "v2": (mount point, root)} for the v1 hierarchy with the
    `cpu` controller and the v2 one. `root` is the group the mount shows (a container's own).

    >>> cgroup_mounts("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\\n"
    ...               "40 31 0:37 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\\n")
    {'v1': ('/sys/fs/cgroup/cpu', '/'), 'v2': ('/sys/fs/cgroup/unified', '/')}
    """
    mounts: dict[str, tuple[str, str]] = {}
    for line in mountinfo.splitlines():
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point, fstype, options = fields[3], fields[4], tail[0], tail[2]
        if fstype == "cgroup" and "cpu" in options.split(",") and "v1" not in mounts:
            mounts["v1"] = (mount_point, root)
        elif fstype == "cgroup2" and "v2" not in mounts:
            mounts["v2"] = (mount_point, root)
    return mounts


def _group_dirs(mount: tuple[str, str], path: str) -> list[Path]:
    """The group's folder under `mount`, then each ancestor up to the mount's root."""
    mount_point, root = mount
    relative = PurePosixPath(path)
    if root != "/" and relative.is_relative_to(root):
        relative = relative.relative_to(root)
    parts = [p for p in relative.parts if p != "/"]
    return [Path(mount_point, *parts[:n]) for n in range(len(parts), -1, -1)]


def _tightest(dirs: list[Path], read: Callable[[Path], float | None]) -> float | None:
    quotas = [q for q in map(read, dirs) if q is not None]
    return min(quotas) if quotas else None


def _read_v1(folder: Path) -> float | None:
    try:
        return quota_cpus_v1((folder / "cpu.cfs_quota_us").read_text(),
                             (folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


def _read_v2(folder: Path) -> float | None:
    try:
        return quota_cpus_v2((folder / "cpu.max").read_text())
    except (OSError, ValueError):
        return None


def read_cpu_budget(*, proc: Path = Path("/proc")) -> CpuBudget:
    """The CPUs this process may use now (files that cannot be read count as no quota)."""
    machine = os.cpu_count() or 1
    try:
        affinity = len(os.sched_getaffinity(0)) or machine
    except (AttributeError, OSError):  # not Linux
        affinity = machine
    try:
        paths = cgroup_paths((proc / "self" / "cgroup").read_text())
        mounts = cgroup_mounts((proc / "self" / "mountinfo").read_text())
    except OSError:
        return CpuBudget(affinity_cpus=affinity, machine_cpus=machine)
    found: list[tuple[float, str]] = []
    if "v1" in mounts and "cpu" in paths:
        quota = _tightest(_group_dirs(mounts["v1"], paths["cpu"]), _read_v1)
        if quota is not None:
            found.append((quota, "cgroup v1"))
    if "v2" in mounts and "" in paths:
        quota = _tightest(_group_dirs(mounts["v2"], paths[""]), _read_v2)
        if quota is not None:
            found.append((quota, "cgroup v2"))
    if not found:
        return CpuBudget(affinity_cpus=affinity, machine_cpus=machine)
    quota, source = min(found)
    return CpuBudget(affinity_cpus=affinity, machine_cpus=machine, quota_cpus=quota,
                     quota_source=source)
