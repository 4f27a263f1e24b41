"""A listening TCP socket with an accept thread and one thread per connection.

The fault servers (badservers.py), the throttling proxy (shaper.py) and the delay proxy
(delay.py) differ only in what they do with a connection; the listening, the accepting, the
bookkeeping of open sockets and the clean-up that closes them all are here, once.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

__all__ = ["TcpServer"]


class TcpServer:
    """Accepts on `listen` (loopback, any port by default) while in its `with` block;
    subclasses implement `_handle(conn)`, which runs in a thread of its own per connection.
    `close()` stops accepting and closes every socket `_track` was given; safe twice."""

    _JOIN_S = 2.0

    def __init__(self, listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self._listener = socket.create_server(listen)
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self.address = f"{self.host}:{self.port}"
        self.connections = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> TcpServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if self._stop.is_set():  # accepted as close() began: it would not close it
                    conn.close()
                    return
                self.connections += 1
                self._sockets.append(conn)
            threading.Thread(target=self._handle_safely, args=(conn,), daemon=True).start()

    def _handle_safely(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _track(self, *sockets: socket.socket) -> None:
        """Sockets the handler opened, for `close()` to close. A handler that opens one after
        `close()` ran (its connection was accepted just before) gets it closed at once, and
        OSError ends the handler."""
        with self._lock:
            if not self._stop.is_set():
                self._sockets.extend(sockets)
                return
        for s in sockets:
            s.close()
        raise OSError("the server is closed")

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        if self._thread.is_alive():
            self._thread.join(timeout=self._JOIN_S)
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()
            self._sockets.clear()
