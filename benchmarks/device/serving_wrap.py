"""benchmarks/serving.py as it is, plus one JSON line per measured load as it finishes.

    python3 serving_wrap.py BENCH_ROOT ROWS.jsonl -- ARGS OF benchmarks/serving.py
    python3 serving_wrap.py --summarise BENCH_ROOT ROWS.jsonl PARTIAL.json

serving.py writes its JSON only once the whole headline is done; if the run is cut off, the
lines in ROWS.jsonl (and the one-line summary printed after each load) are what is left, and
--summarise turns them into the headline's rows and ratios (headline.summarise/ratios; a
load's round is how many times its server, protocol and model came before it).
Nothing in the benchmark changes: the wrapper only sees the result of each
headline.quietest() call on its way back.
"""

from __future__ import annotations

import json
import runpy
import sys
import time
from pathlib import Path


def summarise(root: Path, rows_path: Path, out: Path) -> None:
    sys.path.insert(0, str(root))
    from benchmarks.serving import headline as hl

    runs, seen = [], {}
    for line in rows_path.read_text().splitlines():
        row = json.loads(line)
        name, _, suffix = str(row["model"]).rpartition("_")
        key = (row["server"], row["protocol"], row["model"])
        seen[key] = seen.get(key, -1) + 1
        runs.append({**row, "round": seen[key], "model": name, "batching": suffix == "b"})
    result = {"partial": True, "loads": len(runs), "runs": runs,
              "rows": hl.summarise(runs), "ratios": hl.ratios(runs)}
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}: {len(runs)} loads")
    for key, r in result["ratios"].items():
        print(f"  {key:45s} median {r['median']:.2f}  lowest {r['lowest']:.2f}  "
              f"p99 {r['p99_median']:.2f}")


def main() -> None:
    if sys.argv[1] == "--summarise":
        summarise(Path(sys.argv[2]).resolve(), Path(sys.argv[3]), Path(sys.argv[4]))
        return
    root, rows_path = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    argv = sys.argv[sys.argv.index("--") + 1:]
    sys.path.insert(0, str(root))
    from benchmarks.serving import headline as hl

    original = hl.quietest
    count = [0]
    started = time.time()

    def quietest(measure, progress):
        row = original(measure, progress)
        count[0] += 1
        args = getattr(measure, "args", ())
        cell = args[1] if len(args) > 1 else None
        line = {"n": count[0], "t_s": round(time.time() - started, 1),
                "server": getattr(cell, "server", None),
                "protocol": getattr(cell, "protocol", None),
                "model": args[2] if len(args) > 2 else None,
                **{k: v for k, v in row.items() if k != "latencies_ms"}}
        with rows_path.open("a") as f:
            f.write(json.dumps(line, default=str) + "\n")
        print(f"[row {count[0]}] {line['server']} {line['protocol']} {line['model']}: "
              f"{row.get('throughput_rps', 0):.0f} rows/s, p50 {row.get('p50_ms')} ms, "
              f"p99 {row.get('p99_ms')} ms, mean batch {row.get('mean_batch')}, "
              f"failures {row.get('failures')}, empty {row.get('empty_outputs')}, "
              f"others' CPU {100 * row.get('foreign_cpu', 0):.0f}%, "
              f"server busy {row.get('server_busy', '-')}, "
              f"attempts {row.get('attempts')}", file=sys.stderr, flush=True)
        return row

    hl.quietest = quietest
    sys.argv = [str(root / "benchmarks" / "serving.py"), *argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
