"""The device side of a chain plan: device + two helpers + cloud as real processes over mTLS.

The plan is written by `write_chain_plan` and each stage installed by `deploy_stage`, as
`edgecut chain plan` and `edgecut chain deploy` do; helpers and cloud are `python -m edgecut
serve` processes. A helper is SIGKILLed under load: nothing may be lost (an untyped
exception, a wrong answer, or an answer past the deadline). The cloud logs its requests as
JSON lines: a run's request id must reach it through the helper.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness.endpoint import EndpointProcess  # noqa: E402
from edgecut.chain_deploy import deploy_stage  # noqa: E402
from edgecut.edge.chain import ChainConfig, ChainPredictor  # noqa: E402
from edgecut.edge.plan import load_plan  # noqa: E402
from edgecut.errors import BadPlanError, BadProfileError, EdgecutError  # noqa: E402
from edgecut.partitioner.chain_plan import plan_chain, write_chain_plan  # noqa: E402
from edgecut.profiles import load_cloud, load_device, load_network  # noqa: E402
from edgecut.protocol.pki import init_ca, issue_device_certificate  # noqa: E402
from edgecut.zoo import ZOO  # noqa: E402

MODEL = "residual_dag"  # skip connections: a helper passes on what it does not read
CUTS = (6, 15)
TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("chain-world")
    fleet = root / "tls"
    init_ca(fleet)
    for name in ("device-0", "helper-1", "helper-2"):
        issue_device_certificate(fleet, name)
    model_path = root / f"{MODEL}.onnx"
    onnx.save(ZOO[MODEL](), str(model_path))
    planned = plan_chain(model_path, device=load_device("raspberry-pi-4"),
                         network=load_network("lte"), cloud=load_cloud("gpu-server"),
                         helpers=[(load_device("jetson-nano"), load_network("wifi"))],
                         cuts=CUTS)
    plan_dir = root / "plan"
    write_chain_plan(planned, plan_dir)
    logs = root / "logs"
    logs.mkdir()
    deploy_stage(plan_dir, root / "cloud-repo", 2)
    cloud = EndpointProcess(root / "cloud-repo", fleet, log_dir=logs, device="device-0",
                            name="cloud", extra_args=["--frontend", "grpcio", "--log-requests",
                                                      "--log-format", "json"])
    helpers: list[EndpointProcess] = []
    try:
        cloud.start()
        for i in (1, 2):
            repo = root / f"helper-{i}-repo"
            deploy_stage(plan_dir, repo, 1, next_endpoints=[cloud.address], tls_dir=fleet,
                         device=f"helper-{i}")
            helpers.append(EndpointProcess(repo, fleet, log_dir=logs, device="device-0",
                                           name=f"helper-{i}",
                                           extra_args=["--frontend", "grpcio"]))
            helpers[-1].start()
        rng = np.random.default_rng(0)
        feeds = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
                 for _ in range(6)]
        import onnxruntime as ort

        full = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        expected = [full.run(None, f) for f in feeds]
        yield {"plan": plan_dir, "fleet": fleet, "cloud": cloud, "helpers": helpers,
               "feeds": feeds, "expected": expected, "root": root}
    finally:
        for h in helpers:
            h.stop()
        cloud.stop()


def _config(world: dict, **options: object) -> ChainConfig:
    return ChainConfig(plan=world["plan"], helpers=tuple(h.address for h in world["helpers"]),
                       cloud=(world["cloud"].address,), tls_dir=world["fleet"],
                       device="device-0", timeout_s=TIMEOUT_S, **options)  # type: ignore[arg-type]


def test_the_plan_holds_three_stages_that_chain(world: dict) -> None:
    plan = load_plan(world["plan"])
    assert [s.where for s in plan.stages] == ["device", "helper", "cloud"]
    assert plan.stages[1].receives == plan.stages[0].sends
    assert set(plan.cut(plan.chosen).crossing) == set(plan.stages[0].sends)
    forward = world["root"] / "helper-1-repo" / plan.stages[1].endpoint_model / "forward.json"
    assert forward.is_file()


@pytest.mark.parametrize("balance", ["round_robin", "least_outstanding"])
def test_outputs_equal_the_full_model_over_both_helpers(world: dict, balance: str) -> None:
    with ChainPredictor(_config(world, balance=balance)) as chain:
        for feed, expected in zip(world["feeds"], world["expected"], strict=True):
            got = chain.run(None, feed)
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
            assert chain.last_run().path == "chain"
        used = [h.calls for h in chain.statistics().helpers]
    assert all(calls > 0 for calls in used) and sum(used) == len(world["feeds"])


def _request_lines(log: Path) -> list[dict]:
    lines = []
    for text in log.read_text(errors="replace").splitlines():
        if text.startswith("{"):
            line = json.loads(text)
            if line.get("logger") == "edgecut.cloud.requests":
                lines.append(line)
    return lines


def test_a_runs_request_id_reaches_the_cloud_through_the_helper(world: dict) -> None:
    with ChainPredictor(_config(world)) as chain:
        chain.run(None, world["feeds"][0])
        run = chain.last_run()
    assert run.path == "chain" and run.request_id
    deadline = time.monotonic() + 10.0
    while True:
        seen = [line for line in _request_lines(world["cloud"].log)
                if line.get("id") == run.request_id]
        if seen or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(seen) == 1, _request_lines(world["cloud"].log)[-5:]
    assert seen[0]["status"] == "OK"
    assert seen[0]["device"] in ("helper-1", "helper-2")  # the helper's call, not a fallback
    assert seen[0]["model"] == load_plan(world["plan"]).stages[2].endpoint_model


def _load(chain: ChainPredictor, world: dict, *, requests: int, threads: int,
          during: callable) -> dict[str, int]:
    """`threads` callers, `requests` runs each; `during` runs once a third are done."""
    counts = {"ok": 0, "typed": 0, "untyped": 0, "wrong": 0, "late": 0}
    lock = threading.Lock()
    done = threading.Event()
    finished = [0]

    def caller(k: int) -> None:
        for i in range(requests):
            j = (k + i) % len(world["feeds"])
            start = time.monotonic()
            try:
                got = chain.run(None, world["feeds"][j])
                right = all(np.allclose(a, b, rtol=1e-5, atol=1e-5)
                            for a, b in zip(got, world["expected"][j], strict=True))
                outcome = "ok" if right else "wrong"
            except EdgecutError:
                outcome = "typed"
            except Exception:  # counted: an untyped error is a lost request
                outcome = "untyped"
            if time.monotonic() - start > TIMEOUT_S + 0.5:
                outcome = "late"
            with lock:
                counts[outcome] += 1
                finished[0] += 1
                if finished[0] >= requests * threads // 3:
                    done.set()

    workers = [threading.Thread(target=caller, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    done.wait(timeout=60)
    during()
    for w in workers:
        w.join(timeout=120)
    return counts


def test_a_helper_killed_under_load_loses_nothing(world: dict) -> None:
    helper = world["helpers"][0]
    with ChainPredictor(_config(world, balance="least_outstanding", fallback="cloud",
                                breaker_reset_s=30.0)) as chain:
        try:
            counts = _load(chain, world, requests=15, threads=3, during=helper.kill)
            paths = dict(chain.statistics().runs_by_path)
        finally:
            helper.start()
    assert counts == {"ok": 45, "typed": 0, "untyped": 0, "wrong": 0, "late": 0}, counts
    assert paths.get("chain", 0) > 0


def test_every_helper_down_finishes_locally(world: dict) -> None:
    plan = world["plan"]
    config = ChainConfig(plan=plan, helpers=("127.0.0.1:1", "127.0.0.1:2"),
                         tls_dir=world["fleet"], device="device-0", fallback="local",
                         timeout_s=TIMEOUT_S)
    with ChainPredictor(config) as chain:
        for feed, expected in zip(world["feeds"][:3], world["expected"][:3], strict=True):
            got = chain.run(None, feed)
            np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)
            assert chain.last_run().path == "local"
        stats = chain.statistics()
    assert [h.breaker for h in stats.helpers] == ["open", "open"]
    assert stats.runs_by_path == {"local": 3}


def test_without_a_fallback_the_typed_error_comes_through(world: dict) -> None:
    config = ChainConfig(plan=world["plan"], helpers=("127.0.0.1:1",), tls_dir=world["fleet"],
                         device="device-0", fallback="none", timeout_s=TIMEOUT_S)
    with ChainPredictor(config) as chain, pytest.raises(EdgecutError, match=r"helper|127\.0\.0\.1"):
        chain.run(None, world["feeds"][0])


def test_bad_configs_say_what_is_wrong(world: dict, tmp_path: Path) -> None:
    with pytest.raises(BadProfileError, match="balance"):
        ChainConfig(plan=world["plan"], helpers=("a:1",), balance="random", fallback="local")
    with pytest.raises(BadProfileError, match="needs the cloud"):
        ChainConfig(plan=world["plan"], helpers=("a:1",))
    with pytest.raises(BadProfileError, match="give its endpoint"):
        ChainPredictor(ChainConfig(plan=world["plan"], fallback="local"))
    single = tmp_path / "single"
    from edgecut.partitioner import write_plan

    write_plan(world["root"] / f"{MODEL}.onnx", single, cut_ids=[3])
    with pytest.raises(BadPlanError, match="not a chain plan"):
        ChainPredictor(ChainConfig(plan=single, fallback="local"))


def test_chain_plan_cli_explains_every_hop(world: dict, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgecut", "chain", "plan", str(world["root"] / f"{MODEL}.onnx"),
         "--device", "raspberry-pi-4", "--helper", "jetson-nano@wifi", "--network", "lte",
         "--cuts", "6,15", "--explain", "--json", "--out", str(tmp_path / "p")],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert [r["name"] for r in shown["hops"]] == ["device", "wifi", "helper1", "lte", "cloud"]
    assert shown["cuts"] == [6, 15]
    assert {"chain", "single_cut", "device_only"} <= set(shown["summary"])
    assert load_plan(tmp_path / "p").stages[2].where == "cloud"

    def deploy(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edgecut", "chain", "deploy",
                               str(tmp_path / "p"), *extra], capture_output=True, text=True,
                              timeout=120, check=False)

    done = deploy("--stage", "2", "--repository", str(tmp_path / "cloud"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cloud" / "residual_dag.stage2" / "1" / "model.onnx").is_file()
    assert (tmp_path / "cloud" / "residual_dag" / "1" / "model.onnx").is_file()  # full model
    refused = deploy("--stage", "1", "--repository", str(tmp_path / "helper"))
    assert refused.returncode != 0 and "--next HOST:PORT" in refused.stderr
    done = deploy("--stage", "1", "--repository", str(tmp_path / "helper"), "--next",
                  "10.0.0.9:8001", "--tls", str(world["fleet"]), "--device", "helper-1")
    assert done.returncode == 0, done.stderr
    forward = json.loads((tmp_path / "helper" / "residual_dag.stage1" / "forward.json")
                         .read_text())
    assert forward["next"]["model"] == "residual_dag.stage2"
    assert forward["next"]["endpoints"] == ["10.0.0.9:8001"]


def test_chain_run_cli_answers_like_the_full_model(world: dict, tmp_path: Path) -> None:
    feed = world["feeds"][0]
    np.save(tmp_path / "x.npy", feed["x"])
    helpers = ",".join(h.address for h in world["helpers"])

    def chain_run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgecut", "chain", "run", str(world["plan"]),
             "--helper", helpers, "--cloud", world["cloud"].address, "--tls",
             str(world["fleet"]), "--device", "device-0", "--timeout", str(TIMEOUT_S),
             *extra], capture_output=True, text=True, timeout=120, check=False)

    done = chain_run("--input", f"x={tmp_path / 'x.npy'}", "--output", str(tmp_path / "o.npz"))
    assert done.returncode == 0, done.stderr
    assert "ran through helper 127.0.0.1:" in done.stdout
    with np.load(tmp_path / "o.npz") as answer:
        for name, expected in zip(answer.files, world["expected"][0], strict=True):
            np.testing.assert_allclose(answer[name], expected, rtol=1e-4, atol=1e-5)
    refused = chain_run("--input", f"y={tmp_path / 'x.npy'}", "--output", str(tmp_path / "p.npz"))
    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert "'y'" in refused.stderr


def test_a_min_cut_chain_cut_along_a_reordered_order_answers_like_the_full_model(
        tmp_path: Path) -> None:
    """`--solver mincut`'s device set is no prefix of the default order: the plan records the
    order it was cut along, and served over a real helper and cloud it equals the full model."""
    from tests.partitioner.test_chain import SLOW, side_branch_model

    fleet = tmp_path / "tls"
    init_ca(fleet)
    for name in ("device-0", "helper-1"):
        issue_device_certificate(fleet, name)
    model_path = tmp_path / "m.onnx"
    onnx.save(side_branch_model(), str(model_path))
    planned = plan_chain(model_path, device=load_device("raspberry-pi-4"),
                         network=load_network(SLOW), cloud=load_cloud("gpu-server"),
                         helpers=[(load_device("jetson-nano"), load_network(SLOW))],
                         solver="mincut")
    plan_dir = tmp_path / "plan"
    written = write_chain_plan(planned, plan_dir)
    assert written["chain"]["order"][:written["chain"]["cuts"][0]] == [4]
    deploy_stage(plan_dir, tmp_path / "cloud-repo", 2)
    cloud = EndpointProcess(tmp_path / "cloud-repo", fleet, log_dir=tmp_path, device="device-0",
                            name="cloud", extra_args=["--frontend", "grpcio"])
    helper = None
    try:
        cloud.start()
        deploy_stage(plan_dir, tmp_path / "helper-repo", 1, next_endpoints=[cloud.address],
                     tls_dir=fleet, device="helper-1")
        helper = EndpointProcess(tmp_path / "helper-repo", fleet, log_dir=tmp_path,
                                 device="device-0", name="helper-1",
                                 extra_args=["--frontend", "grpcio"])
        helper.start()
        import onnxruntime as ort

        full = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(3)
        config = ChainConfig(plan=plan_dir, helpers=(helper.address,), cloud=(cloud.address,),
                             tls_dir=fleet, device="device-0", timeout_s=TIMEOUT_S,
                             fallback="none")
        with ChainPredictor(config) as chain:
            for _ in range(3):
                feed = {"x": rng.standard_normal((1, 16384)).astype(np.float32),
                        "z": rng.standard_normal((1, 256)).astype(np.float32)}
                got = chain.run(None, feed)
                np.testing.assert_allclose(got[0], full.run(None, feed)[0], rtol=1e-4,
                                           atol=1e-4)
                assert chain.last_run().path == "chain"
    finally:
        if helper is not None:
            helper.stop()
        cloud.stop()
