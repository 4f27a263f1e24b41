"""Server-reported timing: how long a ModelInfer waited in the endpoint's queue, and how long
its batch's model run took, carried in the response's parameters.

An edgecut endpoint sets two double parameters on every successful ModelInferResponse,
`QUEUE_MS_PARAMETER` (the time the request waited in its model's queue before its batch
ran) and `COMPUTE_MS_PARAMETER` (that batch's model run time), both in milliseconds, and
lists `TIMING_EXTENSION` in ServerMetadata.extensions. A device reads them with
`server_timing` to see a loaded cloud (a growing queue) and push work back to itself. Stock
clients ignore response parameters they do not know.

    >>> from edgecut.protocol.grpc_service_pb2 import ModelInferResponse
    >>> response = ModelInferResponse()
    >>> response.parameters[QUEUE_MS_PARAMETER].double_param = 1.5
    >>> response.parameters[COMPUTE_MS_PARAMETER].double_param = 0.25
    >>> server_timing(response)
    ServerTiming(queue_ms=1.5, compute_ms=0.25)
    >>> server_timing(ModelInferResponse()) is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "COMPUTE_MS_PARAMETER",
    "QUEUE_MS_PARAMETER",
    "TIMING_EXTENSION",
    "ServerTiming",
    "server_timing",
]

TIMING_EXTENSION = "edgecut_timing"
QUEUE_MS_PARAMETER = "edgecut_queue_ms"
COMPUTE_MS_PARAMETER = "edgecut_compute_ms"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTiming:
    """What the endpoint reported of one answered request, in milliseconds."""

    queue_ms: float
    compute_ms: float


def server_timing(response: Any) -> ServerTiming | None:
    """The timing a ModelInferResponse carries; None where it carries none (a server without
    TIMING_EXTENSION, or an answer that was not computed by a model, such as the link probe's).
    """
    parameters = response.parameters
    if QUEUE_MS_PARAMETER not in parameters or COMPUTE_MS_PARAMETER not in parameters:
        return None
    queue, compute = parameters[QUEUE_MS_PARAMETER], parameters[COMPUTE_MS_PARAMETER]
    if (queue.WhichOneof("parameter_choice") != "double_param"
            or compute.WhichOneof("parameter_choice") != "double_param"):
        return None
    return ServerTiming(queue_ms=queue.double_param, compute_ms=compute.double_param)
