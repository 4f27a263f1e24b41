"""Does a device ever lose a request, whatever its cloud does? Faults made for real, counted.

    python benchmarks/faults.py                         # ~3 minutes; JSON in benchmarks/results/
    python benchmarks/faults.py --quick --out /tmp/faults_quick.json        # ~1 minute
    python benchmarks/faults.py --rows kill,replicas --requests 500

Each row drives 8 adaptive Predictors (8 devices, each with its own certificate, over mutual TLS,
in threads; fallback "local") through one fault, with hundreds of requests per Predictor, and
checks every answer against onnxruntime on the plan's full model (benchmarks/harness/):

  kill         the endpoint process (`edgecut serve`) SIGKILLed under load, restarted on the
               same port 3 s later; notes: how long each device took to be back in split mode
  replicas     three endpoint processes, gRPC round_robin over them, one SIGKILLed under load
  silent_tcp   a server that accepts TCP and never sends a byte
  garbage_tcp  one that answers random bytes
  hang         one that completes TLS and HTTP/2 and never answers a ModelInfer
  <malformed>  one per kind of malformed ModelInfer answer (badservers.MALFORMED)
  cut_reset, cut_close, cut_stall
               a proxy in front of a real endpoint that cuts every connection mid-message: a
               reset, a close (FIN), or a stall (no more bytes, the connection held open)
  hang_none, cut_reset_none
               the same faults with fallback "none", where typed errors count
  link         the link shaped 100 -> 1 -> 100 Mbit/s (veth + tbf between namespaces as root,
               else an in-process token-bucket proxy): an adaptive device and a fixed split:1
               device side by side, one row each; notes: p50 per phase, the adaptive's switches
  memory       device memory pressure (an injected DeviceMonitor reading) for the middle third
               of the requests: offload engages, and ends with it

Columns: requests, answered by the cloud, answered locally, typed errors, lost (an untyped
exception, a wrong answer, or a call past timeout_s + 0.5 s), p50/p99 latency of every call.
Prints the table and writes JSON (rewritten after each row); asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import HarnessUnavailable  # noqa: E402
from benchmarks.harness.badservers import (  # noqa: E402
    CUT_ACTIONS,
    MALFORMED,
    CuttingProxy,
    FakeEndpoint,
    GarbageServer,
    SilentServer,
)
from benchmarks.harness.endpoint import EndpointProcess, Replicas  # noqa: E402
from benchmarks.harness.faultload import (  # noqa: E402
    DeviceLoop,
    Outcome,
    Reference,
    Row,
    format_table,
    random_feed,
    run_loops,
    summarise,
)
from benchmarks.harness.faultplan import envelope_plan  # noqa: E402
from benchmarks.harness.shaper import (  # noqa: E402
    NamespaceLink,
    ThrottleProxy,
    cloud_address,
    default_slot,
)
from edgecut.deploy import deploy_plan  # noqa: E402
from edgecut.edge import Config, Predictor  # noqa: E402
from edgecut.edge.monitors import DeviceMonitor, DeviceReadings  # noqa: E402
from edgecut.protocol.pki import init_ca, issue_device_certificate  # noqa: E402

ROWS = ("kill", "replicas", "silent_tcp", "garbage_tcp", "hang", *MALFORMED,
        *(f"cut_{a}" for a in CUT_ACTIONS), "hang_none", "cut_reset_none", "link", "memory")
PAUSE_S = 0.01  # between one device's calls: 8 devices on 2 cores leave the endpoint some CPU


class Readings:
    """An injected device reading: ample memory unless the benchmark says otherwise."""

    def __init__(self) -> None:
        self.available_memory_mib = 8192.0

    def __call__(self) -> DeviceReadings:
        return DeviceReadings(cpu_percent=10.0, available_memory_mib=self.available_memory_mib)


class Bench:
    """The shared set-up (plan, repository, fleet, reference) and the rows' common steps."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.plan = envelope_plan(workdir / "plan")
        self.repository = workdir / "repository"
        deploy_plan(self.plan, self.repository)
        self.fleet = workdir / "fleet"
        init_ca(self.fleet, hosts=[cloud_address(default_slot())])
        self.devices = [f"device-{i}" for i in range(args.devices)]
        for name in self.devices:
            issue_device_certificate(self.fleet, name)
        reference = Reference(self.plan)
        self.feeds = []
        for i in range(args.devices):
            feed = random_feed(self.plan, seed=i)
            self.feeds.append((feed, reference.outputs(feed)))
        self.extra: dict[str, Any] = {}

    def endpoint(self, name: str, **options: Any) -> EndpointProcess:
        return EndpointProcess(self.repository, self.fleet, log_dir=self.workdir, name=name,
                               device=self.devices[0], **options)

    def predictors(self, endpoint: str | list[str], *, count: int | None = None,
                   monitor: Callable[[], DeviceMonitor] | None = None, **settings: Any
                   ) -> list[Predictor]:
        settings = {"mode": "adaptive", "timeout_s": self.args.timeout_s, "codec": "raw",
                    "intra_op_threads": 1, **settings}
        out = []
        for name in self.devices[:count or len(self.devices)]:
            config = Config(plan=self.plan, endpoint=endpoint, tls_dir=self.fleet, device=name,
                            **settings)
            reader = monitor() if monitor else DeviceMonitor(Readings(), min_interval_s=0.0)
            out.append(Predictor(config, monitor=reader))
        return out

    def loops(self, predictors: list[Predictor], *, requests: int | None = None,
              max_requests: int | None = None, done: Callable[[list[Outcome]], bool] | None = None,
              budget_s: float = 120.0) -> list[DeviceLoop]:
        deadline = time.monotonic() + budget_s
        n = requests or self.args.requests
        return [DeviceLoop(p, *self.feeds[i], timeout_s=self.args.timeout_s, requests=n,
                           max_requests=max_requests, done=done, deadline=deadline,
                           pause_s=PAUSE_S, name=self.devices[i])
                for i, p in enumerate(predictors)]


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _closing(predictors: list[Predictor]) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for p in predictors:
        stack.callback(p.close)
    return stack


