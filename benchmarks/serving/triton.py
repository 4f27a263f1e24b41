"""Triton Inference Server itself, as a peer on the same core with the same clients.

The server binary (2.51, with its Python backend) ships inside the `nvidia-pytriton` wheel.
PyTriton's own Python layer is not used (it does not run on this Python); the binary runs
with a plain model repository whose `model.py` calls onnxruntime on one thread, joining the
requests of a dynamic batch as edgecut's scheduler does (repo.py).

    home = find_triton(Path("/tmp/pytriton"), download=True)   # pip download + unzip
    with TritonProcess(home, repository, tls_dir, workdir=tmp) as triton:
        triton.address                                          # localhost:PORT, TLS

Nothing here is committed or installed: the wheel is downloaded (when asked) into a
scratch folder outside the repository. When the binary cannot run, callers get
TritonUnavailable with the reason, and the benchmark reports it instead of a column.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import TracebackType

from .processes import layout, pinned, server_quota

__all__ = ["PYTRITON_VERSION", "TritonProcess", "TritonUnavailable", "find_triton"]

PYTRITON_VERSION = "0.7.0"  # ships tritonserver 2.51
_BINARY = Path("pytriton/tritonserver/bin/tritonserver")


class TritonUnavailable(RuntimeError):
    """Triton cannot run here; the message says why."""


def find_triton(scratch: Path, *, download: bool) -> Path:
    """The unpacked wheel's root (holding pytriton/tritonserver and nvidia_pytriton.libs).

    `scratch` is a folder, a wheel file, or an unpacked wheel. With `download`, a missing
    wheel is fetched with `pip download --no-deps nvidia-pytriton==PYTRITON_VERSION`.
    """
    scratch = Path(scratch)
    if (scratch / _BINARY).is_file():
        return scratch
    wheel = scratch if scratch.suffix == ".whl" else None
    if wheel is None and scratch.is_dir():
        wheel = next(iter(sorted(scratch.glob("nvidia_pytriton-*.whl"))), None)
    if wheel is None and download:
        scratch.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(scratch),
             f"nvidia-pytriton=={PYTRITON_VERSION}"],
            capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            raise TritonUnavailable(f"pip download nvidia-pytriton failed: "
                                    f"{proc.stderr.strip()[-300:]}")
        wheel = next(iter(sorted(scratch.glob("nvidia_pytriton-*.whl"))), None)
    if wheel is None:
        raise TritonUnavailable(f"no nvidia_pytriton wheel in {scratch} (pass --triton-download "
                                f"or --triton PATH)")
    home = (scratch if scratch.is_dir() else scratch.parent) / "unpacked"
    if not (home / _BINARY).is_file():
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(home)
    binary = home / _BINARY
    binary.chmod(0o755)
    return home


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TritonProcess:
    """tritonserver on the server CPUs, gRPC over TLS; with `http`, HTTP/REST beside it on
    `http_address` (plaintext: Triton's HTTP endpoint has no TLS). No metrics port."""

    def __init__(self, home: Path, repository: Path, tls_dir: Path, *, workdir: Path,
                 start_timeout_s: float = 90.0, http: bool = False) -> None:
        root = home / "pytriton" / "tritonserver"
        tag = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / tag / "triton_python_backend_stub"
        if not stub.is_file():
            raise TritonUnavailable(f"the wheel has no Python backend stub for Python {tag}")
        backend_stub = root / "backends" / "python" / "triton_python_backend_stub"
        if not backend_stub.is_file():
            shutil.copy2(stub, backend_stub)
            backend_stub.chmod(0o755)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(home / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH")) if p)
        self.port = _free_port()
        self.address = f"localhost:{self.port}"
        http_port = _free_port() if http else None
        self.http_address = f"localhost:{http_port}" if http else None
        http_args = ([f"--http-port={http_port}", "--http-address=127.0.0.1"] if http
                     else ["--allow-http=false"])
        self.log = workdir / "triton.log"
        cmd = [str(root / "bin" / "tritonserver"), f"--model-repository={repository}",
               f"--backend-directory={root / 'backends'}",
               f"--cache-directory={root / 'caches'}", *http_args, "--allow-metrics=false",
               f"--grpc-port={self.port}", "--grpc-address=127.0.0.1",
               "--grpc-use-ssl=true", f"--grpc-server-cert={tls_dir / 'server.crt'}",
               f"--grpc-server-key={tls_dir / 'server.key'}",
               "--pinned-memory-pool-byte-size=0", "--log-verbose=0"]
        cmd = pinned(cmd, layout().server)
        # Its Python backend stubs (one process per model instance) start inside the quota too.
        self.quota = server_quota("triton")
        self._proc = subprocess.Popen(self.quota.wrap(cmd) if self.quota else cmd, env=env,
                                      stdout=subprocess.DEVNULL,
                                      stderr=open(self.log, "wb"))  # noqa: SIM115
        self.pid = self._proc.pid
        try:
            self._wait_ready(tls_dir, start_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, tls_dir: Path, timeout_s: float) -> None:
        import tritonclient.grpc as tc

        deadline = time.monotonic() + timeout_s
        client = tc.InferenceServerClient(self.address, ssl=True,
                                          root_certificates=str(tls_dir / "ca.crt"))
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
                    raise TritonUnavailable(f"tritonserver exited {self._proc.returncode}: "
                                            + " | ".join(tail)[-600:])
                try:
                    if client.is_server_ready(client_timeout=2.0):
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        self.stop()
        raise TritonUnavailable(f"tritonserver not ready after {timeout_s:.0f} s; see {self.log}")

    def rss_bytes(self) -> int:
        """The server and its Python backend stubs (one process per model instance)."""
        import psutil

        proc = psutil.Process(self.pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        if self.quota is not None:
            self.quota.close()

    def __enter__(self) -> TritonProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
