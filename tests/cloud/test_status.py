"""edgecut errors -> gRPC status codes, in the one function that does it."""

from __future__ import annotations

import logging

import grpc
import pytest

from edgecut.cloud.status import status_for
from edgecut.errors import (
    BadInputError,
    CloudUnavailableError,
    DeadlineExceededError,
    ModelNotFoundError,
    NoFeasibleCutError,
    PayloadTooLargeError,
    ProtocolError,
    UserInputError,
)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ProtocolError("bad frame"), grpc.StatusCode.INVALID_ARGUMENT),
        (UserInputError("bad value"), grpc.StatusCode.INVALID_ARGUMENT),
        (BadInputError("bad input"), grpc.StatusCode.INVALID_ARGUMENT),
        (PayloadTooLargeError("too big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ModelNotFoundError("no model"), grpc.StatusCode.NOT_FOUND),
        (DeadlineExceededError("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (CloudUnavailableError("down"), grpc.StatusCode.UNAVAILABLE),
        (NoFeasibleCutError("no cut"), grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_edgecut_errors_keep_their_message(error: Exception, code: grpc.StatusCode) -> None:
    assert status_for(error) == (code, str(error))


def test_unexpected_error_is_internal_logged_and_hides_internals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "/srv/secret/path.py line 12: KeyError('db_password')"
    with caplog.at_level(logging.ERROR, logger="edgecut.cloud.status"):
        code, message = status_for(KeyError(secret), rpc="ModelInfer")
    assert code == grpc.StatusCode.INTERNAL
    assert "ModelInfer" in message and "log" in message
    assert "secret" not in message and "KeyError" not in message
    assert "secret" in caplog.text and caplog.records[0].exc_info is not None
