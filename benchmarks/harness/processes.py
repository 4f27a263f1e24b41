"""The benchmark's child processes: the JSON worker, the delay proxy, the cloud endpoint.

Each is a context manager that terminates its process (and waits for it) on exit, also on
error and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[2]

__all__ = ["REPO", "Child", "Endpoint", "Proxy", "Worker", "Wrap"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Child:
    """A child process with line-based stdout; stops it on exit."""

    def __init__(self, argv: list[str], *, stderr: Any = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr, text=True, cwd=REPO, env=_env())

    def __enter__(self) -> Child:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def wait_line(self, needle: str, timeout_s: float = 60.0) -> str:
        """The first stdout line containing `needle`; RuntimeError if the process ends first."""
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{' '.join(self.argv)} exited ({self.proc.wait()}) before "
                                   f"printing {needle!r}")
            if needle in line:
                return line.strip()
        raise RuntimeError(f"{' '.join(self.argv)}: no {needle!r} within {timeout_s} s")

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()


Wrap = Callable[[list[str]], list[str]]
"""Turns a command into the command that runs it where it belongs (netns, cgroup, core)."""


class Worker(Child):
    """`benchmarks.harness.worker`, run through `wrap`."""

    def __init__(self, wrap: Wrap) -> None:
        super().__init__(wrap([sys.executable, "-m", "benchmarks.harness.worker"]))

    def call(self, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited ({self.proc.wait()}) during {request['cmd']}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"worker {request['cmd']}: {answer['error']}\n"
                               f"{answer.get('traceback', '')}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        super().close()


class Proxy(Child):
    """The delay proxy (`benchmarks.harness.delay`) behind `prefix`; `.port` once started."""

    def __init__(self, wrap: Wrap, *, target: str, one_way_ms: float) -> None:
        super().__init__(wrap([sys.executable, "-m", "benchmarks.harness.delay",
                               "--target", target, "--one-way-ms", str(one_way_ms)]))
        try:
            line = self.wait_line("listening on", timeout_s=30)
        except BaseException:
            self.close()
            raise
        self.port = int(line.rsplit(":", 1)[1])


class Endpoint(Child):
    """`edgecut serve` behind `prefix`, with TLS; ready once it prints its listening line."""

    def __init__(self, wrap: Wrap, *, repository: Path, address: str, tls_dir: Path,
                 log: Path) -> None:
        self.log = log.open("w")
        edgecut = Path(sys.executable).with_name("edgecut")
        super().__init__(wrap([str(edgecut), "serve", "--repository", str(repository),
                               "--address", address, "--tls", str(tls_dir)]), stderr=self.log)
        try:
            self.banner = self.wait_line("listening on", timeout_s=120)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        super().close()
        self.log.close()
