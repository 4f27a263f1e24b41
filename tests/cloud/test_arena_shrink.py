"""The CPU arena gives back what a large batch made it take (cloud/providers.py)."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecut.cloud.canary import VersionTraffic
from edgecut.cloud.loaded_model import TrackedSession
from edgecut.cloud.providers import ArenaShrinker, session_options

SHRINK_KEY = "memory.enable_memory_arena_shrinkage"
WIDTH = 1024
BIG_BATCH = 4096  # a 4096 x 1024 fp32 intermediate: 16 MiB of arena


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _allocated_bytes() -> int:
    """Bytes glibc has handed out and not had back: heap blocks plus mmapped ones."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _has_mallinfo2() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.fixture(scope="module")
def wide_mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "wide_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(rng.normal(size=(64, WIDTH)).astype(np.float32), "w1"),
         numpy_helper.from_array(rng.normal(size=(WIDTH, 8)).astype(np.float32), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("arena") / "wide_mlp.onnx"
    onnx.save(model, str(path))
    return path


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), sess_options=session_options(intra_op_threads=1),
                                providers=["CPUExecutionProvider"])


def test_shrinking_options_come_once_per_interval_and_never_replace_the_callers() -> None:
    assert ArenaShrinker(interval_s=3600.0).run_options(None) is None  # not due yet
    due = ArenaShrinker(interval_s=0.0)
    options = due.run_options(None)
    assert options is not None and options.get_run_config_entry(SHRINK_KEY) == "cpu:0"
    own = ort.RunOptions()
    assert due.run_options(own) is own


def test_a_shrinking_run_gives_the_same_outputs(wide_mlp: Path) -> None:
    session = _session(wide_mlp)
    x = np.random.default_rng(0).normal(size=(32, 64)).astype(np.float32)
    plain = session.run(None, {"x": x})[0]
    shrinking = session.run(None, {"x": x}, ArenaShrinker(interval_s=0.0).run_options())[0]
    np.testing.assert_array_equal(plain, shrinking)


@pytest.mark.skipif(not _has_mallinfo2(), reason="counts glibc's allocations (mallinfo2)")
@pytest.mark.parametrize("interval_s, gives_back", [(0.0, True), (3600.0, False)])
def test_a_tracked_session_gives_back_a_large_batchs_arena(
        wide_mlp: Path, interval_s: float, gives_back: bool) -> None:
    """A shrink due (interval 0: at every run) frees the large batch's arena at the end of
    its run; with none due, the arena keeps it."""
    tracked = TrackedSession(_session(wide_mlp), VersionTraffic("wide_mlp", 1), batched=True,
                             arena_shrink_interval_s=interval_s)
    tracked.run(None, {"x": np.ones((1, 64), np.float32)})
    before = _allocated_bytes()
    tracked.run(None, {"x": np.ones((BIG_BATCH, 64), np.float32)})
    kept = _allocated_bytes() - before
    intermediate = BIG_BATCH * WIDTH * 4
    if gives_back:
        assert kept < intermediate // 2, f"{kept} bytes kept after a shrinking run"
    else:
        assert kept >= intermediate // 2, f"only {kept} bytes kept with no shrink due"


def test_a_session_without_the_arena_is_never_asked_to_shrink(wide_mlp: Path) -> None:
    """onnxruntime refuses the shrink option on a session that has no CPU arena."""
    options = session_options(intra_op_threads=1)
    options.enable_cpu_mem_arena = False
    session = ort.InferenceSession(str(wide_mlp), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    x = np.ones((2, 64), np.float32)
    with pytest.raises(Exception, match="arena"):  # what a shrink would meet
        session.run(None, {"x": x}, ArenaShrinker(interval_s=0.0).run_options())
    tracked = TrackedSession(session, VersionTraffic("wide_mlp", 1), batched=True,
                             arena_shrink_interval_s=0.0)
    np.testing.assert_array_equal(tracked.run(None, {"x": x})[0], session.run(None, {"x": x})[0])
