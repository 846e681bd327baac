"""The agency registry's public format: parsed once, checked, as plain frozen dataclasses.

The registry is a JSON document published by the national platform and read by the gateway and
by every provincial platform. It says which platform (by the SAN URI of its client certificate)
speaks for which pooling-region agencies, within which provinces, with which signing keys; which
keys sign the gateway's receipts and notices; and which of the national platform's staff
(reviewers, operators) may call the admin service. It holds no secret.

    {"version": 7, "issued_at": "2026-12-01T09:00:00+08:00",                        (optional)
     "dev_only": false,
     "gateway":   {"keys": [KEY, ...], "log_origin": "gateway.example/log"},  (log_origin optional)
     "platforms": [{"id", "name", "certificate_uri", "provinces": ["32", ...], "keys": [KEY, ...],
                    "certificate_pins": [SPKI_SHA256, ...],                         (pins optional)
                    "limits": {"calls_in_flight": 64, "requests_per_second": 200,
                               "burst": 400, "subscriptions": 16}}, ...],               (limits optional)
     "agencies":  [{"code": "320100", "name", "platform"}, ...],
     "operators": [{"id", "name", "certificate_uri", "roles": ["reviewer", ...],
                    "provinces": ["33", ...], "certificate_pins": [...]}, ...],      (optional)
     "policies":  [{"region": "33" | "330100", "waiting_period_months": 0..6,
                    "review_above_fen": 1000000 | null}, ...],                      (optional)
     "revoked_certificates": [{"serial": "5f1c…", "revoked_at": TIME}, ...]}        (optional)
    KEY = {"key_id", "algorithm": "ed25519" | "ecdsa-p256-sha256" | "sm2-sm3", "public_key": SPKI PEM,
           "not_before": TIME, "not_after": TIME, "revoked_at": TIME}               (times optional)
    TIME = an RFC 3339 date-time with its offset; SPKI_SHA256 = 64 hex digits, the SHA-256 of the
    certificate's DER SubjectPublicKeyInfo; serial = the certificate's serial number in hex.

A platform's `limits` replace, for that platform alone, the gateway's configured defaults of the
same names (each key optional): calls it may have in flight at once, requests per second and the
burst above that rate, and subscription streams open at once. They are public so that a platform
knows what it is allowed, and what a RESOURCE_EXHAUSTED refers to.

An operator's `provinces` scope what it may decide (a reviewer decides the held transfers whose
outbound agency lies in them); absent, every province. A policy is a region's own choice where the
2021 measures leave one (医保办发〔2021〕43号): the waiting period before benefits after a
contribution gap of more than 3 months (0 to 6 months; none by default), and whether, above what
personal-account balance, its outbound fund transfers wait for a reviewer (none by default). It is
given for a pooling region (6 digits) or a whole province (2 digits); the most specific applies.

Checks: every field present with its type (strings, lists, `dev_only` a boolean, `version` a
non-negative integer), provinces of 2 digits and agency codes of 6 digits; platform ids, agency
codes, key ids (across the whole document) and certificate URIs (platforms and operators)
unique; each agency's platform listed and the agency inside that platform's provinces; each key
readable as its algorithm (`mitransfer.protocol.suites`) with `not_before` before `not_after`
(`mitransfer.protocol.validity`); pins of 64 hex digits, serials of hex digits; operators'
provinces of 2 digits; platform limits positive whole numbers (the rate a positive number);
policy regions of 2 or 6 digits, each listed once, waiting periods 0 to 6,
review thresholds whole fen ≥ 0 or null. Fields this format does not define are ignored, so a
document with fields added later still reads. A document without `version` is version 0: any
versioned document replaces it.

The gateway's `Registry` and the reference client's `KeyRing` each build their own view of it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, NoReturn, TypeGuard

from mitransfer.protocol.errors import RegistryFormatError, UnusableKey
from mitransfer.protocol.note import valid_name
from mitransfer.protocol.suites import VerifyingKey, load_verifying_key
from mitransfer.protocol.validity import KeyWindow, parse_time

_MALFORMED: Final = "REGISTRY_MALFORMED"


@dataclass(frozen=True)
class PlatformLimits:
    """A platform's own limits where the registry gives them; None: the gateway's default."""

    calls_in_flight: int | None = None      # calls at once (waiting for their turn included)
    requests_per_second: float | None = None  # sustained rate of calls and subscriptions opened
    burst: int | None = None                 # calls above the rate after a quiet spell
    subscriptions: int | None = None         # Subscribe streams open at once


NO_LIMITS: Final = PlatformLimits()


@dataclass(frozen=True)
class Platform:
    """A provincial platform (省级医保信息平台)."""

    id: str
    name: str
    certificate_uri: str  # the SAN URI of its client certificate: how the gateway knows it
    provinces: frozenset[str]  # 2-digit province codes its agencies lie in
    keys: Mapping[str, VerifyingKey]  # key id → key it signs its messages with (and its window)
    limits: PlatformLimits = NO_LIMITS  # its own limits, where the registry sets them
    certificate_pins: frozenset[bytes] = frozenset()  # SHA-256 of allowed client certificates' SPKI; empty: any


@dataclass(frozen=True)
class Agency:
    """A pooling-region agency (统筹区经办机构), named by its 6-digit 医保区划 code."""

    code: str
    name: str
    platform: str  # the id of the platform that speaks for it

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
    provinces: frozenset[str] = frozenset()  # 2-digit provinces it may decide for; empty: every one

    def covers(self, province: str) -> bool:
        """Whether this operator's scope includes `province`."""
        return not self.provinces or province in self.provinces
    certificate_pins: frozenset[bytes] = frozenset()  # as a platform's



