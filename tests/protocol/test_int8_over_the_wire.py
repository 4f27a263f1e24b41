"""The int8 codec over the real endpoint (mTLS on loopback): announced in ServerMetadata,
decoded by the cloud through decode_tensor, and used by a split Predictor with codec "int8"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgecut.cloud.server import create_server
from edgecut.deploy import deploy_plan
from edgecut.edge import Config, Predictor
from edgecut.edge.client import CloudClient
from edgecut.partitioner import write_plan
from edgecut.zoo import ZOO, sample_inputs

from .conftest import DEVICE

CUT = 4  # relu_8: [1, 8, 32, 32] ReLU activations cross


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, _fleet_template: Path
          ) -> Iterator[tuple[Path, str, Path, dict]]:
    root = tmp_path_factory.mktemp("int8")
    model_path = root / "chain_cnn.onnx"
    onnx.save(ZOO["chain_cnn"](), str(model_path))
    write_plan(model_path, root / "plan", cut_ids=[CUT], chosen=CUT)
    deploy_plan(root / "plan", root / "repo")
    server = create_server(root / "repo", tls_dir=_fleet_template, mutual_tls=True, workers=2,
                           intra_op_threads=1)
    server.start()
    feed = sample_inputs(onnx.load(str(model_path)))
    yield root / "plan", f"localhost:{server.port}", model_path, feed
    server.stop(grace_s=1.0)


def test_the_endpoint_announces_and_decodes_int8(setup, _fleet_template: Path) -> None:
    _, endpoint, _, feed = setup
    with CloudClient(endpoint, tls_dir=_fleet_template, device=DEVICE, timeout_s=5.0) as client:
        assert "edgecut_codec_int8" in client.server_metadata().extensions
        assert "int8" in client.server_codecs()
        exact = client.infer("chain_cnn", feed)
        lossy = client.infer("chain_cnn", feed, codec="int8", response_codec="int8")
    assert lossy.codecs == {"x": "int8"}
    assert lossy.wire_bytes_up * 3 < lossy.raw_bytes_up
    for name, want in exact.outputs.items():
        got = lossy.outputs[name]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=0.05 * float(np.abs(want).max()) + 1e-3)


def test_a_split_predictor_sends_its_crossing_tensor_as_int8(setup, _fleet_template: Path
                                                             ) -> None:
    plan, endpoint, model_path, feed = setup
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    want = session.run(None, feed)
    config = Config(plan=plan, mode="split", endpoint=endpoint, tls_dir=_fleet_template,
                    device=DEVICE, codec="int8", intra_op_threads=1, timeout_s=5.0)
    with Predictor(config) as predictor:
        got = predictor.run(None, feed)
        run = predictor.last_run()
    assert run.codecs == {"relu_8": "int8"} and run.cut == CUT
    # ReLU activations: int8 and zstd move well under a quarter of the fp32 bytes.
    assert run.wire_bytes_up * 4 < run.raw_bytes_up
    assert run.wire_bytes_down == run.raw_bytes_down  # answers come back exact
    for g, w in zip(got, want, strict=True):
        assert int(np.argmax(g)) == int(np.argmax(w))
        np.testing.assert_allclose(g, w, atol=0.05 * float(np.abs(w).max()) + 1e-3)
