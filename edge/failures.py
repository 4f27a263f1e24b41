"""Which failures of a cloud part the device finishes itself, which of them say the cloud is
down, and the short reason a fallback gives for each."""

from __future__ import annotations

from edgecut.errors import (
    CloudUnavailableError,
    DeadlineExceededError,
    EdgecutError,
    ModelNotFoundError,
    OverloadedError,
    PermissionDeniedError,
    ProtocolError,
    RemoteError,
)

__all__ = ["CLOUD_FAILURES", "describe", "is_refusal"]

# What the cloud part may fail with and the device can finish instead.
CLOUD_FAILURES: tuple[type[EdgecutError], ...] = (
    CloudUnavailableError, DeadlineExceededError, OverloadedError, ProtocolError, RemoteError,
    ModelNotFoundError, PermissionDeniedError)
# Refusals from an endpoint that is up and answering: the request still finishes locally,
# but they say nothing about availability, so they do not open the circuit.
_REFUSAL_CODES = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED",
                            "UNAUTHENTICATED", "FAILED_PRECONDITION", "OUT_OF_RANGE",
                            "UNIMPLEMENTED", "ALREADY_EXISTS"})


def is_refusal(error: EdgecutError) -> bool:
    if isinstance(error, (ModelNotFoundError, PermissionDeniedError)):
        return True
    return isinstance(error, RemoteError) and error.code in _REFUSAL_CODES


def describe(error: EdgecutError) -> str:
    """A short reason for the fallback: the error's kind and its first clause."""
    kind = {CloudUnavailableError: "cloud unavailable", DeadlineExceededError: "cloud too slow",
            OverloadedError: "cloud overloaded", ProtocolError: "corrupt answer",
            ModelNotFoundError: "model not on the endpoint",
            PermissionDeniedError: "permission denied"}.get(type(error))
    if kind is None:
        kind = next((v for k, v in ((ProtocolError, "corrupt answer"),
                                    (RemoteError, "endpoint error")) if isinstance(error, k)),
                    type(error).__name__)
        if isinstance(error, RemoteError):
            kind = f"endpoint error {error.code}"
    return f"{kind}: {error}"
