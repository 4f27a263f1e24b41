"""benchmarks/serving's CPU quota for servers (--server-cpu-quota) and the sampler that says how
busy a server was in a load's window: for real, a busy process in a cgroup of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.serving.cgroups import CpuQuota, CpuQuotaUnavailable  # noqa: E402
from benchmarks.serving.processes import CpuLayout, CpuSampler  # noqa: E402

_SPIN = "import time\nend = time.time() + {s}\nwhile time.time() < end: pass\n"


def _quota_or_skip(cpus: float) -> CpuQuota:
    if os.geteuid() != 0:
        pytest.skip("a cgroup of one's own needs root")
    try:
        return CpuQuota("test", cpus=cpus)
    except CpuQuotaUnavailable as exc:
        pytest.skip(f"no CPU cgroup can be made here: {exc}")


def test_a_quota_is_a_layout_setting_checked_against_the_server_cpus() -> None:
    assert CpuLayout(server=(0,), clients=(1,), server_quota=0.5).describe() == (
        "server on core 0 limited to 0.5 CPU, clients on core 1")
    for bad in (0.0, -1.0, 1.5):
        with pytest.raises(ValueError, match="quota"):
            CpuLayout(server=(0,), clients=(1,), server_quota=bad)
    with pytest.raises(ValueError, match="above 0"):
        CpuQuota("test", cpus=0)


def test_a_process_started_in_the_quota_is_held_to_it_and_the_sampler_sees_it() -> None:
    with _quota_or_skip(0.25) as quota:
        group = quota.group
        assert group.is_dir()
        # One core's worth of spinning, for 1.5 s: the quota lets it run a quarter of that.
        proc = subprocess.Popen(quota.wrap(["taskset", "-c", "0", sys.executable, "-c",
                                            _SPIN.format(s=1.5)]))
        with CpuSampler(proc.pid, interval_s=0.05) as sampler:
            start = time.time()
            time.sleep(1.0)
            busy = sampler.busy(start + 0.2, 0.7, allowance_cpus=1.0)
        proc.wait(timeout=30)
        periods, throttled = quota.throttled()
        assert periods > 0 and throttled > 0, (periods, throttled)
        # Held to a quarter of a core, whatever else the machine does (the sampler is the
        # process's own CPU time, not the wall clock): never near the whole core.
        assert 0.0 < busy < 0.6, busy
    assert not group.exists()  # removed with the last process gone


def test_the_sampler_reads_nothing_outside_its_samples() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SPIN.format(s=0.5)])
    try:
        with CpuSampler(proc.pid, interval_s=0.05) as sampler:
            time.sleep(0.3)
        assert sampler.busy(time.time() - 3600, 1.0, allowance_cpus=1.0) == 0.0
        assert sampler.busy(time.time(), 0.0, allowance_cpus=1.0) == 0.0
    finally:
        proc.wait(timeout=30)
