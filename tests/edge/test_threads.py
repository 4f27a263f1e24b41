"""A Predictor's sessions run one onnxruntime thread per CPU the process may use.

onnxruntime alone takes one intra-op thread per core of the machine. A device agent pinned to
one core (a container's cpuset, taskset) gets one thread, so its threads do not take turns
on that core.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PINNED_PREDICTOR = """
import os, sys
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from edgecut.edge import Config, Predictor
from edgecut.edge.sessions import device_threads
before = len(os.listdir("/proc/self/task"))
predictor = Predictor(Config(plan=sys.argv[1], mode="local"))
print(device_threads(0), len(os.listdir("/proc/self/task")) - before)
predictor.close()
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"),
                    reason="needs sched_setaffinity (Linux)")
def test_a_pinned_predictor_runs_one_thread(plan_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-c", PINNED_PREDICTOR, str(plan_dir)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    threads, added = (int(x) for x in result.stdout.split())
    assert threads == 1
    assert added == 0  # one intra-op thread is the caller's own: onnxruntime starts no pool


def test_configured_threads_win(plan_dir: Path) -> None:
    from edgecut.edge.sessions import device_threads
    assert device_threads(3) == 3
