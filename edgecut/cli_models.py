"""`edgecut models …`: manage the models of a running endpoint over the protocol.

    edgecut models index    --endpoint HOST:PORT [--tls DIR --device NAME] [--ready] [--json]
    edgecut models load     NAME --endpoint …       load or reload NAME from the repository
    edgecut models unload   NAME --endpoint …
    edgecut models canary   NAME --version V [--percent P] --endpoint …
    edgecut models promote  NAME --endpoint …       the canary's version becomes the only one
    edgecut models rollback NAME --endpoint …       back to the stable version

Under mutual TLS the command presents the device certificate --device NAME from the --tls
folder (or the folder's only one). When the endpoint has an auth file, load, unload, canary,
promote and rollback need an operator's certificate: one whose name matches the file's
`[operators] names` (see edgecut.cloud.auth), e.g. `edgecut certs device ops-alice --dir tls/`
then `--tls tls/ --device ops-alice`.

Parses, calls edgecut.cloud.management.ModelControl, prints. Errors are edgecut errors
(RemoteError, CloudUnavailableError …) that edgecut.cli prints as one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgecut.cli_types import positive_seconds

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # argparse has no public name
    """Add `models` and its actions to the `edgecut` command's subparsers."""
    parser = subparsers.add_parser("models", help="list, load, unload and canary models on an endpoint")
    actions = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION",
                                    parser_class=type(parser))

    def action(name: str, help_text: str, *, model: bool = True) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_text)
        if model:
            p.add_argument("name", metavar="NAME", help="the model (its folder in the repository)")
        p.add_argument("--endpoint", required=True, metavar="HOST:PORT")
        p.add_argument("--tls", type=Path, metavar="DIR",
                       help="folder from `edgecut certs` (ca.crt, and a device certificate for mTLS)")
        p.add_argument("--device", metavar="NAME",
                       help="certificate NAME.crt/NAME.key in the --tls folder to present (default: "
                            "the only one); an operator's for load, unload and canary control "
                            "when the endpoint has --auth")
        p.add_argument("--timeout", type=positive_seconds, default=60.0, metavar="S",
                       help="seconds to wait for the endpoint (default 60)")
        return p

    p = action("index", "list every model version with its state", model=False)
    p.add_argument("--ready", action="store_true", help="only the versions ready to serve")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_index)
    action("load", "load or reload a model from the repository").set_defaults(func=_cmd_load)
    action("unload", "stop serving a model").set_defaults(func=_cmd_unload)
    p = action("canary", "send a share of a model's traffic to a candidate version")
    p.add_argument("--version", type=int, required=True, metavar="V")
    p.add_argument("--percent", type=int, default=10, metavar="P",
                   help="share of unversioned requests, 0..100 (default 10)")
    p.set_defaults(func=_cmd_canary)
    action("promote", "make the canary's version the only one served").set_defaults(
        func=_cmd_promote)
    action("rollback", "end the canary: back to the stable version").set_defaults(
        func=_cmd_rollback)


def _control(args: argparse.Namespace):  # -> ModelControl, imported late: the CLI starts fast
    from edgecut.cloud.management import ModelControl

    return ModelControl(args.endpoint, tls_dir=args.tls, device=args.device,
                        timeout_s=args.timeout)


def _cmd_index(args: argparse.Namespace) -> int:
    with _control(args) as control:
        rows = control.index(ready_only=args.ready)
    if args.json:
        print(json.dumps([{"name": r.name, "version": r.version, "state": r.state,
                           "reason": r.reason} for r in rows], indent=1))
        return 0
    width = max([len(r.name) for r in rows] + [5])
    print(f"{'MODEL':<{width}}  {'VERSION':>7}  {'STATE':<11}  REASON")
    for r in rows:
        print(f"{r.name:<{width}}  {r.version or '-':>7}  {r.state:<11}  {r.reason}")
    return 0


def _serving(control, name: str) -> str:
    """What `name` serves now, for the line a control command prints."""
    versions = [r.version for r in control.index(ready_only=True) if r.name == name]
    return (f"serving version{'s' if len(versions) > 1 else ''} {', '.join(versions)}"
            if versions else "no version ready")


def _cmd_load(args: argparse.Namespace) -> int:
    with _control(args) as control:
        control.load(args.name)
        print(f"loaded {args.name}: {_serving(control, args.name)}")
    return 0


def _cmd_unload(args: argparse.Namespace) -> int:
    with _control(args) as control:
        control.unload(args.name)
    print(f"unloaded {args.name}")
    return 0


def _cmd_canary(args: argparse.Namespace) -> int:
    with _control(args) as control:
        control.canary(args.name, version=args.version, percent=args.percent)
        print(f"{args.name}: version {args.version} gets {args.percent}% of unversioned "
              f"requests; {_serving(control, args.name)}")
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    with _control(args) as control:
        control.promote(args.name)
        print(f"{args.name}: canary version promoted; {_serving(control, args.name)}")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    with _control(args) as control:
        control.rollback(args.name)
        print(f"{args.name}: rolled back to the stable version; {_serving(control, args.name)}")
    return 0
