"""Accuracy for cost: every placement on the same labelled data, in one run.

    python benchmarks/accuracy_cost.py --out /tmp/accuracy_cost.json --plot /tmp/ac.png

The data are scikit-learn's bundled digits (real labels, no download); the models are trained
here (edgecut.digits): a logistic regression (small, ~93 % top-1) and an MLP 64-128-64-10
(big, ~98 %), the MLP with an early-exit branch after its first layer. Held out: 449 samples,
never seen by training or calibration.

Every row runs the real thing: a Predictor per sample (batch 1) against edgecut's endpoint
with mutual TLS on loopback, in one process, one request at a time:

    device-only          mode local, the fp32 MLP on the device
    device-only int8     mode local, the MLP quantised (edgecut plan --quantize int8)
    cloud-only           mode offload
    split                mode split at cut 3 (after the first ReLU: 128 floats cross), raw
    split + int8 codec   the same, the crossing tensor as int8 with its scales
    quantised head       split at cut 3, the head int8, codec raw
    cascade              the logistic regression here, escalating along split 3 below the
                         threshold calibrated on the calibration split for --target
    early exit           the exit branch in split 6's head, threshold calibrated likewise

Costs. Loopback hides the link, so each run's measured stages are put on a profile's link
and power model (default raspberry-pi-4 on lte), the convention of benchmarks/plan_regret.py:

    latency_ms = device + encode + decode + [rtt + uplink + downlink + cloud call]
    energy_mJ  = compute_w * (device + encode + decode) + transmit_w * uplink
                 + receive_w * downlink + idle_w * (rtt + cloud call)

where device is the time the device models ran here (head, small model), uplink/downlink the
wire bytes at the profile's rates, and the cloud call the measured loopback RPC; the bracket
only for runs that called the cloud. Device times are this machine's, not the profile's.
It prints a table, writes JSON, and with --plot draws accuracy against energy and latency.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecut.accuracy import EvalSet, save_eval_set, top1_accuracy
from edgecut.calibrate import calibrate, cascade_curve, pick_threshold, write_cascade
from edgecut.cloud.server import create_server
from edgecut.deploy import deploy_plan
from edgecut.digits import EXIT_OUTPUT, INPUT, OUTPUT, trained
from edgecut.edge import Config, Predictor
from edgecut.edge.cascade import confidence
from edgecut.partitioner import write_plan
from edgecut.partitioner.quantize import quantize_plan
from edgecut.profiles import load_device, load_network
from edgecut.protocol.pki import init_ca, issue_device_certificate

DEVICE = "bench-device"
SPLIT_CUT = 3
EXIT_CUT = 6


def _costs(run: Any, device: Any, network: Any) -> tuple[float, float]:
    power = device.power
    local_ms = run.head_ms + run.small_ms + run.encode_ms + run.decode_ms
    if not run.cloud_calls:
        return local_ms, power.compute_w * local_ms
    up_ms = run.wire_bytes_up * 8 / (network.uplink_mbps * 1e3)
    down_ms = run.wire_bytes_down * 8 / (network.downlink_mbps * 1e3)
    latency = local_ms + network.rtt_ms + up_ms + down_ms + run.rpc_ms
    energy = (power.compute_w * local_ms + power.transmit_w * up_ms + power.receive_w * down_ms
              + power.idle_w * (network.rtt_ms + run.rpc_ms))
    return latency, energy  # ms, mJ (W * ms)


def _row(name: str, config: Config, test: EvalSet, device: Any, network: Any) -> dict[str, Any]:
    answers, latency, energy, loopback, device_ms, up, down = [], [], [], [], [], [], []
    answered: dict[str, int] = {}
    cloud_calls = 0
    with Predictor(config) as predictor:
        predictor.run(None, test.samples()[0])  # warm-up, not counted
        for feed in test.samples():
            (scores,) = predictor.run([OUTPUT], feed)
            run = predictor.last_run()
            answers.append(int(np.argmax(scores)))
            lat, en = _costs(run, device, network)
            latency.append(lat)
            energy.append(en)
            loopback.append(run.total_ms)
            device_ms.append(run.head_ms + run.small_ms)
            up.append(run.wire_bytes_up)
            down.append(run.wire_bytes_down)
            cloud_calls += run.cloud_calls
            key = run.answered_by or run.mode
            answered[key] = answered.get(key, 0) + 1
    n = len(answers)
    return {"placement": name, "accuracy": top1_accuracy(np.array(answers), test.labels),
            "samples": n, "cloud_share": cloud_calls / n, "answered": answered,
            "latency_ms": statistics.fmean(latency), "latency_p95_ms": float(np.percentile(latency, 95)),
            "energy_mj": statistics.fmean(energy), "device_ms": statistics.fmean(device_ms),
            "loopback_ms": statistics.median(loopback), "up_bytes": statistics.fmean(up),
            "down_bytes": statistics.fmean(down)}


def _exit_threshold(plan_model: Path, cal: EvalSet, target: float) -> tuple[float, float]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(plan_model), providers=["CPUExecutionProvider"])
    exit_scores, scores = session.run([EXIT_OUTPUT, OUTPUT], {INPUT: cal.inputs[INPUT]})
    curve = cascade_curve(confidence(exit_scores, "max_prob"), exit_scores.argmax(1) == cal.labels,
                          scores.argmax(1) == cal.labels)
    chosen = pick_threshold(curve, target_accuracy=target)
    return chosen.threshold, chosen.escalation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.json")
    parser.add_argument("--plot", type=Path, metavar="FILE.png")
    parser.add_argument("--device", default="raspberry-pi-4")
    parser.add_argument("--network", default="lte")
    parser.add_argument("--target", type=float, default=0.975,
                        help="top-1 the cascade and the early exit are calibrated for (0.975)")
    parser.add_argument("--samples", type=int, default=0, help="held-out samples (0: all)")
    args = parser.parse_args(argv)
    device, network = load_device(args.device), load_network(args.network)
    started = time.perf_counter()
    data, models = trained()
    cal = EvalSet(inputs={INPUT: data.x_cal}, labels=data.y_cal)
    test = EvalSet(inputs={INPUT: data.x_test}, labels=data.y_test)
    if args.samples:
        test = test.subset(np.arange(min(args.samples, len(test))))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("small", "big", "exits"):
            (root / f"{name}.onnx").write_bytes(models[name])
        save_eval_set(root / "cal.npz", cal.inputs, labels=cal.labels)
        big_plan, exit_plan = root / "plan", root / "exit-plan"
        write_plan(root / "big.onnx", big_plan, cut_ids=[0, SPLIT_CUT, 9],
                   input_shapes={INPUT: (1, 64)}, chosen=SPLIT_CUT)
        accuracy = quantize_plan(big_plan, mode="int8", data=cal, accuracy_budget=0.01)
        calibration = calibrate(root / "small.onnx", root / "big.onnx", cal,
                                target_accuracy=args.target)
        write_cascade(big_plan, root / "small.onnx", calibration)
        write_plan(root / "exits.onnx", exit_plan, cut_ids=[EXIT_CUT],
                   input_shapes={INPUT: (1, 64)}, chosen=EXIT_CUT)
        exit_threshold, exit_escalation = _exit_threshold(root / "exits.onnx", cal, args.target)
        fleet = root / "fleet"
        init_ca(fleet)
        issue_device_certificate(fleet, DEVICE)
        repository = root / "repo"
        deploy_plan(big_plan, repository)
        deploy_plan(exit_plan, repository)
        server = create_server(repository, tls_dir=fleet, mutual_tls=True, workers=4,
                               intra_op_threads=1)
        server.start()
        try:
            endpoint = f"localhost:{server.port}"
            common = {"endpoint": endpoint, "tls_dir": fleet, "device": DEVICE,
                      "intra_op_threads": 1, "timeout_s": 10.0, "fallback": "none"}
            rows_spec = [
                ("device-only", Config(plan=big_plan, mode="local", intra_op_threads=1)),
                ("device-only int8", Config(plan=big_plan, mode="local", quantized="int8",
                                            intra_op_threads=1)),
                ("cloud-only", Config(plan=big_plan, mode="offload", codec="raw", **common)),
                ("split", Config(plan=big_plan, mode="split", cut=SPLIT_CUT, codec="raw",
                                 **common)),
                ("split + int8 codec", Config(plan=big_plan, mode="split", cut=SPLIT_CUT,
                                              codec="int8", **common)),
                ("quantised head", Config(plan=big_plan, mode="split", cut=SPLIT_CUT,
                                          codec="raw", quantized="int8", **common)),
                ("cascade", Config(plan=big_plan, mode="cascade", cut=SPLIT_CUT, codec="raw",
                                   **common)),
                ("early exit", Config(plan=exit_plan, mode="cascade", cascade_exit=EXIT_OUTPUT,
                                      cascade_threshold=exit_threshold, codec="raw", **common)),
            ]
            rows = []
            for name, config in rows_spec:
                rows.append(_row(name, config, test, device, network))
                print(f"  {name}: done", file=sys.stderr)
        finally:
            server.stop(grace_s=1.0)
    base = next(r for r in rows if r["placement"] == "cloud-only")
    for r in rows:
        r["energy_vs_cloud_only"] = r["energy_mj"] / base["energy_mj"]
        r["latency_vs_cloud_only"] = r["latency_ms"] / base["latency_ms"]
    result = {
        "benchmark": "accuracy_cost", "date": time.strftime("%Y-%m-%d"),
        "machine": {"python": platform.python_version(), "processor": platform.processor(),
                    "platform": platform.platform()},
        "profile": {"device": device.name, "network": network.name,
                    "power_w": {"idle": device.power.idle_w, "compute": device.power.compute_w,
                                "transmit": device.power.transmit_w,
                                "receive": device.power.receive_w},
                    "uplink_mbps": network.uplink_mbps, "downlink_mbps": network.downlink_mbps,
                    "rtt_ms": network.rtt_ms},
        "data": {"name": "sklearn digits", "held_out": len(test), "calibration": len(cal)},
        "cascade": {"target": args.target, "threshold": calibration.chosen.threshold,
                    "calibrated_escalation": calibration.chosen.escalation,
                    "small_accuracy": calibration.small_accuracy,
                    "big_accuracy": calibration.big_accuracy},
        "early_exit": {"threshold": exit_threshold, "calibrated_escalation": exit_escalation},
        "quantize": accuracy, "rows": rows, "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    _print(result)
    if args.plot is not None:
        _plot(result, args.plot)
        print(f"wrote {args.plot}")
    print(f"wrote {args.out}")
    return 0


def _print(result: dict[str, Any]) -> None:
    p = result["profile"]
    print(f"\n{result['data']['held_out']} held-out digits; costs on {p['device']} / "
          f"{p['network']} ({p['uplink_mbps']}/{p['downlink_mbps']} Mbit/s, {p['rtt_ms']} ms)")
    header = (f"{'placement':20} {'top-1':>7} {'cloud':>6} {'latency ms':>11} {'energy mJ':>10} "
              f"{'vs cloud':>9} {'device ms':>10} {'up B':>7} {'loopback ms':>12}")
    print(header)
    print("-" * len(header))
    for r in result["rows"]:
        print(f"{r['placement']:20} {r['accuracy']:7.4f} {r['cloud_share']:6.1%} "
              f"{r['latency_ms']:11.2f} {r['energy_mj']:10.2f} {r['energy_vs_cloud_only']:9.2f} "
              f"{r['device_ms']:10.3f} {r['up_bytes']:7.0f} {r['loopback_ms']:12.2f}")


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in ((axes[0], "energy_mj", "device energy per request (mJ)"),
                           (axes[1], "latency_ms", "latency per request (ms)")):
        for r, marker in zip(result["rows"], "osD^v<>Pp*", strict=False):
            ax.scatter(r[key], r["accuracy"], marker=marker, s=50, alpha=0.8,
                       label=r["placement"])
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel(label + ", symlog")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (held-out digits)")
    axes[1].legend(loc="lower right", fontsize=8)
    p = result["profile"]
    fig.suptitle(f"accuracy for cost: {p['device']} on {p['network']} (measured stages, "
                 f"profile link and power)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
