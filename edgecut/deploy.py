"""Install a plan's full model and tails into a Triton-layout model repository.

`REPO/<model>/<version>/model.onnx`, as Triton and `edgecut serve` read it. Installing is
idempotent: a model whose latest version already holds the same bytes is left alone; a changed
model gets the next version number, so a server with the default "latest" policy switches to it
and the old version stays on disk for rollback. Files are written to a temporary name and renamed,
so a server polling the repository never sees half a model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgecut.edge.plan import Plan, load_plan


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployedModel:
    name: str
    version: int
    path: Path
    unchanged: bool


def deploy_plan(plan_dir: Path, repository: Path) -> list[DeployedModel]:
    """Install the full model and every tail of the plan in `plan_dir` into `repository`.

    >>> deploy_plan(Path("plan"), Path("repo"))  # doctest: +SKIP
    [DeployedModel(name='chain_cnn', version=1, ...), DeployedModel(name='chain_cnn.cut3', ...)]
    """
    plan = load_plan(plan_dir)
    repository.mkdir(parents=True, exist_ok=True)
    deployed = [_install(repository, plan.model.name, plan.directory / plan.model.file)]
    for name, tail in _tails(plan):
        deployed.append(_install(repository, name, tail))
    return deployed


def _tails(plan: Plan) -> list[tuple[str, Path]]:
    return [
        (cut.endpoint_model, plan.directory / cut.tail)
        for cut in plan.cuts
        if cut.tail is not None and cut.endpoint_model is not None
    ]


def _install(repository: Path, name: str, source: Path) -> DeployedModel:
    model_dir = repository / name
    versions = sorted(int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit())
    if versions:
        latest = model_dir / str(versions[-1]) / "model.onnx"
        if latest.is_file() and _sha256(latest) == _sha256(source):
            return DeployedModel(name=name, version=versions[-1], path=latest, unchanged=True)
    version = versions[-1] + 1 if versions else 1
    target = model_dir / str(version) / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".model.", suffix=".tmp")
    os.close(fd)
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    config = model_dir / "config.pbtxt"
    if not config.exists():
        # Enough for Triton to serve the same folder (it completes the rest from the ONNX file).
        config.write_text(f'name: "{name}"\nplatform: "onnxruntime_onnx"\n')
    return DeployedModel(name=name, version=version, path=target, unchanged=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
