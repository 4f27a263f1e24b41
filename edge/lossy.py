"""The lossy codecs a plan allows at each cut: what `edgecut plan --data EVAL
--accuracy-budget B` measured and recorded in plan.json, read with `json` alone.

Each cut entry may hold `lossy_codec`: the lossy codec ("int8", "fp16") whose measured top-1
drop on the evaluation set stayed within the budget and that moved the fewest bytes, or null
when none did. A Predictor with `codec="plan"` sends that codec on the cut's crossing tensors
and the lossless default ("auto") everywhere else.

    >>> lossy_codecs(Path("plans/digits"))                     # doctest: +SKIP
    {'big.cut3': 'int8'}
"""

from __future__ import annotations

import json
from pathlib import Path

from edgecut.errors import BadPlanError
from edgecut.protocol.codecs import LOSSY_CODECS

__all__ = ["lossy_codecs"]


def lossy_codecs(plan_dir: Path) -> dict[str, str]:
    """Endpoint model name of each cut -> the lossy codec its plan allows there."""
    path = Path(plan_dir) / "plan.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadPlanError(f"{path}: cannot read the plan ({exc})") from exc
    allowed = {}
    problems = []
    for cut in doc.get("cuts") or []:
        codec = cut.get("lossy_codec") if isinstance(cut, dict) else None
        if codec is None:
            continue
        if codec not in LOSSY_CODECS:
            problems.append(f"cut {cut.get('id')}: lossy_codec must be one of "
                            f"{', '.join(LOSSY_CODECS)} or null, got {codec!r}")
        elif cut.get("endpoint_model"):
            allowed[str(cut["endpoint_model"])] = codec
    if problems:
        raise BadPlanError(f"{path}: " + "; ".join(problems))
    return allowed
