"""onnxruntime's intra-op threads sized to the CPUs the server may use (edgecut.cpu_budget):
the pure rules, the readers over a /proc and cgroup tree written here, and real servers
started under `taskset` and, as root, in a cgroup v1 group with a CPU quota."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from edgecut.cpu_budget import (
    CpuBudget,
    cgroup_mounts,
    cgroup_paths,
    intra_op_threads_for,
    quota_cpus_v1,
    quota_cpus_v2,
    read_cpu_budget,
)

from .conftest import dyn_mlp

CPU_ROOT = Path("/sys/fs/cgroup/cpu")


def _budget(affinity: int, quota: float | None = None, machine: int = 8) -> CpuBudget:
    return CpuBudget(affinity_cpus=affinity, machine_cpus=machine, quota_cpus=quota,
                     quota_source=None if quota is None else "cgroup v1")


@pytest.mark.parametrize(("affinity", "quota", "instances", "threads"), [
    (8, None, 1, 8),   # the whole machine
    (8, None, 2, 4),   # shared by the instances that run at once
    (1, None, 2, 1),   # never less than one
    (8, 2.5, 1, 2),    # a quota rounds down to whole CPUs
    (8, 0.3, 1, 1),    # ... but leaves one
    (2, 6.0, 1, 2),    # the affinity is tighter
])
def test_threads_follow_affinity_quota_and_instances(affinity: int, quota: float | None,
                                                     instances: int, threads: int) -> None:
    assert intra_op_threads_for(_budget(affinity, quota), instances=instances) == threads


def test_bad_readings_are_refused() -> None:
    with pytest.raises(ValueError, match="CPU counts"):
        CpuBudget(affinity_cpus=0, machine_cpus=2)
    with pytest.raises(ValueError, match="quota"):
        CpuBudget(affinity_cpus=1, machine_cpus=2, quota_cpus=0.0)
    with pytest.raises(ValueError, match="instances"):
        intra_op_threads_for(_budget(2), instances=0)


def test_quota_files_are_read_as_the_kernel_writes_them() -> None:
    assert quota_cpus_v1("150000\n", "100000\n") == 1.5
    assert quota_cpus_v1("-1\n", "100000\n") is None
    assert quota_cpus_v2("200000 100000\n") == 2.0
    assert quota_cpus_v2("max 100000\n") is None
    assert cgroup_paths("12:cpu,cpuacct:/a/b\n0::/c\n") == {"cpu": "/a/b", "cpuacct": "/a/b",
                                                            "": "/c"}
    mounts = cgroup_mounts(
        "1 0 0:1 / / rw - ext4 /dev/vda rw\n"
        "2 1 0:2 /kube/pod /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n")
    assert mounts == {"v1": ("/sys/fs/cgroup/cpu,cpuacct", "/kube/pod")}


def _fake_tree(tmp_path: Path, *, v1: tuple[str, str] | None, v2: str | None) -> Path:
    """A /proc/self and cgroup mounts under `tmp_path`: the group /pod/app, with a quota in
    /pod (v1: quota, period) and/or in /pod/app (v2: cpu.max)."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("3:cpu,cpuacct:/pod/app\n0::/pod/app\n")
    v1_root, v2_root = tmp_path / "cg1", tmp_path / "cg2"
    (v1_root / "pod" / "app").mkdir(parents=True)
    (v2_root / "pod" / "app").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(
        f"2 1 0:2 / {v1_root} rw - cgroup cgroup rw,cpu,cpuacct\n"
        f"3 1 0:3 / {v2_root} rw - cgroup2 cgroup2 rw\n")
    (v1_root / "pod" / "app" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1_root / "pod" / "app" / "cpu.cfs_period_us").write_text("100000\n")
    if v1 is not None:
        (v1_root / "pod" / "cpu.cfs_quota_us").write_text(v1[0])
        (v1_root / "pod" / "cpu.cfs_period_us").write_text(v1[1])
    if v2 is not None:
        (v2_root / "pod" / "app" / "cpu.max").write_text(v2)
    return proc


def test_a_quota_set_on_an_ancestor_group_counts(tmp_path: Path) -> None:
    budget = read_cpu_budget(proc=_fake_tree(tmp_path, v1=("50000\n", "100000\n"), v2=None))
    assert (budget.quota_cpus, budget.quota_source) == (0.5, "cgroup v1")
    assert budget.cpus == 1


def test_the_tightest_of_v1_and_v2_counts(tmp_path: Path) -> None:
    budget = read_cpu_budget(proc=_fake_tree(tmp_path, v1=("300000\n", "100000\n"),
                                             v2="150000 100000\n"))
    assert (budget.quota_cpus, budget.quota_source) == (1.5, "cgroup v2")