MAX_WAITING_MONTHS: Final = 6


@dataclass(frozen=True)
class RegionPolicy:
    """What a pooling region (or a province) chose where the measures leave the choice to it."""

    region: str                          # a 6-digit 医保区划 code, or a 2-digit province
    waiting_period_months: int = 0       # 待遇等待期 after a gap of more than 3 months, 0..6
    review_above_fen: int | None = None  # 复核 its outbound fund transfers above this balance; None: never

    def reviews(self, amount_fen: int) -> bool:
        """Whether an outbound fund transfer of this amount waits for a reviewer."""
        return self.review_above_fen is not None and amount_fen > self.review_above_fen


NO_POLICY: Final = RegionPolicy("")  # the national default: no waiting period, no review


def policy_of(policies: Mapping[str, RegionPolicy], region: str) -> RegionPolicy:
    """The policy that applies to a pooling region: its own, else its province's, else none."""
    return policies.get(region) or policies.get(region[:2]) or NO_POLICY


@dataclass(frozen=True)
class RegistryDocument:
    """A registry as published, checked. Mappings keep the document's order."""

    gateway_keys: Mapping[str, VerifyingKey]  # key id → key that signs receipts and notices
    platforms: Mapping[str, Platform]         # platform id → platform
    agencies: Mapping[str, Agency]            # agency code → agency
    operators: Mapping[str, Operator]         # operator id → operator
    dev_only: bool                            # development material: never in production
    policies: Mapping[str, RegionPolicy] = field(default_factory=dict)  # region or province → its policy
    log_origin: str = "transfer-gateway/log"  # the transparency log's name: its checkpoints' first line
    version: int = 0                          # increases with every published change; 0: unversioned
    issued_at: dt.datetime | None = None      # when the national platform issued this version
    revoked_serials: frozenset[int] = frozenset()  # client certificates refused whatever their chain
    digest: bytes = field(default=b"", compare=False)  # SHA-256 of the JSON text it was read from


def spki_sha256(spki_der: bytes) -> bytes:
    """The pin of a certificate: SHA-256 over its DER SubjectPublicKeyInfo (as HPKP and
    `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256`)."""
    return hashlib.sha256(spki_der).digest()


