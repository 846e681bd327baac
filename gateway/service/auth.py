"""Who is calling: the client certificate's full chain verified, then mapped to the registry.

gRPC's TLS (BoringSSL) proves the client holds a key certified under the configured CA, but it
follows RFC 5280 in treating the trust anchor's own basicConstraints as information rather than
as a constraint: a root with pathLenConstraint 0 (as the dev CA and many national-platform roots
are) does not stop an extra CA certificate presented under it from issuing "any platform". `openssl
verify` enforces it; so does cryptography's X.509 verifier, which this step runs over the chain the
client presented (`x509_pem_cert` and `x509_pem_cert_chain` of the auth context) against the
configured CA bundle. Then, with the registry in force: a certificate whose serial is revoked is
UNAUTHENTICATED (CERTIFICATE_REVOKED); the registered platform or operator is found by the SAN
URI; if its entry pins certificates (SPKI SHA-256), a certificate matching none is
PERMISSION_DENIED (CERTIFICATE_NOT_PINNED).

The chain's verification (~1 ms) runs once per distinct certificate chain, not per call: its
outcome is cached by the chain's bytes (a client connection presents the same bytes on every
call), so the hot path pays a dictionary lookup and the registry's checks, which follow reloads.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from gateway.core.errors import NotPermitted, Unauthenticated
from gateway.core.registry import Operator, Platform, Registry
from mitransfer.protocol.registry import spki_sha256


def _sans(context: Any) -> list[str]:
    """The client certificate's subject alternative names (a certificate without any names nobody)."""
    if context.peer_identity_key() != "x509_subject_alternative_name":  # cheaper than auth_context()
        return []
    return [san.decode(errors="replace") for san in context.peer_identities() or ()]


def peer_names(context: Any) -> tuple[str, ...]:
    """The SANs of the caller's certificate, unverified: who claims to call, before the identity
    step says what it is (admission keys each caller's share by them; `Callers` decides)."""
    return tuple(_sans(context))


T = TypeVar("T")
TRACKING_ROLES = frozenset({"operator", "reviewer"})
_CACHE_SIZE: Final = 4096


@dataclass(frozen=True)
class PeerCertificate:
    """What the identity step keeps of a client certificate whose chain verified (or did not)."""

    uris: tuple[str, ...]          # its SAN URIs
    serial: int
    pin: bytes                     # SHA-256 of its SubjectPublicKeyInfo
    not_before: dt.datetime
    not_after: dt.datetime
    certificate: x509.Certificate
    chain_error: str = ""          # why the chain does not verify ("" if it does)


