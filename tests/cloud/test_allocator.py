"""The allocator thresholds `edgecut serve` sets for large tensors."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_thresholds_apply_in_a_fresh_process() -> None:
    # A child process: the setting is process-wide and must not leak into the test run.
    code = "from edgecut.cloud.allocator import keep_large_buffers; print(keep_large_buffers())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "True"