def from_json(text: str | bytes) -> RegistryDocument:
    """Parse and check a registry document.

    Raises:
        RegistryFormatError: not JSON (an object key given twice counts as malformed), or see
            `from_dict`.
    """
    try:
        data = json.loads(text, object_pairs_hook=_no_repeated_keys)
    except ValueError as exc:
        raise RegistryFormatError(f"registry is not a JSON document: {exc}", reason=_MALFORMED, field="") from exc
    document = from_dict(data)
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return replace(document, digest=hashlib.sha256(raw).digest())


def from_dict(data: object) -> RegistryDocument:
    """Check a registry already parsed from JSON.

    Raises:
        RegistryFormatError: the first problem found, naming its field (see the module's checks).
    """
    doc = _object(data, "")
    seen_key_ids: set[str] = set()
    gateway = _object(_get(doc, "gateway", ""), "gateway")
    gateway_keys = _keys(gateway, "gateway", seen_key_ids)
    log_origin = _string(gateway, "log_origin", "gateway") if "log_origin" in gateway else RegistryDocument.log_origin
    if not valid_name(log_origin):
        _malformed("gateway.log_origin", "must hold no space and no plus sign (it names the log's checkpoint key)")
    platforms: dict[str, Platform] = {}
    uris: set[str] = set()
    for i, p in _objects(doc, "platforms", ""):
        where = f"platforms[{i}]"
        platform = Platform(
            id=_string(p, "id", where),
            name=_string(p, "name", where),
            certificate_uri=_unique(_string(p, "certificate_uri", where), uris, f"{where}.certificate_uri"),
            provinces=frozenset(_digits(x, 2, f"{where}.provinces[{j}]") for j, x in _items(p, "provinces", where)),
            keys=_keys(p, where, seen_key_ids),
            limits=_limits(p.get("limits"), f"{where}.limits"),
            certificate_pins=_pins(p, where),
        )
        _unique(platform.id, platforms, f"{where}.id")
        platforms[platform.id] = platform
        uris.add(platform.certificate_uri)
    agencies: dict[str, Agency] = {}
    for i, a in _objects(doc, "agencies", ""):
        where = f"agencies[{i}]"
        agency = Agency(_digits(_get(a, "code", where), 6, f"{where}.code"), _string(a, "name", where),
                        _string(a, "platform", where))
        owner = platforms.get(agency.platform)
        if owner is None:
            raise RegistryFormatError(f"agency {agency.code}: unknown platform {agency.platform!r}",
                                      reason="UNKNOWN_PLATFORM", field=f"{where}.platform")
        if agency.province not in owner.provinces:
            raise RegistryFormatError(f"agency {agency.code} is outside the provinces of platform {owner.id}",
                                      reason="AGENCY_OUTSIDE_PROVINCES", field=f"{where}.code")
        _unique(agency.code, agencies, f"{where}.code")
        agencies[agency.code] = agency
    operators: dict[str, Operator] = {}
    for i, o in _objects(doc, "operators", "", optional=True):
        where = f"operators[{i}]"
        operator = Operator(
            id=_string(o, "id", where),
            name=_string(o, "name", where),
            certificate_uri=_unique(_string(o, "certificate_uri", where), uris, f"{where}.certificate_uri"),
            roles=frozenset(_text(x, f"{where}.roles[{j}]") for j, x in _items(o, "roles", where)),
            provinces=frozenset(_digits(x, 2, f"{where}.provinces[{j}]")
                                for j, x in _items(o, "provinces", where, optional=True)),
            certificate_pins=_pins(o, where),
        )
        _unique(operator.id, operators, f"{where}.id")
        operators[operator.id] = operator
        uris.add(operator.certificate_uri)
    dev_only = doc.get("dev_only", False)
    if not isinstance(dev_only, bool):
        _malformed("dev_only", "must be true or false")
    policies: dict[str, RegionPolicy] = {}
    for i, p in _objects(doc, "policies", "", optional=True):
        policy = _policy(p, f"policies[{i}]")
        _unique(policy.region, policies, f"policies[{i}].region")
        policies[policy.region] = policy
    version = doc.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        _malformed("version", "must be a non-negative integer")
    issued_at = _time(doc["issued_at"], "issued_at") if "issued_at" in doc else None
    revoked: set[int] = set()
    for i, r in _objects(doc, "revoked_certificates", "", optional=True):
        where = f"revoked_certificates[{i}]"
        revoked.add(_serial(_get(r, "serial", where), f"{where}.serial"))
        if "revoked_at" in r:
            _time(r["revoked_at"], f"{where}.revoked_at")
    return RegistryDocument(gateway_keys, MappingProxyType(platforms), MappingProxyType(agencies),
                            MappingProxyType(operators), dev_only, MappingProxyType(policies), log_origin,
                            version=version, issued_at=issued_at, revoked_serials=frozenset(revoked))


