"""The gRPC channel a device opens to its endpoint(s): target, load balancing, retries.

gRPC already does most of what a device on a flaky link needs, when it is asked to:

- `round_robin` over every address the target resolves to, so a list of replicas (or a DNS
  name with several records) shares the load and a dead replica is skipped;
- a retry policy (gRFC A6) for UNAVAILABLE: gRPC retries only calls that no server has
  started to answer, so a retry never runs a request twice by its own doing (the request
  id covers the rest: the endpoint answers a repeated id from its cache);
- keepalive pings, so a link that silently died is noticed within seconds, not at the
  kernel's TCP timeout; the endpoint permits them every 10 s or more;
- reconnect backoff from 200 ms, capped at 2 s, so a cloud that restarts is reached again
  within a few seconds (gRPC's default cap is 120 s). `grpc.min_reconnect_backoff_ms` is
  left alone: gRPC takes it as the connect timeout too (20 s by default), and a TLS
  handshake over a slow link on a slow CPU needs that.

Per-attempt timeouts are the Predictor's (it gives each call the deadline less the time a
local fallback needs), not the retry policy's `perAttemptRecvTimeout`, which gRPC core
still gates as experimental (a crash was reported with it: grpc/grpc#38908).

    >>> target_for(["10.0.0.1:8001", "10.0.0.2:8001"])
    ('ipv4:10.0.0.1:8001,10.0.0.2:8001', '10.0.0.1')
    >>> target_for(["localhost:8001", "localhost:8002"])
    ('ipv4:127.0.0.1:8001,127.0.0.1:8002', 'localhost')
    >>> target_for(["cloud.example:8001"])
    ('cloud.example:8001', None)
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence

from edgecut.errors import BadInputError

__all__ = ["KEEPALIVE_TIME_MS", "channel_options", "service_config", "target_for"]

_SERVICE = "inference.GRPCInferenceService"
# The endpoint permits pings every 10 s; 20 s leaves it room (cloud/server.py).
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 5_000
MAX_RECONNECT_BACKOFF_MS = 2_000
INITIAL_RECONNECT_BACKOFF_MS = 200


def service_config() -> str:
    """The service config every device channel uses (JSON, as gRPC takes it)."""
    return json.dumps({
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": [{"service": _SERVICE}],
            # A device that cannot reach its cloud must know at once, to run locally.
            "waitForReady": False,
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
        # Stop retrying when most calls fail: a dead cloud is not hammered by retries.
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.5},
    })


def channel_options(max_message_bytes: int, *, authority: str | None = None
                    ) -> list[tuple[str, int | str]]:
    """grpc channel arguments: message limits, keepalive, backoff, the service config."""
    options: list[tuple[str, int | str]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.service_config", service_config()),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
    if authority is not None:
        # The replicas were given by address: TLS still checks the certificate's name.
        options += [("grpc.ssl_target_name_override", authority),
                    ("grpc.default_authority", authority)]
    return options


def target_for(endpoints: Sequence[str]) -> tuple[str, str | None]:
    """(gRPC target, TLS name to check or None) for one or several "host:port" addresses.

    One address goes to gRPC's own resolver (DNS: every record, round robin). Several are
    one target of literal addresses ("ipv4:a:p,b:q"), the only form of an address list
    grpc's Python API takes; host names among them are resolved here, once. TLS checks the
    server certificate against the first host name given, else the first address (such a
    target has no name of its own to check): replicas share one certificate name.
    """
    if not endpoints:
        raise BadInputError("no endpoint given; expected 'host:port' or a list of them")
    if len(endpoints) == 1:
        return endpoints[0], None
    families: set[str] = set()
    addresses: list[str] = []
    names: list[str] = []
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            names.append(host)
            ip = ipaddress.ip_address(_resolve(host, port))
        families.add(f"ipv{ip.version}")
        addresses.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    if len(families) > 1:
        raise BadInputError(f"endpoints {list(endpoints)} mix IPv4 and IPv6 addresses; gRPC "
                            f"balances over one family: give all of one kind")
    first_host = endpoints[0].rpartition(":")[0].strip("[]")
    return f"{families.pop()}:{','.join(addresses)}", (names[0] if names else first_host)


def _resolve(host: str, port: str) -> str:
    if host == "localhost":
        return "127.0.0.1"  # no lookup: a device that boots offline still reaches loopback
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise BadInputError(f"endpoint {host}:{port}: cannot resolve {host!r} ({exc}); "
                            f"give replicas as IP addresses, or one name whose DNS records "
                            f"list them") from exc
    return str(infos[0][4][0])
