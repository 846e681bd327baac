"""The agency registry as the gateway uses it: who is calling, who speaks for which agency.

A provincial platform is identified by the SAN URI of its client certificate; it may act for the
agencies the registry assigns to it (all within its provinces) and signs with its registered
keys. It also carries each region's own policy where the measures leave a choice (waiting period,
review of large outbound transfers) and the provinces each reviewer may decide for. The registry
is public information (no private keys); its format and consistency checks are
`mitransfer.protocol.registry`, shared with the platforms.

It has a lifecycle: each published document carries a version, and the gateway replaces the
registry in force (`LiveRegistry`) by a newer version without restarting (SIGHUP, the Admin RPC,
or another replica having stored one: `gateway.app.registry_sync`). A call reads the registry
once, at its start, and uses that snapshot throughout. `successor` is the rule a replacement
must pass: a higher version, or the same version with the same bytes (nothing to do).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.core.errors import NotPermitted
from gateway.core.signing import VerifyingKey
from mitransfer.protocol import registry as registry_format
from mitransfer.protocol.errors import RegistryFormatError
from mitransfer.protocol.registry import Agency, Operator, Platform, RegionPolicy, RegistryDocument, policy_of

__all__ = ["Agency", "LiveRegistry", "Operator", "Platform", "RegionPolicy", "Registry", "RegistryError", "Reloaded",
           "successor"]


class RegistryError(ValueError):
    """The registry file is unreadable or inconsistent, or may not replace the one in force.

    `reason`: REGISTRY_INVALID (unreadable or inconsistent), REGISTRY_OLDER (a lower version than
    the one in force), REGISTRY_VERSION_REUSED (the same version with other contents).
    """

    def __init__(self, message: str, *, reason: str = "REGISTRY_INVALID") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Registry:
    platforms: Mapping[str, Platform]
    agencies: Mapping[str, Agency]
    gateway_keys: Mapping[str, VerifyingKey]
    operators: Mapping[str, Operator] = field(default_factory=dict)
    dev_only: bool = False
    policies: Mapping[str, RegionPolicy] = field(default_factory=dict)  # by region or province
    log_origin: str = RegistryDocument.log_origin  # the transparency log's name (its checkpoints' origin)
    version: int = 0
    issued_at: dt.datetime | None = None
    revoked_serials: frozenset[int] = frozenset()
    digest: bytes = b""  # SHA-256 of the document's bytes (empty when built from parsed JSON)

    @classmethod
    def load(cls, path: Path) -> Registry:
        """Read and check a registry JSON file. Raises RegistryError naming the file and field."""
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise RegistryError(f"cannot read registry {path}: {exc}") from exc
        try:
            return cls.of(registry_format.from_json(text))
        except RegistryFormatError as exc:
            raise RegistryError(f"registry {path}: {exc}") from exc

    @classmethod
    def from_json(cls, text: bytes) -> Registry:
        """Parse and check a registry document's bytes (the form kept in the store).

        Raises:
            RegistryError: not JSON, or the first problem found, naming its field.
        """
        try:
            return cls.of(registry_format.from_json(text))
        except RegistryFormatError as exc:
            raise RegistryError(str(exc)) from exc

    @classmethod
    def from_dict(cls, data: object) -> Registry:
        """Build from parsed JSON, checking that keys, agencies and platforms fit together.

        Raises:
            RegistryError: the first problem found, naming its field.
        """
        try:
            return cls.of(registry_format.from_dict(data))
        except RegistryFormatError as exc:
            raise RegistryError(str(exc)) from exc

    @classmethod
    def of(cls, document: RegistryDocument) -> Registry:
        """The gateway's view of a checked registry document."""
        return cls(document.platforms, document.agencies, document.gateway_keys, document.operators,
                   dev_only=document.dev_only, policies=document.policies, log_origin=document.log_origin,
                   version=document.version, issued_at=document.issued_at,
                   revoked_serials=document.revoked_serials, digest=document.digest)

    def policy(self, region: str) -> RegionPolicy:
        """The policy that applies to a pooling region: its own, its province's, or the national default."""
        return policy_of(self.policies, region)

    def platform_by_uri(self, uri: str) -> Platform | None:
        for platform in self.platforms.values():
            if platform.certificate_uri == uri:
                return platform
        return None

    def operator_by_uri(self, uri: str) -> Operator | None:
        for operator in self.operators.values():
            if operator.certificate_uri == uri:
                return operator
        return None

    def agencies_of(self, platform_id: str) -> frozenset[str]:
        return frozenset(a.code for a in self.agencies.values() if a.platform == platform_id)

    def platform_of_agency(self, code: str) -> str | None:
        agency = self.agencies.get(code)
        return agency.platform if agency else None

    def signing_key(self, platform: Platform, key_id: str) -> VerifyingKey | None:
        """The caller platform's own key with this id; another platform's key does not count."""
        return platform.keys.get(key_id)

    def check_acts_for(self, platform: Platform, agency_code: str, *, what: str) -> None:
        """Raise NotPermitted unless `platform` speaks for `agency_code`."""
        if self.platform_of_agency(agency_code) != platform.id:
            raise NotPermitted(
                f"platform {platform.id} may not act for agency {agency_code} ({what})",
                reason="AGENCY_NOT_OF_PLATFORM",
                metadata={"agency": agency_code, "platform": platform.id},
            )


def successor(current: Registry, candidate: Registry) -> bool:
    """Whether `candidate` replaces `current`: True for a higher version, False for the very same
    document (nothing to do).

    Version 0 is a document without a version (development): another version-0 document with
    other contents replaces it, as the file says; the lifecycle's guarantees begin at version 1.

    Raises:
        RegistryError: REGISTRY_OLDER (a lower version: replicas never go back) or
            REGISTRY_VERSION_REUSED (the same version with other contents: two documents under one
            version would leave replicas disagreeing about which is in force).
    """
    if candidate.version > current.version:
        return True
    if candidate.version == current.version == 0:
        return candidate.digest != current.digest
    if candidate.version < current.version:
        raise RegistryError(f"registry version {candidate.version} is older than version {current.version} in force",
                            reason="REGISTRY_OLDER")
    if candidate.digest != current.digest:
        raise RegistryError(f"registry version {candidate.version} is already in force with other contents: "
                            f"publish the change as version {current.version + 1}", reason="REGISTRY_VERSION_REUSED")
    return False


@dataclass(frozen=True)
class Reloaded:
    """The registry in force after a reload, and whether the reload changed it."""

    registry: Registry
    changed: bool


class LiveRegistry:
    """The registry in force, replaced whole when a newer version is loaded.

    Readers take `current` once per call and keep that snapshot: a reload between two steps of
    one call never mixes two versions. Replacing is one reference assignment on the event loop.
    """

    def __init__(self, registry: Registry) -> None:
        self._current = registry

    @property
    def current(self) -> Registry:
        return self._current

    def replace(self, candidate: Registry) -> bool:
        """Put `candidate` in force if it is `successor` of the current one; False if it is the same.

        Raises:
            RegistryError: REGISTRY_OLDER or REGISTRY_VERSION_REUSED (see `successor`).
        """
        if not successor(self._current, candidate):
            return False
        self._current = candidate
        return True
