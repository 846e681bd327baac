"""The registry's public format: a good document read into its dataclasses, every required field
refused by name when missing or mistyped, and a named table of inconsistent documents."""

from __future__ import annotations

import copy
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
    """Two platforms (one with an ECDSA key), a gateway key, three agencies, one reviewer."""
    return {
        "dev_only": True,
        "comment": "fields the format does not define are ignored",
        "gateway": {"keys": [{"key_id": "gw-1", "algorithm": "ed25519", "public_key": _pem(_ED)}]},
        "platforms": [
            {"id": "north", "name": "北方平台", "certificate_uri": "urn:p:north", "provinces": ["11", "12"],
             "keys": [{"key_id": "north-1", "algorithm": "ecdsa-p256-sha256", "public_key": _pem(_EC)}]},
            {"id": "south", "name": "南方平台", "certificate_uri": "urn:p:south", "provinces": ["44"],
             "keys": [{"key_id": "south-1", "algorithm": "ed25519", "public_key": _pem(_ED)}]},
        ],
        "agencies": [
            {"code": "110100", "name": "北京", "platform": "north"},
            {"code": "129900", "name": "天津", "platform": "north"},
            {"code": "440100", "name": "广州", "platform": "south"},
        ],
        "operators": [{"id": "rev", "name": "复核员", "certificate_uri": "urn:o:rev", "roles": ["reviewer"]}],
    }


def test_a_good_document_reads_into_its_dataclasses() -> None:
    doc = registry.from_dict(sample())
    assert doc.dev_only is True
    assert list(doc.platforms) == ["north", "south"] and list(doc.agencies) == ["110100", "129900", "440100"]
    north = doc.platforms["north"]
    assert (north.name, north.certificate_uri, north.provinces) == ("北方平台", "urn:p:north", {"11", "12"})
    assert north.keys["north-1"].algorithm == "ecdsa-p256-sha256"
    assert north.keys["north-1"].verify(_EC.sign(b"m", ec.ECDSA(hashes.SHA256())), b"m")
    assert doc.gateway_keys["gw-1"].verify(_ED.sign(b"m"), b"m")
    assert doc.agencies["129900"] == registry.Agency("129900", "天津", "north")
    assert doc.agencies["129900"].province == "12"
    assert doc.operators["rev"] == registry.Operator("rev", "复核员", "urn:o:rev", frozenset({"reviewer"}))


def test_the_parsed_document_cannot_be_changed() -> None:
    doc = registry.from_dict(sample())
    with pytest.raises(TypeError):
        doc.agencies["500100"] = registry.Agency("500100", "x", "north")  # type: ignore[index]
    with pytest.raises(AttributeError):
        doc.dev_only = False  # type: ignore[misc]


def test_operators_and_dev_only_may_be_left_out() -> None:
    data = sample()
    del data["operators"], data["dev_only"]
    doc = registry.from_dict(data)
    assert doc.operators == {} and doc.dev_only is False


def test_the_committed_dev_registry_reads() -> None:
    doc = registry.from_json((ROOT / "certs" / "dev" / "registry.json").read_bytes())
    assert doc.dev_only
    assert sorted(a.code for a in doc.agencies.values() if a.platform == "jiangsu") == ["320100", "320500", "329900"]
    assert set(doc.gateway_keys) == {"gateway-dev-1"}


# --- every required field, missing or mistyped, is refused by its name ----------------------------

OPTIONAL = {("dev_only",), ("operators",), ("comment",)}  # the document's only optional fields


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
                 "DUPLICATE_ID", "operators[1].id", id="operator-twice"),
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
]


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


def test_from_json_reads_what_from_dict_reads() -> None:
    data = sample()
    assert registry.from_json(json.dumps(data)).agencies == registry.from_dict(copy.deepcopy(data)).agencies
