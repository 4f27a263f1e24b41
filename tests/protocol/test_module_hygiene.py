"""The protocol modules run on the device: their examples work and they import nothing heavy."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys

import pytest

MODULES = ["edgecut.protocol.tensors", "edgecut.protocol.codecs", "edgecut.protocol.pki",
           "edgecut.protocol.tls", "edgecut.protocol.timing"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0


def test_no_heavy_imports() -> None:
    code = (
        "import sys\n"
        f"for m in {MODULES!r}: __import__(m)\n"
        "heavy = sorted(m for m in ('onnx', 'onnxruntime', 'torch', 'tritonclient')"
        " if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == ""
