"""The endpoint's handlers served over edgecut.cloud._frontend, gRPC's C++ transport.

NativeServer looks like the grpc.Server that create_server otherwise makes: the servicer and
the health service register their handlers on it the same way (add_generic_rpc_handlers), and
each call runs the same handler with the same request and response serializers. What changes
is below the handlers: TLS, HTTP/2 and the framing of messages run in C++ (gRPC's own
server), and received calls reach Python in groups instead of one thread hand-off each.
With `core=True` the same NativeServer runs over edgecut.cloud.core_frontend instead: grpcio's
own core driven from one Python thread, for installations without the C++ transport.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from edgecut.protocol.tls import ReloadingServerCertificates, server_credentials

logger = logging.getLogger(__name__)

try:
    from edgecut.cloud import _frontend
except ImportError as exc:  # built only where gRPC's C++ library was found at install
    _frontend = None
    _UNAVAILABLE = str(exc)
else:
    _UNAVAILABLE = ""

Metadata = tuple[tuple[str, str | bytes], ...]
# How often the certificate files are checked: by StagedCertificates, then by gRPC itself
# (kReloadIntervalS in native/frontend.cc). A rotation is in force for new connections
# within twice this long.
RELOAD_CHECK_S = 1.0


def available() -> bool:
    """Whether this installation has the C++ transport (see README: the native endpoint)."""
    return _frontend is not None


def unavailable_reason() -> str:
    """Why the C++ transport is missing, and how to get it ("" when it is here)."""
    if _frontend is not None:
        return ""
    return (f"edgecut.cloud._frontend did not import: {_UNAVAILABLE}; it is built by "
            f"`pip install` where gRPC's C++ library and pkg-config are found "
            f"(Debian: apt install libgrpc++-dev pkg-config)")


class CallAborted(Exception):
    """Raised by NativeContext.abort, as grpc's context.abort raises, to end the handler."""


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str, invocation_metadata: Metadata):
        self.method = method
        self.invocation_metadata = invocation_metadata


