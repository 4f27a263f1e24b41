"""The acceptance test: every zoo model, cut at every cut, runs split across a real endpoint.

For each model of edgecut.zoo.ZOO: a plan with every cut id, the full model and every tail
deployed into one Triton-layout repository, ONE real endpoint with mutual TLS for all of them
(certificates from edgecut.protocol.pki), and for every cut a Predictor in split mode whose
outputs must equal onnxruntime's on the full model within 1e-5 * max(1, max|full|). The
lossless codecs rotate over the cuts (raw, zstd, shuffle_zstd); fp16 runs on every cut too, checked
with a looser bound; offload and local once per model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgecut.cloud.server import EndpointServer, create_server
from edgecut.deploy import deploy_plan
from edgecut.edge import Config, Predictor, load_plan
from edgecut.edge.plan import Plan
from edgecut.partitioner import list_cuts, write_plan
from edgecut.protocol.pki import init_ca, issue_device_certificate
from edgecut.zoo import ZOO, sample_inputs

DEVICE = "e2e-device"
LOSSLESS = ("raw", "zstd", "shuffle_zstd")
LOSSLESS_TOLERANCE = 1e-5
# fp16 keeps 11 significant bits (~5e-4 relative); the zoo's worst cut measured 5.3e-4 after
# the tail's layers, so 10x margin.
FP16_TOLERANCE = 5e-3


@dataclass(frozen=True)
class Deployed:
    plan: Plan
    feed: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]


def _run_full(model_path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the opset-11 model's initializer-as-input warnings
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fleet")
    init_ca(directory)
    issue_device_certificate(directory, DEVICE)
    return directory


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Deployed]]:
    root = tmp_path_factory.mktemp("e2e")
    repository = root / "repo"
    models = {}
    for name, make in ZOO.items():
        model = make()
        model_path = root / f"{name}.onnx"
        onnx.save(model, str(model_path))
        feed = sample_inputs(model)
        shapes = {k: list(v.shape) for k, v in feed.items()}
        cut_ids = [c.id for c in list_cuts(model, shapes)]
        plan_dir = root / "plans" / name
        write_plan(model_path, plan_dir, cut_ids=cut_ids, input_shapes=shapes,
                   chosen=cut_ids[len(cut_ids) // 2])
        plan = load_plan(plan_dir)
        assert plan.cut_ids == tuple(cut_ids)
        deploy_plan(plan.directory, repository)
        models[name] = Deployed(plan=plan, feed=feed, reference=_run_full(model_path, feed))
    return repository, models


@pytest.fixture(scope="module")
def endpoint(deployed: tuple[Path, dict[str, Deployed]], fleet: Path) -> Iterator[str]:
    repository, _ = deployed
    server: EndpointServer = create_server(repository, tls_dir=fleet, mutual_tls=True,
                                           workers=2, intra_op_threads=1)
    server.start()
    yield f"localhost:{server.port}"
    server.stop(grace_s=1.0)


def _worst(outputs: list[np.ndarray], reference: dict[str, np.ndarray], relative: float,
           where: str) -> list[str]:
    """Problems (empty when all outputs are within relative * max(1, max|full|))."""
    problems = []
    for (name, want), got in zip(reference.items(), outputs, strict=True):
        if got.shape != want.shape or got.dtype != want.dtype:
            problems.append(f"{where}: {name} is {got.dtype}{got.shape}, expected "
                            f"{want.dtype}{want.shape}")
            continue
        if want.dtype.kind not in "fc":
            if not np.array_equal(got, want):
                problems.append(f"{where}: {name} differs")
            continue
        scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
        diff = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
        if not diff <= relative * scale:
            problems.append(f"{where}: {name} max abs diff {diff:.3g} > "
                            f"{relative * scale:.3g}")
    return problems


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_cut_matches_the_full_model(name: str, deployed: tuple[Path, dict[str, Deployed]],
                                          endpoint: str, fleet: Path) -> None:
    model = deployed[1][name]
    plan, feed, reference = model.plan, model.feed, model.reference
    names = list(reference)
    assert [o.name for o in plan.model.outputs] == names
    problems: list[str] = []
    verified = 0

    def config(mode: str, cut: int | None = None, codec: str = "raw") -> Config:
        return Config(plan=plan.directory, mode=mode, endpoint=endpoint,  # type: ignore[arg-type]
                      tls_dir=fleet, device=DEVICE, cut=cut, codec=codec, timeout_s=30.0,
                      intra_op_threads=1)

    for i, cut in enumerate(plan.cuts):
        for codec, tolerance in ((LOSSLESS[i % len(LOSSLESS)], LOSSLESS_TOLERANCE),
                                 ("fp16", FP16_TOLERANCE)):
            with Predictor(config("split", cut.id, codec)) as predictor:
                outputs = predictor.run(names, feed)
                run = predictor.last_run()
            problems += _worst(outputs, reference, tolerance, f"{name} cut {cut.id} ({codec})")
            assert run is not None
            assert run.cloud_calls == (1 if cut.cloud_outputs else 0)
            # The endpoint announced every codec, so each crossing tensor went as asked
            # (fp16 falls back to lossless zstd for tensors that are not float32).
            allowed = {codec} if codec != "fp16" else {"fp16", "zstd", "shuffle_zstd"}
            assert set(run.codecs.values()) <= allowed
        verified += 1

    for mode in ("offload", "local"):
        with Predictor(config(mode, codec="shuffle_zstd")) as predictor:
            problems += _worst(predictor.run(None, feed), reference, LOSSLESS_TOLERANCE,
                               f"{name} {mode}")

    assert problems == []
    assert verified == len(plan.cuts) > 1
