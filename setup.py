"""Builds edgecut.cloud._frontend, the endpoint's C++ gRPC transport, where it can be built.

Everything else is in pyproject.toml. The extension needs gRPC's C++ library, found with
pkg-config (Debian: `apt install libgrpc++-dev pkg-config`); without it, or when its build
fails, edgecut installs without it and the endpoint serves over grpcio (see
edgecut.cloud.native_server). EDGECUT_NATIVE=0 skips it; EDGECUT_NATIVE=1 makes a failed
build fail the install.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

MODULE = "edgecut.cloud._frontend"
SOURCE = "cloud/native/frontend.cc"
HEADERS = ["cloud/native/infer_wire.h"]


def _pkg_config(*args: str) -> list[str] | None:
    try:
        out = subprocess.run(["pkg-config", *args, "grpc++"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(out)


class OptionalBuildExt(build_ext):
    """build_ext that warns and goes on when the transport cannot be built here."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._skip(exc)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    def _skip(self, exc: Exception) -> None:
        if os.environ.get("EDGECUT_NATIVE") == "1":
            raise exc
        print(f"edgecut: the native endpoint transport was not built ({exc}); the endpoint "
              f"will serve over grpcio", file=sys.stderr)


def _extensions() -> list:
    if os.environ.get("EDGECUT_NATIVE") == "0":
        return []
    cflags, libs = _pkg_config("--cflags"), _pkg_config("--libs")
    if cflags is None or libs is None:
        message = ("gRPC's C++ library was not found by pkg-config "
                   "(Debian: apt install libgrpc++-dev pkg-config)")
        if os.environ.get("EDGECUT_NATIVE") == "1":
            raise SystemExit(f"edgecut: EDGECUT_NATIVE=1 but {message}")
        print(f"edgecut: {message}; the endpoint will serve over grpcio", file=sys.stderr)
        return []
    from pybind11.setup_helpers import Pybind11Extension

    return [Pybind11Extension(MODULE, [SOURCE], depends=HEADERS, cxx_std=17,
                              extra_compile_args=cflags, extra_link_args=libs)]


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
