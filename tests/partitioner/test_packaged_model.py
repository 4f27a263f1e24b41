"""A real trained model: PaddleOCR's PP-OCRv4 text detector (an FPN/DB head) shipped in the
PyPI package rapidocr-onnxruntime (1.4.4), at rapidocr_onnxruntime/models/
ch_PP-OCRv4_det_infer.onnx. 330 placed nodes (plus 342 Constant nodes holding its weights),
331 cuts at 1x3x32x32; every cut is split, checked and verified (about 20 s)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

from edgecut.partitioner import analyse_graph, list_cuts, load_model, run_model
from edgecut.zoo import PACKAGED_MODEL_PACKAGE, find_packaged_model, sample_inputs

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(PACKAGED_MODEL_PACKAGE) is None,
    reason=f"{PACKAGED_MODEL_PACKAGE} (pip install rapidocr-onnxruntime) is not installed",
)


@pytest.fixture(scope="module")
def det_path() -> Path:
    path = find_packaged_model()
    assert path is not None, "the package is installed but ships no det model"
    return path


def test_packaged_model_is_a_dag_with_many_multi_tensor_cuts(det_path: Path) -> None:
    model = load_model(det_path)
    info = analyse_graph(model)
    cuts = list_cuts(model, {"x": [1, 3, 64, 64]})
    assert len(info.order) == 330 and len(cuts) == 331
    assert sum(1 for c in cuts if len(c.crossing) > 1) > 100
    assert max(len(c.crossing) for c in cuts) >= 4  # FPN laterals held across the top-down


def test_every_cut_of_the_packaged_model_splits_exactly(
    det_path: Path, check_cut: Callable[..., float]
) -> None:
    model = load_model(det_path)
    feeds = sample_inputs(model)
    full = run_model(model, feeds)
    for cut in list_cuts(model):
        check_cut(model, cut, feeds, full)
