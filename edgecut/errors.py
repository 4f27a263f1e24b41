"""edgecut's exceptions: one tree, named by whose fault it was.

    EdgecutError
    ├── UserInputError (also ValueError): the caller gave us something wrong
    │   ├── BadModelError          model file missing, not ONNX, or invalid
    │   ├── BadShapeError          a shape string or a tensor shape that does not fit
    │   ├── BadInputError          an input tensor: unknown name, wrong dtype, missing
    │   ├── UnknownCutError        a cut id the plan or model does not have
    │   ├── BadPlanError           a plan folder that is missing files or malformed
    │   ├── BadProfileError        a profile or config file with wrong keys or values
    │   └── TLSConfigError         certificate files missing, unreadable or mismatched
    ├── ProtocolError (also ValueError): a message on the channel breaks the protocol
    │   └── PayloadTooLargeError   a message or a decoded tensor over the configured limit
    ├── ModelNotFoundError         no such model or version on the endpoint
    ├── NoFeasibleCutError         no cut satisfies the device's constraints
    ├── CloudUnavailableError      the endpoint cannot be reached or refused the call
    ├── OverloadedError            the endpoint's queue for a model is full; retry later
    ├── PermissionDeniedError      this device may not use this model (authorisation)
    ├── DeadlineExceededError      a request did not finish by its deadline
    └── RemoteError                the endpoint answered with an error status

Foreign errors (grpc, onnxruntime, onnx, TOML, TLS) are translated into these once, at the
boundary where they arise, and re-raised `from` the original. The cloud endpoint maps these
to gRPC status codes in one function (edgecut.cloud.status).
"""

from __future__ import annotations


class EdgecutError(Exception):
    """Root of every error edgecut raises on purpose."""


class UserInputError(EdgecutError, ValueError):
    """Something the caller passed in is wrong; the message says what and what was expected."""


class BadModelError(UserInputError):
    """A model file is missing, is not ONNX, or does not pass the ONNX checker."""


class BadShapeError(UserInputError):
    """A shape string or tensor shape is malformed or does not fit the model."""


class BadInputError(UserInputError):
    """An input tensor is missing, unknown, or of the wrong dtype."""


class UnknownCutError(UserInputError):
    """A cut id that the model or plan does not have."""


class BadPlanError(UserInputError):
    """A plan folder is missing files or its plan.json is malformed."""


class BadProfileError(UserInputError):
    """A profile or config file has missing keys or values out of range."""


class TLSConfigError(UserInputError):
    """Certificate or key files are missing, unreadable, or do not belong together."""


class ProtocolError(EdgecutError, ValueError):
    """A message on the channel violates the protocol (bad codec, size, shape or dtype)."""


class PayloadTooLargeError(ProtocolError):
    """A message or a decoded tensor exceeds the configured limit."""


class ModelNotFoundError(EdgecutError):
    """The endpoint has no such model or version."""


class NoFeasibleCutError(EdgecutError):
    """No candidate cut satisfies the constraints (device memory, energy, pinned inputs)."""


class CloudUnavailableError(EdgecutError):
    """The cloud endpoint cannot be reached, or refused the connection (TLS, auth)."""


class OverloadedError(EdgecutError):
    """A model's queue is full; `retry_after_ms` is the endpoint's estimate of when to retry."""

    def __init__(self, message: str, *, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class PermissionDeniedError(EdgecutError):
    """The caller is known (its certificate is valid) but may not use this model."""


class DeadlineExceededError(EdgecutError):
    """A request did not complete before its deadline."""


class RemoteError(EdgecutError):
    """The endpoint answered with an error status; `code` holds the gRPC status name."""

    def __init__(self, message: str, *, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code
