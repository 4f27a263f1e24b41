"""`edgecut demo`: the whole round on a built-in model, on loopback, in seconds.

Makes a CA with a server and a device certificate, writes the built-in CNN, plans a split,
deploys the tail and the full model to a repository, starts the endpoint with mutual TLS, runs
split, offload, local and adaptive inferences through the device runtime, stops the endpoint
and runs adaptive ones again (they finish on the device), checks each against the full
model in onnxruntime, and prints what crossed the wire and where the time went.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

from edgecut import zoo
from edgecut.cloud.server import create_server
from edgecut.deploy import deploy_plan
from edgecut.edge import Config, Predictor
from edgecut.partitioner import (
    compare_outputs,
    list_cuts,
    run_split_locally,
    within_tolerance,
    write_plan,
)
from edgecut.protocol.pki import init_ca, issue_device_certificate
from edgecut.report import human_bytes

DEMO_MODEL = "chain_cnn"
DEVICE_NAME = "demo-device"
RUNS = 20
DEADLINE_S = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoRow:
    mode: str
    ran: str  # where the runs actually ran, with the fallback reason if any
    codec: str
    up_raw: int
    up_wire: int
    down_wire: int
    head_ms: float
    encode_ms: float
    rpc_ms: float
    decode_ms: float
    total_ms: float
    max_abs_diff: float
    ok: bool


def run_demo(*, keep: Path | None = None, console: Console | None = None) -> bool:
    """Run the demo; return True when every mode matched the full model."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: don't squeeze the table into 80 columns
            console = Console(width=160)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        return _run_in(keep, console)
    with tempfile.TemporaryDirectory(prefix="edgecut-demo-") as tmp:
        return _run_in(Path(tmp), console)


def _run_in(work: Path, console: Console) -> bool:
    tls = work / "tls"
    init_ca(tls, overwrite=True)
    issue_device_certificate(tls, DEVICE_NAME)
    console.print(f"[1/6] certificates: CA, server, device {DEVICE_NAME!r} in {tls}")

    model_path = work / f"{DEMO_MODEL}.onnx"
    onnx.save(zoo.ZOO[DEMO_MODEL](), model_path)
    cuts = list_cuts(onnx.load(model_path), {})
    chosen = _smallest_inner_cut(cuts)
    plan_dir = work / "plan"
    write_plan(model_path, plan_dir, cut_ids=[chosen.id], input_shapes={}, chosen=chosen.id)
    console.print(f"[2/6] plan: {len(cuts)} candidate cuts; split at cut {chosen.id} "
                  f"({chosen.device_nodes} nodes on the device, {human_bytes(chosen.bytes)} up)")

    repository = work / "repository"
    deployed = deploy_plan(plan_dir, repository)
    console.print(f"[3/6] deployed {', '.join(m.name for m in deployed)} to {repository}")

    server = create_server(repository, address="127.0.0.1:0", tls_dir=tls, mutual_tls=True)
    server.start()
    try:
        endpoint = f"127.0.0.1:{server.port}"
        console.print(f"[4/6] endpoint on {endpoint} with mutual TLS")
        inputs = zoo.sample_inputs(onnx.load(model_path))
        reference = run_split_locally(None, model_path, inputs)
        rows = [
            _measure(plan_dir, "split", endpoint, tls, inputs, reference, cut=chosen.id,
                     codec="auto"),
            _measure(plan_dir, "offload", endpoint, tls, inputs, reference, cut=None, codec="zstd"),
            _measure(plan_dir, "local", None, None, inputs, reference, cut=None, codec="raw"),
            _measure(plan_dir, "adaptive", endpoint, tls, inputs, reference, cut=chosen.id,
                     codec="auto"),
        ]
        served = server.statistics()
    finally:
        server.stop(1.0)
    console.print(f"[5/6] {RUNS} runs per mode; the endpoint saw device "
                  f"{_devices_seen(served)}")
    rows.append(_measure(plan_dir, "adaptive", endpoint, tls, inputs, reference, cut=chosen.id,
                         codec="auto", label="adaptive*"))
    console.print(f"[6/6] endpoint stopped (adaptive*): the runs ran {rows[-1].ran}, each "
                  f"within its {DEADLINE_S:g} s deadline")
    console.print(_table(rows))
    ok = all(r.ok for r in rows)
    console.print("all modes match the full model" if ok else "[red]MISMATCH against the full model")
    return ok


def _smallest_inner_cut(cuts):
    """The cut with the fewest bytes up among those that leave work on both sides."""
    inner = [c for c in cuts if c.device_nodes > 0 and c.cloud_nodes > 0]
    return min(inner, key=lambda c: (c.bytes, c.id))


def _measure(plan_dir: Path, mode: str, endpoint: str | None, tls: Path | None,
             inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], *,
             cut: int | None, codec: str, label: str | None = None) -> DemoRow:
    config = Config(plan=plan_dir, mode=mode, endpoint=endpoint, tls_dir=tls,
                    device=DEVICE_NAME if tls else None, cut=cut, codec=codec,
                    timeout_s=DEADLINE_S)
    with Predictor(config) as predictor:
        names = [o.name for o in predictor.get_outputs()]
        predictor.run(names, inputs)  # warm-up: connection, TLS handshake, session
        samples = []
        for _ in range(RUNS):
            outputs = dict(zip(names, predictor.run(names, inputs), strict=True))
            samples.append(predictor.last_run())
    diff = max(compare_outputs(reference, outputs).values())
    last = samples[-1]
    ran = last.mode + (f" {last.cut}" if last.cut is not None else "")
    if last.fallback:
        ran += f" ({last.fallback.split(':')[0]})"

    def median(field: str) -> float:
        return statistics.median(getattr(s, field) for s in samples)

    return DemoRow(
        mode=label or mode, ran=ran, codec=codec if endpoint else "-",
        up_raw=last.raw_bytes_up, up_wire=last.wire_bytes_up, down_wire=last.wire_bytes_down,
        head_ms=median("head_ms"), encode_ms=median("encode_ms"), rpc_ms=median("rpc_ms"),
        decode_ms=median("decode_ms"), total_ms=median("total_ms"),
        max_abs_diff=diff, ok=within_tolerance(reference, outputs),
    )


def _devices_seen(served) -> str:
    devices = getattr(served, "requests_by_device", None) or {}
    return ", ".join(f"{name!r} ({n} requests)" for name, n in sorted(devices.items())) or "none"


def _table(rows: list[DemoRow]) -> Table:
    table = Table(title="edgecut demo: median per inference")
    columns = ("mode", "ran", "codec", "up raw", "up wire", "down wire", "device ms",
               "encode ms", "rpc ms", "decode ms", "total ms", "max abs diff", "ok")
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(r.mode, r.ran, r.codec, human_bytes(r.up_raw), human_bytes(r.up_wire),
                      human_bytes(r.down_wire), f"{r.head_ms:.2f}", f"{r.encode_ms:.2f}",
                      f"{r.rpc_ms:.2f}", f"{r.decode_ms:.2f}", f"{r.total_ms:.2f}",
                      f"{r.max_abs_diff:.2g}", "yes" if r.ok else "NO")
    return table
