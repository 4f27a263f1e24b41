"""The committed gRPC stubs must be exactly what scripts/gen_protos.py generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stubs_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, (
        "protocol/*_pb2*.py are stale; run `python scripts/gen_protos.py`\n"
        f"{result.stdout}{result.stderr}"
    )
