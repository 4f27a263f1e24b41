"""Is a measured plan reproducible? The same plan command again and again, and across links.

    python benchmarks/plan_repeat.py --out /tmp/plan_repeat.json         # about 4 minutes
    python benchmarks/plan_repeat.py --repeats 2 --models fpn --out r.json

For each model (the packaged PP-OCRv4 detector at 1x3x320x320 and the zoo's `fpn`), the
planner runs as `edgecut plan MODEL --device raspberry-pi-4 --network lte` does (measured
correction, its default budget), `--repeats` times, each time followed by the same plan on
two other links (1 and 10 Mbit/s up): rounds of the three links, so that a drift of the
machine's speed spreads over all links alike. Each run measures its own correction on this
machine: nothing is shared between runs but the model and the profiles.

It reports, per model: the chosen cut of every run (the issue's goal: the same for the
repeats), the largest relative spread (max / min - 1) over the repeats of each cut's
predicted latency and of its predicted device time (goal: within 10 %), and the largest
spread of each cut's predicted device time over all runs, other links included (a cut's
device time must not depend on the network). Prints and writes JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LINKS = ("lte", "up=1,down=5,rtt=60", "up=10,down=40,rtt=30")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _models(work: Path, names: list[str]) -> list[tuple[str, Path, dict[str, tuple[int, ...]]]]:
    import onnx

    from edgecut.zoo import ZOO, find_packaged_model, sample_inputs

    out = []
    for name in names:
        if name == "ppocr_det":
            det = find_packaged_model()
            if det is None:
                _log("PP-OCRv4 detector not installed: skipped")
                continue
            out.append((name, det, {"x": (1, 3, 320, 320)}))
            continue
        model = ZOO[name]()
        path = work / f"{name}.onnx"
        onnx.save(model, str(path))
        out.append((name, path, {k: tuple(v.shape) for k, v in sample_inputs(model).items()}))
    return out


def _spread(values: list[float]) -> float:
    low, high = min(values), max(values)
    return 0.0 if high <= 0 else (high / low - 1.0 if low > 0 else float("inf"))


def run_model(name: str, path: Path, shapes: dict[str, tuple[int, ...]],
              repeats: int) -> dict[str, Any]:
    from edgecut.partitioner.planner import plan_model
    from edgecut.profiles import load_cloud, load_device, load_network

    device, cloud = load_device("raspberry-pi-4"), load_cloud()
    runs = []
    for k, link in enumerate(LINKS * repeats):
        started = time.monotonic()
        planned = plan_model(path, device=device, network=load_network(link), cloud=cloud,
                             input_shapes=shapes, measure=True)
        costs = {c.id: c.cost(planned.params) for c in planned.candidates}
        runs.append({"link": link, "chosen": planned.chosen.id,
                     "latency_ms": {i: c.latency_ms for i, c in costs.items()},
                     "device_ms": {i: c.device_ms for i, c in costs.items()},
                     "seconds": time.monotonic() - started})
        _log(f"{name} run {k + 1} ({link}): chose cut {planned.chosen.id}, predicted "
             f"{costs[planned.chosen.id].latency_ms:.1f} ms ({runs[-1]['seconds']:.0f} s)")
    same = [r for r in runs if r["link"] == LINKS[0]]
    cut_ids = sorted(same[0]["latency_ms"])
    latency_spread = max(_spread([r["latency_ms"][i] for r in same]) for i in cut_ids)
    device_spread = max(_spread([r["device_ms"][i] for r in same]) for i in cut_ids)
    across_links = max(_spread([r["device_ms"][i] for r in runs]) for i in cut_ids)
    return {"model": name, "input_shapes": {k: list(v) for k, v in shapes.items()},
            "cuts": len(cut_ids), "chosen": [r["chosen"] for r in same],
            "same_chosen_cut": len({r["chosen"] for r in same}) == 1,
            "latency_spread_max": latency_spread, "device_ms_spread_max": device_spread,
            "device_ms_spread_across_links_max": across_links,
            "chosen_by_link": {link: [r["chosen"] for r in runs if r["link"] == link]
                               for link in LINKS},
            "runs": [{**r, "latency_ms": {str(i): v for i, v in r["latency_ms"].items()},
                      "device_ms": {str(i): v for i, v in r["device_ms"].items()}}
                     for r in runs]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.json")
    parser.add_argument("--repeats", type=int, default=3, help="runs on LTE (default 3)")
    parser.add_argument("--models", nargs="+", default=["ppocr_det", "fpn"])
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be at least 2")
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgecut-plan-repeat-") as tmp:
        for name, path, shapes in _models(Path(tmp), args.models):
            rows.append(run_model(name, path, shapes, args.repeats))
    args.out.write_text(json.dumps({"goals": {"same_chosen_cut": True, "spread_max": 0.10},
                                    "links": list(LINKS), "repeats": args.repeats,
                                    "rows": rows}, indent=2) + "\n")
    for r in rows:
        print(f"{r['model']:>10}: chosen {r['chosen']} (same: {r['same_chosen_cut']}), "
              f"spread over repeats: latency {100 * r['latency_spread_max']:.1f} %, device "
              f"{100 * r['device_ms_spread_max']:.1f} %; device time over all links "
              f"{100 * r['device_ms_spread_across_links_max']:.1f} %")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
