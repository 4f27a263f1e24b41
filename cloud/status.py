"""The one place where edgecut errors become gRPC status codes.

    UserInputError, ProtocolError   INVALID_ARGUMENT     the caller sent something wrong
    PayloadTooLargeError            RESOURCE_EXHAUSTED   over a size limit (checked first:
                                                         it is also a ProtocolError)
    OverloadedError                 RESOURCE_EXHAUSTED   a model's queue is full (the server
                                                         adds trailing `retry-after-ms`)
    PermissionDeniedError           PERMISSION_DENIED    the device may not use the model
    ModelNotFoundError              NOT_FOUND            no such model or version
    DeadlineExceededError           DEADLINE_EXCEEDED
    CloudUnavailableError           UNAVAILABLE
    NoFeasibleCutError              FAILED_PRECONDITION
    anything else                   INTERNAL             logged with its traceback; the caller
                                                         gets no internals, only a pointer to
                                                         the server log

Foreign errors (onnxruntime) are translated into edgecut errors where they arise
(edgecut.cloud.inference), so they never reach this table raw.
"""

from __future__ import annotations

import logging

import grpc

from edgecut.errors import (
    CloudUnavailableError,
    DeadlineExceededError,
    ModelNotFoundError,
    NoFeasibleCutError,
    OverloadedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProtocolError,
    UserInputError,
)

__all__ = ["status_for"]

logger = logging.getLogger(__name__)

# Order matters: the first matching class wins, so subclasses come before their bases.
_STATUS_BY_ERROR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (PayloadTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ProtocolError, grpc.StatusCode.INVALID_ARGUMENT),
    (UserInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (CloudUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (NoFeasibleCutError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(exc: BaseException, *, rpc: str = "") -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message a caller gets for `exc`.

    >>> from edgecut.errors import ModelNotFoundError
    >>> status_for(ModelNotFoundError("unknown model 'm'"))
    (<StatusCode.NOT_FOUND: (5, 'not found')>, "unknown model 'm'")

    Unexpected exceptions are logged here, with their traceback, and reported as INTERNAL
    with a message that names the RPC but none of the server's internals.
    """
    for error_type, code in _STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return code, str(exc)
    logger.error("internal error in %s", rpc or "an RPC", exc_info=exc)
    where = f" in {rpc}" if rpc else ""
    return (
        grpc.StatusCode.INTERNAL,
        f"internal server error{where}; the endpoint's log has the details",
    )
