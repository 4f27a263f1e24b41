"""Is edgecut's endpoint a production inference server? Measured side by side, in one run.

    python benchmarks/serving.py --quick --out /tmp/serving_quick.json      # a few minutes
    python benchmarks/serving.py --out serving.json --soak 300 --triton-download

The machine is split in two with taskset: every server (edgecut's endpoint, Triton, and
onnxruntime alone as the limit) on core 0, every load generator on core 1 in a process of its
own. `--server-cpus 0-3 --client-cpus 4-11` gives the server 4 cores (one model instance per
core; onnxruntime alone then keeps 4 runs in flight) and the clients 8 (one load generator
process per core). All traffic is gRPC over TLS on loopback. Sections (see benchmarks/README.md):

  headline     the transport `pip install .` gives (core) and the native one against Triton,
               gRPC and HTTP/REST, batching off/on, small CNN and a real trained image
               model (PP-OCR's classifier), every server up at once and loaded in turns
               (--rounds); ratios taken within each round (serving/headline.py)
  throughput   1/8/32/128 clients x batching off/on x {small CNN tail, wide MLP}; edgecut
               driven by tritonclient and by its own CloudClient; Triton 2.51 (Python
               backend calling onnxruntime) driven by tritonclient; onnxruntime alone on the
               server core at exactly the batch sizes each server formed
  memory       RSS of 8 tails of a 32 MiB MLP against the full model
  channel      ModelInfer of 4 MiB vs a bare grpcio call of 4 MiB, glibc defaults, as shipped, tuned
  canary       canary / change / rollback / canary / promote under load: failed requests
  soak         (--soak SECONDS) 80 % of measured capacity: failures, RSS growth

Prints tables and writes JSON (rewritten after each section); asserts no timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.serving import suite  # noqa: E402
from benchmarks.serving.cgroups import CpuQuota, CpuQuotaUnavailable  # noqa: E402
from benchmarks.serving.headline import HEADLINE_MODELS, headline  # noqa: E402
from benchmarks.serving.memory import VARIANTS  # noqa: E402
from benchmarks.serving.processes import CpuLayout, layout, parse_cpus, use_layout  # noqa: E402
from benchmarks.serving.summary import summarise_throughput  # noqa: E402
from benchmarks.serving.triton import TritonUnavailable, find_triton  # noqa: E402

console = Console(stderr=True, width=170)

KEYS = ("batching_gain_vs_ort_gain", "server_vs_ort", "server_vs_triton", "tails_rss_ratio_8",
        "channel_vs_bare_grpc")


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_throughput(section: dict) -> None:
    table = Table(title=f"Throughput (rows/s) and latency (ms); {layout().describe()}")
    for col in ("server", "client", "model", "batching", "clients", "rows/s", "p50", "p99",
                "mean batch", "ORT alone rows/s", "vs ORT", "failed", "empty out", "others' CPU"):
        table.add_column(col, justify="right")
    for r in section["rows"]:
        table.add_row(r["server"], r["client"], r["model"], "on" if r["batching"] else "off",
                      str(r["clients"]), f"{r['throughput_rps']:.0f}", _fmt(r["p50_ms"], 1),
                      _fmt(r["p99_ms"], 1), _fmt(r["mean_batch"], 1),
                      _fmt(r["ort_limit_rps"], 0), _fmt(r["vs_ort"]), str(r["failures"]),
                      str(r["empty_outputs"]), f"{100 * r.get('foreign_cpu', 0):.0f}%")
    console.print(table)
    busy = [r for r in section["rows"] if r.get("foreign_cpu", 0) > 0.05]
    if busy or any(f > 0.05 for f in section.get("ort_foreign_cpu", {}).values()):
        console.print(f"[yellow]{len(busy)} rows ran while other processes used > 5% of the "
                      f"machine's CPU ('others' CPU'; onnxruntime alone: "
                      f"{section.get('ort_foreign_cpu')}): their timings are disturbed")
    if section.get("triton_unavailable"):
        console.print(f"[yellow]Triton column skipped: {section['triton_unavailable']}")


def print_headline(section: dict) -> None:
    table = Table(title=f"Headline: {section['clients']} clients, {section['rounds']} rounds in "
                        f"turns; rows/s and p50/p99 ms are medians over the rounds; "
                        f"{layout().describe()}")
    for col in ("model", "batching", "server", "protocol", "rows/s", "p50", "p99",
                "mean batch", "rows/s each round", "failed", "others' CPU max", "server busy"):
        table.add_column(col, justify="right")
    for r in section["rows"]:
        table.add_row(r["model"], "on" if r["batching"] else "off", r["server"], r["protocol"],
                      f"{r['rows_per_s']:.0f}", _fmt(r["p50_ms"], 1), _fmt(r["p99_ms"], 1),
                      _fmt(r["mean_batch"], 1),
                      " ".join(f"{x:.0f}" for x in r["rows_per_s_rounds"]),
                      str(r["failures"]), f"{100 * r['foreign_cpu_max']:.0f}%",
                      f"{100 * r.get('server_busy', 0.0):.0f}%")
    console.print(table)
    ratios = Table(title="edgecut / Triton, taken within each round (p99: Triton's / "
                         "edgecut's; above 1 is edgecut ahead)")
    for col in ("pair / model / batching", "rows/s each round", "median", "lowest",
                "p99 each round", "p99 median"):
        ratios.add_column(col, justify="right")
    for key, r in section["ratios"].items():
        ratios.add_row(key, " ".join(f"{x:.2f}" for x in r["rows_per_s"]), _fmt(r["median"]),
                       _fmt(r["lowest"]), " ".join(f"{x:.2f}" for x in r["p99"]),
                       _fmt(r["p99_median"]))
    console.print(ratios)
    if section.get("triton_unavailable"):
        console.print(f"[yellow]Triton skipped: {section['triton_unavailable']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short windows, fewer runs (minutes)")
    p.add_argument("--out", type=Path, required=True, help="JSON results")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--triton", type=Path, default=Path(tempfile.gettempdir()) / "edgecut-pytriton",
                   help="nvidia_pytriton wheel, folder holding it, or unpacked wheel")
    p.add_argument("--triton-download", action="store_true",
                   help="pip download nvidia-pytriton into --triton if it is not there")
    p.add_argument("--no-triton", action="store_true")
    p.add_argument("--levels", default="1,8,32,128", help="concurrent clients")
    p.add_argument("--models", default=",".join(suite.THROUGHPUT_MODELS),
                   help="throughput models (small_cnn, wide_mlp, ppocr_cls)")
    p.add_argument("--seconds", type=float, help="measured window per load level (default: "
                   "2 with --quick, else 5)")
    p.add_argument("--memory-variants", default=",".join(VARIANTS))
    p.add_argument("--max-attempts", type=int, default=suite.MAX_ATTEMPTS,
                   help="measure a load level again while others use > 10%% of the CPU")
    p.add_argument("--headline-clients", type=int, default=32)
    p.add_argument("--sections", default="headline,throughput,memory,channel,canary")
    p.add_argument("--headline-models", default=",".join(HEADLINE_MODELS),
                   help="headline models (small_cnn, ppocr_cls)")
    p.add_argument("--rounds", type=int,
                   help="headline: rounds of every server in turn (default 3; 1 with --quick)")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                   help="also soak at 80%% of measured capacity for SECONDS")
    p.add_argument("--server-cpus", default="0", help="CPUs of every server (taskset -c list)")
    p.add_argument("--client-cpus", default="1",
                   help="CPUs of the load generators, one process per CPU (taskset -c list)")
    p.add_argument("--server-cpu-quota", type=float, metavar="CPUS",
                   help="limit each server to CPUS CPUs' worth of time per 100 ms (a cgroup "
                   "CPU quota, as a container's CPU limit sets; needs root)")
    p.add_argument("--no-variant-rows", action="store_true",
                   help="skip the endpoint without shared weights and the endpoint over grpcio")
    p.add_argument("--machine-note", default="none lent to this session: CPU only",
                   help="what the JSON says of the device machine")
    args = p.parse_args(argv)
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        console.print("needs taskset and at least 2 cores (server and clients on their own)")
        return 2
    try:
        use_layout(CpuLayout(server=parse_cpus(args.server_cpus),
                             clients=parse_cpus(args.client_cpus),
                             server_quota=args.server_cpu_quota))
    except ValueError as exc:
        console.print(f"--server-cpus/--client-cpus/--server-cpu-quota: {exc}")
        return 2
    if args.server_cpu_quota:
        try:
            CpuQuota("check", cpus=args.server_cpu_quota).close()
        except CpuQuotaUnavailable as exc:
            console.print(f"--server-cpu-quota: {exc}")
            return 2
    missing = sorted(set(layout().server + layout().clients) - os.sched_getaffinity(0))
    if missing:
        console.print(f"--server-cpus/--client-cpus: CPUs {missing} are not available here "
                      f"(this process may use {sorted(os.sched_getaffinity(0))})")
        return 2
    sections = set(args.sections.split(","))
    suite.MAX_ATTEMPTS = max(1, args.max_attempts)
    levels = [int(x) for x in args.levels.split(",")]
    timing = (suite.Timing(duration_s=2.0, warmup_s=0.5, ort_seconds=0.3) if args.quick
              else suite.Timing(duration_s=5.0, warmup_s=1.0, ort_seconds=1.0))
    if args.seconds:
        timing = suite.Timing(duration_s=args.seconds, warmup_s=min(timing.warmup_s, args.seconds),
                              ort_seconds=min(timing.ort_seconds, args.seconds))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgecut-serving-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    out: dict = {"quick": args.quick, "complete": False, "machine": {
        "cpus": os.cpu_count(), "server_core": layout().server[0],
        "client_core": layout().clients[0], "server_cpus": list(layout().server),
        "client_cpus": list(layout().clients), "server_cpu_quota": args.server_cpu_quota,
        "layout": layout().describe(), "device_machine": args.machine_note},
        "timing": asdict(timing)}
    for key in KEYS:
        out[key] = None

    def save() -> None:
        args.out.write_text(json.dumps(out, indent=2, default=str))

    def progress(message: str) -> None:
        console.print(f"[dim]{time.time() - started:6.0f}s[/] {message}")

    if "headline" in sections:
        home, error = None, "--no-triton" if args.no_triton else None
        if not args.no_triton:
            try:
                home = find_triton(args.triton, download=args.triton_download)
            except TritonUnavailable as exc:
                progress(f"headline without Triton: {exc}")
                error = str(exc)
        rounds = args.rounds or (1 if args.quick else 3)
        out["headline"] = headline(workdir, triton_home=home, rounds=max(1, rounds),
                                   clients=args.headline_clients,
                                   seconds=timing.duration_s, warmup_s=timing.warmup_s,
                                   progress=progress,
                                   models=tuple(args.headline_models.split(",")),
                                   triton_error=error)
        save()
        print_headline(out["headline"])
    if "throughput" in sections:
        home, error = None, None
        if args.no_triton:
            error = "--no-triton"
        else:
            try:
                home = find_triton(args.triton, download=args.triton_download)
            except TritonUnavailable as exc:
                error = str(exc)
        edgecut_levels = [args.headline_clients] if args.quick else levels
        variant_levels = () if args.no_variant_rows else (args.headline_clients,)
        section = suite.throughput(workdir, levels=levels, edgecut_client_levels=edgecut_levels,
                                   timing=timing, triton_home=home, triton_error=error,
                                   progress=progress, models=tuple(args.models.split(",")),
                                   unshared_levels=variant_levels, grpcio_levels=variant_levels)
        summary = summarise_throughput(section, level=args.headline_clients)
        out["throughput"] = section
        out["throughput_summary"] = summary
        for key in ("batching_gain_vs_ort_gain", "server_vs_ort", "server_vs_triton"):
            out[key] = summary[key]
        save()
        print_throughput(section)
    if "memory" in sections:
        out["memory"] = suite.memory(workdir, k=8, variants=args.memory_variants.split(","),
                                     progress=progress)
        out["tails_rss_ratio_8"] = out["memory"]["tails_rss_ratio"]
        save()
        table = Table(title="RSS added: 8 tails of a 32 MiB MLP vs the full model (MiB)")
        for col in ("variant", "full", "8 tails", "ratio"):
            table.add_column(col, justify="right")
        for v, m in out["memory"]["variants"].items():
            table.add_row(v, f"{m['full_mib']:.1f}", f"{m['tails_mib']:.1f}", f"{m['ratio']:.2f}")
        console.print(table)
    if "channel" in sections:
        out["channel"] = suite.channel(workdir, seconds=3.0 if args.quick else 9.0,
                                       progress=progress)
        out["channel_vs_bare_grpc"] = out["channel"]["channel_vs_bare_grpc"]
        save()
        table = Table(title="4 MiB over TLS, one call at a time")
        for col in ("call", "malloc", "MB/s", "p50 ms", "p99 ms", "vs bare"):
            table.add_column(col, justify="right")
        for key, r in out["channel"]["runs"].items():
            kind, label = key.split("/")
            bare = out["channel"]["runs"][f"bare/{label}"]["mb_per_s"]
            table.add_row(kind, label, f"{r['mb_per_s']:.0f}", f"{r['p50_ms']:.2f}",
                          f"{r['p99_ms']:.2f}", f"{r['mb_per_s'] / bare:.2f}")
        console.print(table)
    if "canary" in sections:
        out["canary"] = suite.canary(workdir, seconds=8.0 if args.quick else 20.0, clients=16,
                                     progress=progress)
        save()
        c = out["canary"]
        console.print(f"canary/rollback/promote under load: {c['completed_requests']} requests, "
                      f"{c['failed_requests']} failed; steps "
                      + ", ".join(f"{s['step']} {s['ms']:.0f} ms{' ' + s['error'] if s['error'] else ''}"
                                  for s in c["steps"]))
    if args.soak > 0:
        row = None
        for r in out.get("throughput", {}).get("rows", []):
            if (r["server"], r["client"], r["model"], r["batching"], r["clients"]) == (
                    "edgecut", "triton", "small_cnn", True, args.headline_clients):
                row = r
        capacity = row["throughput_rps"] if row else 800.0
        out["soak"] = suite.soak(workdir, seconds=args.soak, capacity_rps=capacity,
                                 clients=args.headline_clients, progress=progress)
        save()
        s = out["soak"]
        console.print(f"soak, after a {s['burst_s']:.0f} s burst ({s['burst_rps']:.0f} req/s, "
                      f"{s['burst_failures']} failures, RSS {s['rss_after_burst_mib']:.0f} MiB): "
                      f"{s['seconds']:.0f} s at {s['target_rps']:.0f} req/s (80% of "
                      f"{s['capacity_rps']:.0f}): achieved {s['achieved_rps']:.0f}, "
                      f"{s['failures']} failures, p99 {s['p99_ms']:.1f} ms (from schedule "
                      f"{s['p99_from_schedule_ms']:.1f} ms), RSS {s['rss_start_mib']:.0f} -> "
                      f"{s['rss_end_mib']:.0f} MiB ({100 * (s['rss_growth'] or 0):+.1f}%; second "
                      f"half {100 * (s['rss_growth_second_half'] or 0):+.1f}%)")
    out["complete"] = True
    out["elapsed_s"] = time.time() - started
    save()
    table = Table(title="Headline ratios (this run)")
    table.add_column("key")
    table.add_column("value", justify="right")
    for key in KEYS:
        table.add_row(key, _fmt(out[key]))
    console.print(table)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
