"""The person-key secrets as operators configure them: files checked at start-up, and a rotation
(add a secret, make it current, drop the old one) that loses no match, through real gateways on
one store, restarted between the steps as replicas are."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from clients import automatic, builders
from clients.errors import GatewayRejected
from clients.platform import PlatformClient, PlatformConfig
from clients.scenario import CasePlan, outbound_messages
from gateway.app.assembly import assemble, read_materials
from gateway.app.config import AutomaticConfig, GatewayConfig
from gateway.app.devpki import DevPaths
from gateway.app.failures import ConfigError
from gateway.app.server import utc_now
from gateway.core.messages import BusinessMessage
from mitransfer.v1 import types_pb2
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
    assert gauges == {"record/old": 1, "enrollment/old": 1, "case/old": 0, "/": 0}
    # Both secrets, the new one current: the upkeep keys both entries again under it.
    _, gauges = await run(keys(old=old, new=new))
    assert gauges == {"record/new": 1, "enrollment/new": 1, "case/new": 0, "/": 0}  # and none stale
    # The old secret gone: both entries still match, each with its counterpart.
    bodies, _ = await run(keys(new=new), automatic.enrollment("330100", first, EMPLOYEE, TODAY),
                          automatic.suspended_record("320100", second, EMPLOYEE, suspended))
    assert [list(b.automatic.opened_transfer_ids) for b in bodies] == [  # type: ignore[attr-defined]
        [waiting_record.header.transfer_id], [bodies[1].transfer_id]]  # type: ignore[attr-defined]



def _plain_digest(person: types_pb2.Person) -> bytes:
    """What cases kept of a person before they were keyed: a plain SHA-256 that a dictionary of
    ID numbers reverses (region × birth date × sequence × check digit: ~10⁹ numbers)."""
    return hashlib.sha256(f"{person.certificate_type}:{person.certificate_number}".encode()).digest()


async def _refusal(client: PlatformClient, message: BusinessMessage) -> str:
    with pytest.raises(GatewayRejected) as refused:
        await client.submit(message)
    return refused.value.reason


def _case_keys(database: Path) -> dict[str, tuple[str, bytes]]:
    with sqlite3.connect(database) as conn:
        return {tid: (key_id, bytes(key)) for tid, key_id, key in
                conn.execute("SELECT transfer_id, key_id, person_key FROM cases")}


def _every_value(database: Path) -> list[bytes]:
    """Every value of every table, as a dictionary attack on a copy of the database reads them."""
    values: list[bytes] = []
    with sqlite3.connect(database) as conn:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for row in conn.execute(f"SELECT * FROM {table}"):
                values += [v if isinstance(v, bytes) else str(v).encode() for v in row]
    return values


def _plan(seed: int) -> CasePlan:
    return CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=0, seed=seed)


async def _serve(config: GatewayConfig, pki: DevPaths, *messages: BusinessMessage) -> list[str]:
    """A gateway on `config`, Jiangsu submitting `messages`: each one's receipt's transfer id, or
    its refusal's reason."""
    server = assemble(config, prometheus=CollectorRegistry())
    await server.start()
    try:
        async with PlatformClient.connect(PlatformConfig.dev("jiangsu", f"127.0.0.1:{server.port}", pki.root)) as js:
            answers = []
            for m in messages:
                try:
                    answers.append((await js.submit(m)).transfer_id)
                except GatewayRejected as refused:
                    answers.append(refused.reason)
            return answers
    finally:
        await server.stop(grace=0.1)


async def test_cases_from_before_keys_are_keyed_at_start_up_and_still_meet_new_cases(
        pki: DevPaths, tmp_path: Path) -> None:
    """A store whose cases hold the plain SHA-256 of each person's certificate (as before migration
    11): the upgrade erases it from the closed cases and keys the open ones before the gateway
    serves, so a new case of the same person at the same agency is still refused, the case's own
    messages still match its person, and no digest a dictionary could match is left."""
    database = tmp_path / "g.db"
    config = replace(gateway_config(pki, database), automatic=keys(k=secret(tmp_path, "k", "03" * 32)))
    waiting, done = _plan(71), _plan(72)
    notice, table = outbound_messages(waiting)[:2]
    refused = builders.outbound_notice_refused(done.route, done.person, EMPLOYEE,
                                               [builders.reason(types_pb2.REASON_CODE_OTHER, "参保关系已终止")])
    assert await _serve(config, pki, notice, refused) == [waiting.route.transfer_id, done.route.transfer_id]
    with sqlite3.connect(database) as conn:  # the store as the release before keyed cases left it
        for plan in (waiting, done):
            conn.execute("UPDATE cases SET person_key = ? WHERE transfer_id = ?",
                         (_plain_digest(plan.person), plan.route.transfer_id))
        conn.execute("ALTER TABLE cases DROP COLUMN key_id")
        conn.execute("DELETE FROM schema_version WHERE version >= 11")
    assert _plain_digest(waiting.person) in _every_value(database)

    again = builders.outbound_notice_accepted(builders.Route.new("320100", "330100"), waiting.person, EMPLOYEE,
                                              TODAY - dt.timedelta(days=1))
    assert await _serve(config, pki, again, table) == ["CASE_ALREADY_OPEN", waiting.route.transfer_id]
    kept = _case_keys(database)
    assert kept[done.route.transfer_id] == ("", b"")  # closed: nothing reads its person any more
    assert kept[waiting.route.transfer_id][0] == "k"
    everything = _every_value(database)
    for plan in (waiting, done):  # a dictionary of plain digests of ID numbers finds nobody
        assert _plain_digest(plan.person) not in everything


async def test_after_a_rotation_an_open_case_still_meets_a_new_case_of_its_person(
        pki: DevPaths, tmp_path: Path) -> None:
    """One open case per person and outbound agency, through every step of a rotation: the case
    keyed under the old secret, then both (the new one current, before and after the upkeep keys
    the case again), then the new one alone."""
    database = tmp_path / "g.db"
    old, new = secret(tmp_path, "old", "04" * 32), secret(tmp_path, "new", "05" * 32)
    plan = _plan(73)
    notice, table = outbound_messages(plan)[:2]

    def another() -> BusinessMessage:
        return builders.outbound_notice_accepted(builders.Route.new("320100", "330100"), plan.person, EMPLOYEE,
                                                 TODAY - dt.timedelta(days=1))

    config = gateway_config(pki, database)
    assert await _serve(replace(config, automatic=keys(old=old)), pki, notice) == [plan.route.transfer_id]
    assert _case_keys(database)[plan.route.transfer_id][0] == "old"
    rotating = replace(config, automatic=keys(old=old, new=new))
    assert await _serve(rotating, pki, another()) == ["CASE_ALREADY_OPEN"]  # asked under both keys
    server = assemble(rotating, prometheus=CollectorRegistry())
    await server.start()
    try:
        await server.keeper.keep_once()  # the upkeep keys the case again (its first round may have, at start)
        stale = server.prometheus.get_sample_value("transfer_gateway_index_stale_entries")
        cases = server.prometheus.get_sample_value("transfer_gateway_index_entries", {"kind": "case", "key_id": "new"})
    finally:
        await server.stop(grace=0.1)
    assert (stale, cases) == (0, 1)
    assert _case_keys(database)[plan.route.transfer_id][0] == "new"
    assert await _serve(replace(config, automatic=keys(new=new)), pki, another(), table) == [
        "CASE_ALREADY_OPEN", plan.route.transfer_id]  # and the case's table is its person's, under the new key
