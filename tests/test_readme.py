"""README.md's Python example runs as written, against a real endpoint on loopback."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgecut import zoo
from edgecut.cloud.server import create_server
from edgecut.deploy import deploy_plan
from edgecut.partitioner import run_split_locally, write_plan
from edgecut.protocol.pki import init_ca, issue_device_certificate

ROOT = Path(__file__).resolve().parent.parent


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)


def test_readme_has_a_python_example() -> None:
    assert python_blocks()


@pytest.mark.parametrize("block", python_blocks())
def test_readme_python_example_runs(block: str, tmp_path: Path) -> None:
    model_path = tmp_path / "chain_cnn.onnx"
    onnx.save(zoo.ZOO["chain_cnn"](), model_path)
    write_plan(model_path, tmp_path / "plan", cut_ids=[5], chosen=5)
    deploy_plan(tmp_path / "plan", tmp_path / "repo")
    init_ca(tmp_path / "tls")
    issue_device_certificate(tmp_path / "tls", "pi-kitchen")
    image = zoo.sample_inputs(onnx.load(model_path))["x"]
    with create_server(tmp_path / "repo", tls_dir=tmp_path / "tls", mutual_tls=True) as server:
        code = (block.replace('"plan/"', repr(str(tmp_path / "plan")))
                     .replace('"tls/"', repr(str(tmp_path / "tls")))
                     .replace("my-cloud.example:8001", f"127.0.0.1:{server.port}"))
        namespace: dict[str, object] = {"image": image}
        exec(compile(code, "README.md", "exec"), namespace)
        namespace["predictor"].close()  # type: ignore[attr-defined]
    expected = run_split_locally(None, model_path, {"x": image})
    (got,) = namespace["outputs"]  # type: ignore[misc]
    np.testing.assert_allclose(got, next(iter(expected.values())), rtol=0, atol=1e-5)
