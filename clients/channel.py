"""How the reference clients reach the gateway: one address, or several replicas.

`address` is `host:port`, or several IPv4 `host:port`s separated by commas (or one DNS name that
resolves to every replica). With several, gRPC's own round-robin balancing spreads calls over the
replicas that are up and stops using one that fails; the client's retries (safe: the gateway is
idempotent by message id) then land on another replica.
"""

from __future__ import annotations

import ipaddress


def channel_target(address: str) -> tuple[str, list[tuple[str, str]]]:
    """The gRPC target and channel options for `address`. Raises ValueError for a malformed list."""
    parts = [p.strip() for p in address.split(",") if p.strip()]
    if len(parts) <= 1:
        return address, []
    for part in parts:
        host, _, port = part.rpartition(":")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{part!r}: several gateway addresses must be IPv4 host:port pairs "
                             "(or give one DNS name that resolves to every replica)") from None
        if not port.isdigit():
            raise ValueError(f"{part!r}: the port is missing")
    options = [
        ("grpc.lb_policy_name", "round_robin"),
        # The replicas share one certificate; the name to check is the first address.
        ("grpc.default_authority", parts[0]),
    ]
    return "ipv4:" + ",".join(parts), options
