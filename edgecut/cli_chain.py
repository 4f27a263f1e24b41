"""`edgecut chain …`: placement 4, a model sliced across the device, helpers, then the cloud.

    edgecut chain plan MODEL.onnx --device pi4 --helper jetson-nano@wifi [--helper …]
                       --network lte [--cloud gpu-server | --no-cloud]
                       [--objective latency|throughput] [--solver dp|mincut] [--cuts 4,15]
                       [--explain [--json]]
                       --out DIR
    edgecut chain deploy DIR --stage 1 --repository REPO [--next HOST:PORT …]
                       [--tls TLS --device NAME] [--codec raw|zstd|…]
    edgecut chain run DIR --helper HOST:PORT [--helper …] [--cloud HOST:PORT]
                       --input NAME=FILE.npy --output OUT.npz [--tls TLS --device NAME]
                       [--balance round_robin|least_outstanding] [--fallback cloud|local|none]

`--helper PROFILE@LINK` is one more hop after the device, in order: a device profile (a
catalogue name or a .toml) and the link that reaches it from the hop before (a catalogue
network, a .toml, or up=MBPS,down=MBPS,rtt=MS). `--network` stays the link to the cloud.
`--explain` prints every hop's compute, serving CPU (taking the request, calling the next hop,
(de)serialising its tensors) and memory and every link's transfer, then the chain against
the best single cut and device-only, costed alike. `--solver mincut` (latency) cuts any nested
down-sets of the graph, not only prefixes of its default order, then checks memory.
`chain deploy` installs one
stage in a repository that `edgecut serve` serves: its slice, and unless it is the last
stage, where to forward (`--next`: the next stage's endpoint(s); `--tls`/`--device`: the
folder and certificate this hop presents there). `chain run` is one inference from the
device: stage 0 here, then a helper of stage 1 (`--helper`: their addresses, unlike `chain
plan`'s profiles), falling back to the cloud's tail (`--cloud`) or the full model here.

Parses, calls edgecut.partitioner.chain_plan / edgecut.chain_deploy, prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgecut.cli_types import positive_seconds
from edgecut.errors import UserInputError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # argparse has no public name
    """Add `chain plan`, `chain deploy` and `chain run` to the `edgecut` command's subparsers."""
    parser = subparsers.add_parser("chain", help="slice a model across the device, helper "
                                                 "devices and the cloud (placement 4)")
    actions = parser.add_subparsers(dest="chain_command", required=True, metavar="ACTION",
                                    parser_class=type(parser))
    p = actions.add_parser("plan", help="choose the cuts of a chain and write its plan folder")
    p.add_argument("model", type=Path, metavar="MODEL.onnx")
    p.add_argument("--device", required=True, metavar="PROFILE",
                   help="the device: catalogue name or .toml")
    p.add_argument("--helper", action="append", default=[], metavar="PROFILE@LINK",
                   help="a helper hop after the device, in order (repeatable): its device "
                        "profile and the link reaching it, e.g. jetson-nano@wifi")
    p.add_argument("--network", metavar="PROFILE",
                   help="the link to the cloud (catalogue name, .toml or up=,down=,rtt=)")
    p.add_argument("--cloud", default="gpu-server", metavar="PROFILE",
                   help="the cloud: catalogue device name or .toml (default gpu-server)")
    p.add_argument("--no-cloud", action="store_true", help="the chain ends at the last helper")
    p.add_argument("--objective", choices=("latency", "throughput"), default="latency")
    p.add_argument("--solver", choices=("dp", "mincut"), default="dp",
                   help="dp: the best cuts of the default topological order; mincut: the best "
                        "nested down-sets, any DAG cuts (latency only; memory checked after)")
    p.add_argument("--cuts", metavar="P1,P2,…",
                   help="write these cut positions of the topological order instead of "
                        "choosing (one per link)")
    p.add_argument("--device-memory-mib", type=float, metavar="MIB",
                   help="the device's slice must fit in this (default: its profile's memory)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224",
                   help="concrete shape for an input with symbolic dimensions (repeatable)")
    p.add_argument("--name", help="endpoint model name (default: the file's stem)")
    p.add_argument("--explain", action="store_true",
                   help="print every hop's compute, serving CPU, transfer and memory")
    p.add_argument("--json", action="store_true", help="with --explain: JSON instead")
    p.add_argument("--out", type=Path, metavar="DIR", help="plan folder to write")
    p.set_defaults(func=_cmd_plan)

    p = actions.add_parser("deploy", help="install one stage of a chain plan in a repository")
    p.add_argument("plan", type=Path, metavar="DIR")
    p.add_argument("--stage", type=int, required=True, metavar="J",
                   help="the stage to install (1.. ; stage 0 runs on the device)")
    p.add_argument("--repository", type=Path, required=True, metavar="REPO")
    p.add_argument("--next", action="append", default=[], metavar="HOST:PORT",
                   help="endpoint of the next stage (repeatable: its replicas)")
    p.add_argument("--tls", type=Path, metavar="DIR",
                   help="folder from `edgecut certs`: ca.crt and this hop's certificate")
    p.add_argument("--device", metavar="NAME", help="this hop's certificate NAME.crt in --tls")
    p.add_argument("--codec", default="raw", help="codec towards the next hop (default raw)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds the next hop has to answer (default 30)")
    p.add_argument("--with-plan", action="store_true",
                   help="also install the full model and the cut's tail (default: only for "
                        "the cloud's stage)")
    p.set_defaults(func=_cmd_deploy)

    p = actions.add_parser("run", help="one inference through a chain plan's helpers")
    p.add_argument("plan", type=Path, metavar="DIR")
    p.add_argument("--helper", action="append", default=[], metavar="HOST:PORT",
                   help="an endpoint serving stage 1; repeat it (or separate with commas) for "
                        "several, spread by --balance")
    p.add_argument("--cloud", action="append", default=[], metavar="HOST:PORT",
                   help="the cloud's endpoint(s), for --fallback cloud")
    p.add_argument("--tls", type=Path, metavar="DIR",
                   help="folder from `edgecut certs` (ca.crt, and a device certificate for mTLS)")
    p.add_argument("--device", metavar="NAME", help="device certificate NAME.crt in --tls")
    p.add_argument("--input", action="append", default=[], required=True,
                   metavar="NAME=FILE.npy")
    p.add_argument("--output", type=Path, required=True, metavar="OUT.npz")
    p.add_argument("--balance", choices=("round_robin", "least_outstanding"),
                   default="round_robin")
    p.add_argument("--fallback", choices=("cloud", "local", "none"),
                   help="when no helper answers: the cloud's tail of the device's cut, the "
                        "full model here, or fail (default: cloud when --cloud is given, "
                        "else local)")
    p.add_argument("--codec", default="raw", help="codec towards the helpers (default raw)")
    p.add_argument("--timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
                   help="deadline of the inference, any fallback included (default 30)")
    p.set_defaults(func=_cmd_run)


