"""The import arrows of DESIGN.md, and README/CI agreeing on the test command."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package folder -> imports it must never make (prefix match on the module name)
FORBIDDEN = {
    "edge": ("onnx", "networkx", "matplotlib", "edgecut.cloud", "edgecut.partitioner",
             "edgecut.simulations", "edgecut.zoo"),
    "cloud": ("edgecut.edge", "edgecut.partitioner", "edgecut.simulations"),
    "protocol": ("onnx", "edgecut.edge", "edgecut.cloud", "edgecut.partitioner"),
    "partitioner": ("edgecut.edge", "edgecut.cloud", "edgecut.cli"),
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_import_arrows(folder: str) -> None:
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[folder]):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders


def test_device_side_import_stays_light() -> None:
    code = ("import sys, edgecut, edgecut.edge; "
            "print(' '.join(m for m in ('onnx', 'networkx', 'matplotlib', 'edgecut.cloud', "
            "'edgecut.partitioner') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == ""


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(python3 -m venv .*)$", readme, flags=re.MULTILINE)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()
    demo_command = next(c for c in commands if "edgecut demo" in c)
    assert demo_command.endswith("&& edgecut demo")

