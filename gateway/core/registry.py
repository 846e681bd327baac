"""The agency registry as the gateway uses it: who is calling, who speaks for which agency.

A provincial platform is identified by the SAN URI of its client certificate; it may act for the
agencies the registry assigns to it (all within its provinces) and signs with its registered
keys. It also carries each region's own policy where the measures leave a choice (waiting period,
review of large outbound transfers) and the provinces each reviewer may decide for. The registry
is public information (no private keys) and is read once at start-up; its format and consistency
checks are `mitransfer.protocol.registry`, shared with the platforms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.core.errors import NotPermitted
from gateway.core.signing import VerifyingKey
from mitransfer.protocol import registry as registry_format
from mitransfer.protocol.errors import RegistryFormatError
from mitransfer.protocol.registry import Agency, Operator, Platform, RegionPolicy, RegistryDocument, policy_of

__all__ = ["Agency", "Operator", "Platform", "RegionPolicy", "Registry", "RegistryError"]


class RegistryError(ValueError):
    """The registry file is unreadable or inconsistent; the gateway refuses to start with it."""


@dataclass(frozen=True)
class Registry:
    platforms: Mapping[str, Platform]
    agencies: Mapping[str, Agency]
    gateway_keys: Mapping[str, VerifyingKey]
    operators: Mapping[str, Operator] = field(default_factory=dict)
    dev_only: bool = False
    policies: Mapping[str, RegionPolicy] = field(default_factory=dict)  # by region or province
    log_origin: str = RegistryDocument.log_origin  # the transparency log's name (its checkpoints' origin)

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
                   dev_only=document.dev_only, policies=document.policies, log_origin=document.log_origin)

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