class NativeContext(grpc.ServicerContext):
    """The part of grpc.ServicerContext the endpoint's handlers use, for one native call."""

    def __init__(self, server: NativeServer, frontend: Any, call_id: int, metadata: Metadata,
                 peer: str | None, time_left_s: float | None, address: str | None = None):
        self._server = server
        self._address = address
        self._frontend = frontend
        self._call_id = call_id
        self._metadata = metadata
        self._peer = peer
        self._deadline = None if time_left_s is None else time.monotonic() + time_left_s
        self._trailing: Metadata = ()
        self._code = grpc.StatusCode.OK
        self._details = ""
        self._callbacks: list[Callable[[], None]] = []

    # What the handlers read.
    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_common_name": [self._peer.encode()]} if self._peer is not None else {}

    def peer_identities(self) -> list[bytes] | None:
        return [self._peer.encode()] if self._peer is not None else None

    def peer_identity_key(self) -> str | None:
        return "x509_common_name" if self._peer is not None else None

    def peer_name(self) -> str | None:
        """The client certificate's common name under mutual TLS (what tls.peer_identity reads)."""
        return self._peer

    def peer(self) -> str:
        """gRPC's name for the client's address ("ipv4:127.0.0.1:50312"), as grpcio's."""
        return self._address or "native"

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return not self._frontend.cancelled(self._call_id)

    # What the handlers set.
    def set_trailing_metadata(self, trailing_metadata: Metadata) -> None:
        self._trailing = tuple(trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def abort(self, code: grpc.StatusCode, details: str) -> None:  # type: ignore[override]
        self._code, self._details = code, details
        raise CallAborted(details)

    def abort_with_status(self, status: Any) -> None:
        self.abort(status.code, status.details)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Call `callback` when the call ends, finished or cancelled; False if it has."""
        if not self._callbacks and not self._server.watch_end(self._call_id, self):
            return False
        self._callbacks.append(callback)
        return True

    def ended(self) -> None:
        for callback in self._callbacks:
            try:
                callback()
            except Exception:
                logger.exception("callback of a finished call failed")

    def cancel(self) -> None:
        self.abort(grpc.StatusCode.CANCELLED, "cancelled by the server")

    def send_initial_metadata(self, initial_metadata: Metadata) -> None:
        pass  # gRPC's C++ server sends its initial metadata itself

    # What the server sends.
    def fail(self, code: grpc.StatusCode, details: str) -> None:
        """End the call with `code` and no message."""
        self.set_code(code)
        self.set_details(details)
        self.finish(None)

    def write(self, payload: bytes) -> bool:
        """Send one message of a streamed answer; False once the call has ended."""
        return bool(self._frontend.write(self._call_id, payload))

    def finish(self, payload: bytes | None) -> None:
        trailing = [(k, v.decode() if isinstance(v, bytes) else v) for k, v in self._trailing]
        self._frontend.finish(self._call_id, self._code.value[0], self._details, payload,
                              trailing)


STAGE_PREFIX = "edgecut-tls-"


def remove_abandoned_stages(folder: Path) -> list[Path]:
    """Remove the staging folders of servers that died without closing; returns them.

    A folder is abandoned when the pid in its name is no process of this machine. Folders
    named without a pid, and those of live processes, are left alone.
    """
    removed = []
    for path in folder.glob(f"{STAGE_PREFIX}*-*"):
        pid_text = path.name[len(STAGE_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or not path.is_dir() or _process_exists(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class StagedCertificates:
    """The TLS files the C++ transport watches: copies of `tls_dir`'s, replaced only by a
    consistent set.

    gRPC 1.51's file watcher loads whatever the files hold, so a half-done rotation (the new
    certificate beside the old key) would fail every handshake until it is finished. The
    checks of ReloadingServerCertificates decide instead what the transport gets: each
    consistent set goes into a new folder, and the `current` link moves to it in one step.
    """

    _NAMES = ("server.crt", "server.key", "ca.crt")

    def __init__(self, tls_dir: Path, *, mutual: bool):
        self._source = ReloadingServerCertificates(tls_dir, mutual=mutual)
        remove_abandoned_stages(Path(tempfile.gettempdir()))
        # The pid in the name lets a later server remove this folder if this process is
        # killed before close() runs: the folder holds a copy of the private key.
        self._root = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-"))
        self._sets = 0
        self._stop = threading.Event()
        self._install(self._source.files())
        self._watcher = threading.Thread(target=self._watch, name="edgecut-tls-stage",
                                         daemon=True)
        self._watcher.start()

    @property
    def directory(self) -> Path:
        return self._root / "current"

    def refresh(self) -> bool:
        """Stage the files if they changed and are consistent; True when a new set went in."""
        files = self._source.changed_files()
        if files is None:
            return False
        self._install(files)
        return True

    def close(self) -> None:
        self._stop.set()
        self._watcher.join(timeout=5.0)
        shutil.rmtree(self._root, ignore_errors=True)

    def _watch(self) -> None:
        while not self._stop.wait(RELOAD_CHECK_S):
            try:
                self.refresh()
            except OSError:
                logger.exception("could not stage new TLS files in %s", self._root)

    def _install(self, files: tuple[bytes, bytes, bytes | None]) -> None:
        self._sets += 1
        folder = self._root / f"set-{self._sets}"
        folder.mkdir(mode=0o700)
        for name, data in zip(self._NAMES, files, strict=True):
            if data is not None:
                (folder / name).write_bytes(data)
        link = self._root / "current.new"
        link.unlink(missing_ok=True)
        link.symlink_to(folder.name)
        link.replace(self.directory)
        # The set before the previous one: gRPC may still be reading the previous one.
        shutil.rmtree(self._root / f"set-{self._sets - 2}", ignore_errors=True)


class NativeServer:
    """A grpc.Server look-alike over the C++ transport (see the module docstring)."""

    def __init__(self, executor: ThreadPoolExecutor, *, max_message_bytes: int,
                 max_open_calls: int, receive_window_bytes: int = 0,
                 channel_args: Sequence[tuple[str, int]] = (), core: bool = False):
        # core: the same handlers over grpcio's own core instead of the C++ transport
        # (edgecut.cloud.core_frontend), where that is not built.
        if _frontend is None and not core:
            raise RuntimeError(unavailable_reason())
        self.core = core
        self._executor = executor
        self._max_message_bytes = max_message_bytes
        self._max_open_calls = max_open_calls
        self._receive_window_bytes = receive_window_bytes  # 0: gRPC's BDP probing
        self._channel_args = list(channel_args)  # more of gRPC's integer channel arguments
        self._handlers: list[grpc.GenericRpcHandler] = []
        self._resolved: dict[str, grpc.RpcMethodHandler | None] = {}
        self._deferred: dict[str, Callable[[bytes | memoryview, NativeContext], None]] = {}
        self._lane: tuple[str, Callable[[Sequence[Any], NativeServer], None],
                          tuple[str, ...]] | None = None
        self._frontend: Any = None
        self._stopped = threading.Event()
        self._watching: dict[int, NativeContext] = {}  # calls with end-of-call callbacks
        self._watching_lock = threading.Lock()
        self._certificates: StagedCertificates | None = None

    # Registration, as on grpc.Server.
    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._handlers.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        pass  # the generic handlers registered with them already cover every method

    def add_deferred_handler(self, method: str,
                             handler: Callable[[bytes | memoryview, NativeContext], None]
                             ) -> None:
        """Serve `method` (its full path) with `handler(request bytes, context)`, called on
        the dispatcher thread as the call arrives. It must not block: it answers with
        `context.finish` later, from whichever thread has the answer. A call the infer lane
        read and left arrives as a read-only memoryview of the lane's copy, not as bytes."""
        self._deferred[method] = handler

    def add_infer_lane(self, method: str,
                       handler: Callable[[Sequence[Any], NativeServer], None], *,
                       excluded_models: Sequence[str] = ()) -> None:
        """Take the plain calls of `method` (ModelInfer's full path) through the transport's
        infer lane (frontend.cc): `handler(groups, server)` gets them on the dispatcher thread
        in groups, and answers them with finish_infers or, one by one, through lane_context.
        Calls that are not plain, or name one of `excluded_models`, still go to the method's
        deferred handler. Before start()."""
        self._lane = (method, handler, tuple(excluded_models))

    def lane_context(self, call_id: int, peer: str | None, time_left_s: float | None,
                     address: str | None = None) -> NativeContext:
        """A context for one infer-lane call: to answer it alone (an error, mostly)."""
        return NativeContext(self, self._frontend, call_id, (), peer, time_left_s, address)

    def finish_infers(self, call_ids: Sequence[int], request_ids: Sequence[bytes],
                      rows: Sequence[int], model_name: str, model_version: str,
                      outputs: list[tuple[str, str, tuple[int, ...], Any]], *,
                      queue_ms: Sequence[float] = (), compute_ms: Sequence[float] = (),
                      keep: Sequence[bool] = ()) -> tuple[int, list[bytes | None]]:
        """Answer infer-lane calls from one run (see Frontend.finish_infers in frontend.cc),
        each response with its call's `queue_ms` and `compute_ms` (edgecut.protocol.timing)
        where given; returns how many were still open, and the answers' bytes of the calls
        `keep` marks (None for the others; an empty list without `keep`)."""
        result = self._frontend.finish_infers(call_ids, request_ids, rows, model_name,
                                              model_version, outputs, list(queue_ms),
                                              list(compute_ms), list(keep))
        if not keep:
            return int(result), []
        answered, kept = result
        return int(answered), list(kept)

    @property
    def lane_calls(self) -> int:
        """How many calls the infer lane has taken (0 before the port is open)."""
        return int(self._frontend.lane_calls) if self._frontend is not None else 0

    @property
    def refused_calls(self) -> int:
        """Calls refused (RESOURCE_EXHAUSTED) for arriving at the open-call limit."""
        return int(self._frontend.refused_calls) if self._frontend is not None else 0

    def call_cancelled(self, call_id: int) -> bool:
        """Whether the call ended without an answer (its client went away)."""
        return bool(self._frontend.cancelled(call_id))

    def add_port(self, address: str, *, tls_dir: Path | None, mutual: bool,
                 reload: bool) -> int:
        """Listen on `address`; returns the port (0 when it cannot listen there).

        `tls_dir` as written by `edgecut certs init` (None: plaintext); with `reload`,
        certificates changed there are in force for new connections within
        2 x RELOAD_CHECK_S, and a half-written set is ignored until it is whole.
        """
        if self.core:
            return self._add_core_port(address, tls_dir=tls_dir, mutual=mutual, reload=reload)
        watched: Path | None = None
        if tls_dir is not None and reload:
            self._certificates = StagedCertificates(Path(tls_dir), mutual=mutual)
            watched = self._certificates.directory
        elif tls_dir is not None:
            watched = Path(tls_dir)
        try:
            self._frontend = _frontend.Frontend(
                address, str(watched) if watched is not None else None, mutual, reload,
                self._max_message_bytes, self._max_open_calls,
                receive_window_bytes=self._receive_window_bytes,
                channel_args=self._channel_args)
        except RuntimeError:
            self._close_certificates()
            return 0
        return int(self._frontend.port)

    def _add_core_port(self, address: str, *, tls_dir: Path | None, mutual: bool,
                       reload: bool) -> int:
        from .core_frontend import CoreFrontend

        credentials: grpc.ServerCredentials | None = None
        if tls_dir is not None and reload:
            credentials = ReloadingServerCertificates(Path(tls_dir), mutual=mutual).credentials()
        elif tls_dir is not None:
            credentials = server_credentials(Path(tls_dir), mutual=mutual)
        window = ([("grpc.http2.bdp_probe", 0),
                   ("grpc.http2.lookahead_bytes", self._receive_window_bytes)]
                  if self._receive_window_bytes else [])
        try:
            self._frontend = CoreFrontend(address, credentials,
                                          max_message_bytes=self._max_message_bytes,
                                          max_open_calls=self._max_open_calls,
                                          channel_args=[*window, *self._channel_args],
                                          client_certificates=tls_dir is not None and mutual)
        except RuntimeError:
            return 0
        return int(self._frontend.port)

    def _close_certificates(self) -> None:
        if self._certificates is not None:
            self._certificates.close()
            self._certificates = None

    # Lifecycle, as on grpc.Server.
    def start(self) -> None:
        if self._lane is not None:
            method, _, excluded = self._lane
            self._frontend.enable_infer_lane(method, list(excluded))
        self._frontend.start(self._dispatch)
        # Its C++ threads call into Python: they must be gone before the interpreter is.
        atexit.register(self._frontend.stop, 0.0)

    def stop(self, grace: float | None) -> threading.Event:
        done = threading.Event()
        frontend = self._frontend

        def stop_now() -> None:
            if frontend is not None:
                frontend.stop(grace or 0.0)
                atexit.unregister(frontend.stop)
            self._close_certificates()
            self._stopped.set()
            done.set()

        threading.Thread(target=stop_now, name="edgecut-native-stop", daemon=True).start()
        return done

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    # Calls.
    def watch_end(self, call_id: int, context: NativeContext) -> bool:
        """Have `context.ended()` called when the call ends; False if it has already."""
        with self._watching_lock:
            self._watching[call_id] = context
        if self._frontend.watch_done(call_id):
            return True
        with self._watching_lock:
            self._watching.pop(call_id, None)
        return False

    def _dispatch(self, calls: Sequence[tuple[int, str, bytes | memoryview, list, str | None,
                                              float | None, str]],
                  ended: Sequence[int], infers: Sequence[Any] = ()) -> None:
        for call_id in ended:
            with self._watching_lock:
                context = self._watching.pop(call_id, None)
            if context is not None:
                context.ended()
        for call_id, method, payload, metadata, peer, time_left_s, address in calls:
            deferred = self._deferred.get(method)
            if deferred is None:
                self._executor.submit(self._serve, call_id, method, payload, tuple(metadata),
                                      peer, time_left_s, address)
                continue
            context = NativeContext(self, self._frontend, call_id, tuple(metadata), peer,
                                    time_left_s, address)
            try:
                deferred(payload, context)
            except Exception as exc:  # a deferred handler answers its own errors
                logger.exception("handler of %s failed", method)
                context.fail(grpc.StatusCode.UNKNOWN, f"Exception calling application: {exc}")
        if infers and self._lane is not None:
            self._serve_lane(infers)

    def _serve_lane(self, infers: Sequence[Any]) -> None:
        method, handler, _ = self._lane  # type: ignore[misc]
        try:
            handler(infers, self)
        except Exception as exc:  # the handler answers its own errors; this is a bug
            logger.exception("infer-lane handler of %s failed", method)
            for group in infers:
                for call_id, *_ in group[5]:
                    self._frontend.finish(call_id, grpc.StatusCode.UNKNOWN.value[0],
                                          f"Exception calling application: {exc}", None, [])

    def _handler(self, method: str, metadata: Metadata) -> grpc.RpcMethodHandler | None:
        if method not in self._resolved:
            details = _Details(method, metadata)
            found = None
            for handler in self._handlers:
                found = handler.service(details)
                if found is not None:
                    break
            self._resolved[method] = found
        return self._resolved[method]

    def _serve(self, call_id: int, method: str, payload: bytes | memoryview, metadata: Metadata,
               peer: str | None, time_left_s: float | None, address: str) -> None:
        context = NativeContext(self, self._frontend, call_id, metadata, peer, time_left_s,
                                address)
        handler = self._handler(method, metadata)
        if handler is None:
            context.fail(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {method}")
            return
        try:
            request = (handler.request_deserializer(payload)
                       if handler.request_deserializer is not None else payload)
        except Exception as exc:
            context.fail(grpc.StatusCode.INTERNAL, f"Exception deserializing request: {exc}")
            return
        serialize = handler.response_serializer or (lambda message: message)
        try:
            if handler.unary_unary is not None:
                context.finish(serialize(handler.unary_unary(request, context)))
            elif handler.unary_stream is not None:
                for message in handler.unary_stream(request, context):
                    if not context.write(serialize(message)):
                        return  # the call ended: nobody to answer
                context.finish(None)
            else:
                context.fail(grpc.StatusCode.UNIMPLEMENTED,
                             f"{method}: client streaming is not served here")
        except CallAborted:
            context.finish(None)
        except Exception as exc:
            logger.exception("handler of %s failed", method)
            context.fail(grpc.StatusCode.UNKNOWN, f"Exception calling application: {exc}")
