"""`edgecut cascade …`: calibrate a small-model / big-model cascade on an evaluation set.

    edgecut cascade calibrate SMALL.onnx BIG.onnx --data EVAL (--target-accuracy A |
                              --max-escalation R) [--measure max_prob|margin|entropy]
                              [--output NAME] [--plan DIR] [--plot FILE.png] [--json]

Prints the accuracy / escalation-rate curve as a table (or JSON), draws it with --plot, and
with --plan DIR copies SMALL.onnx into the plan folder as small.onnx and writes the chosen
threshold to DIR/cascade.json, where `Config(plan=DIR, mode="cascade")` reads it.
Also the accuracy flags of `edgecut plan` (add_accuracy_arguments, apply_accuracy):

    edgecut plan MODEL ... --out DIR [--quantize int8|fp16] --data EVAL [--accuracy-budget B]

write quantised device models beside the fp32 ones and record, per cut, the top-1 drop of
each quantised head and of each lossy codec (int8, fp16) on the crossing tensors, marking
those within the budget (edgecut.partitioner.quantize).

Parses, calls edgecut.calibrate and edgecut.partitioner.quantize, prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_accuracy_arguments", "apply_accuracy", "register"]

_ROWS = 12


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from exc
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:  # argparse has no public name
    """Add `cascade` and its actions to the `edgecut` command's subparsers."""
    parser = subparsers.add_parser("cascade", help="calibrate a small model on the device and "
                                                   "a big one in the cloud (placement 5)")
    actions = parser.add_subparsers(dest="cascade_command", required=True, metavar="ACTION",
                                    parser_class=type(parser))
    p = actions.add_parser("calibrate", help="the accuracy / escalation curve and the threshold "
                                             "that meets a target")
    p.add_argument("small", type=Path, metavar="SMALL.onnx", help="the device's model")
    p.add_argument("big", type=Path, metavar="BIG.onnx", help="the strong model (the plan's)")
    p.add_argument("--data", type=Path, required=True, metavar="EVAL",
                   help=".npz or folder of .npy: one array per input, and labels (or reference)")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-accuracy", type=_fraction, metavar="A",
                      help="the least escalation whose top-1 reaches A")
    goal.add_argument("--max-escalation", type=_fraction, metavar="R",
                      help="the most accurate threshold escalating at most a share R")
    p.add_argument("--measure", choices=("max_prob", "margin", "entropy"), default="max_prob",
                   help="how the small model's confidence is judged (default max_prob)")
    p.add_argument("--output", metavar="NAME", help="the scores output (default: the first)")
    p.add_argument("--plan", type=Path, metavar="DIR",
                   help="the big model's plan folder: write small.onnx and cascade.json there")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the curve")
    p.add_argument("--json", action="store_true", help="print the calibration as JSON")
    p.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from edgecut.accuracy import load_eval_set
    from edgecut.calibrate import calibrate, plot_curve, write_cascade

    data = load_eval_set(args.data)
    result = calibrate(args.small, args.big, data, measure=args.measure, output=args.output,
                       target_accuracy=args.target_accuracy, max_escalation=args.max_escalation)
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        _print_curve(result)
    if args.plot is not None:
        say(f"wrote {plot_curve(result, args.plot)}")
    chosen = result.chosen
    say(f"threshold {chosen.threshold:.4g} ({result.measure}): {result.metric} "
        f"{chosen.accuracy:.4f}, escalating {chosen.escalation:.1%} of {result.samples} samples "
        f"(small alone {result.small_accuracy:.4f}, big alone {result.big_accuracy:.4f})")
    if args.plan is not None:
        say(f"wrote {write_cascade(args.plan, args.small, result, output=args.output)}")
    return 0