def _hop(spec: str) -> tuple[str, str]:
    profile, sep, link = spec.rpartition("@")
    if not sep or not profile or not link:
        raise UserInputError(f"--helper {spec!r}: expected PROFILE@LINK, e.g. jetson-nano@wifi")
    return profile, link


def _cmd_plan(args: argparse.Namespace) -> int:
    from edgecut.partitioner import parse_input_shape
    from edgecut.partitioner.chain_plan import plan_chain, write_chain_plan
    from edgecut.profiles import load_cloud, load_device, load_network

    if args.out is None and not args.explain:
        raise UserInputError("--out DIR is required (or --explain to only look)")
    if args.json and not args.explain:
        raise UserInputError("--json goes with --explain")
    if not args.no_cloud and args.network is None:
        raise UserInputError("--network PROFILE (the link to the cloud) is required, or "
                             "--no-cloud to end the chain at the last helper")
    helpers = [(load_device(p), load_network(link)) for p, link in map(_hop, args.helper)]
    shapes = dict(parse_input_shape(s) for s in args.input_shape) or None
    cuts = None
    if args.cuts:
        try:
            cuts = [int(x) for x in args.cuts.split(",")]
        except ValueError:
            raise UserInputError(f"--cuts {args.cuts!r}: expected positions like 4,15") from None
    memory = None if args.device_memory_mib is None else int(args.device_memory_mib * 2**20)
    cloud = None if args.no_cloud else load_cloud(args.cloud)
    device = load_device(args.device)
    network = load_network(args.network) if args.network else None
    planned = plan_chain(args.model, device=device, network=network,  # type: ignore[arg-type]
                         cloud=cloud, helpers=helpers, objective=args.objective,
                         input_shapes=shapes, device_memory_bytes=memory, cuts=cuts,
                         solver=args.solver,
                         cloud_reference=load_device(cloud.reference)
                         if cloud is not None and cloud.reference else None)
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    if args.explain:
        if args.json:
            print(json.dumps({"hops": planned.explain(), "summary": planned.summary(),
                              "cuts": list(planned.result.cuts)}, indent=1))
        else:
            _print_explain(planned.explain(), planned.summary(), planned.result.cuts)
        key = "latency_ms" if args.objective == "latency" else "bottleneck_ms"
        chain, single = planned.result.cost, planned.single_cut.cost
        if len(planned.hops) > 2 and getattr(single, key) < getattr(chain, key):
            where = ("all on the device" if not single.links or not single.links[0].used
                     else f"device and cloud, cut {list(single.cuts)}")
            say(f"note: the best single cut ({where}) beats this chain on {args.objective}: "
                f"{key} {getattr(single, key):.1f} against {getattr(chain, key):.1f}; its "
                "helpers cost more than they save")
    if args.out is not None:
        plan = write_chain_plan(planned, args.out, name=args.name)
        stages = ", ".join(f"{s['index']}:{s['where']}({s['nodes']} nodes)"
                           for s in plan["stages"])
        say(f"wrote {args.out}/plan.json: model {plan['model']['name']!r}, cuts "
            f"{plan['chain']['cuts']}"
            + (" of a reordered order" if "order" in plan["chain"] else "")
            + f", stages {stages}; chain max abs diff "
            f"{plan['chain']['max_abs_diff']:.3g}")
    return 0


