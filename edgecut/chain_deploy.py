"""Install one stage of a chain plan into a model repository, with its next hop.

A helper's repository holds its stage's slice as `<model>.stage<j>` and, beside its
versions, `forward.json`: the next stage's model name and endpoint(s), the TLS folder and
certificate the helper presents there, what it sends and what it answers
(edgecut.cloud.forwarding). The last stage is an ordinary model. The cloud's repository
also gets the plan's full model and its cut's tail (`deploy_plan`), where devices go when
they skip the helpers.

    >>> deploy_stage(Path("plan"), Path("helper-repo"), 1, next_endpoints=["10.0.0.9:8001"],
    ...              tls_dir=Path("tls"), device="helper-1")                    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgecut.cloud.forwarding import (
    FORWARD_FILE,
    ForwardSpec,
    oip_spec,
    write_forward_spec,
)
from edgecut.deploy import DeployedModel, _install, deploy_plan
from edgecut.edge.plan import load_plan
from edgecut.errors import BadPlanError, UserInputError

__all__ = ["deploy_stage"]


def deploy_stage(plan_dir: Path, repository: Path, stage: int, *,
                 next_endpoints: Sequence[str] = (), tls_dir: Path | None = None,
                 device: str | None = None, codec: str = "raw", timeout_s: float = 30.0,
                 with_plan: bool | None = None) -> list[DeployedModel]:
    """Install stage `stage` of the chain plan in `plan_dir` (module docstring).

    `next_endpoints` are required for every stage but the last. `with_plan` (default: the
    stage runs in the cloud) also installs the full model and the cut's tail.
    """
    plan = load_plan(plan_dir)
    if not plan.stages:
        raise BadPlanError(f"{plan_dir}: not a chain plan (no stages); write one with "
                           f"`edgecut chain plan`")
    if not 0 < stage < len(plan.stages):
        raise UserInputError(f"stage must be one of 1..{len(plan.stages) - 1} (stage 0 runs on "
                             f"the device), got {stage}")
    this = plan.stages[stage]
    assert this.endpoint_model is not None  # PlanStage checks it off the device
    repository.mkdir(parents=True, exist_ok=True)
    deployed = []
    if with_plan if with_plan is not None else this.where == "cloud":
        deployed += deploy_plan(plan_dir, repository)
    deployed.append(_install(repository, this.endpoint_model, plan.path(this.model)))
    model_dir = repository / this.endpoint_model
    last = stage == len(plan.stages) - 1
    if last:
        if next_endpoints:
            raise UserInputError(f"stage {stage} is the chain's last: it has no next hop, but "
                                 f"--next {list(next_endpoints)} was given")
        (model_dir / FORWARD_FILE).unlink(missing_ok=True)
        return deployed
    if not next_endpoints:
        raise UserInputError(f"stage {stage} sends {list(this.sends)} on to stage {stage + 1} "
                             f"({plan.stages[stage + 1].where}); give its endpoint with --next "
                             f"HOST:PORT")
    nxt = plan.stages[stage + 1]
    assert nxt.endpoint_model is not None
    specs = {s.name: s for s in plan.model.outputs}
    later = {n for s in plan.stages[stage + 1:] for n in s.returns}
    answered = [*this.returns, *(n for n in specs if n in later and n not in this.returns)]
    outputs = tuple(oip_spec(n, specs[n].dtype, specs[n].shape) for n in answered)
    spec = ForwardSpec(next_endpoints=tuple(next_endpoints), next_model=nxt.endpoint_model,
                       sends=this.sends, returns=this.returns, outputs=outputs,
                       tls_dir=None if tls_dir is None else Path(tls_dir).resolve(),
                       device=device, codec=codec, timeout_s=timeout_s)
    write_forward_spec(model_dir, spec)
    return deployed
