"""The `edgecut` command: parses arguments, calls the library, prints. No logic of its own.

User errors (EdgecutError, bad arguments) print one line on stderr and exit 2; an endpoint that
cannot be reached or a check that fails exits 1. Tracebacks are only for bugs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from edgecut.cli_types import at_least, listen_address, port, positive_seconds
from edgecut.errors import CloudUnavailableError, EdgecutError, RemoteError

EXIT_FAILED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_input_shape(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224",
                   help="concrete shape for an input with symbolic dimensions (repeatable)")


def _add_sample_input(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="a sample value for an input (repeatable): its shape fixes the symbolic "
                        "dims, and the model runs on it, e.g. where it branches on the value")


def _add_tls(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls", type=Path, metavar="DIR",
                   help="folder from `edgecut certs` (ca.crt, and a device certificate for mTLS)")
    p.add_argument("--device", metavar="NAME",
                   help="device certificate NAME.crt/NAME.key in the --tls folder (default: the only one)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgecut", description="Split ONNX models between a device and the cloud.")
    parser.add_argument("--version", action="version", version=f"edgecut {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    p = sub.add_parser("cuts", help="list a model's candidate cuts")
    p.add_argument("model", type=Path, metavar="MODEL.onnx")
    _add_input_shape(p)
    _add_sample_input(p)
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=_cmd_cuts)

    p = sub.add_parser("plan", help="choose the best cut from profiles, or write given cuts, "
                                    "into a plan folder (heads, tails, full model, plan.json)")
    p.add_argument("model", type=Path, metavar="MODEL.onnx")
    p.add_argument("--cut", action="append", metavar="ID",
                   help="write these cut ids from `edgecut cuts` instead of choosing (repeatable; "
                        "the first is chosen), or 'all'")
    p.add_argument("--device", metavar="PROFILE",
                   help="device: catalogue name (raspberry-pi-4, jetson-nano, phone, laptop, "
                        "cpu-server, gpu-server) or a .toml from `edgecut profile device`")
    p.add_argument("--network", metavar="PROFILE",
                   help="link: catalogue name (3g, lte, 5g, wifi, ethernet), a .toml, or "
                        "up=MBPS,down=MBPS,rtt=MS")
    p.add_argument("--cloud", default="gpu-server", metavar="PROFILE",
                   help="cloud: catalogue device name or .toml (default gpu-server)")
    p.add_argument("--objective", choices=("latency", "energy", "throughput"), default="latency")
    _add_input_shape(p)
    _add_sample_input(p)
    p.add_argument("--device-memory-mib", type=float, metavar="MIB",
                   help="the head's weights and peak activations must fit in this")
    p.add_argument("--energy-budget-j", type=float, metavar="J",
                   help="device energy per request must not exceed this")
    p.add_argument("--pin-input", action="append", default=[], metavar="NAME",
                   help="graph input that must stay on the device (repeatable)")
    p.add_argument("--no-measure", action="store_true",
                   help="skip timing the envelope cuts' heads and tails on this machine")
    p.add_argument("--measure-budget-s", type=float, default=20.0, metavar="S",
                   help="time allowed for measuring heads and tails (default 20)")
    p.add_argument("--explain", action="store_true", help="print every candidate's predicted costs")
    p.add_argument("--json", action="store_true", help="with --explain: a JSON list instead")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="draw latency against bandwidth per cut, with the envelope")
    p.add_argument("--out", type=Path, metavar="DIR", help="plan folder to write (optional with --explain)")
    from edgecut import cli_cascade

    cli_cascade.add_accuracy_arguments(p)
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("profile", help="measure this device, a model on it, or the network")
    prof = p.add_subparsers(dest="profile_command", required=True, metavar="WHAT",
                            parser_class=_Parser)
    c = prof.add_parser("device", help="write a device profile of this machine")
    c.add_argument("--out", type=Path, required=True, metavar="FILE.toml")
    c.add_argument("--name", default="this-device", help="profile name (default this-device)")
    c.add_argument("--quick", action="store_true", help="reduced benchmarks (about 2 s)")
    for key in ("idle", "compute", "transmit", "receive"):
        c.add_argument(f"--{key}-w", type=float, metavar="W",
                       help=f"{key} power draw in watts (default: measured or catalogue laptop)")
    c.add_argument("--battery-wh", type=float, metavar="WH")
    c.set_defaults(func=_cmd_profile_device)
    c = prof.add_parser("model", help="per-node latency of a model on this machine, and the "
                                      "prediction for a device")
    c.add_argument("model", type=Path, metavar="MODEL.onnx")
    c.add_argument("--device", required=True, metavar="PROFILE",
                   help="device whose calibration predicts the model (catalogue name or .toml)")
    c.add_argument("--out", type=Path, required=True, metavar="FILE.json")
    _add_input_shape(c)
    c.add_argument("--runs", type=int, default=20, help="measured runs (default 20)")
    c.add_argument("--device-out", type=Path, metavar="FILE.toml",
                   help="also write --device with this machine's per-node table attached "
                        "(when --device describes this machine)")
    c.set_defaults(func=_cmd_profile_model)
    c = prof.add_parser("network", help="measure bandwidth and round trip to an endpoint")
    c.add_argument("--endpoint", required=True, metavar="HOST:PORT")
    _add_tls(c)
    c.add_argument("--out", type=Path, required=True, metavar="FILE.toml")
    c.add_argument("--name", default="measured", help="profile name (default measured)")
    c.add_argument("--download-mib", type=float, default=4.0, metavar="MIB",
                   help="bytes per downlink probe (default 4; the endpoint's link probe sends them)")
    c.add_argument("--upload-mib", type=float, default=4.0, metavar="MIB",
                   help="size of each upload probe (default 4)")
    c.add_argument("--probes", type=int, default=5, help="probes of each kind (default 5)")
    c.set_defaults(func=_cmd_profile_network)

    p = sub.add_parser("verify", help="check head→tail against the full model")
    p.add_argument("plan", type=Path, metavar="DIR")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    _add_input_shape(p)
    p.add_argument("--cut", type=int, action="append", metavar="ID",
                   help="check only this cut (repeatable; default: every cut in the plan)")
    p.add_argument("--endpoint", metavar="HOST:PORT", help="run the tails on this endpoint")
    p.add_argument("--codec", default="raw", help="tensor codec on the channel (default: raw)")
    _add_tls(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("certs", help="make a CA, server and device certificates")
    certs = p.add_subparsers(dest="certs_command", required=True, metavar="ACTION",
                             parser_class=_Parser)
    c = certs.add_parser("init", help="write ca.crt, ca.key, server.crt, server.key")
    c.add_argument("dir", type=Path, metavar="DIR")
    c.add_argument("--host", action="append", default=[],
                   help="extra server name or IP for the certificate (repeatable)")
    c.add_argument("--force", action="store_true", help="replace an existing CA")
    c.set_defaults(func=_cmd_certs_init)
    c = certs.add_parser("device", help="write NAME.crt, NAME.key signed by the CA in --dir")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--dir", type=Path, required=True, metavar="DIR")
    c.set_defaults(func=_cmd_certs_device)

    p = sub.add_parser("serve", help="run the cloud inference endpoint")
    p.add_argument("--repository", type=Path, required=True, metavar="REPO",
                   help="Triton-layout model repository: REPO/MODEL/VERSION/model.onnx")
    p.add_argument("--address", default="127.0.0.1:8001", metavar="HOST:PORT", type=listen_address,
                   help="where to listen (default 127.0.0.1:8001; port 0: any free port)")
    p.add_argument("--tls", type=Path, metavar="DIR", help="serve TLS with DIR/server.crt")
    p.add_argument("--mtls", action="store_true", help="require a device certificate (needs --tls)")
    p.add_argument("--max-message-mb", type=at_least(1), default=256,
                   help="largest request or response in MiB (default 256)")
    p.add_argument("--model-control-mode", choices=("none", "explicit", "poll"), default="explicit",
                   help="as Triton: none = load at start only; explicit = also load/unload via "
                        "`edgecut models`; poll = also pick up new versions from disk (default explicit)")
    p.add_argument("--repository-poll-secs", type=positive_seconds, default=5.0, metavar="S",
                   help="how often poll mode looks at the repository (default 5)")
    p.add_argument("--http-address", metavar="HOST:PORT", type=listen_address,
                   help="also serve the protocol's HTTP/REST binding (KServe v2, Triton's "
                        "binary tensors) there, with --tls/--mtls as gRPC (default: off)")
    p.add_argument("--metrics-port", type=port, metavar="PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (default: off)")
    p.add_argument("--metrics-address", metavar="HOST",
                   help="the host the metrics listen on (default: --address's; they have no TLS, "
                        "so e.g. 127.0.0.1 keeps them local)")
    p.add_argument("--auth", type=Path, metavar="FILE",
                   help="TOML file of which devices may call which models, and which certificates "
                        "are operators that may load, unload and canary them (needs --mtls)")
    p.add_argument("--max-queue-size", type=at_least(1), default=128, metavar="N",
                   help="requests queued per model before RESOURCE_EXHAUSTED, where the model's "
                        "config sets no bound (default 128)")
    p.add_argument("--workers", type=at_least(1), default=64,
                   help="gRPC worker threads; a call waiting for its batch holds one (default 64); "
                        "at most 4 x workers calls are open at once, RESOURCE_EXHAUSTED beyond")
    p.add_argument("--threads", type=at_least(0), default=0, metavar="N",
                   help="onnxruntime intra-op threads per session (default 0: the CPUs this "
                        "process may use, by affinity and cgroup quota, shared by a model's "
                        "instances; a model's config.pbtxt parameters intra_op_thread_count "
                        "overrides it)")
    p.add_argument("--grace-secs", type=positive_seconds, default=5.0, metavar="S",
                   help="on SIGTERM or SIGINT, how long the requests in flight may take to finish "
                        "(default 5)")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="stderr log lines: text, or one JSON object per line (default text)")
    p.add_argument("--log-requests", action="store_true", help="log one line per request")
    p.add_argument("--frontend", choices=("grpcio", "core", "native", "auto"), default="auto",
                   help="gRPC transport: native = gRPC's C++ server, faster on small requests "
                        "(built at install where libgrpc++-dev is found); core = grpcio's core "
                        "driven from one thread; grpcio = grpcio's grpc.server; auto (default) "
                        "= native where built, else core")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("deploy", help="install a plan's full model and tails into a repository")
    p.add_argument("plan", type=Path, metavar="DIR")
    p.add_argument("--repository", type=Path, required=True, metavar="REPO")
    p.set_defaults(func=_cmd_deploy)

    p = sub.add_parser("run", help="one inference from the device side")
    p.add_argument("plan", type=Path, metavar="DIR")
    p.add_argument("--endpoint", action="append", metavar="HOST:PORT",
                   help="the cloud endpoint; repeat it (or separate with commas) for replicas, "
                        "balanced round robin")
    _add_tls(p)
    p.add_argument("--input", action="append", default=[], required=True, metavar="NAME=FILE.npy")
    p.add_argument("--output", type=Path, required=True, metavar="OUT.npz")
    p.add_argument("--mode", choices=("split", "offload", "local", "adaptive", "cascade"),
                   default="split",
                   help="adaptive: the plan's envelope cut for the measured link, offload under "
                        "device pressure, local when the cloud fails; cascade: the small model "
                        "(or early exit) of the plan's cascade.json, the cut when unsure")
    p.add_argument("--fallback", choices=("local", "none"),
                   help="when the cloud part fails: finish with the full model here, or fail "
                        "(default: local in adaptive mode, none otherwise)")
    p.add_argument("--cut", type=int, metavar="ID", help="default: the plan's chosen cut")
    p.add_argument("--codec", default="auto",
                   help="tensor codec: auto, raw, zstd, shuffle_zstd, fp16, int8, or plan (the "
                        "lossy codec the plan measured within its accuracy budget)")
    p.add_argument("--timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
                   help="deadline of the inference, any fallback included (default 30)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="plan, deploy, serve with mTLS and run split/offload/local")
    p.add_argument("--keep", type=Path, metavar="DIR", help="keep the demo's files in DIR")
    p.set_defaults(func=_cmd_demo)

    from edgecut import cli_cascade, cli_models, cli_simulate

    cli_models.register(sub)
    cli_simulate.register(sub)
    cli_cascade.register(sub)
    from edgecut import cli_chain

    cli_chain.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CloudUnavailableError as exc:
        print(f"edgecut {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RemoteError as exc:
        print(f"edgecut {args.command}: error: endpoint answered {exc.code}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except EdgecutError as exc:
        print(f"edgecut {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgecut")
    except PackageNotFoundError:
        return "unknown"


def _input_shapes(specs: Sequence[str]) -> dict[str, tuple[int, ...]]:
    from edgecut.errors import BadShapeError
    from edgecut.partitioner import parse_input_shape

    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, shape = parse_input_shape(spec)
        if name in shapes:
            raise BadShapeError(f"--input-shape {spec!r}: input {name!r} is given twice")
        shapes[name] = shape
    return shapes


# Each command imports what it needs when it runs: `edgecut run` on a device must not pay
# for (or need) onnx and the partitioner.

def _cmd_cuts(args: argparse.Namespace) -> int:
    from edgecut import report
    from edgecut.inputs import load_input_files
    from edgecut.partitioner import list_cuts, load_model

    cuts = list_cuts(load_model(args.model), _input_shapes(args.input_shape),
                     values=load_input_files(args.input))
    if args.json:
        print(json.dumps([report.cut_json(c) for c in cuts], indent=1))
    else:
        report.print_cuts(cuts, title=f"{args.model}: {len(cuts)} candidate cuts")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from edgecut.errors import UnknownCutError, UserInputError
    from edgecut.inputs import load_input_files
    from edgecut.partitioner import list_cuts, load_model, write_plan

    if args.cut is None:
        return _cmd_plan_choose(args)
    planner_only = [f for f, v in (("--device", args.device), ("--network", args.network),
                                   ("--explain", args.explain), ("--plot", args.plot)) if v]
    if planner_only:
        raise UserInputError(f"--cut writes the cuts given; {', '.join(planner_only)} belong to "
                             "choosing a cut: drop --cut, or drop them")
    if args.out is None:
        raise UserInputError("--out DIR is required: the plan folder to write")
    shapes = _input_shapes(args.input_shape)
    values = load_input_files(args.input)
    known = [c.id for c in list_cuts(load_model(args.model), shapes, values=values)]
    if args.cut == ["all"]:
        cut_ids = known
    else:
        try:
            cut_ids = [int(c) for c in args.cut]
        except ValueError as exc:
            raise UnknownCutError(f"--cut takes cut ids (integers) or 'all', got {args.cut}") from exc
    plan = write_plan(args.model, args.out, cut_ids=cut_ids, input_shapes=shapes, chosen=cut_ids[0],
                      input_values=values)
    print(f"wrote {args.out}/plan.json: model {plan['model']['name']!r}, "
          f"cuts {[c['id'] for c in plan['cuts']]}, chosen {plan['chosen']}")
    from edgecut import cli_cascade

    cli_cascade.apply_accuracy(args, print)
    return 0


def _cmd_plan_choose(args: argparse.Namespace) -> int:
    from edgecut import report
    from edgecut.errors import UserInputError
    from edgecut.inputs import load_input_files
    from edgecut.partitioner.cost import Constraints
    from edgecut.partitioner.planner import plan_model, write_planned
    from edgecut.profiles import load_cloud, load_device, load_network

    missing = [f for f, v in (("--device", args.device), ("--network", args.network)) if not v]
    if missing:
        raise UserInputError(f"give {' and '.join(missing)} to choose a cut (or --cut ID to "
                             "write a given cut)")
    if args.out is None and not args.explain and args.plot is None:
        raise UserInputError("--out DIR is required (or --explain / --plot to only look)")
    if args.json and not args.explain:
        raise UserInputError("--json goes with --explain")
    memory = args.device_memory_mib
    if memory is not None and not memory >= 0:
        raise UserInputError(f"--device-memory-mib must be >= 0, got {memory}")
    constraints = Constraints(
        device_memory_bytes=None if memory is None else int(memory * 2**20),
        energy_budget_j=args.energy_budget_j)
    device, network = load_device(args.device), load_network(args.network)
    cloud = load_cloud(args.cloud)
    reference = load_device(cloud.reference) if cloud.reference else None
    with report.progress_bar("measuring cuts on this machine", quiet=args.json) as progress:
        planned = plan_model(
            args.model, device=device, network=network, cloud=cloud, cloud_reference=reference,
            objective=args.objective, input_shapes=_input_shapes(args.input_shape),
            constraints=constraints, pinned_inputs=args.pin_input,
            measure=not args.no_measure, measure_budget_s=args.measure_budget_s,
            progress=progress, input_values=load_input_files(args.input))
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    if args.explain:
        rows = planned.explain()
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            report.print_candidates(rows, title=f"{args.model}: {len(rows)} candidate cuts on "
                                                 f"{device.name} / {network.name} / {cloud.name} "
                                                 f"({args.objective})")
    if args.plot is not None:
        from edgecut.partitioner.plot import plot_envelope

        plot_envelope(planned, args.plot)
        say(f"wrote {args.plot}")
    if args.out is not None:
        plan = write_planned(planned, args.out)
        envelope = ", ".join(f"{s['cut']} from {s['min_mbps']:.3g} Mbps" for s in plan["envelope"])
        say(f"wrote {args.out}/plan.json: model {plan['model']['name']!r}, chosen cut "
            f"{plan['chosen']} for {network.name}; envelope: {envelope}")
        from edgecut import cli_cascade

        cli_cascade.apply_accuracy(args, say)
    else:
        say(f"chosen cut {planned.chosen.id} for {network.name} (no --out: nothing written)")
    return 0


def _cmd_profile_device(args: argparse.Namespace) -> int:
    from edgecut import report
    from edgecut.profiles import profile_device, save_device

    with report.progress_bar("profiling this device") as progress:
        profile = profile_device(name=args.name, quick=args.quick, progress=progress,
                                 idle_w=args.idle_w, compute_w=args.compute_w,
                                 transmit_w=args.transmit_w, receive_w=args.receive_w,
                                 battery_wh=args.battery_wh)
    path = save_device(profile, args.out)
    print(f"wrote {path}: device {profile.name!r}, {profile.cores} cores, conv "
          f"{profile.gflops_by_class.get('conv', profile.default_gflops):.3g} GFLOP/s")
    return 0


def _cmd_profile_model(args: argparse.Namespace) -> int:
    from edgecut import report
    from edgecut.partitioner.plan import load_model
    from edgecut.partitioner.shapes import concrete_input_shapes
    from edgecut.profiles import (
        attach_model_profile,
        load_device,
        predict_for_device,
        profile_model,
        save_device,
    )

    device = load_device(args.device)
    shapes = concrete_input_shapes(load_model(args.model), _input_shapes(args.input_shape))
    measured = profile_model(args.model, input_shapes=shapes, runs=args.runs)
    predicted = predict_for_device(args.model, shapes, device)
    doc = report.model_profile_json(measured, predicted, device_name=device.name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    if args.device_out is not None:
        save_device(attach_model_profile(device, measured), args.device_out)
    print(f"wrote {args.out}: {len(measured.node_ms)} nodes, {measured.total_ms:.3f} ms per run "
          f"here (peak +{measured.peak_memory_mib:.1f} MiB); predicted on {device.name}: "
          f"{sum(predicted.values()):.3f} ms")
    return 0


def _cmd_profile_network(args: argparse.Namespace) -> int:
    from edgecut import report
    from edgecut.netprobe import probe_network, save_network

    with report.progress_bar(f"probing {args.endpoint}") as progress:
        network = probe_network(args.endpoint, tls_dir=args.tls, device=args.device,
                                name=args.name, upload_bytes=int(args.upload_mib * 2**20),
                                download_bytes=int(args.download_mib * 2**20), probes=args.probes,
                                progress=progress)
    save_network(network, args.out)
    print(f"wrote {args.out}: up {network.uplink_mbps:.3g} Mbps, down "
          f"{network.downlink_mbps:.3g} Mbps, rtt {network.rtt_ms:.3g} ms")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from edgecut import report
    from edgecut.edge.plan import load_plan
    from edgecut.inputs import load_input_files
    from edgecut.verify import random_inputs, verify_plan

    inputs = load_input_files(args.input)
    if not inputs:
        inputs = random_inputs(load_plan(args.plan), _input_shapes(args.input_shape))
    checks = verify_plan(args.plan, inputs, endpoint=args.endpoint, tls_dir=args.tls,
                         device=args.device, cut_ids=args.cut, codec=args.codec)
    if args.json:
        print(json.dumps([{"cut": c.cut, "max_abs_diff": c.max_abs_diff, "ok": c.ok} for c in checks]))
    else:
        report.print_checks(checks, where=args.endpoint or "locally")
    return 0 if all(c.ok for c in checks) else EXIT_FAILED


def _cmd_certs_init(args: argparse.Namespace) -> int:
    from edgecut.protocol.pki import init_ca

    paths = init_ca(args.dir, hosts=args.host, overwrite=args.force)
    print(f"wrote CA and server certificate in {args.dir}: {paths.ca_cert.name}, "
          f"{paths.cert.name}, {paths.key.name}")
    return 0


def _cmd_certs_device(args: argparse.Namespace) -> int:
    from edgecut.protocol.pki import issue_device_certificate

    paths = issue_device_certificate(args.dir, args.name)
    print(f"wrote device certificate {args.name!r} in {args.dir}: {paths.cert.name}, "
          f"{paths.key.name}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from edgecut.cloud.server import serve
    from edgecut.errors import TLSConfigError

    if args.mtls and args.tls is None:
        raise TLSConfigError("--mtls needs --tls DIR (the folder from `edgecut certs init`)")
    def announce(server) -> None:  # flushed at once: scripts wait for this line to connect
        security = "mutual TLS" if args.mtls else "TLS" if args.tls else "plaintext"
        ready = sorted({m.name for m in server.repository.models() if m.ready})
        models = f"{len(ready)} models" if ready else "no models"
        metrics = f"; metrics on {server.metrics_url}" if server.metrics_url else ""
        if server.http_url:
            metrics = f"; HTTP/REST on {server.http_url}{metrics}"
        print(f"edgecut endpoint listening on {server.address} ({security}, {server.frontend} "
              f"transport); serving {models}{metrics}", flush=True)

    from edgecut.cloud.allocator import keep_large_buffers
    from edgecut.cloud.logs import configure_server_logs
    from edgecut.cloud.repository import ModelRepository

    keep_large_buffers()

    if args.auth is not None and not args.mtls:
        raise TLSConfigError("--auth names devices by their certificates: it needs --tls DIR --mtls")
    configure_server_logs(json_lines=args.log_format == "json")
    repository = ModelRepository(args.repository, intra_op_threads=args.threads,
                                 control_mode=args.model_control_mode,
                                 poll_interval_s=args.repository_poll_secs)
    stats = serve(repository, address=args.address, grace_s=args.grace_secs,
                  tls_dir=args.tls, mutual_tls=args.mtls,
                  max_message_bytes=args.max_message_mb << 20, on_started=announce,
                  metrics_port=args.metrics_port, metrics_host=args.metrics_address,
                  auth_file=args.auth,
                  max_queue_size=args.max_queue_size, workers=args.workers,
                  intra_op_threads=args.threads,
                  request_log_level="INFO" if args.log_requests else None,
                  frontend=args.frontend, http_address=args.http_address)
    others = stats.total_failures - stats.infer_failures
    print(f"stopped after {stats.infer_requests} inference requests "
          f"({stats.infer_failures} failed"
          f"{f'; {others} other calls failed' if others else ''})", flush=True)
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from edgecut.deploy import deploy_plan

    for model in deploy_plan(args.plan, args.repository):
        state = "unchanged" if model.unchanged else "installed"
        print(f"{state}: {model.name} version {model.version} ({model.path})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from edgecut.edge import Config, Predictor
    from edgecut.inputs import load_input_files

    endpoints = [e.strip() for given in args.endpoint or () for e in given.split(",") if e.strip()]
    config = Config(plan=args.plan, mode=args.mode,
                    endpoint=(endpoints[0] if len(endpoints) == 1 else endpoints) or None,
                    tls_dir=args.tls, device=args.device, cut=args.cut, codec=args.codec,
                    fallback=args.fallback, timeout_s=args.timeout)
    with Predictor(config) as predictor:
        names = [o.name for o in predictor.get_outputs()]
        outputs = predictor.run(names, load_input_files(args.input))
        stats = predictor.last_run()
    np.savez(args.output, **dict(zip(names, outputs, strict=True)))
    where = f"split at cut {stats.cut}" if stats.mode == "split" else stats.mode
    fallback = f"; fell back: {stats.fallback}" if stats.fallback else ""
    answered = f"; answered by {stats.answered_by}" if stats.answered_by else ""
    print(f"wrote {args.output}: {', '.join(names)} ({stats.total_ms:.1f} ms, ran {where}"
          f"{fallback}{answered})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from edgecut.demo import run_demo

    return 0 if run_demo(keep=args.keep) else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