def _policy(p: Mapping[str, object], where: str) -> RegionPolicy:
    region = _get(p, "region", where)
    if not isinstance(region, str) or len(region) not in (2, 6) or not region.isascii() or not region.isdigit():
        _malformed(f"{where}.region", "must be a string of 2 digits (a province) or 6 (a pooling region)")
    waiting = p.get("waiting_period_months", 0)
    if not _whole(waiting) or not 0 <= waiting <= MAX_WAITING_MONTHS:
        _malformed(f"{where}.waiting_period_months", f"must be a whole number of months from 0 to {MAX_WAITING_MONTHS}")
    above = p.get("review_above_fen")
    if above is not None and (not _whole(above) or above < 0):
        _malformed(f"{where}.review_above_fen", "must be a whole number of fen, 0 or more, or null")
    return RegionPolicy(region, waiting, above)


_LIMIT_KEYS: Final = ("calls_in_flight", "requests_per_second", "burst", "subscriptions")


def unknown_limits(data: object) -> list[str]:
    """The paths of keys in platforms' `limits` objects that this format does not define. They are
    ignored like any field added later, but a misspelled limit silently is the default: the gateway
    warns of them at start-up."""
    found: list[str] = []
    platforms = data.get("platforms") if isinstance(data, dict) else None
    for i, p in enumerate(platforms if isinstance(platforms, list) else []):
        limits = p.get("limits") if isinstance(p, dict) else None
        if isinstance(limits, dict):
            found += [f"platforms[{i}].limits.{str(key)[:40]}" for key in limits if key not in _LIMIT_KEYS]
    return found


def _limits(value: object, where: str) -> PlatformLimits:
    """A platform's `limits` object (absent: none of its own); keys it does not define are ignored."""
    if value is None:
        return NO_LIMITS
    limits = _object(value, where)
    read: dict[str, int | float | None] = {}
    for key in _LIMIT_KEYS:
        given = limits.get(key)
        if given is None:
            read[key] = None
        elif key == "requests_per_second":
            if isinstance(given, bool) or not isinstance(given, int | float) or not 0 < given < float("inf"):
                _malformed(f"{where}.{key}", "must be a positive number")
            read[key] = float(given)
        elif not _whole(given) or given < 1:
            _malformed(f"{where}.{key}", "must be a whole number, 1 or more")
        else:
            read[key] = given
    return PlatformLimits(**read)  # type: ignore[arg-type]


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# --- field readers: each names the field it refuses ----------------------------------------------

def _malformed(where: str, problem: str) -> NoReturn:
    """`where` is the field's path from the document's root ("" for the root itself)."""
    what = f"registry field {where}" if where else "registry"
    raise RegistryFormatError(f"{what} {problem}", reason=_MALFORMED, field=where)


def _path(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _no_repeated_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"object key {key[:40]!r} given twice")
        result[key] = value
    return result


