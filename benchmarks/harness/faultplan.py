"""The fault tests' and benchmark's plan: a small model whose envelope breaks between 1 and 100 Mbit/s.

The zoo's `fpn` (three outputs, 32x32 input) planned for the catalogue's Raspberry Pi 4 slowed
to 0.45 % of its speed, on a 10 Mbit/s link, has the envelope

    local (cut 22, all on the device)   below ~2.2 Mbit/s
    split:1 (conv_3 crosses, 8 KiB up, 10.5 KiB down)   ~2.2 to 500 Mbit/s   <- chosen
    offload (cut 0)                     above 500 Mbit/s

so a link shaped from 100 to 1 Mbit/s crosses its breakpoint with room for the hysteresis,
and loopback (tens to hundreds of Mbit/s as the device measures it, even on a loaded machine)
stays on split:1.

    plan_dir = envelope_plan(Path("/tmp/faults"))   # /tmp/faults/plan, from /tmp/faults/fpn.onnx
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx

from edgecut.partitioner.planner import plan_model, write_planned
from edgecut.profiles import DeviceProfile, load_cloud, load_device, load_network
from edgecut.zoo import ZOO

__all__ = ["SLOW_FACTOR", "envelope_plan", "slow_device"]

# 0.45 %: the breakpoint at ~2.2 Mbit/s. (At 0.3 % it was there until convolutions with
# fewer filters than MLAS's block of 16 were counted as a block's work; then 1.44 Mbit/s,
# too near the slow link's 1 Mbit/s for the hysteresis.)
SLOW_FACTOR = 0.0045


def slow_device(factor: float = SLOW_FACTOR) -> DeviceProfile:
    """The catalogue's Raspberry Pi 4 at `factor` of its speed."""
    pi = load_device("raspberry-pi-4")
    return dataclasses.replace(
        pi, name="slow-pi", default_gflops=pi.default_gflops * factor,
        gflops_by_class={k: v * factor for k, v in pi.gflops_by_class.items()},
        memory_gbps=pi.memory_gbps * factor)


def envelope_plan(directory: Path) -> Path:
    """Plan fpn for slow_device() on 10 Mbit/s into `directory`/plan; that folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = directory / "fpn.onnx"
    onnx.save(ZOO["fpn"](), str(model))
    planned = plan_model(model, device=slow_device(), network=load_network("up=10,down=20,rtt=1"),
                         cloud=load_cloud(), measure=False)
    write_planned(planned, directory / "plan")
    return directory / "plan"
