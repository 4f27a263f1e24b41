"""gRPC credentials from a TLS directory written by `edgecut certs` (see pki.py).

The endpoint uses server.crt/server.key, and under mutual TLS requires a client certificate
signed by ca.crt. A device trusts ca.crt and presents DIR/NAME.crt when it has one: its
name, the certificate's common name, is what the endpoint sees as the caller.

    server.add_secure_port("[::]:8001", server_credentials(tls, mutual=True))
    channel = grpc.secure_channel(target, channel_credentials(tls, device="pi4"))

Every missing, unreadable or mismatched file is a TLSConfigError naming the file and the fix,
raised here rather than as an opaque handshake failure later.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgecut.errors import TLSConfigError

from .pki import RESERVED_NAMES, validate_device_name

__all__ = [
    "ReloadingServerCertificates",
    "channel_credentials",
    "device_names",
    "peer_identity",
    "server_credentials",
]

logger = logging.getLogger(__name__)

_FIX = (
    "create it with `edgecut certs init {dir}` (CA and server) "
    "or `edgecut certs device NAME --dir {dir}`"
)


def server_credentials(tls_dir: Path, *, mutual: bool) -> grpc.ServerCredentials:
    """Credentials for the endpoint: server.crt/server.key, and ca.crt for clients if `mutual`.

    With `mutual`, a client without a certificate signed by ca.crt fails the handshake.
    """
    tls_dir = Path(tls_dir)
    cert, key = _read_pair(tls_dir, "server")
    if not mutual:
        return grpc.ssl_server_credentials([(key, cert)])
    ca = _read(tls_dir / "ca.crt", tls_dir)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


class ReloadingServerCertificates:
    """Server credentials that pick up new server.crt/server.key/ca.crt without a restart.

    gRPC asks `fetch` before each new TLS handshake; it re-reads the files when any of their
    modification times or sizes changed and hands gRPC the new configuration. Connections
    already open keep the certificates they were made with. A half-written or mismatched set
    (the key of the old pair beside the new certificate) is logged and the previous
    configuration stays in force until the files are consistent again.

        watcher = ReloadingServerCertificates(tls_dir, mutual=True)
        server.add_secure_port(address, watcher.credentials())
    """

    _NAMES = ("server.crt", "server.key", "ca.crt")

    def __init__(self, tls_dir: Path, *, mutual: bool) -> None:
        self._dir = Path(tls_dir)
        self._mutual = mutual
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self._refused_stamp: tuple[tuple[int, int] | None, ...] | None = None
        self._initial_files = self._files()  # raises TLSConfigError at startup
        self.reloads = 0

    def credentials(self) -> grpc.ServerCredentials:
        cert, key, ca = self._initial_files
        initial = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)
        return grpc.dynamic_ssl_server_credentials(
            initial, self.fetch, require_client_authentication=self._mutual
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration if the files changed, else None (keep)."""
        files = self.changed_files()
        if files is None:
            return None
        cert, key, ca = files
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def changed_files(self) -> tuple[bytes, bytes, bytes | None] | None:
        """(certificate, key, CA or None without mutual TLS) when the files changed since
        last asked and form a consistent set; None to keep the previous ones."""
        stamp = self._stamps()
        with self._lock:
            if stamp in (self._stamp, self._refused_stamp):  # unchanged, or refused as it is
                return None
            try:
                files = self._files()
            except TLSConfigError as exc:
                self._refused_stamp = stamp  # said once, not at every check or handshake
                logger.error("TLS files in %s changed but cannot be used yet; the previous "
                             "certificates stay in force: %s", self._dir, exc)
                return None
            self._stamp = stamp
            self.reloads += 1
        logger.info("reloaded TLS certificates from %s", self._dir)
        return files

    def files(self) -> tuple[bytes, bytes, bytes | None]:
        """The set in force at startup (see changed_files)."""
        return self._initial_files

    def _files(self) -> tuple[bytes, bytes, bytes | None]:
        cert, key = _read_pair(self._dir, "server")
        ca = _read(self._dir / "ca.crt", self._dir) if self._mutual else None
        return cert, key, ca

    def _stamps(self) -> tuple[tuple[int, int] | None, ...]:
        stamps: list[tuple[int, int] | None] = []
        for name in self._NAMES:
            try:
                st = os.stat(self._dir / name)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_mtime_ns, st.st_size))
        return tuple(stamps)


def channel_credentials(tls_dir: Path, *, device: str | None = None) -> grpc.ChannelCredentials:
    """Credentials for a device: trust ca.crt, and present a device certificate if any.

    With `device` named, DIR/<device>.crt and .key must exist. Without, the directory's only
    device pair is used; when it holds none or several, no client certificate is sent (fine
    for server-only TLS; under mutual TLS name the device, see device_names).
    """
    tls_dir = Path(tls_dir)
    ca = _read(tls_dir / "ca.crt", tls_dir)
    if device is None:
        names = device_names(tls_dir)
        # Several pairs: picking one would silently change who the server thinks is calling.
        device = names[0] if len(names) == 1 else None
    else:
        validate_device_name(device)
    if device is None:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    cert, key = _read_pair(tls_dir, device)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def device_names(tls_dir: Path) -> list[str]:
    """Names of the device pairs in `tls_dir`: each NAME.crt with a NAME.key beside it.

    >>> device_names(Path("/nonexistent"))
    []
    """
    tls_dir = Path(tls_dir)
    if not tls_dir.is_dir():
        return []
    return sorted(
        p.stem for p in tls_dir.glob("*.crt")
        if p.stem not in RESERVED_NAMES and p.with_suffix(".key").is_file()
    )


def peer_identity(context: grpc.ServicerContext) -> str | None:
    """The calling device's name (its certificate's common name) under mutual TLS, else None."""
    names = context.auth_context().get("x509_common_name")
    if not names:
        return None
    name = names[0]
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _read(path: Path, tls_dir: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise TLSConfigError(f"{path} not found; {_FIX.format(dir=tls_dir)}") from exc
    except OSError as exc:
        raise TLSConfigError(
            f"{path} cannot be read ({exc.strerror}); check its permissions, or "
            f"{_FIX.format(dir=tls_dir)}"
        ) from exc
    if b"-----BEGIN" not in data:
        raise TLSConfigError(
            f"{path} is not a PEM file; expected one written by `edgecut certs`"
        )
    return data


def _read_pair(tls_dir: Path, name: str) -> tuple[bytes, bytes]:
    """Read NAME.crt and NAME.key and check that the key belongs to the certificate."""
    crt_path, key_path = tls_dir / f"{name}.crt", tls_dir / f"{name}.key"
    cert, key = _read(crt_path, tls_dir), _read(key_path, tls_dir)
    try:
        public = x509.load_pem_x509_certificate(cert).public_key()
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise TLSConfigError(
            f"{crt_path} or {key_path} is malformed ({exc}); reissue it with `edgecut certs`"
        ) from exc
    if public != private.public_key():
        raise TLSConfigError(
            f"{key_path} does not belong to {crt_path}; reissue the pair with `edgecut certs`"
        )
    return cert, key
