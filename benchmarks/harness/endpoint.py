"""`edgecut serve` as a real child process: started, waited ready, SIGKILLed, restarted.

    with EndpointProcess(repository, tls_dir, device="dev0", log_dir=tmp) as endpoint:
        predictor = Predictor(Config(..., endpoint=endpoint.address))
        endpoint.kill()              # SIGKILL: no drain, connections reset mid-call
        endpoint.start()             # the same port again, waited SERVING

    with Replicas(3, repository, tls_dir, device="dev0", log_dir=tmp) as replicas:
        Config(..., endpoint=replicas.addresses)      # gRPC round_robin over the three
        replicas[1].kill()

Ready means the standard `grpc.health.v1` check of the whole server ("") answers SERVING over
the same (mutual) TLS the devices use, so `device` names the certificate the check presents.
The first start takes any free port (`--address HOST:0`, read back from the line `edgecut serve`
prints); every later start binds that port again. `netns` runs the process inside a network
namespace (`ip netns exec` execs it: the pid is the server's own), `host` is then the address
it has there.
"""

from __future__ import annotations

import contextlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecut.protocol.tls import channel_credentials

__all__ = ["EndpointProcess", "Replicas", "wait_serving"]

_LISTENING = re.compile(r"edgecut endpoint listening on (\S+):(\d+) ")


def wait_serving(address: str, *, tls_dir: Path | None, device: str | None,
                 timeout_s: float, alive: subprocess.Popen[bytes] | None = None) -> float:
    """Block until `address` answers the health check SERVING; the seconds it took.

    RuntimeError when `timeout_s` passes first, or when `alive` (the server's process) exits.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    if tls_dir is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, channel_credentials(tls_dir, device=device))
    last = "no answer"
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if alive is not None and alive.poll() is not None:
                raise RuntimeError(f"the endpoint on {address} exited with {alive.returncode} "
                                   f"before it was ready")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - start
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.Call) \
                    else str(exc)
            time.sleep(0.05)
    finally:
        channel.close()
    raise RuntimeError(f"the endpoint on {address} was not SERVING within {timeout_s} s ({last})")


class EndpointProcess:
    """One `python -m edgecut serve --repository R --address HOST:PORT --tls DIR [--mtls]`."""

    def __init__(self, repository: Path, tls_dir: Path | None, *, log_dir: Path,
                 device: str | None = None, mtls: bool = True, host: str = "127.0.0.1",
                 port: int = 0, netns: str | None = None, threads: int = 1,
                 extra_args: Sequence[str] = (), start_timeout_s: float = 60.0,
                 name: str = "endpoint") -> None:
        if mtls and tls_dir is None:
            raise ValueError("mtls needs tls_dir")
        self.repository = Path(repository)
        self.tls_dir = None if tls_dir is None else Path(tls_dir)
        self.device = device
        self.mtls = mtls
        self.host = host
        self.port = port
        self.netns = netns
        self.threads = threads
        self.extra_args = list(extra_args)
        self.start_timeout_s = start_timeout_s
        self.log = Path(log_dir) / f"{name}.log"
        self.starts = 0
        self.kills = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def address(self) -> str:
        if not self.port:
            raise RuntimeError("the endpoint has no port before its first start")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "edgecut", "serve", "--repository", str(self.repository),
                "--address", f"{self.host}:{self.port}", "--threads", str(self.threads),
                "--grace-secs", "1", *self.extra_args]
        if self.tls_dir is not None:
            argv += ["--tls", str(self.tls_dir)]
        if self.mtls:
            argv.append("--mtls")
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def start(self) -> float:
        """Start the server (on the port of its first start, if it had one) and wait until
        it is SERVING; the seconds that took."""
        if self.running():
            raise RuntimeError(f"the endpoint on {self.address} is already running")
        begin = time.monotonic()
        self._lines = queue.Queue()
        with open(self.log, "ab") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(self.command())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log,
                                          stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read_stdout, args=(self._proc, self._lines),
                                        daemon=True)
        self._reader.start()
        self.starts += 1
        deadline = begin + self.start_timeout_s
        try:
            while True:
                try:
                    line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    raise RuntimeError(f"edgecut serve did not announce its address within "
                                       f"{self.start_timeout_s} s; see {self.log}") from None
                if line is None:
                    raise RuntimeError(f"edgecut serve exited with {self._proc.wait()} before "
                                       f"listening; see {self.log}")
                match = _LISTENING.search(line)
                if match:
                    self.port = int(match.group(2))
                    break
            wait_serving(self.address, tls_dir=self.tls_dir, device=self.device,
                         timeout_s=max(1.0, deadline - time.monotonic()), alive=self._proc)
        except BaseException:
            self.kill()
            raise
        return time.monotonic() - begin

    @staticmethod
    def _read_stdout(proc: subprocess.Popen[bytes], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace"))
        lines.put(None)

    def kill(self) -> None:
        """SIGKILL, no drain: what a crashed or OOM-killed cloud does to its devices."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self.kills += 1
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        self._close_stdout()

    def _close_stdout(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)  # it ends at the dead process's end of file
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (a drain), then SIGKILL if it outlives `timeout_s`."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_stdout()

    def __enter__(self) -> EndpointProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class Replicas:
    """`count` endpoint processes over one repository, each on a port of its own."""

    def __init__(self, count: int, repository: Path, tls_dir: Path | None, *, log_dir: Path,
                 **options: object) -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.endpoints = [EndpointProcess(repository, tls_dir, log_dir=log_dir,
                                          name=f"replica-{i}", **options)  # type: ignore[arg-type]
                          for i in range(count)]

    @property
    def addresses(self) -> list[str]:
        return [e.address for e in self.endpoints]

    def __getitem__(self, index: int) -> EndpointProcess:
        return self.endpoints[index]

    def __len__(self) -> int:
        return len(self.endpoints)

    def __enter__(self) -> Replicas:
        try:
            for endpoint in self.endpoints:
                endpoint.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        for endpoint in self.endpoints:
            endpoint.stop()
