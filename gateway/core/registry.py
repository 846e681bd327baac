"""The agency registry: which platform speaks for which pooling-region agencies, with which keys.

A provincial platform is identified by the SAN URI of its client certificate; it may act for the
agencies the registry assigns to it (all within its provinces) and signs with its registered
keys. The registry is public information (no private keys) and is read once at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core.errors import NotPermitted
from gateway.core.signing import SignatureKeyError, VerifyingKey


class RegistryError(ValueError):
    """The registry file is inconsistent; the gateway refuses to start with it."""


@dataclass(frozen=True)
class Platform:
    """A provincial platform (省级医保信息平台)."""

    id: str
    name: str
    certificate_uri: str
    provinces: frozenset[str]
    keys: Mapping[str, VerifyingKey] = field(default_factory=dict)


@dataclass(frozen=True)
class Agency:
    """A pooling-region agency (统筹区经办机构), named by its 6-character 医保区划 code."""

    code: str
    name: str
    platform: str

    @property
    def province(self) -> str:
        return self.code[:2]


@dataclass(frozen=True)
class Operator:
    """A member of the national platform's staff (a reviewer, an operator), not a province."""

    id: str
    name: str
    certificate_uri: str
    roles: frozenset[str]


@dataclass(frozen=True)
class Registry:
    platforms: Mapping[str, Platform]
    agencies: Mapping[str, Agency]
    gateway_keys: Mapping[str, VerifyingKey]
    operators: Mapping[str, Operator] = field(default_factory=dict)
    dev_only: bool = False

    @classmethod
    def load(cls, path: Path) -> Registry:
        """Read and check a registry JSON file. Raises RegistryError."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RegistryError(f"cannot read registry {path}: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Registry:
        """Build from parsed JSON, checking that keys, agencies and platforms fit together."""
        try:
            gateway_keys = _keys(data["gateway"]["keys"])
            platforms: dict[str, Platform] = {}
            for p in data["platforms"]:
                platform = Platform(
                    id=str(p["id"]),
                    name=str(p["name"]),
                    certificate_uri=str(p["certificate_uri"]),
                    provinces=frozenset(str(x) for x in p["provinces"]),
                    keys=_keys(p["keys"]),
                )
                if platform.id in platforms:
                    raise RegistryError(f"platform {platform.id} listed twice")
                platforms[platform.id] = platform
            agencies: dict[str, Agency] = {}
            for a in data["agencies"]:
                agency = Agency(code=str(a["code"]), name=str(a["name"]), platform=str(a["platform"]))
                owner = platforms.get(agency.platform)
                if owner is None:
                    raise RegistryError(f"agency {agency.code}: unknown platform {agency.platform}")
                if agency.province not in owner.provinces:
                    raise RegistryError(
                        f"agency {agency.code} is outside the provinces of platform {owner.id}"
                    )
                if agency.code in agencies:
                    raise RegistryError(f"agency {agency.code} listed twice")
                agencies[agency.code] = agency
            operators = {
                str(o["id"]): Operator(id=str(o["id"]), name=str(o["name"]),
                                       certificate_uri=str(o["certificate_uri"]),
                                       roles=frozenset(str(r) for r in o["roles"]))
                for o in data.get("operators", [])
            }
        except (KeyError, TypeError) as exc:
            raise RegistryError(f"registry is missing or mistypes {exc}") from exc
        all_key_ids = [k for p in platforms.values() for k in p.keys] + list(gateway_keys)
        if len(all_key_ids) != len(set(all_key_ids)):
            raise RegistryError("key ids must be unique across the registry")
        uris = [p.certificate_uri for p in platforms.values()] + [o.certificate_uri for o in operators.values()]
        if len(uris) != len(set(uris)):
            raise RegistryError("certificate URIs must be unique")
        return cls(platforms, agencies, gateway_keys, operators, dev_only=bool(data.get("dev_only", False)))

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


def _keys(entries: Any) -> dict[str, VerifyingKey]:
    keys: dict[str, VerifyingKey] = {}
    for entry in entries:
        key_id = str(entry["key_id"])
        try:
            keys[key_id] = VerifyingKey.from_pem(key_id, str(entry["algorithm"]), entry["public_key"].encode())
        except (SignatureKeyError, ValueError) as exc:
            raise RegistryError(f"key {key_id}: {exc}") from exc
    return keys