class Callers:
    """The identity step of every call: verify the peer's chain (cached), then find it in the registry."""

    def __init__(self, ca_pem: bytes, clock: Callable[[], dt.datetime]) -> None:
        self._store = Store(x509.load_pem_x509_certificates(ca_pem))
        self._clock = clock
        self._cache: OrderedDict[tuple[bytes, bytes], PeerCertificate] = OrderedDict()
        self._seen: dict[str, x509.Certificate] = {}  # registry id → its latest certificate seen

    def seen(self) -> Iterable[tuple[str, x509.Certificate]]:
        """(registry id, certificate) of each platform and operator seen since start, for the expiry gauges."""
        return list(self._seen.items())

    def peer(self, context: Any, registry: Registry) -> PeerCertificate:
        """The caller's certificate, verified, not revoked.

        Raises:
            Unauthenticated: no client certificate, a chain that does not verify against the CA
                (CERTIFICATE_CHAIN_INVALID), outside its validity (CERTIFICATE_EXPIRED), or a
                revoked serial (CERTIFICATE_REVOKED).
        """
        auth = context.auth_context()
        leaf = b"".join(auth.get("x509_pem_cert", ()))
        if not leaf:
            raise Unauthenticated("the call carries no client certificate", reason="CERTIFICATE_MISSING")
        chain = b"".join(auth.get("x509_pem_cert_chain", ()))
        key = (leaf, chain)
        peer = self._cache.get(key)
        if peer is None:
            peer = self._verify(leaf, chain)
            self._cache[key] = peer
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        now = self._clock()
        if peer.chain_error:
            raise Unauthenticated(f"the client certificate's chain does not verify: {peer.chain_error}",
                                  reason="CERTIFICATE_CHAIN_INVALID", metadata={"serial": f"{peer.serial:x}"})
        if not peer.not_before <= now <= peer.not_after:
            raise Unauthenticated("the client certificate is outside its validity period",
                                  reason="CERTIFICATE_EXPIRED", metadata={"serial": f"{peer.serial:x}"})
        if peer.serial in registry.revoked_serials:
            raise Unauthenticated(f"the client certificate (serial {peer.serial:x}) is revoked",
                                  reason="CERTIFICATE_REVOKED", metadata={"serial": f"{peer.serial:x}"})
        return peer

    def _verify(self, leaf_pem: bytes, chain_pem: bytes) -> PeerCertificate:
        certificates = x509.load_pem_x509_certificates(leaf_pem)
        leaf = certificates[0]
        presented = x509.load_pem_x509_certificates(chain_pem) if chain_pem else []
        intermediates = [c for c in (*certificates[1:], *presented) if c != leaf]
        try:
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = tuple(sans.get_values_for_type(x509.UniformResourceIdentifier))
        except x509.ExtensionNotFound:
            uris = ()
        spki = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        error = ""
        try:
            verifier = PolicyBuilder().store(self._store).time(self._clock()).build_client_verifier()
            verifier.verify(leaf, intermediates)
        except (VerificationError, ValueError) as exc:
            error = str(exc)[:200]
        return PeerCertificate(uris, leaf.serial_number, spki_sha256(spki), leaf.not_valid_before_utc,
                               leaf.not_valid_after_utc, leaf, error)

    def _pinned(self, peer: PeerCertificate, who: str, pins: frozenset[bytes]) -> None:
        if pins and peer.pin not in pins:
            raise NotPermitted(f"the client certificate of {who} matches none of its pinned keys (SPKI SHA-256 "
                               f"{peer.pin.hex()})", reason="CERTIFICATE_NOT_PINNED",
                               metadata={"id": who, "spki_sha256": peer.pin.hex()})

    def _note(self, who: str, peer: PeerCertificate) -> None:
        self._seen[who] = peer.certificate

    def platform(self, context: Any, registry: Registry) -> Platform:
        """The registered platform of the peer certificate.

        Raises:
            Unauthenticated: see `peer`.
            NotPermitted: PLATFORM_UNKNOWN (no platform's URI), CERTIFICATE_NOT_PINNED.
        """
        peer = self.peer(context, registry)
        platform = _first(registry.platform_by_uri, peer.uris)
        if platform is None:
            raise NotPermitted("the client certificate names no registered platform", reason="PLATFORM_UNKNOWN")
        self._pinned(peer, platform.id, platform.certificate_pins)
        self._note(platform.id, peer)
        return platform

    def operator(self, context: Any, registry: Registry, role: str) -> Operator:
        """The registered operator of the peer certificate, holding `role`.

        Raises:
            Unauthenticated: see `peer`.
            NotPermitted: OPERATOR_UNKNOWN, CERTIFICATE_NOT_PINNED, ROLE_MISSING.
        """
        peer = self.peer(context, registry)
        operator = _first(registry.operator_by_uri, peer.uris)
        if operator is None:
            raise NotPermitted(f"this call needs an operator certificate with the role {role}",
                               reason="OPERATOR_UNKNOWN")
        self._pinned(peer, operator.id, operator.certificate_pins)
        self._note(operator.id, peer)
        if role not in operator.roles:
            raise NotPermitted(f"operator {operator.id} lacks the role {role}", reason="ROLE_MISSING",
                               metadata={"operator": operator.id, "role": role})
        return operator

    def tracking_scope(self, context: Any, registry: Registry) -> frozenset[str] | None:
        """The agencies whose cases the caller may see: a platform's own, or None (all) for an
        operator with an operator or reviewer role.

        Raises:
            Unauthenticated: see `peer`.
            NotPermitted: PLATFORM_UNKNOWN for anyone else; CERTIFICATE_NOT_PINNED.
        """
        peer = self.peer(context, registry)
        platform = _first(registry.platform_by_uri, peer.uris)
        if platform is not None:
            self._pinned(peer, platform.id, platform.certificate_pins)
            self._note(platform.id, peer)
            return registry.agencies_of(platform.id)
        operator = _first(registry.operator_by_uri, peer.uris)
        if operator is not None and operator.roles & TRACKING_ROLES:
            self._pinned(peer, operator.id, operator.certificate_pins)
            self._note(operator.id, peer)
            return None
        raise NotPermitted("tracking needs a platform certificate or an operator's", reason="PLATFORM_UNKNOWN")


def _first(find: Callable[[str], T | None], uris: Sequence[str]) -> T | None:
    for uri in uris:
        found = find(uri)
        if found is not None:
            return found
    return None