def _print_curve(result: object) -> None:
    from rich.console import Console
    from rich.table import Table

    curve = list(result.curve)  # type: ignore[attr-defined]
    chosen = result.chosen  # type: ignore[attr-defined]
    # The whole curve can hold one point per sample: show evenly spaced ones and the chosen.
    step = max(1, len(curve) // _ROWS)
    shown = sorted({*curve[::step], curve[-1], chosen}, key=lambda p: p.threshold)
    table = Table(title=f"cascade: {result.metric} against escalation rate "  # type: ignore[attr-defined]
                        f"({len(curve)} thresholds, {len(shown)} shown)")
    for column in ("threshold", "accuracy", "escalation", ""):
        table.add_column(column, justify="right")
    for p in shown:
        table.add_row(f"{p.threshold:.4g}", f"{p.accuracy:.4f}", f"{p.escalation:.1%}",
                      "chosen" if p == chosen else "")
    Console().print(table)


def add_accuracy_arguments(p: argparse.ArgumentParser) -> None:
    """`edgecut plan`'s --quantize, --data and --accuracy-budget."""
    p.add_argument("--quantize", choices=("int8", "fp16"),
                   help="also write quantised device models (int8: static, calibrated on "
                        "--data), and report their size and accuracy drop")
    p.add_argument("--data", type=Path, metavar="EVAL",
                   help="evaluation set (.npz or folder of .npy, with labels or reference) "
                        "for --quantize and the lossy codecs' accuracy drop")
    p.add_argument("--accuracy-budget", type=_fraction, metavar="B",
                   help="the largest top-1 drop a quantised head or lossy codec may cost "
                        "(e.g. 0.01); needs --data")
    p.add_argument("--exit", metavar="NAME",
                   help="an early-exit output of the model: measure its exit rate on --data at "
                        "the threshold within --accuracy-budget (default 0.01) of the full "
                        "model, cost each cut with its tail skipped that often, and write "
                        "cascade.json for Config(mode='cascade')")


def apply_accuracy(args: argparse.Namespace, say: Callable[[str], object]) -> None:
    """After the plan folder is written: quantise and measure, when asked to."""
    from edgecut.errors import UserInputError

    if args.data is None:
        if args.quantize is not None or args.accuracy_budget is not None or args.exit:
            raise UserInputError("--quantize, --accuracy-budget and --exit need --data EVAL, "
                                 "the evaluation set the accuracy is measured on")
        return
    from edgecut.accuracy import load_eval_set
    from edgecut.partitioner.quantize import quantize_plan

    summary = quantize_plan(args.out, mode=args.quantize, data=load_eval_set(args.data),
                            accuracy_budget=args.accuracy_budget)
    figures = summary["quantized"].get(args.quantize) if args.quantize else None
    if figures is not None:
        say(f"wrote {args.out}/{figures['file']}: {figures['bytes']} bytes, "
            f"{1 - figures['size_ratio']:.0%} smaller than fp32; top-1 drop "
            f"{figures['accuracy_drop']:.4f} on {summary['samples']} samples"
            + ("" if figures["within_budget"] else " (over the budget)"))
    say(f"accuracy on {args.data}: fp32 {summary['metric']} {summary['baseline']:.4f}; drops "
        f"per cut and codec in {args.out}/plan.json")
    if args.exit:
        from edgecut.early_exit import plan_early_exit

        compute_w = None
        if args.device:
            from edgecut.profiles import load_device

            compute_w = load_device(args.device).power.compute_w
        early = plan_early_exit(args.out, exit_output=args.exit, data=load_eval_set(args.data),
                                compute_w=compute_w,
                                accuracy_budget=0.01 if args.accuracy_budget is None
                                else args.accuracy_budget,
                                objective="energy" if args.objective == "energy" else "latency")
        best = "" if early["cut"] is None else f"; best cut with the exit: {early['cut']}"
        say(f"early exit {args.exit!r}: threshold {early['threshold']:.4g} answers "
            f"{early['exit_rate']:.1%} of requests at top-1 {early['accuracy']:.4f} (full model "
            f"{early['full_accuracy']:.4f}){best}; wrote {args.out}/cascade.json")
