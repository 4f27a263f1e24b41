"""Measure the link to a running endpoint and write a network profile `--network FILE` reads.

Round trip: the median of ModelInfer calls of one byte up and nothing back (to the link
probe, or to a model name the endpoint does not serve where it has no probe), so that the
round trip is what a real inference call pays besides its payload and its compute: the
request's protobuf, the endpoint's model lookup, its thread hand-offs. `ServerLive`, the
smallest call the protocol has, skips those and is 0.1-0.3 ms lighter on loopback; its median
is timed too and written into the profile's `source` with the difference. Uplink and
downlink: ModelInfer calls to the link probe every edgecut endpoint answers
(edgecut.protocol.probe), `upload_bytes` of random raw bytes up with nothing back, then
nothing up with `download_bytes` back; rate = `bytes * 8 / (median call time - rtt)`. Against
an endpoint that does not announce the probe (another OIP server), uploads go to a model name it
does not serve (it answers NOT_FOUND after receiving the whole message) and the downlink is
taken equal to the uplink, which the profile's `source` says.

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

from edgecut.errors import ModelNotFoundError, RemoteError
from edgecut.profiles.schema import NetworkProfile
from edgecut.protocol.probe import (
    PROBE_DOWNLOAD_PARAMETER,
    PROBE_EXTENSION,
    PROBE_MODEL,
)

__all__ = ["UNSERVED_MODEL", "probe_network", "save_network"]

# For endpoints without the probe: a name no repository serves.
UNSERVED_MODEL = "edgecut-bandwidth-probe-unserved"


def probe_network(endpoint: str, *, tls_dir: Path | None = None, device: str | None = None,
                  name: str = "measured",
                  upload_bytes: int = 4 << 20, download_bytes: int = 4 << 20, probes: int = 5,
                  progress: Callable[[str, int, int], None] | None = None) -> NetworkProfile:
    """Probe `endpoint` (see the module docstring) and return the measured NetworkProfile."""
    from edgecut.edge.client import CloudClient

    if min(probes, upload_bytes, download_bytes) < 1:
        raise ValueError(f"probes, upload_bytes and download_bytes must be >= 1, got {probes}, "
                         f"{upload_bytes}, {download_bytes}")
    total = 4 * probes + 1
    step = 0

    def tick(text: str) -> None:
        nonlocal step
        if progress:
            progress(text, step, total)
        step += 1

    payload = np.random.default_rng(0).integers(0, 256, size=upload_bytes, dtype=np.uint8)
    one_byte = np.zeros(1, np.uint8)
    with CloudClient(endpoint, tls_dir=tls_dir, device=device,
                     max_message_bytes=max(upload_bytes, download_bytes) * 2 + (8 << 20)) as client:
        tick("connecting")
        has_probe = PROBE_EXTENSION in client.server_metadata().extensions
        lives = []
        for _ in range(probes):
            tick("ServerLive")
            t0 = time.perf_counter()
            client.server_live()
            lives.append((time.perf_counter() - t0) * 1000.0)

        def timed(inputs: dict[str, np.ndarray], down: int) -> float:
            t0 = time.perf_counter()
            try:
                client.infer(PROBE_MODEL if has_probe else UNSERVED_MODEL, inputs,
                             parameters={PROBE_DOWNLOAD_PARAMETER: down} if has_probe else None)
            except (ModelNotFoundError, RemoteError):
                if has_probe:
                    raise
                # NOT_FOUND is the expected answer, after the whole upload
            return (time.perf_counter() - t0) * 1000.0

        rtts = []
        for _ in range(probes):
            tick("round trip")
            rtts.append(timed({"probe": one_byte}, 0))
        uploads = []
        for _ in range(probes):
            tick("uplink")
            uploads.append(timed({"probe": payload}, 0))
        downloads = []
        for _ in range(probes if has_probe else 0):
            tick("downlink")
            downloads.append(timed({"probe": one_byte}, download_bytes))
    rtt = statistics.median(rtts)
    live = statistics.median(lives)

    def mbps(nbytes: int, times_ms: list[float]) -> float:
        return round(nbytes * 8 / (max(statistics.median(times_ms) - rtt, 1e-3) * 1000.0), 3)

    up = mbps(upload_bytes, uploads)
    down = mbps(download_bytes, downloads) if downloads else up
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    how_down = (f"downlink from {probes} downloads of {download_bytes} bytes" if downloads
                else "downlink assumed equal to the uplink (the endpoint has no link probe)")
    return NetworkProfile(
        name=name, uplink_mbps=up, downlink_mbps=down, rtt_ms=round(rtt, 3),
        jitter_ms=round(statistics.pstdev(rtts), 3),
        source=(f"measured by edgecut profile network against {endpoint} at {when}: rtt median of "
                f"{probes} one-byte ModelInfer calls (ServerLive: {live:.3f} ms, "
                f"{rtt - live:+.3f} ms per call), uplink from {probes} uploads of {upload_bytes} "
                f"bytes; {how_down}"))


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
