"""Adaptive mode and local fallback against a real mTLS endpoint on loopback.

The plan is the fpn fixture's (cut 3 chosen, no envelope), so adaptive mode runs split:3
while nothing presses it elsewhere; the tests change what it sees (the endpoint's presence,
the device's readings) and check where each run ran and that its outputs are the model's.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgecut.cloud.server import create_server
from edgecut.deploy import deploy_plan
from edgecut.edge import Config, Predictor
from edgecut.edge.monitors import DeviceMonitor, DeviceReadings
from edgecut.errors import CloudUnavailableError, EdgecutError

from .conftest import DEVICE


@pytest.fixture(scope="module")
def reference(model_path: Path, feed: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return list(session.run(None, feed))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, plan_dir: Path) -> Path:
    repo = tmp_path_factory.mktemp("adaptive-repo")
    deploy_plan(plan_dir, repo)
    return repo


def _config(plan_dir: Path, endpoint: str | list[str], fleet: Path, **settings) -> Config:
    settings = {"mode": "adaptive", "intra_op_threads": 1, "timeout_s": 5.0,
                "breaker_reset_s": 0.3, **settings}
    return Config(plan=plan_dir, endpoint=endpoint, tls_dir=fleet, device=DEVICE, **settings)


def _assert_model_outputs(outputs: list[np.ndarray], reference: list[np.ndarray]) -> None:
    assert len(outputs) == len(reference)
    for got, want in zip(outputs, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()[1]
    listener.close()


def test_adaptive_runs_the_plans_cut_when_all_is_well(plan_dir: Path, endpoint: str,
                                                      fleet: Path, feed: dict,
                                                      reference: list[np.ndarray]) -> None:
    with Predictor(_config(plan_dir, endpoint, fleet)) as predictor:
        for _ in range(3):
            _assert_model_outputs(predictor.run(None, feed), reference)
        run = predictor.last_run()
        stats = predictor.statistics()
    assert (run.mode, run.cut, run.fallback) == ("split", 3, None)
    assert run.request_id and run.cloud_calls == 1
    assert stats.runs_by_mode["split"] == 3 and stats.fallbacks == 0
    assert stats.choice == "split:3" and stats.breaker == "closed"


def test_a_device_that_boots_offline_answers_locally(plan_dir: Path, fleet: Path, feed: dict,
                                                     reference: list[np.ndarray],
                                                     free_port) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with Predictor(_config(plan_dir, dead, fleet)) as predictor:
        for _ in range(5):
            start = time.perf_counter()
            outputs = predictor.run(None, feed)
            assert time.perf_counter() - start < predictor.config.timeout_s + 0.5
            _assert_model_outputs(outputs, reference)
            run = predictor.last_run()
            assert run.mode == "local" and run.cut is None and run.fallback
        stats = predictor.statistics()
        events = predictor.events()
    assert stats.runs_by_mode["local"] == 5 and stats.fallbacks == 5
    assert stats.breaker in ("open", "half_open")
    # Once the circuit opens, requests do not try the cloud.
    assert run.fallback == "circuit open"
    assert events and events[0].to_choice == "local" and "cloud unavailable" in events[0].reason


def test_fallback_none_raises_typed_errors_and_stops_trying(plan_dir: Path, fleet: Path,
                                                            feed: dict, free_port) -> None:
    dead = f"127.0.0.1:{free_port()}"
    config = _config(plan_dir, dead, fleet, fallback="none", breaker_reset_s=30.0)
    with Predictor(config) as predictor:
        messages = []
        for _ in range(5):
            with pytest.raises(CloudUnavailableError) as info:
                predictor.run(None, feed)
            messages.append(str(info.value))
        stats = predictor.statistics()
    assert stats.failures == 5 and stats.runs == 0 and stats.breaker == "open"
    assert all("circuit is open" not in m for m in messages[:3])
    assert all("circuit is open" in m for m in messages[3:])


def test_a_silent_server_costs_no_more_than_the_deadline(plan_dir: Path, fleet: Path,
                                                         feed: dict, silent_port: int,
                                                         reference: list[np.ndarray]) -> None:
    config = _config(plan_dir, f"127.0.0.1:{silent_port}", fleet, timeout_s=1.0)
    with Predictor(config) as predictor:
        for _ in range(3):
            start = time.perf_counter()
            outputs = predictor.run(None, feed)
            elapsed = time.perf_counter() - start
            assert elapsed < 1.0 + 0.3, elapsed
            _assert_model_outputs(outputs, reference)
            assert predictor.last_run().mode == "local"
        with pytest.raises(EdgecutError):
            Predictor(_config(plan_dir, f"127.0.0.1:{silent_port}", fleet,
                              mode="split", timeout_s=0.5)).run(None, feed)


def test_back_in_split_mode_soon_after_the_endpoint_starts(plan_dir: Path, fleet: Path,
                                                            feed: dict, repository: Path,
                                                            reference: list[np.ndarray],
                                                            free_port) -> None:
    port = free_port()
    # The first failure opens the circuit, so the return is a switch of its own whenever the
    # endpoint comes up: with the default 3, an endpoint up by the second run was never
    # switched away from, and there was no event to see.
    config = _config(plan_dir, f"localhost:{port}", fleet, breaker_failures=1)
    with Predictor(config) as predictor:
        _assert_model_outputs(predictor.run(None, feed), reference)
        assert predictor.last_run().mode == "local"
        assert predictor.statistics().breaker == "open"
        server = create_server(repository, address=f"127.0.0.1:{port}", tls_dir=fleet,
                               mutual_tls=True, workers=2, intra_op_threads=1)
        server.start()
        try:
            started = time.monotonic()

            def in_split() -> bool:
                _assert_model_outputs(predictor.run(None, feed), reference)
                return predictor.last_run().mode == "split"

            _wait_until(in_split, 10.0, "the Predictor back in split mode")
            back_after_s = time.monotonic() - started
        finally:
            server.stop(grace_s=0.5)
        events = predictor.events()
    assert back_after_s < 10.0
    assert events[-1].to_choice == "split:3", events


def test_device_pressure_offloads_whole_requests_until_it_ends(plan_dir: Path, endpoint: str,
                                                               fleet: Path, feed: dict,
                                                               reference: list[np.ndarray]
                                                               ) -> None:
    readings = {"memory": 4096.0}
    monitor = DeviceMonitor(lambda: DeviceReadings(available_memory_mib=readings["memory"]),
                            min_interval_s=0.0)
    seen = []
    config = _config(plan_dir, endpoint, fleet, min_free_memory_mib=512.0)
    with Predictor(config, monitor=monitor, on_event=seen.append) as predictor:
        _assert_model_outputs(predictor.run(None, feed), reference)
        assert predictor.last_run().mode == "split"
        readings["memory"] = 100.0
        _assert_model_outputs(predictor.run(None, feed), reference)
        assert predictor.last_run().mode == "offload"
        # Hysteresis: just above the threshold is not yet the end of the pressure.
        readings["memory"] = 530.0
        predictor.run(None, feed)
        assert predictor.last_run().mode == "offload"
        readings["memory"] = 4096.0
        _assert_model_outputs(predictor.run(None, feed), reference)
        assert predictor.last_run().mode == "split"
        stats = predictor.statistics()
    assert [(e.from_choice, e.to_choice) for e in seen] == [("split:3", "offload"),
                                                            ("offload", "split:3")]
    assert "memory" in seen[0].reason and stats.switches == 2
    assert stats.runs_by_mode == {"split": 2, "offload": 2, "local": 0}


def test_replicas_share_the_load_round_robin(plan_dir: Path, fleet: Path, feed: dict,
                                            repository: Path, reference: list[np.ndarray]
                                            ) -> None:
    servers = [create_server(repository, tls_dir=fleet, mutual_tls=True, workers=2,
                             intra_op_threads=1) for _ in range(2)]
    for server in servers:
        server.start()
    try:
        addresses = [f"localhost:{s.port}" for s in servers]
        with Predictor(_config(plan_dir, addresses, fleet, mode="split")) as predictor:
            for _ in range(12):
                _assert_model_outputs(predictor.run(None, feed), reference)
        served = [s.statistics().infer_requests for s in servers]
    finally:
        for server in servers:
            server.stop(grace_s=0.5)
    assert sum(served) == 12 and min(served) >= 3, served


def test_concurrent_runs_all_answer_while_the_endpoint_dies(plan_dir: Path, fleet: Path,
                                                            feed: dict, repository: Path,
                                                            reference: list[np.ndarray]
                                                            ) -> None:
    server = create_server(repository, tls_dir=fleet, mutual_tls=True, workers=4,
                           intra_op_threads=1)
    server.start()
    failures: list[BaseException] = []
    modes: list[str] = []
    done = threading.Event()
    with Predictor(_config(plan_dir, f"localhost:{server.port}", fleet, timeout_s=3.0)
                   ) as predictor:
        def device() -> None:
            for _ in range(500):
                if done.is_set():
                    return
                try:
                    _assert_model_outputs(predictor.run(None, feed), reference)
                    modes.append(predictor.last_run().mode)
                except BaseException as exc:  # every failure is the test's to see
                    failures.append(exc)

        threads = [threading.Thread(target=device) for _ in range(3)]
        for t in threads:
            t.start()
        _wait_until(lambda: len(modes) >= 20, 10.0, "20 runs with the endpoint up")
        server.stop(grace_s=0)
        _wait_until(lambda: modes.count("local") >= 20, 10.0, "20 runs answered locally")
        done.set()
        for t in threads:
            t.join(timeout=30)
    assert failures == []
    assert "split" in modes and "local" in modes


def _edgecut(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgecut", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_cli_run_adaptive_finishes_locally_or_fails_in_one_line(
        plan_dir: Path, fleet: Path, feed: dict, reference: list[np.ndarray], free_port,
        tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", feed["x"])
    common = ["run", str(plan_dir), "--endpoint", f"127.0.0.1:{free_port()}", "--tls",
              str(fleet), "--device", DEVICE, "--input", f"x={tmp_path / 'x.npy'}",
              "--output", str(tmp_path / "out.npz"), "--timeout", "3"]
    result = _edgecut(*common, "--mode", "adaptive", "--fallback", "local")
    assert result.returncode == 0, result.stderr
    assert "ran local; fell back: cloud unavailable" in result.stdout
    saved = np.load(tmp_path / "out.npz")
    _assert_model_outputs([saved[k] for k in saved.files], reference)

    result = _edgecut(*common, "--mode", "adaptive", "--fallback", "none")
    assert result.returncode == 1
    assert result.stderr.startswith("edgecut run: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_a_queueing_cloud_pushes_work_back_to_the_device(tmp_path: Path, fleet: Path) -> None:
    """The endpoint holds each lone request 300 ms for batch-mates and says so in its
    answer: the device runs the next requests itself, then tries the cloud again."""
    from edgecut.cloud.batching import SchedulingPolicy
    from edgecut.partitioner import write_plan
    from edgecut.zoo import ZOO

    model_path = tmp_path / "dynamic_cnn.onnx"
    onnx.save(ZOO["dynamic_cnn"](), str(model_path))
    plan = tmp_path / "plan"
    write_plan(model_path, plan, cut_ids=[2], input_shapes={"x": (1, 3, 16, 16)}, chosen=2)
    repo = tmp_path / "repo"
    deploy_plan(plan, repo)
    held = SchedulingPolicy(max_batch_size=8, dynamic_batching=True, max_queue_delay_us=300_000)
    server = create_server(repo, tls_dir=fleet, mutual_tls=True, workers=4, intra_op_threads=1,
                           scheduling={"dynamic_cnn.cut2": held})
    server.start()
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]
                                ).run(None, {"x": x})
    try:
        config = _config(plan, f"localhost:{server.port}", fleet, max_cloud_queue_ms=50.0)
        with Predictor(config) as predictor:
            runs = []
            for _ in range(4):
                _assert_model_outputs(predictor.run(None, {"x": x}), want)
                runs.append(predictor.last_run())
            # The queue report is forgotten after 2 s: the cloud is tried again.
            time.sleep(2.1)
            _assert_model_outputs(predictor.run(None, {"x": x}), want)
            retried = predictor.last_run()
            events = predictor.events()
    finally:
        server.stop(grace_s=0.5)
    assert runs[0].mode == "split" and runs[0].server_queue_ms > 200
    assert [r.mode for r in runs[1:]] == ["local"] * 3
    assert all(r.fallback is None for r in runs)  # a choice, not a failure
    assert events[0].from_choice == "split:2" and events[0].to_choice == "local"
    assert events[0].reason.startswith("cloud queue 3")
    assert retried.mode == "split" and events[1].to_choice == "split:2"


def test_a_predictor_dropped_unclosed_stops_its_prober(plan_dir: Path, fleet: Path,
                                                        free_port) -> None:
    import gc

    predictor = Predictor(_config(plan_dir, f"127.0.0.1:{free_port()}", fleet))
    thread = predictor._prober._thread  # the one thing this test must see from inside
    assert thread.is_alive()
    del predictor
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_head_that_fails_to_run_sends_requests_whole_to_the_cloud(
        plan_copy: Path, endpoint: str, fleet: Path, feed: dict,
        reference: list[np.ndarray]) -> None:
    """A head that loads but cannot run (as one that cannot allocate its activations):
    the request goes whole to the cloud's full model, and so do the next ones."""
    from onnx import TensorProto, helper

    head_path = plan_copy / "cuts" / "3" / "head.onnx"
    head = onnx.load(str(head_path))
    outputs = [o.name for o in head.graph.output]
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [7, -1, 5])  # 3072 / 35: no
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["stuck"])]
    nodes += [helper.make_node("Identity", ["stuck"], [name]) for name in outputs]
    graph = helper.make_graph(
        # Symbolic dims, so that the load-time shape inference cannot see it coming.
        nodes, "failing_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                              ["n", "c", "h", "w"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        initializer=[shape])
    onnx.save(helper.make_model(graph, opset_imports=head.opset_import), str(head_path))
    with Predictor(_config(plan_copy, endpoint, fleet)) as predictor:
        _assert_model_outputs(predictor.run(None, feed), reference)
        first = predictor.last_run()
        _assert_model_outputs(predictor.run(None, feed), reference)
        second = predictor.last_run()
        events = predictor.events()
    assert first.mode == "offload" and first.fallback.startswith("the head failed")
    assert second.mode == "offload" and second.fallback is None
    assert events[-1].to_choice == "offload" and "the head failed" in events[-1].reason


def test_thresholds_come_from_the_device_profile_through_the_plan(
        model_path: Path, tmp_path: Path) -> None:
    profile = tmp_path / "board.toml"
    profile.write_text(
        '[device]\nname = "board"\ncores = 1\nmemory_mib = 512\ndefault_gflops = 1.0\n'
        'memory_gbps = 1.0\n[device.gflops_by_class]\nconv = 2.0\n[device.power]\n'
        'idle_w = 1.0\ncompute_w = 3.0\ntransmit_w = 2.0\nreceive_w = 1.5\n'
        '[device.runtime]\nmin_free_memory_mib = 64\nmax_cloud_queue_ms = 120\n')
    plan = tmp_path / "plan"
    result = _edgecut("plan", str(model_path), "--device", str(profile), "--network", "lte",
                      "--no-measure", "--out", str(plan))
    assert result.returncode == 0, result.stderr
    with Predictor(Config(plan=plan, mode="local")) as predictor:
        assert predictor.thresholds["min_free_memory_mib"] == 64.0
        assert predictor.thresholds["max_cloud_queue_ms"] == 120.0
        assert predictor.thresholds["hysteresis"] == 0.25  # the built-in default
    with Predictor(Config(plan=plan, mode="local", max_cloud_queue_ms=10.0)) as predictor:
        assert predictor.thresholds["max_cloud_queue_ms"] == 10.0  # Config wins


def test_a_predictor_says_when_it_runs_other_threads_than_the_plan_predicts_for(
        model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    profile = tmp_path / "board.toml"
    profile.write_text(
        '[device]\nname = "board"\ncores = 7\nthreads = 7\nmemory_mib = 512\n'
        'default_gflops = 1.0\nmemory_gbps = 1.0\n[device.gflops_by_class]\nconv = 2.0\n'
        '[device.power]\nidle_w = 1.0\ncompute_w = 3.0\ntransmit_w = 2.0\nreceive_w = 1.5\n')
    plan = tmp_path / "plan"
    result = _edgecut("plan", str(model_path), "--device", str(profile), "--network", "lte",
                      "--no-measure", "--out", str(plan))
    assert result.returncode == 0, result.stderr
    # No endpoint runs: adaptive mode is created offline and nothing here sends a request.
    endpoint = "127.0.0.1:1"
    with caplog.at_level("WARNING", logger="edgecut.edge.predictor"):
        Predictor(Config(plan=plan, mode="adaptive", endpoint=endpoint)).close()
    assert "predicted for 7 onnxruntime threads" in caplog.text
    assert "intra_op_threads=7" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="edgecut.edge.predictor"):
        Predictor(Config(plan=plan, mode="adaptive", endpoint=endpoint,
                         intra_op_threads=7)).close()
    assert "onnxruntime thread" not in caplog.text
