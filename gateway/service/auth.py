"""Who is calling: the platform named by the SAN URI of the mTLS client certificate."""

from __future__ import annotations

from typing import Any

from gateway.core.errors import NotPermitted
from gateway.core.registry import Operator, Platform, Registry


def _sans(context: Any) -> list[str]:
    """The client certificate's subject alternative names (a certificate without any names nobody)."""
    if context.peer_identity_key() != "x509_subject_alternative_name":  # cheaper than auth_context()
        return []
    return [san.decode(errors="replace") for san in context.peer_identities() or ()]


def peer_names(context: Any) -> tuple[str, ...]:
    """The SANs of the caller's certificate: who is calling, before the registry says what it is
    (admission keys each caller's share by them)."""
    return tuple(_sans(context))


def calling_operator(context: Any, registry: Registry, role: str) -> Operator:
    """The registered operator of the peer certificate, holding `role`; NotPermitted otherwise."""
    for san in _sans(context):
        operator = registry.operator_by_uri(san)
        if operator is not None:
            if role not in operator.roles:
                raise NotPermitted(f"operator {operator.id} lacks the role {role}", reason="ROLE_MISSING",
                                   metadata={"operator": operator.id, "role": role})
            return operator
    raise NotPermitted(f"this call needs an operator certificate with the role {role}", reason="OPERATOR_UNKNOWN")


def calling_platform(context: Any, registry: Registry) -> Platform:
    """The registered platform of the peer certificate. Raises NotPermitted if there is none.

    The TLS handshake already proved the certificate chains to our CA; this maps it to a platform.
    """
    for san in _sans(context):
        platform = registry.platform_by_uri(san)
        if platform is not None:
            return platform
    raise NotPermitted("the client certificate names no registered platform", reason="PLATFORM_UNKNOWN")


TRACKING_ROLES = frozenset({"operator", "reviewer"})


def tracking_scope(context: Any, registry: Registry) -> frozenset[str] | None:
    """The agencies whose cases the caller may see: a platform's own, or None (all) for an
    operator with an operator or reviewer role. NotPermitted for anyone else."""
    for san in _sans(context):
        platform = registry.platform_by_uri(san)
        if platform is not None:
            return registry.agencies_of(platform.id)
        operator = registry.operator_by_uri(san)
        if operator is not None and operator.roles & TRACKING_ROLES:
            return None
    raise NotPermitted("tracking needs a platform certificate or an operator's", reason="PLATFORM_UNKNOWN")
