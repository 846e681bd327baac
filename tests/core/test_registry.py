"""gateway.core.registry: the gateway's view of the registry (who is calling, who speaks for which
agency) and its errors. The format and its checks are tested in tests/protocol/test_registry.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.core.errors import NotPermitted
from gateway.core.registry import Registry, RegistryError
from tests.protocol.test_registry import sample


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_dict(sample())


def test_callers_are_found_by_their_certificate_uri(registry: Registry) -> None:
    north = registry.platform_by_uri("urn:p:north")
    assert north is not None and north.id == "north"
    assert registry.platform_by_uri("urn:o:rev") is None  # an operator is not a platform
    operator = registry.operator_by_uri("urn:o:rev")
    assert operator is not None and operator.roles == {"reviewer"}
    assert registry.operator_by_uri("urn:p:north") is None
    assert registry.dev_only is True


def test_agencies_and_their_platforms(registry: Registry) -> None:
    assert registry.agencies_of("north") == {"110100", "129900"}
    assert registry.platform_of_agency("440100") == "south"
    assert registry.platform_of_agency("999999") is None


def test_a_platform_signs_only_with_its_own_keys(registry: Registry) -> None:
    north, south = registry.platforms["north"], registry.platforms["south"]
    assert registry.signing_key(north, "north-1") is not None
    assert registry.signing_key(north, "south-1") is None
    assert registry.signing_key(south, "gw-1") is None
    assert set(registry.gateway_keys) == {"gw-1"}


def test_acting_for_another_platforms_agency_is_not_permitted(registry: Registry) -> None:
    north = registry.platforms["north"]
    registry.check_acts_for(north, "110100", what="sender")
    with pytest.raises(NotPermitted) as err:
        registry.check_acts_for(north, "440100", what="sender")
    assert err.value.reason == "AGENCY_NOT_OF_PLATFORM"
    assert err.value.metadata == {"agency": "440100", "platform": "north"}


def test_a_bad_registry_is_a_registry_error() -> None:
    data = sample()
    data["platforms"][1]["id"] = "north"
    with pytest.raises(RegistryError, match=r"platforms\[1\]\.id: 'north' is listed twice") as err:
        Registry.from_dict(data)
    assert getattr(err.value.__cause__, "reason", None) == "DUPLICATE_ID"


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(sample()), encoding="utf-8")
    assert set(Registry.load(path).platforms) == {"north", "south"}
    path.write_text("{", encoding="utf-8")
    with pytest.raises(RegistryError, match=f"registry {path}: registry is not a JSON document"):
        Registry.load(path)
    with pytest.raises(RegistryError, match="cannot read registry"):
        Registry.load(tmp_path / "absent.json")