def _switch_reasons(predictors: list[Predictor]) -> dict[str, int]:
    """How many switches of each kind ("from -> to: reason", figures as #) the devices made."""
    counts: dict[str, int] = {}
    for p in predictors:
        for e in p.events():
            reason = re.sub(r"\d[\d.e+]*", "#", e.reason.split(":")[0])[:60]
            key = f"{e.from_choice} -> {e.to_choice}: {reason}"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


# -- the rows ----------------------------------------------------------------------------


def row_kill(bench: Bench) -> list[Row]:
    endpoint = bench.endpoint("kill")
    endpoint.start()
    marks: dict[str, float] = {}
    try:
        predictors = bench.predictors(endpoint.address)
        with _closing(predictors):
            def back(outcomes: list[Outcome]) -> bool:
                # back in split after the restart, and a third of the calls made since
                r = marks.get("restarted")
                after = [o for o in outcomes if r is not None and o.started_s >= r]
                first = next((i for i, o in enumerate(after) if o.mode == "split"), None)
                return first is not None and len(after) - first >= bench.args.requests // 3

            loops = bench.loops(predictors, max_requests=100 * bench.args.requests, done=back)

            def fault() -> None:
                _wait(lambda: all(len(x.outcomes) >= bench.args.requests // 3 for x in loops), 60)
                endpoint.kill()
                marks["killed"] = time.monotonic()
                time.sleep(3.0)
                endpoint.start()
                marks["restarted"] = time.monotonic()

            outcomes = run_loops(loops, budget_s=180.0, during=fault)
            reasons = _switch_reasons(predictors)
    finally:
        endpoint.stop()
    back_s = {}
    for loop in loops:
        first = next((o.started_s - marks["restarted"] for o in loop.outcomes
                      if o.mode == "split" and o.started_s >= marks["restarted"]), None)
        back_s[loop.device] = None if first is None else round(first, 3)
    known = [v for v in back_s.values() if v is not None]
    bench.extra["kill"] = {"back_in_split_s": back_s, "switches": reasons,
                           "outage_s": round(marks["restarted"] - marks["killed"], 3)}
    notes = (f"down {marks['restarted'] - marks['killed']:.1f} s; back in split after "
             f"{min(known):.1f}-{max(known):.1f} s" if len(known) == len(back_s) else
             f"{len(back_s) - len(known)} devices not back in split")
    return [summarise("endpoint SIGKILLed, restarted", outcomes, notes=notes)]


def row_replicas(bench: Bench) -> list[Row]:
    with Replicas(3, bench.repository, bench.fleet, log_dir=bench.workdir,
                  device=bench.devices[0]) as replicas:
        predictors = bench.predictors(replicas.addresses)  # 127.0.0.1:p1, :p2, :p3
        marks: dict[str, float] = {}
        with _closing(predictors):
            loops = bench.loops(predictors)

            def fault() -> None:
                _wait(lambda: all(len(x.outcomes) >= bench.args.requests // 3 for x in loops), 60)
                replicas[1].kill()
                marks["killed"] = time.monotonic()

            outcomes = run_loops(loops, budget_s=180.0, during=fault)
            bench.extra["replicas"] = {"switches": _switch_reasons(predictors)}
    after = [o for o in outcomes if o.started_s >= marks["killed"]]
    cloud = sum(o.kind == "cloud" for o in after)
    return [summarise("1 of 3 replicas SIGKILLed", outcomes,
                      notes=f"after the kill {cloud}/{len(after)} answered by the cloud")]


@contextlib.contextmanager
def _bad_server(bench: Bench, kind: str) -> Iterator[str]:
    with contextlib.ExitStack() as stack:
        if kind == "silent_tcp":
            yield stack.enter_context(SilentServer()).address
        elif kind == "garbage_tcp":
            yield stack.enter_context(GarbageServer(nbytes=8192)).address
        elif kind.startswith("cut_"):
            endpoint = bench.endpoint("behind-cutting-proxy")
            endpoint.start()
            stack.callback(endpoint.stop)
            cuts = _calibrate_cuts(bench, endpoint.address)
            proxy = CuttingProxy(endpoint.address, cut_after=cuts, action=kind.removeprefix("cut_"))
            yield stack.enter_context(proxy).address
        else:
            yield stack.enter_context(FakeEndpoint(bench.fleet, kind)).address


def _calibrate_cuts(bench: Bench, target: str) -> list[int]:
    """Offsets inside the TLS handshake and inside the first answer of a connection."""
    with CuttingProxy(target, cut_after=None) as proxy:
        (p,) = bench.predictors(proxy.address, count=1, mode="split", fallback="none")
        with _closing([p]):
            p.run(None, bench.feeds[0][0])
            first = proxy.bytes_down
            p.run(None, bench.feeds[0][0])
            per_request = proxy.bytes_down - first
    handshake = first - per_request
    bench.extra["cut_calibration"] = {"handshake_bytes": handshake,
                                      "bytes_per_request": per_request}
    return [first - per_request // 2, handshake // 2, first - per_request // 4,
            first - 3 * per_request // 4]


_BAD_TITLES = {"silent_tcp": "server accepts TCP, never answers",
               "garbage_tcp": "server answers random bytes",
               "hang": "TLS+HTTP/2 up, ModelInfer never answered",
               "cut_reset": "connection reset mid-message",
               "cut_close": "connection closed mid-message",
               "cut_stall": "answer stalls mid-message, connection held"}


def row_bad(bench: Bench, kind: str, fallback: str = "local") -> list[Row]:
    title = _BAD_TITLES.get(kind, f"malformed answer: {kind}")
    if fallback != "local":
        title += f" (fallback {fallback})"
    with _bad_server(bench, kind) as address:
        predictors = bench.predictors(address, fallback=fallback)
        with _closing(predictors):
            outcomes = run_loops(bench.loops(predictors), budget_s=240.0)
    return [summarise(title, outcomes, notes=MALFORMED.get(kind, ""))]


@contextlib.contextmanager
def _shaped(bench: Bench) -> Iterator[tuple[str, Any, str]]:
    """(address, shaper, which) with the endpoint behind a shaped link at 100 Mbit/s."""
    want = bench.args.shaper
    if want in ("auto", "netns"):
        try:
            with NamespaceLink(up_mbps=100, down_mbps=100) as link:
                endpoint = bench.endpoint("shaped", host=link.cloud_address,
                                          netns=link.namespace)
                endpoint.start()
                try:
                    yield endpoint.address, link, "veth+tbf between namespaces"
                finally:
                    endpoint.stop()
                return
        except HarnessUnavailable as exc:
            if want == "netns":
                raise
            print(f"no namespace link ({exc}); shaping with the in-process proxy",
                  file=sys.stderr)
    endpoint = bench.endpoint("shaped")
    endpoint.start()
    try:
        with ThrottleProxy(endpoint.address, up_mbps=100, down_mbps=100) as proxy:
            yield proxy.address, proxy, "in-process token-bucket proxy"
    finally:
        endpoint.stop()


def row_link(bench: Bench) -> list[Row]:
    with _shaped(bench) as (address, shaper, how):
        (adaptive,) = bench.predictors(address, count=1, probe_interval_s=0.5)
        (fixed,) = bench.predictors(address, count=1, mode="split", cut=1, fallback="none")
        with _closing([adaptive, fixed]):
            loops = bench.loops([adaptive, fixed], requests=10**6, budget_s=120.0)
            loops[0].device, loops[1].device = "adaptive", "fixed split:1"
            marks: dict[str, float] = {}

            def choice() -> str:
                return adaptive.statistics().choice

            def shape() -> None:
                marks["100"] = time.monotonic()
                _wait(lambda: len(loops[0].outcomes) >= 50 and choice() == "split:1", 20)
                time.sleep(2.0)
                shaper.set_rate(up_mbps=1, down_mbps=1)
                marks["1"] = time.monotonic()
                _wait(lambda: choice() == "local", 20)
                time.sleep(5.0)
                shaper.set_rate(up_mbps=100, down_mbps=100)
                marks["100 again"] = time.monotonic()
                _wait(lambda: choice() == "split:1", 30)
                time.sleep(3.0)
                marks["end"] = time.monotonic()
                for loop in loops:
                    loop.stop()

            run_loops(loops, budget_s=120.0, during=shape)
            events = adaptive.events()
    phases = [("100", "1"), ("1", "100 again"), ("100 again", "end")]
    rows, detail = [], {}
    for loop in loops:
        per_phase = {}
        for start, end in phases:
            part = summarise(start, [o for o in loop.outcomes
                                     if marks[start] <= o.started_s < marks[end]])
            per_phase[f"{start} Mbit/s"] = {"requests": part.requests, "p50_ms": part.p50_ms,
                                            "p99_ms": part.p99_ms, "local": part.local,
                                            "cloud": part.cloud}
        detail[loop.device] = per_phase
        notes = "; ".join(f"{k}: p50 {v['p50_ms']:.1f} ms" for k, v in per_phase.items())
        if loop.device == "adaptive":
            notes += f"; {len(events)} switches"
        rows.append(summarise(f"link 100->1->100 Mbit/s, {loop.device}", loop.outcomes,
                              notes=notes))
    wall = time.time() - time.monotonic()
    bench.extra["link"] = {
        "shaper": how, "phases_s": {k: round(v - marks["100"], 3) for k, v in marks.items()},
        "per_phase": detail,
        "adaptive_events": [{"t_s": round(e.time - wall - marks["100"], 3),
                             "from": e.from_choice, "to": e.to_choice, "reason": e.reason}
                            for e in events]}
    return rows


def row_memory(bench: Bench) -> list[Row]:
    endpoint = bench.endpoint("memory")
    endpoint.start()
    readings = Readings()
    try:
        predictors = bench.predictors(
            endpoint.address, monitor=lambda: DeviceMonitor(readings, min_interval_s=0.0))
        with _closing(predictors):
            loops = bench.loops(predictors)
            marks: dict[str, float] = {}

            def pressure() -> None:
                third = bench.args.requests // 3
                _wait(lambda: all(len(x.outcomes) >= third for x in loops), 60)
                readings.available_memory_mib = 100.0
                marks["on"] = time.monotonic()
                _wait(lambda: all(len(x.outcomes) >= 2 * third for x in loops), 60)
                readings.available_memory_mib = 8192.0
                marks["off"] = time.monotonic()

            outcomes = run_loops(loops, budget_s=180.0, during=pressure)
            switches = sum(len(p.events()) for p in predictors)
    finally:
        endpoint.stop()
    during = [o for o in outcomes if marks["on"] <= o.started_s < marks["off"]]
    after = [o for o in outcomes if o.started_s >= marks["off"]]
    offloaded = sum(o.mode == "offload" for o in during)
    return [summarise("memory pressure (100 MiB free) mid-run", outcomes,
                      notes=f"under pressure {offloaded}/{len(during)} offloaded; after it "
                            f"{sum(o.mode == 'offload' for o in after)}/{len(after)}; "
                            f"{switches} switches")]


def _run_row(bench: Bench, name: str) -> list[Row]:
    if name == "kill":
        return row_kill(bench)
    if name == "replicas":
        return row_replicas(bench)
    if name == "link":
        return row_link(bench)
    if name == "memory":
        return row_memory(bench)
    if name.endswith("_none"):
        return row_bad(bench, name.removesuffix("_none"), fallback="none")
    return row_bad(bench, name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    today = datetime.date.today().isoformat()
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / f"faults-{today}.json",
                   help="JSON results (default benchmarks/results/faults-DATE.json)")
    p.add_argument("--quick", action="store_true", help="4 devices, 60 requests each")
    p.add_argument("--devices", type=int, default=8, help="Predictors per row (default 8)")
    p.add_argument("--requests", type=int, default=300,
                   help="requests per Predictor in each row (default 300)")
    p.add_argument("--timeout-s", type=float, default=2.0, help="Config.timeout_s (default 2)")
    p.add_argument("--rows", default=",".join(ROWS),
                   help=f"comma-separated rows (default all: {','.join(ROWS)})")
    p.add_argument("--shaper", choices=("auto", "netns", "proxy"), default="auto",
                   help="the link row's shaper: namespaces where root, else the proxy (auto)")
    args = p.parse_args(argv)
    if args.quick:
        args.devices, args.requests = min(args.devices, 4), min(args.requests, 60)
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in names if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; expected some of {', '.join(ROWS)}")
    if not 1 <= args.devices <= 8:
        p.error("--devices must be 1..8")

    started = time.time()
    result: dict[str, Any] = {
        "benchmark": "faults", "date": today, "machine": platform.node(),
        "cpus": os.cpu_count(), "root": os.geteuid() == 0,
        "settings": {"devices": args.devices, "requests_per_device": args.requests,
                     "timeout_s": args.timeout_s, "pause_s": PAUSE_S, "mode": "adaptive",
                     "fallback": "local (except the rows that say none)"},
        "rows": [], "details": {}}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edgecut-faults-") as tmp:
        bench = Bench(args, Path(tmp))
        result["details"]["envelope"] = json.loads((bench.plan / "plan.json").read_text())["envelope"]
        for name in names:
            t0 = time.monotonic()
            print(f"-- {name}", file=sys.stderr, flush=True)
            new = _run_row(bench, name)
            rows += new
            result["rows"] += [dict(r.as_dict(), row=name, seconds=round(time.monotonic() - t0, 1))
                               for r in new]
            result["details"].update(bench.extra)
            result["seconds"] = round(time.time() - started, 1)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1) + "\n")
            print(format_table(new), file=sys.stderr, flush=True)
    result["lost_total"] = sum(r.lost for r in rows)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(format_table(rows))
    for row in rows:
        for example in row.lost_examples:
            print(f"lost ({row.fault}): {example}")
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    status = main()
    # A call that hung (none, if all is well) must not keep the process alive: its thread
    # is a daemon, but gRPC's own threads may hold the interpreter at exit.
    sys.stdout.flush()
    os._exit(status)
