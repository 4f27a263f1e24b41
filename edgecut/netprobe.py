"""Measure the link to a running endpoint and write a network profile `--network FILE` reads.

Round trip: the median of `ServerLive` calls (the smallest call the protocol has). Uplink:
ModelInfer calls carrying `upload_bytes` of random (incompressible) raw bytes to a model name
that no repository serves (`PROBE_MODEL`): gRPC delivers the whole message before the server
answers NOT_FOUND, so nothing needs deploying, and `bytes * 8 / (median call time - rtt)` is
the upload rate. Downlink: no deploy-free call returns a large message, so the downlink is
taken equal to the uplink, and the profile's `source` says so; edit `downlink_mbps` in the file
if the link is asymmetric.

Example:
    >>> net = probe_network("cloud.example:8001", tls_dir=Path("tls"))  # doctest: +SKIP
    >>> save_network(net, "measured.toml")                               # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgecut.errors import CloudUnavailableError, RemoteError
from edgecut.profiles.schema import NetworkProfile

__all__ = ["PROBE_MODEL", "probe_network", "save_network"]

PROBE_MODEL = "edgecut-bandwidth-probe-unserved"


def probe_network(endpoint: str, *, tls_dir: Path | None = None, device: str | None = None,
                  name: str = "measured", model: str | None = None,
                  upload_bytes: int = 4 << 20, probes: int = 5,
                  progress: Callable[[str, int, int], None] | None = None) -> NetworkProfile:
    """Probe `endpoint` (see the module docstring) and return the measured NetworkProfile."""
    from edgecut.edge.client import CloudClient

    if probes < 1 or upload_bytes < 1:
        raise ValueError(f"probes and upload_bytes must be >= 1, got {probes}, {upload_bytes}")
    del model  # reserved: a served model to time the downlink with
    total = 2 * probes + 1
    step = 0

    def tick(text: str) -> None:
        nonlocal step
        if progress:
            progress(text, step, total)
        step += 1

    payload = np.random.default_rng(0).integers(0, 256, size=upload_bytes, dtype=np.uint8)
    with CloudClient(endpoint, tls_dir=tls_dir, device=device,
                     max_message_bytes=max(upload_bytes * 2, 8 << 20)) as client:
        tick("connecting")
        client.server_live()
        rtts = []
        for _ in range(probes):
            tick("round trip")
            t0 = time.perf_counter()
            client.server_live()
            rtts.append((time.perf_counter() - t0) * 1000.0)
        uploads = []
        for _ in range(probes):
            tick("uplink")
            t0 = time.perf_counter()
            try:
                client.infer(PROBE_MODEL, {"probe": payload})
            except RemoteError:
                pass  # NOT_FOUND is the expected answer, after the whole upload
            except CloudUnavailableError:
                raise
            uploads.append((time.perf_counter() - t0) * 1000.0)
    rtt = statistics.median(rtts)
    moving_ms = max(statistics.median(uploads) - rtt, 1e-3)
    up = upload_bytes * 8 / (moving_ms * 1000.0)
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return NetworkProfile(
        name=name, uplink_mbps=round(up, 3), downlink_mbps=round(up, 3), rtt_ms=round(rtt, 3),
        jitter_ms=round(statistics.pstdev(rtts), 3),
        source=(f"measured by edgecut profile network against {endpoint} at {when}: rtt median of "
                f"{probes} ServerLive calls, uplink from {probes} uploads of {upload_bytes} "
                f"bytes; downlink assumed equal to the uplink (not measured)"))


def save_network(profile: NetworkProfile, path: str | os.PathLike[str]) -> Path:
    """Write a `[network]` TOML that `load_network` reads back."""
    lines = [f"# Network profile {profile.name!r}, written by edgecut.", "", "[network]",
             f"name = {json.dumps(profile.name)}"]
    for key in ("uplink_mbps", "downlink_mbps", "rtt_ms", "jitter_ms", "loss"):
        lines.append(f"{key} = {float(getattr(profile, key))!r}")
    if profile.source:
        lines.append(f"source = {json.dumps(profile.source)}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
