"""The registry's public format: a good document read into its dataclasses, every required field
refused by name when missing or mistyped, and a named table of inconsistent documents."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from mitransfer.protocol import registry
from mitransfer.protocol.errors import RegistryFormatError

ROOT = Path(__file__).resolve().parents[2]
Doc = dict[str, Any]


def _pem(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


_ED = ed25519.Ed25519PrivateKey.generate()
_EC = ec.generate_private_key(ec.SECP256R1())


def sample() -> Doc:
    """Two platforms (one with an ECDSA key, one with limits of its own), a gateway key, three
    agencies, two reviewers (one scoped to a province), two region policies (a province's and a
    pooling region's)."""
    return {
        "dev_only": True,
        "comment": "fields the format does not define are ignored",
        "gateway": {"keys": [{"key_id": "gw-1", "algorithm": "ed25519", "public_key": _pem(_ED)}]},
        "platforms": [
            {"id": "north", "name": "北方平台", "certificate_uri": "urn:p:north", "provinces": ["11", "12"],
             "keys": [{"key_id": "north-1", "algorithm": "ecdsa-p256-sha256", "public_key": _pem(_EC)}]},
            {"id": "south", "name": "南方平台", "certificate_uri": "urn:p:south", "provinces": ["44"],
             "keys": [{"key_id": "south-1", "algorithm": "ed25519", "public_key": _pem(_ED)}],
             "limits": {"requests_per_second": 2.5, "subscriptions": 2}},
        ],
        "agencies": [
            {"code": "110100", "name": "北京", "platform": "north"},
            {"code": "129900", "name": "天津", "platform": "north"},
            {"code": "440100", "name": "广州", "platform": "south"},
        ],
        "operators": [{"id": "rev", "name": "复核员", "certificate_uri": "urn:o:rev", "roles": ["reviewer"]},
                      {"id": "rev-44", "name": "广东复核员", "certificate_uri": "urn:o:rev-44", "roles": ["reviewer"],
                       "provinces": ["44"]}],
        "policies": [{"region": "44", "waiting_period_months": 3, "review_above_fen": 1_000_000},
                     {"region": "440100", "waiting_period_months": 6, "review_above_fen": None}],
    }


def test_a_good_document_reads_into_its_dataclasses() -> None:
    doc = registry.from_dict(sample())
    assert doc.dev_only is True
    assert list(doc.platforms) == ["north", "south"] and list(doc.agencies) == ["110100", "129900", "440100"]
    north = doc.platforms["north"]
    assert (north.name, north.certificate_uri, north.provinces) == ("北方平台", "urn:p:north", {"11", "12"})
    assert north.keys["north-1"].algorithm == "ecdsa-p256-sha256"
    assert north.limits == registry.PlatformLimits()
    assert doc.platforms["south"].limits == registry.PlatformLimits(requests_per_second=2.5, subscriptions=2)
    assert north.keys["north-1"].verify(_EC.sign(b"m", ec.ECDSA(hashes.SHA256())), b"m")
    assert doc.gateway_keys["gw-1"].verify(_ED.sign(b"m"), b"m")
    assert doc.agencies["129900"] == registry.Agency("129900", "天津", "north")
    assert doc.agencies["129900"].province == "12"
    assert doc.operators["rev"] == registry.Operator("rev", "复核员", "urn:o:rev", frozenset({"reviewer"}))
    assert doc.operators["rev-44"].provinces == {"44"}
    assert doc.policies["44"] == registry.RegionPolicy("44", 3, 1_000_000)
    assert doc.policies["440100"] == registry.RegionPolicy("440100", 6, None)


@pytest.mark.parametrize(("region", "waiting", "reviews_above"), [
    ("440100", 6, None),     # its own policy: waits 6 months, reviews nothing (not its province's 10,000 yuan)
    ("440300", 3, 1_000_000),  # no policy of its own: its province's
    ("110100", 0, None),     # none at all: the national default
])
def test_the_most_specific_policy_applies(region: str, waiting: int, reviews_above: int | None) -> None:
    policy = registry.policy_of(registry.from_dict(sample()).policies, region)
    assert (policy.waiting_period_months, policy.review_above_fen) == (waiting, reviews_above)
    assert policy.reviews(1_000_001) is (reviews_above is not None)
    assert not policy.reviews(1_000_000)


def test_a_reviewer_covers_its_provinces_or_every_one() -> None:
    doc = registry.from_dict(sample())
    assert doc.operators["rev"].covers("11") and doc.operators["rev"].covers("44")
    assert doc.operators["rev-44"].covers("44") and not doc.operators["rev-44"].covers("11")


def test_the_parsed_document_cannot_be_changed() -> None:
    doc = registry.from_dict(sample())
    with pytest.raises(TypeError):
        doc.agencies["500100"] = registry.Agency("500100", "x", "north")  # type: ignore[index]
    with pytest.raises(AttributeError):
        doc.dev_only = False  # type: ignore[misc]


def test_operators_policies_and_dev_only_may_be_left_out() -> None:
    data = sample()
    del data["operators"], data["dev_only"], data["policies"]
    doc = registry.from_dict(data)
    assert doc.operators == {} and doc.policies == {} and doc.dev_only is False


def test_the_committed_dev_registry_reads() -> None:
    doc = registry.from_json((ROOT / "certs" / "dev" / "registry.json").read_bytes())
    assert doc.dev_only
    assert sorted(a.code for a in doc.agencies.values() if a.platform == "jiangsu") == ["320100", "320500", "329900"]
    assert set(doc.gateway_keys) == {"gateway-dev-1"}
    assert registry.policy_of(doc.policies, "330200").review_above_fen == 1_000_000  # Zhejiang's practice
    assert registry.policy_of(doc.policies, "320100").review_above_fen is None  # none by default


# --- every required field, missing or mistyped, is refused by its name ----------------------------

# The document's only optional fields.
OPTIONAL = {("dev_only",), ("operators",), ("comment",), ("policies",), ("operators", 1, "provinces"),
            ("platforms", 1, "limits"), ("platforms", 1, "limits", "requests_per_second"),
            ("platforms", 1, "limits", "subscriptions"),
            *(("policies", i, name) for i in (0, 1) for name in ("waiting_period_months", "review_above_fen"))}


Steps = tuple[str | int, ...]


def _leaves(node: Any, where: str = "", steps: Steps = ()) -> Iterator[tuple[str, Steps]]:
    """(field path as the errors name it, steps to it) for every field and list item below `node`."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        at = f"{where}[{key}]" if isinstance(key, int) else (f"{where}.{key}" if where else key)
        yield at, (*steps, key)
        yield from _leaves(child, at, (*steps, key))


REQUIRED = [(at, steps) for at, steps in _leaves(sample()) if steps not in OPTIONAL
            and not isinstance(steps[-1], int)]


def _parent(doc: Doc, steps: tuple[str | int, ...]) -> Any:
    node: Any = doc
    for step in steps[:-1]:
        node = node[step]
    return node


@pytest.mark.parametrize(("at", "steps"), REQUIRED, ids=[at for at, _ in REQUIRED])
def test_each_required_field_missing_is_named(at: str, steps: tuple[str | int, ...]) -> None:
    data = sample()
    del _parent(data, steps)[steps[-1]]
    with pytest.raises(RegistryFormatError) as err:
        registry.from_dict(data)
    assert (err.value.reason, err.value.field) == ("REGISTRY_MALFORMED", at)


@pytest.mark.parametrize(("at", "steps"), REQUIRED, ids=[at for at, _ in REQUIRED])
def test_each_required_field_of_the_wrong_type_is_named(at: str, steps: tuple[str | int, ...]) -> None:
    data = sample()
    parent = _parent(data, steps)
    parent[steps[-1]] = 7  # no field of the format is a number
    with pytest.raises(RegistryFormatError) as err:
        registry.from_dict(data)
    assert (err.value.reason, err.value.field) == ("REGISTRY_MALFORMED", at)


# --- inconsistent documents -----------------------------------------------------------------------

def _change(edit: Callable[[Doc], object]) -> Doc:
    data = sample()
    edit(data)
    return data


BAD: list[Any] = [
    pytest.param(lambda d: d["platforms"][1].update(id="north"), "DUPLICATE_ID", "platforms[1].id",
                 id="platform-twice"),
    pytest.param(lambda d: d["agencies"].append(dict(d["agencies"][0])), "DUPLICATE_ID", "agencies[3].code",
                 id="agency-twice"),
    pytest.param(lambda d: d["platforms"][1]["keys"][0].update(key_id="north-1"), "DUPLICATE_ID",
                 "platforms[1].keys[0].key_id", id="key-id-of-two-platforms"),
    pytest.param(lambda d: d["platforms"][0]["keys"][0].update(key_id="gw-1"), "DUPLICATE_ID",
                 "platforms[0].keys[0].key_id", id="platform-key-id-of-the-gateway"),
    pytest.param(lambda d: d["gateway"]["keys"].append(dict(d["gateway"]["keys"][0])), "DUPLICATE_ID",
                 "gateway.keys[1].key_id", id="key-id-twice-in-one-list"),
    pytest.param(lambda d: d["platforms"][1].update(certificate_uri="urn:p:north"), "DUPLICATE_ID",
                 "platforms[1].certificate_uri", id="certificate-uri-of-two-platforms"),
    pytest.param(lambda d: d["operators"][0].update(certificate_uri="urn:p:south"), "DUPLICATE_ID",
                 "operators[0].certificate_uri", id="operator-with-a-platforms-uri"),
    pytest.param(lambda d: d["operators"].append(dict(d["operators"][0], certificate_uri="urn:o:2")),
                 "DUPLICATE_ID", "operators[2].id", id="operator-twice"),
    pytest.param(lambda d: d["agencies"].append({"code": "500100", "name": "x", "platform": "west"}),
                 "UNKNOWN_PLATFORM", "agencies[3].platform", id="agency-of-unknown-platform"),
    pytest.param(lambda d: d["agencies"].append({"code": "500100", "name": "x", "platform": "north"}),
                 "AGENCY_OUTSIDE_PROVINCES", "agencies[3].code", id="agency-outside-provinces"),
    pytest.param(lambda d: d["agencies"][0].update(code="11010"), "REGISTRY_MALFORMED", "agencies[0].code",
                 id="agency-code-of-five-digits"),
    pytest.param(lambda d: d["agencies"][0].update(code="１10100"), "REGISTRY_MALFORMED", "agencies[0].code",
                 id="agency-code-full-width"),
    pytest.param(lambda d: d["platforms"][0].update(provinces="11"), "REGISTRY_MALFORMED",
                 "platforms[0].provinces", id="provinces-a-string-not-a-list"),
    pytest.param(lambda d: d["platforms"][0].update(provinces=["110"]), "REGISTRY_MALFORMED",
                 "platforms[0].provinces[0]", id="province-of-three-digits"),
    pytest.param(lambda d: d["platforms"][0].update(id=""), "REGISTRY_MALFORMED", "platforms[0].id",
                 id="empty-id"),
    pytest.param(lambda d: d.update(dev_only="yes"), "REGISTRY_MALFORMED", "dev_only", id="dev-only-a-string"),
    pytest.param(lambda d: d["operators"][0].update(roles=["reviewer", 1]), "REGISTRY_MALFORMED",
                 "operators[0].roles[1]", id="role-a-number"),
    pytest.param(lambda d: d["platforms"][0]["keys"][0].update(algorithm="ed25519"), "KEY_UNUSABLE",
                 "platforms[0].keys[0]", id="ec-key-declared-ed25519"),
    pytest.param(lambda d: d["gateway"]["keys"][0].update(algorithm="rsa-pss"), "KEY_UNUSABLE",
                 "gateway.keys[0]", id="unknown-algorithm"),
    pytest.param(lambda d: d["gateway"]["keys"][0].update(public_key="-----BEGIN PUBLIC KEY-----\nnope\n"
                                                                     "-----END PUBLIC KEY-----\n"),
                 "KEY_UNUSABLE", "gateway.keys[0]", id="bad-pem"),
    pytest.param(lambda d: d["platforms"][0]["keys"][0].update(
        public_key=_pem(ec.generate_private_key(ec.SECP384R1()))), "KEY_UNUSABLE", "platforms[0].keys[0]",
        id="p384-as-p256"),
    pytest.param(lambda d: d.update(platforms={"north": {}}), "REGISTRY_MALFORMED", "platforms",
                 id="platforms-an-object"),
    pytest.param(lambda d: d["agencies"].__setitem__(0, "110100"), "REGISTRY_MALFORMED", "agencies[0]",
                 id="agency-a-string"),
    pytest.param(lambda d: d["operators"][1].update(provinces=["4"]), "REGISTRY_MALFORMED",
                 "operators[1].provinces[0]", id="operator-province-of-one-digit"),
    pytest.param(lambda d: d["policies"].append(dict(d["policies"][0])), "DUPLICATE_ID", "policies[2].region",
                 id="policy-region-twice"),
    pytest.param(lambda d: d["policies"][0].update(region="4401"), "REGISTRY_MALFORMED", "policies[0].region",
                 id="policy-region-of-four-digits"),
    pytest.param(lambda d: d["policies"][0].update(waiting_period_months=7), "REGISTRY_MALFORMED",
                 "policies[0].waiting_period_months", id="waiting-period-beyond-six-months"),
    pytest.param(lambda d: d["policies"][0].update(waiting_period_months=2.5), "REGISTRY_MALFORMED",
                 "policies[0].waiting_period_months", id="waiting-period-a-fraction"),
    pytest.param(lambda d: d["policies"][0].update(waiting_period_months=True), "REGISTRY_MALFORMED",
                 "policies[0].waiting_period_months", id="waiting-period-a-boolean"),
    pytest.param(lambda d: d["policies"][0].update(review_above_fen=-1), "REGISTRY_MALFORMED",
                 "policies[0].review_above_fen", id="review-threshold-negative"),
    pytest.param(lambda d: d["policies"][0].update(review_above_fen="10000"), "REGISTRY_MALFORMED",
                 "policies[0].review_above_fen", id="review-threshold-a-string"),
    pytest.param(lambda d: d["platforms"][1].update(limits=[]), "REGISTRY_MALFORMED", "platforms[1].limits",
                 id="limits-a-list"),
    pytest.param(lambda d: d["platforms"][1]["limits"].update(subscriptions=0), "REGISTRY_MALFORMED",
                 "platforms[1].limits.subscriptions", id="no-subscription-at-all"),
    pytest.param(lambda d: d["platforms"][1]["limits"].update(calls_in_flight=2.5), "REGISTRY_MALFORMED",
                 "platforms[1].limits.calls_in_flight", id="calls-in-flight-a-fraction"),
    pytest.param(lambda d: d["platforms"][1]["limits"].update(burst=True), "REGISTRY_MALFORMED",
                 "platforms[1].limits.burst", id="burst-a-boolean"),
    pytest.param(lambda d: d["platforms"][1]["limits"].update(requests_per_second=0), "REGISTRY_MALFORMED",
                 "platforms[1].limits.requests_per_second", id="rate-zero"),
    pytest.param(lambda d: d["platforms"][1]["limits"].update(requests_per_second="5"), "REGISTRY_MALFORMED",
                 "platforms[1].limits.requests_per_second", id="rate-a-string"),
    # The lifecycle's fields: version, times, windows, pins, revoked serials.
    pytest.param(lambda d: d.update(version=-1), "REGISTRY_MALFORMED", "version", id="negative-version"),
    pytest.param(lambda d: d.update(version=True), "REGISTRY_MALFORMED", "version", id="version-a-boolean"),
    pytest.param(lambda d: d.update(version="3"), "REGISTRY_MALFORMED", "version", id="version-a-string"),
    pytest.param(lambda d: d.update(issued_at="2026-12-01"), "REGISTRY_MALFORMED", "issued_at", id="a-date-not-a-time"),
    pytest.param(lambda d: d["gateway"]["keys"][0].update(not_after="2026-12-01T00:00:00"), "REGISTRY_MALFORMED",
                 "gateway.keys[0].not_after", id="a-time-without-offset"),
    pytest.param(lambda d: d["gateway"]["keys"][0].update(revoked_at=1764547200), "REGISTRY_MALFORMED",
                 "gateway.keys[0].revoked_at", id="a-time-as-a-number"),
    pytest.param(lambda d: d["platforms"][0]["keys"][0].update(not_before="2026-12-01T00:00:00Z",
                                                               not_after="2026-12-01T00:00:00+00:00"),
                 "REGISTRY_MALFORMED", "platforms[0].keys[0].not_after", id="a-window-that-ends-as-it-begins"),
    pytest.param(lambda d: d["platforms"][0].update(certificate_pins=["ab" * 31]), "REGISTRY_MALFORMED",
                 "platforms[0].certificate_pins[0]", id="a-pin-of-31-bytes"),
    pytest.param(lambda d: d["platforms"][0].update(certificate_pins=["zz" * 32]), "REGISTRY_MALFORMED",
                 "platforms[0].certificate_pins[0]", id="a-pin-not-hex"),
    pytest.param(lambda d: d.update(revoked_certificates=[{"serial": "0x1f"}]), "REGISTRY_MALFORMED",
                 "revoked_certificates[0].serial", id="a-serial-with-0x"),
    pytest.param(lambda d: d.update(revoked_certificates=[{"revoked_at": "2026-12-01T00:00:00Z"}]),
                 "REGISTRY_MALFORMED", "revoked_certificates[0].serial", id="a-revocation-without-serial"),
]


def test_the_lifecycle_fields_read() -> None:
    data = sample()
    data.update(version=7, issued_at="2026-12-01T09:00:00+08:00",
                revoked_certificates=[{"serial": "5F:1C:00:A0", "revoked_at": "2026-11-30T00:00:00Z"}])
    data["platforms"][0]["certificate_pins"] = ["ab" * 32, "CD" * 32]
    data["gateway"]["keys"][0].update(not_before="2026-01-01T00:00:00+08:00", not_after="2027-01-01T00:00:00Z",
                                      revoked_at="2026-06-01T00:00:00Z")
    doc = registry.from_dict(data)
    assert (doc.version, doc.issued_at) == (7, dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC))
    assert doc.revoked_serials == {0x5F1C00A0}
    assert doc.platforms[data["platforms"][0]["id"]].certificate_pins == {b"\xab" * 32, b"\xcd" * 32}
    window = doc.gateway_keys["gw-1"].window
    assert window.not_before == dt.datetime(2025, 12, 31, 16, 0, tzinfo=dt.UTC)
    assert not window.contains(dt.datetime(2025, 12, 31, 15, 59, 59, tzinfo=dt.UTC))
    assert window.contains(dt.datetime(2026, 5, 31, 23, 59, 59, tzinfo=dt.UTC))
    assert window.problem_at(dt.datetime(2026, 6, 1, tzinfo=dt.UTC)) == ("KEY_REVOKED", window.revoked_at)
    unversioned = registry.from_dict(sample())
    assert (unversioned.version, unversioned.issued_at, unversioned.revoked_serials) == (0, None, frozenset())
    assert registry.from_json(json.dumps(data)).digest == hashlib.sha256(json.dumps(data).encode()).digest()


@pytest.mark.parametrize(("edit", "reason", "field"), BAD)
def test_inconsistent_documents_are_refused(edit: Callable[[Doc], object], reason: str, field: str) -> None:
    with pytest.raises(RegistryFormatError) as err:
        registry.from_dict(_change(edit))
    assert (err.value.reason, err.value.field) == (reason, field), str(err.value)
    assert isinstance(err.value, ValueError)


def test_a_document_that_is_not_an_object() -> None:
    with pytest.raises(RegistryFormatError) as err:
        registry.from_dict([sample()])
    assert (err.value.reason, err.value.field) == ("REGISTRY_MALFORMED", "")
    assert str(err.value) == "registry must be an object"


@pytest.mark.parametrize("text", [b"", b"{", b"\xff\xfe{}", b'{"dev_only": true, "dev_only": false}'],
                         ids=["empty", "truncated", "not-utf8", "repeated-key"])
def test_text_that_is_not_a_json_document(text: bytes) -> None:
    with pytest.raises(RegistryFormatError) as err:
        registry.from_json(text)
    assert err.value.reason == "REGISTRY_MALFORMED"


def test_limits_the_format_does_not_define_are_ignored_and_named_for_a_warning() -> None:
    data = sample()
    data["platforms"][1]["limits"]["request_per_second"] = 9  # misspelled
    assert registry.from_dict(data).platforms["south"].limits.requests_per_second == 2.5
    assert registry.unknown_limits(data) == ["platforms[1].limits.request_per_second"]
    assert registry.unknown_limits(sample()) == [] and registry.unknown_limits([]) == []


def test_from_json_reads_what_from_dict_reads() -> None:
    data = sample()
    assert registry.from_json(json.dumps(data)).agencies == registry.from_dict(copy.deepcopy(data)).agencies
