"""The device side stays light: importing edgecut.edge loads nothing heavy (DESIGN.md)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("onnx", "networkx", "matplotlib", "edgecut.partitioner", "edgecut.cloud",
         "edgecut.simulations", "edgecut.zoo")
ALLOWED_ROOTS = ("numpy", "onnxruntime", "grpc", "google", "zstandard", "psutil",
                 "cryptography")


def _loaded_after(statement: str) -> list[str]:
    code = (f"import sys; before = set(sys.modules); {statement}; "
            f"print('\\n'.join(sorted(set(sys.modules) - before)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    return result.stdout.split()


def test_importing_edge_loads_nothing_heavy() -> None:
    loaded = _loaded_after("import edgecut.edge")
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == []


def test_edge_imports_only_its_own_dependencies() -> None:
    loaded = _loaded_after("import edgecut.edge")
    roots = {m.split(".")[0] for m in loaded} - set(sys.stdlib_module_names)
    # grpc probes for its optional grpc_tools / grpc_health; numpy and cryptography bring
    # their compiled helpers (_cffi_backend, cython_runtime ...).
    foreign = sorted(r for r in roots
                     if not r.startswith(("_", "cython", "grpc_"))
                     and r not in (*ALLOWED_ROOTS, "edgecut", "typing_extensions"))
    assert foreign == []
    assert {"numpy", "onnxruntime", "grpc", "zstandard"} <= roots
    ours = sorted(m for m in loaded if m.startswith("edgecut."))
    # edgecut.cpu_budget: the CPUs a process may use (stdlib only), shared with the endpoint
    assert all(m.startswith(("edgecut.edge", "edgecut.protocol", "edgecut.errors",
                             "edgecut.cpu_budget"))
               for m in ours), ours


def test_top_level_package_exports_predictor_lazily() -> None:
    loaded = _loaded_after("import edgecut")
    assert "onnxruntime" not in loaded
    loaded = _loaded_after("from edgecut import Config, Predictor")
    assert "edgecut.edge.predictor" in loaded
    assert not [m for m in loaded if m.startswith(("onnx.", "edgecut.partitioner"))
                or m == "onnx"]