def _print_explain(rows: list[dict[str, Any]], summary: dict[str, Any], cuts: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"chain at cuts {list(cuts)}: every hop and link, per request",
                  caption="serve ms: a hop's CPU for being served, calling the next hop and "
                          "(de)serialising what it receives and sends")
    for column in ("hop / link", "profile", "nodes", "compute ms", "serve ms", "memory MiB",
                   "up KiB", "down KiB", "transfer ms", "rtt ms", ""):
        table.add_column(column, justify="left" if column in ("hop / link", "profile", "")
                         else "right")
    for r in rows:
        if r["kind"] == "hop":
            limit = r["memory_limit_bytes"]
            mark = "" if r["fits"] else "over memory"
            table.add_row(r["name"], r["profile"], str(r["nodes"]), f"{r['compute_ms']:.3f}",
                          f"{r['serve_ms']:.3f}", f"{r['memory_bytes'] / 2**20:.2f}"
                          + ("" if limit is None else f" / {limit / 2**20:.0f}"),
                          "", "", "", "", mark)
        else:
            table.add_row(f"  → {r['name']}", "", "", "", "", "", f"{r['up_bytes'] / 1024:.1f}",
                          f"{r['down_bytes'] / 1024:.1f}", f"{r['up_ms'] + r['down_ms']:.3f}",
                          f"{r['rtt_ms']:.1f}", "" if r["used"] else "unused")
    Console().print(table)
    table = Table(title="against the same run's baselines (predicted)")
    for column in ("placement", "latency ms", "bottleneck ms", "throughput req/s"):
        table.add_column(column, justify="left" if column == "placement" else "right")
    for name, row in summary.items():
        table.add_row(name.replace("_", " "), f"{row['latency_ms']:.3f}",
                      f"{row['bottleneck_ms']:.3f}", f"{row['throughput_rps']:.1f}")
    Console().print(table)


def _cmd_deploy(args: argparse.Namespace) -> int:
    from edgecut.chain_deploy import deploy_stage

    deployed = deploy_stage(args.plan, args.repository, args.stage, next_endpoints=args.next,
                            tls_dir=args.tls, device=args.device, codec=args.codec,
                            timeout_s=args.timeout, with_plan=args.with_plan or None)
    for d in deployed:
        state = "unchanged" if d.unchanged else "installed"
        print(f"{state} {d.name} version {d.version} ({d.path})")
    if args.next:
        print(f"stage {args.stage} forwards to {', '.join(args.next)}")
    return 0


def _addresses(given: list[str]) -> tuple[str, ...]:
    return tuple(a.strip() for item in given for a in item.split(",") if a.strip())


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from edgecut.edge import ChainConfig, ChainPredictor
    from edgecut.inputs import load_input_files

    cloud = _addresses(args.cloud)
    fallback = args.fallback or ("cloud" if cloud else "local")
    config = ChainConfig(plan=args.plan, helpers=_addresses(args.helper), cloud=cloud,
                         tls_dir=args.tls, device=args.device, balance=args.balance,
                         fallback=fallback, codec=args.codec, timeout_s=args.timeout)
    with ChainPredictor(config) as chain:
        names = chain.get_outputs()
        outputs = chain.run(names, load_input_files(args.input))
        run = chain.last_run()
    np.savez(args.output, **dict(zip(names, outputs, strict=True)))
    summary = ""
    if run is not None:  # run() returned, so it recorded its run
        where = f"through helper {run.helper}" if run.path == "chain" else run.path
        fallback_note = f"; fell back: {run.fallback}" if run.fallback else ""
        summary = f" ({run.total_ms:.1f} ms, ran {where}{fallback_note})"
    print(f"wrote {args.output}: {', '.join(names)}{summary}")
    return 0
