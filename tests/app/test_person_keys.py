"""The person-key secrets as operators configure them: files checked at start-up, and a rotation
(add a secret, make it current, drop the old one) that loses no match, through real gateways on
one store, restarted between the steps as replicas are."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from clients import automatic, builders
from clients.platform import PlatformClient, PlatformConfig
from gateway.app.assembly import assemble, read_materials
from gateway.app.config import AutomaticConfig
from gateway.app.devpki import DevPaths
from gateway.app.failures import ConfigError
from gateway.app.server import utc_now
from tests.conftest import test_config as gateway_config

EMPLOYEE = builders.EMPLOYEE
TODAY = builders.today_in_china()


def secret(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.hex"
    path.write_text(text)
    path.chmod(0o600)
    return path


def keys(**secrets: Path) -> AutomaticConfig:
    *_, current = secrets
    return AutomaticConfig(person_key_secrets=secrets, current_person_key=current)


def test_each_secret_file_is_checked_and_named(pki: DevPaths, tmp_path: Path) -> None:
    config = replace(gateway_config(pki, tmp_path / "g.db"), automatic=keys(
        missing=tmp_path / "none.hex", short=secret(tmp_path, "short", "ab" * 16),
        text=secret(tmp_path, "text", "not hex at all"), good=secret(tmp_path, "good", "cd" * 32)))
    with pytest.raises(ConfigError) as caught:
        read_materials(config, now=utc_now())
    assert caught.value.problems == (
        f"[automatic.person_key_secrets] missing: {tmp_path / 'none.hex'}: no such file",
        f"[automatic.person_key_secrets] short: {tmp_path / 'short.hex'}: 16 bytes; a person-key secret has at"
        " least 32 (`openssl rand -hex 32`)",
        f"[automatic.person_key_secrets] text: {tmp_path / 'text.hex'}: not hex digits (write one with"
        " `openssl rand -hex 32`)",
    )
    assert "cd" * 32 not in str(caught.value) and "not hex at all" not in str(caught.value)


def test_a_secret_others_can_read_is_reported_outside_dev(pki: DevPaths, tmp_path: Path) -> None:
    copy = DevPaths(tmp_path / "pki")
    shutil.copytree(pki.root, copy.root)
    registry = json.loads(copy.registry.read_text(encoding="utf-8"))
    registry["dev_only"] = False
    copy.registry.write_text(json.dumps(registry), encoding="utf-8")
    loose = secret(tmp_path, "loose", "ef" * 32)
    loose.chmod(0o644)
    materials = read_materials(replace(gateway_config(copy, tmp_path / "g.db"), automatic=keys(k=loose)),
                               now=utc_now())
    assert materials.warnings == (f"[automatic.person_key_secrets] k: {loose}: private key readable by others"
                                  " (mode 0644); chmod 600 it",)
    assert materials.person_keys is not None and materials.person_keys.current == "k"


@pytest.mark.parametrize(("settings", "problem"), [
    ({"person_key_secrets": {"k": Path("k.hex")}}, "current_person_key is required"),
    ({"person_key_secrets": {"k": Path("k.hex")}, "current_person_key": "other"}, "is not one of"),
    ({"person_key_secrets": {"bad id": Path("k.hex")}, "current_person_key": "bad id"}, "is not 1 to 32"),
])
def test_the_secrets_settings_hold_together(settings: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        AutomaticConfig(**settings)  # type: ignore[arg-type]


async def test_a_rotation_keeps_every_match(pki: DevPaths, tmp_path: Path) -> None:
    database = tmp_path / "g.db"
    old, new = secret(tmp_path, "old", "01" * 32), secret(tmp_path, "new", "02" * 32)
    first, second = builders.sample_person(61), builders.sample_person(62)
    suspended = TODAY - dt.timedelta(days=2)
    waiting_record = automatic.suspended_record("320100", first, EMPLOYEE, suspended)
    waiting_enrollment = automatic.enrollment("330100", second, EMPLOYEE, TODAY)

    async def run(step: AutomaticConfig, *messages: object) -> tuple[list[object], dict[str, float]]:
        server = assemble(replace(gateway_config(pki, database), automatic=step), prometheus=CollectorRegistry())
        await server.start()
        try:
            await server.keeper.keep_once()
            address = f"127.0.0.1:{server.port}"
            async with (PlatformClient.connect(PlatformConfig.dev("jiangsu", address, pki.root)) as js,
                        PlatformClient.connect(PlatformConfig.dev("zhejiang", address, pki.root)) as zj):
                bodies = [await (js if m.header.sender == "320100" else zj).submit(m)  # type: ignore[attr-defined]
                          for m in messages]
            await server.keeper.keep_once()
            gauges = {f"{s.labels.get('kind', '')}/{s.labels.get('key_id', '')}": s.value
                      for metric in server.prometheus.collect() if metric.name.startswith("transfer_gateway_index_")
                      for s in metric.samples if s.name in ("transfer_gateway_index_entries",
                                                            "transfer_gateway_index_stale_entries")}
        finally:
            await server.stop(grace=0.1)
        return bodies, gauges

    # Under the old secret: a record and an enrollment of two people wait.
    _, gauges = await run(keys(old=old), waiting_record, waiting_enrollment)
    assert gauges == {"record/old": 1, "enrollment/old": 1, "/": 0}
    # Both secrets, the new one current: the upkeep keys both entries again under it.
    _, gauges = await run(keys(old=old, new=new))
    assert gauges == {"record/new": 1, "enrollment/new": 1, "/": 0}  # and none stale
    # The old secret gone: both entries still match, each with its counterpart.
    bodies, _ = await run(keys(new=new), automatic.enrollment("330100", first, EMPLOYEE, TODAY),
                          automatic.suspended_record("320100", second, EMPLOYEE, suspended))
    assert [list(b.automatic.opened_transfer_ids) for b in bodies] == [  # type: ignore[attr-defined]
        [waiting_record.header.transfer_id], [bodies[1].transfer_id]]  # type: ignore[attr-defined]
