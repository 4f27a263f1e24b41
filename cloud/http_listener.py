"""What the HTTP listener (cloud/http_frontend.py) stands on: its listening socket, whose
connections acknowledge each read at once, and TLS from `edgecut certs` files, re-read when
they change."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from pathlib import Path
from typing import Any

from edgecut.errors import UserInputError
from edgecut.protocol.tls import ReloadingServerCertificates

__all__ = ["common_name", "listen", "server_ssl_context"]

logger = logging.getLogger("edgecut.cloud.server")


def common_name(certificate: Any) -> str | None:
    """The subject's common name of a peer certificate as ssl gives it (None without one)."""
    if not certificate:
        return None
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def server_ssl_context(tls_dir: Path, *, mutual: bool, reload: bool) -> ssl.SSLContext:
    """TLS for the listener from `edgecut certs` files (checked as for gRPC: TLSConfigError
    naming the file). With `reload`, a handshake after the files changed (and form a
    consistent set again) gets a context made from the new ones, CA included, as gRPC does:
    the old CA's devices are refused from then on."""
    watcher = ReloadingServerCertificates(tls_dir, mutual=mutual)  # checks the files now
    listening = _new_context(tls_dir, mutual=mutual)
    if reload:
        current = [listening]

        def use_current(connection: ssl.SSLObject, server_name: str | None,
                        context: ssl.SSLContext) -> None:
            if watcher.changed_files() is not None:
                try:
                    current[0] = _new_context(tls_dir, mutual=mutual)
                except (OSError, ssl.SSLError):
                    logger.exception("TLS files in %s changed but cannot be loaded for HTTP; "
                                     "the previous ones stay in force", tls_dir)
            if current[0] is not listening:
                connection.context = current[0]

        listening.sni_callback = use_current
    return listening


def _new_context(tls_dir: Path, *, mutual: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(tls_dir / "server.crt", tls_dir / "server.key")
    if mutual:
        context.load_verify_locations(tls_dir / "ca.crt")
        # Optional here, required by the handlers but for health (cloud/http_frontend.py).
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


class _AckingSocket(socket.socket):
    """A connection that acknowledges what it reads at once (TCP_QUICKACK after each read).

    A client that leaves Nagle's algorithm on (tritonclient.http's geventhttpclient does)
    holds the last piece of a request body until the server acknowledges the ones before;
    Linux delays that acknowledgement, hoping to send it with the response, which cannot come
    before the body is in. Measured here with a 128 KiB binary input over TLS: 21-23 ms a
    request, against 2.0 ms with each read acknowledged (http.client, which sends differently,
    took 1.7-2 ms either way). The kernel drops quick-ack mode again by itself, so it is set
    at every read, here below TLS, where every arriving segment is seen: one setsockopt call
    per read. (Set where aiohttp hands over decrypted data, it missed the reads of partial
    TLS records, and requests still stalled.)
    """

    __slots__ = ()

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self._acknowledge()
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        count = super().recv_into(buffer, nbytes, flags)
        self._acknowledge()
        return count

    def _acknowledge(self) -> None:
        with contextlib.suppress(OSError):
            self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)  # Linux only: see accept


class _ListeningSocket(socket.socket):
    """A listening socket whose accepted connections are _AckingSockets (where Linux has
    TCP_QUICKACK; plain sockets elsewhere). asyncio accepts through this method."""

    __slots__ = ()

    def accept(self) -> tuple[socket.socket, Any]:
        fd, address = self._accept()  # type: ignore[attr-defined]
        kind = _AckingSocket if _QUICKACK is not None else socket.socket
        connection = kind(self.family, self.type, self.proto, fileno=fd)
        if socket.getdefaulttimeout() is None and self.gettimeout():
            connection.setblocking(True)
        return connection, address


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (an IPv6 host may come in brackets)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = _ListeningSocket(family, kind, proto)
    except OSError as exc:
        raise UserInputError(f"cannot listen for HTTP on {host}:{port}: {exc}; choose another "
                             f"address") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise UserInputError(f"cannot listen for HTTP on {host}:{port}: the port is in use or "
                             f"the host is not an address of this machine ({exc.strerror}); "
                             f"choose another address") from exc
    return sock
