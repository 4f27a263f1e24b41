"""The fault tests' world: a planned model with an envelope, a fleet of 8 devices, real endpoints.

The plan (benchmarks/harness/faultplan.py) is the zoo's `fpn` planned for a slow device on a
10 Mbit/s link, so its envelope has a breakpoint between 1 and 100 Mbit/s:

    local (cut 22, all on the device)   below ~2.2 Mbit/s
    split:1 (conv_3 crosses, 8 KiB)     ~2.2 to 500 Mbit/s      <- the plan's choice
    offload (cut 0)                     above 500 Mbit/s

Endpoints are `python -m edgecut serve` processes (benchmarks/harness/endpoint.py), over mutual
TLS with the fleet's certificates; every answer is checked against onnxruntime on the plan's
full model (benchmarks/harness/faultload.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness.endpoint import EndpointProcess  # noqa: E402
from benchmarks.harness.faultload import Reference, random_feed  # noqa: E402
from benchmarks.harness.faultplan import envelope_plan  # noqa: E402
from benchmarks.harness.shaper import cloud_address, default_slot  # noqa: E402
from edgecut.deploy import deploy_plan  # noqa: E402
from edgecut.edge import Config, Predictor  # noqa: E402
from edgecut.edge.monitors import DeviceMonitor, DeviceReadings  # noqa: E402
from edgecut.protocol.pki import init_ca, issue_device_certificate  # noqa: E402

DEVICES = tuple(f"device-{i}" for i in range(8))
TIMEOUT_S = 2.0

@pytest.fixture(scope="session")
def fault_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return envelope_plan(tmp_path_factory.mktemp("fault-plan"))


@pytest.fixture(scope="session")
def fault_repository(tmp_path_factory: pytest.TempPathFactory, fault_plan: Path) -> Path:
    repository = tmp_path_factory.mktemp("fault-repo")
    deploy_plan(fault_plan, repository)
    return repository


@pytest.fixture(scope="session")
def fault_fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate (loopback and the shaped link's address), 8 devices."""
    directory = tmp_path_factory.mktemp("fault-fleet")
    init_ca(directory, hosts=[cloud_address(default_slot())])
    for name in DEVICES:
        issue_device_certificate(directory, name)
    return directory


@pytest.fixture(scope="session")
def reference(fault_plan: Path) -> Reference:
    return Reference(fault_plan)


@pytest.fixture(scope="session")
def feeds(fault_plan: Path, reference: Reference
          ) -> list[tuple[dict[str, np.ndarray], list[np.ndarray]]]:
    """One input per device and the full model's outputs for it."""
    out = []
    for i in range(len(DEVICES)):
        feed = random_feed(fault_plan, seed=i)
        out.append((feed, reference.outputs(feed)))
    return out


@pytest.fixture
def endpoint_factory(fault_repository: Path, fault_fleet: Path, tmp_path: Path
                     ) -> Iterator[Callable[..., EndpointProcess]]:
    """Endpoint processes (not started) that are stopped when the test ends."""
    made: list[EndpointProcess] = []

    def make(**options: object) -> EndpointProcess:
        options.setdefault("name", f"endpoint-{len(made)}")
        endpoint = EndpointProcess(fault_repository, fault_fleet, log_dir=tmp_path,
                                   device=DEVICES[0], **options)  # type: ignore[arg-type]
        made.append(endpoint)
        return endpoint

    yield make
    for endpoint in made:
        endpoint.stop()


@pytest.fixture(scope="module")
def shared_endpoint(fault_repository: Path, fault_fleet: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndpointProcess]:
    """One healthy endpoint process for a module's tests (proxies put in front of it)."""
    with EndpointProcess(fault_repository, fault_fleet, device=DEVICES[0],
                         log_dir=tmp_path_factory.mktemp("shared-endpoint")) as endpoint:
        yield endpoint


class Readings:
    """A DeviceMonitor reader whose values the test sets (ample memory, no battery)."""

    def __init__(self) -> None:
        self.available_memory_mib = 8192.0
        self.cpu_percent = 10.0

    def __call__(self) -> DeviceReadings:
        return DeviceReadings(cpu_percent=self.cpu_percent,
                              available_memory_mib=self.available_memory_mib,
                              battery_percent=None, power_plugged=None)


@pytest.fixture
def predictor_factory(fault_plan: Path, fault_fleet: Path
                      ) -> Iterator[Callable[..., Predictor]]:
    """Predictors for the fault plan over the fleet's mTLS, closed when the test ends.

    A test's own device readings (never this machine's, which other work on it moves) unless
    it passes `monitor`; settings default to a 2 s deadline and a fast breaker and prober.
    """
    made: list[Predictor] = []

    def make(endpoint: str | list[str], *, device: str = DEVICES[0],
             monitor: DeviceMonitor | None = None, **settings: object) -> Predictor:
        settings = {"mode": "adaptive", "intra_op_threads": 1, "timeout_s": TIMEOUT_S,
                    "breaker_reset_s": 0.3, "probe_interval_s": 1.0, "codec": "raw", **settings}
        config = Config(plan=fault_plan, endpoint=endpoint, tls_dir=fault_fleet, device=device,
                        **settings)  # type: ignore[arg-type]
        predictor = Predictor(config, monitor=monitor or DeviceMonitor(Readings(),
                                                                       min_interval_s=0.0))
        made.append(predictor)
        return predictor

    yield make
    for predictor in made:
        predictor.close()