def _object(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        _malformed(where, "must be an object")
    return value


def _get(obj: Mapping[str, object], name: str, where: str) -> object:
    if name not in obj:
        _malformed(_path(where, name), "is missing")
    return obj[name]


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        _malformed(where, "must be a non-empty string")
    return value


def _string(obj: Mapping[str, object], name: str, where: str) -> str:
    return _text(_get(obj, name, where), _path(where, name))


def _digits(value: object, count: int, where: str) -> str:
    if not isinstance(value, str) or len(value) != count or not value.isascii() or not value.isdigit():
        _malformed(where, f"must be a string of {count} digits")
    return value


def _items(obj: Mapping[str, object], name: str, where: str, *, optional: bool = False) -> list[tuple[int, object]]:
    value = obj.get(name, []) if optional else _get(obj, name, where)
    if not isinstance(value, list):
        _malformed(_path(where, name), "must be a list")
    return list(enumerate(value))


def _objects(obj: Mapping[str, object], name: str, where: str, *,
             optional: bool = False) -> list[tuple[int, Mapping[str, object]]]:
    return [(i, _object(item, f"{_path(where, name)}[{i}]")) for i, item in _items(obj, name, where, optional=optional)]


def _unique(value: str, seen: Collection[str], where: str) -> str:
    """`value`, unless `seen` already holds it. Callers add it to `seen` themselves."""
    if value in seen:
        raise RegistryFormatError(f"registry field {where}: {value[:80]!r} is listed twice",
                                  reason="DUPLICATE_ID", field=where)
    return value


def _keys(owner: Mapping[str, object], where: str, seen: set[str]) -> Mapping[str, VerifyingKey]:
    """The `keys` list of the gateway or of a platform; key ids are unique across the document."""
    keys: dict[str, VerifyingKey] = {}
    for i, k in _objects(owner, "keys", where):
        at = f"{where}.keys[{i}]"
        key_id = _unique(_string(k, "key_id", at), seen, f"{at}.key_id")
        seen.add(key_id)
        algorithm, pem = _string(k, "algorithm", at), _string(k, "public_key", at)
        window = KeyWindow(*(_time(k[name], f"{at}.{name}") if name in k else None
                             for name in ("not_before", "not_after", "revoked_at")))
        if window.not_before is not None and window.not_after is not None and window.not_after <= window.not_before:
            _malformed(f"{at}.not_after", "must be later than not_before")
        try:
            keys[key_id] = load_verifying_key(key_id, algorithm, pem.encode("utf-8"), window)
        except UnusableKey as exc:
            raise RegistryFormatError(f"registry field {at}: {exc}", reason="KEY_UNUSABLE", field=at) from exc
    return MappingProxyType(keys)


def _time(value: object, where: str) -> dt.datetime:
    if not isinstance(value, str):
        _malformed(where, "must be an RFC 3339 date-time string")
    try:
        return parse_time(value)
    except ValueError:
        _malformed(where, "must be an RFC 3339 date-time with an offset, e.g. 2026-12-01T00:00:00+08:00")


def _pins(owner: Mapping[str, object], where: str) -> frozenset[bytes]:
    pins: set[bytes] = set()
    for j, pin in _items(owner, "certificate_pins", where, optional=True):
        if not isinstance(pin, str) or len(pin) != 64 or not _is_hex(pin):
            _malformed(f"{where}.certificate_pins[{j}]", "must be 64 hex digits (SHA-256 of the certificate's SPKI)")
        pins.add(bytes.fromhex(pin))
    return frozenset(pins)


def _serial(value: object, where: str) -> int:
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not _is_hex(value.replace(":", "")):
        _malformed(where, "must be the certificate's serial number in hex (at most 64 digits, colons allowed)")
    return int(value.replace(":", ""), 16)


def _is_hex(text: str) -> bool:
    return bool(text) and text.isascii() and all(c in "0123456789abcdefABCDEF" for c in text)
