"""Before the benchmark: what this machine's CPUs and scheduler do (about 6 s).

    python3 check_cpu.py OUTFILE

Prints, and writes as KEY=VALUE lines to OUTFILE (run.sh sources them):
  AFFINITY_ENFORCED  yes | no | unclear: two busy loops pinned to CPU 0 for 2.5 s; enforced
                     means their summed CPU time is about the wall time, not about twice it
                     (and two unpinned loops do get twice it: else "unclear")
  AFFINITY_RATIO     the pinned pair's summed CPU time over the wall time
  UNPINNED_RATIO     the same for two loops left unpinned
  SCHED_BATCH_OK     yes | no: os.sched_setscheduler(0, SCHED_BATCH) in a child
  IDLE_FOREIGN       share of the machine's CPU that /proc/stat calls busy while this
                     process sleeps for 1 s (what the benchmark's ForeignCpu would call
                     "others"; above 0.10 it measures every load up to 3 times)
  PROCSTAT_RATIO     /proc/stat's busy seconds over the busy loops' own CPU seconds
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

BUSY_S = 2.5


def busy_cpu_s() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


def loop_pair(pin: bool) -> tuple[float, float, float]:
    """(wall s, summed CPU s of the two children, /proc/stat busy s) of two busy loops,
    both pinned to CPU 0 when `pin`."""
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    stat0 = busy_cpu_s()
    t0 = time.perf_counter()
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            try:
                if pin:
                    os.sched_setaffinity(0, {0})
                spin(BUSY_S)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    wall = time.perf_counter() - t0
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    return wall, cpu, busy_cpu_s() - stat0


def sched_batch_ok() -> str:
    pid = os.fork()
    if pid == 0:
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            ok = os.sched_getscheduler(0) == os.SCHED_BATCH
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return {0: "yes", 1: "no (accepted, not applied)"}.get(code, "no (refused)")


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    ncpu = os.cpu_count() or 1
    print(f"os.cpu_count() {ncpu}; sched_getaffinity {len(os.sched_getaffinity(0))} CPUs")
    stat0, t0 = busy_cpu_s(), time.perf_counter()
    me0 = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(1.0)
    me1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - t0
    mine = (me1.ru_utime + me1.ru_stime) - (me0.ru_utime + me0.ru_stime)
    idle_foreign = max(0.0, busy_cpu_s() - stat0 - mine) / (wall * ncpu)
    print(f"idle: /proc/stat says {100 * idle_foreign:.1f}% of the machine's CPU was busy "
          f"while this process slept 1 s")
    wall, cpu, stat = loop_pair(pin=True)
    ratio = cpu / wall if wall else 0.0
    free_wall, free_cpu, _ = loop_pair(pin=False)
    free_ratio = free_cpu / free_wall if free_wall else 0.0
    # Enforced: the pinned pair shares one CPU (about 1x wall) while an unpinned pair gets
    # two (about 2x). If the unpinned pair cannot get two either, the machine is too busy
    # to tell.
    if ratio > 1.65:
        enforced = "no"
    elif ratio < 1.35 and free_ratio > 1.65:
        enforced = "yes"
    else:
        enforced = "unclear"
    print(f"affinity: 2 busy loops pinned to CPU 0 for {wall:.2f} s used {cpu:.2f} CPU s "
          f"(ratio {ratio:.2f}); unpinned: ratio {free_ratio:.2f}. "
          f"1 then 2 = enforced, 2 then 2 = not: enforced {enforced}")
    procstat_ratio = stat / cpu if cpu else 0.0
    print(f"/proc/stat counted {stat:.2f} busy s for the pinned loops' {cpu:.2f} CPU s "
          f"(ratio {procstat_ratio:.2f}; 1 = it sees the sandbox's own CPU use)")
    batch = sched_batch_ok()
    print(f"SCHED_BATCH settable: {batch}")
    if out is not None:
        out.write_text(f"AFFINITY_ENFORCED={enforced}\nAFFINITY_RATIO={ratio:.2f}\n"
                       f"UNPINNED_RATIO={free_ratio:.2f}\nSCHED_BATCH_OK='{batch}'\n"
                       f"IDLE_FOREIGN={idle_foreign:.3f}\nPROCSTAT_RATIO={procstat_ratio:.2f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