def test_no_quota_and_unreadable_files_leave_the_affinity(tmp_path: Path) -> None:
    budget = read_cpu_budget(proc=_fake_tree(tmp_path, v1=None, v2="max 100000\n"))
    assert budget.quota_cpus is None
    assert budget.cpus == len(os.sched_getaffinity(0))
    assert read_cpu_budget(proc=tmp_path / "nowhere").quota_cpus is None


# --- Real processes ----------------------------------------------------------------------

_REPORT = textwrap.dedent("""
    import json, logging, sys
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    from edgecut.cloud.server import create_server
    server = create_server(Path(sys.argv[1]), workers=1)
    model = server.repository.get("mlp", "")
    print(json.dumps({"threads": model.session.inner.get_session_options().intra_op_num_threads}))
    server.stop(grace_s=0)
""")


@pytest.fixture(scope="module")
def one_instance_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with one instance and no thread setting: its session gets every usable CPU."""
    repo = tmp_path_factory.mktemp("cpu-budget")
    (repo / "mlp" / "1").mkdir(parents=True)
    onnx.save(dyn_mlp(), str(repo / "mlp" / "1" / "model.onnx"))
    (repo / "mlp" / "config.pbtxt").write_text("instance_group [{ count: 1, kind: KIND_CPU }]\n")
    return repo


def _served_threads(command: list[str]) -> tuple[int, str]:
    """(intra-op threads of the served model's session, the server's log) of a server
    started by `command` (ending in the Python to run)."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["threads"], result.stderr


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_a_server_pinned_to_one_core_runs_one_thread(one_instance_repo: Path) -> None:
    threads, log = _served_threads(["taskset", "-c", "0", sys.executable, "-c", _REPORT,
                                    str(one_instance_repo)])
    assert threads == 1
    assert ("model 'mlp' version 1: 1 onnxruntime intra-op thread per run (1 CPU usable "
            "(affinity 1 of") in log


def test_an_unpinned_server_uses_its_cpus(one_instance_repo: Path) -> None:
    usable = read_cpu_budget().cpus
    threads, log = _served_threads([sys.executable, "-c", _REPORT, str(one_instance_repo)])
    assert threads == usable
    assert f"{usable} onnxruntime intra-op thread" in log


def test_config_and_server_settings_still_win(tmp_path: Path) -> None:
    from edgecut.cloud.repository import ModelRepository

    (tmp_path / "mlp" / "1").mkdir(parents=True)
    onnx.save(dyn_mlp(), str(tmp_path / "mlp" / "1" / "model.onnx"))
    (tmp_path / "mlp" / "config.pbtxt").write_text(
        'parameters { key: "intra_op_thread_count" value: { string_value: "3" } }\n')
    for server_threads, expected in ((0, 3), (5, 3)):
        repository = ModelRepository(tmp_path, intra_op_threads=server_threads)
        try:
            session = repository.get("mlp", "").session.inner
            assert session.get_session_options().intra_op_num_threads == expected
        finally:
            repository.close()
    (tmp_path / "mlp" / "config.pbtxt").unlink()
    repository = ModelRepository(tmp_path, intra_op_threads=5)
    try:
        assert repository.get("mlp", "").session.inner.get_session_options() \
            .intra_op_num_threads == 5
    finally:
        repository.close()


def test_a_server_in_a_cgroup_with_a_one_cpu_quota_runs_one_thread(
        one_instance_repo: Path) -> None:
    """cgroup v1 as root: the group's quota (1 CPU) is tighter than the affinity."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 usable CPUs: with one, the affinity alone gives 1 thread")
    if os.geteuid() != 0 or not (CPU_ROOT / "cgroup.procs").exists():
        pytest.skip(f"needs root and the cgroup v1 cpu controller at {CPU_ROOT}")
    group = CPU_ROOT / f"edgecut-test-budget-{os.getpid()}"
    try:
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("100000")
    except OSError as exc:
        if group.is_dir():
            group.rmdir()
        pytest.skip(f"cannot make a cpu cgroup at {group}: {exc}")
    try:
        # The shell joins the group, then becomes the server: limited from its first line.
        script = f'echo $$ > {group}/cgroup.procs && exec "$0" -c "$1" "$2"'
        threads, log = _served_threads(["sh", "-c", script, sys.executable, _REPORT,
                                        str(one_instance_repo)])
    finally:
        group.rmdir()
    assert threads == 1
    assert "cgroup v1 CPU quota 1" in log
