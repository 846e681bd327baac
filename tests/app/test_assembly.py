"""Assembly and start-up: every file a configuration names is read and checked before anything
starts, each problem named by its setting; start-up is all or nothing (ports bound before the
store is opened, everything undone on a failure); the SQLite store is one process's."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import re
import shutil
import socket
import sqlite3
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.app.assembly import assemble, read_materials
from gateway.app.config import GatewayConfig, SigningConfig, SlaConfig
from gateway.app.devpki import DevPaths, PkiExists, write_dev_pki
from gateway.app.failures import ConfigError, Unavailable
from gateway.app.server import utc_now
from gateway.core.errors import StoreUnavailable
from gateway.core.sla import Sla
from gateway.core.workdays import WorkingCalendar
from gateway.store.sqlite import SQLiteConfig, SQLiteStore
from tests.conftest import test_config as gateway_config
from tests.support import free_port


def copy_pki(pki: DevPaths, tmp_path: Path) -> DevPaths:
    root = tmp_path / "pki"
    shutil.copytree(pki.root, root)
    return DevPaths(root)


def materials_problems(config: GatewayConfig) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        read_materials(config, now=utc_now())
    return list(caught.value.problems)


def test_good_files_are_read_once(pki: DevPaths, tmp_path: Path) -> None:
    materials = read_materials(gateway_config(pki, tmp_path / "g.db"), now=utc_now())
    assert materials.registry.dev_only and materials.signer.key_id == "gateway-dev-1"
    assert materials.tls.key == pki.gateway_key.read_bytes() and materials.warnings == ()


def test_every_missing_file_is_named_by_its_setting(pki: DevPaths, tmp_path: Path) -> None:
    copy = copy_pki(pki, tmp_path)
    for path in (copy.ca, copy.gateway_key, copy.gateway_signing_key):
        path.unlink()
    config = replace(gateway_config(copy, tmp_path / "g.db"), sla=SlaConfig(calendar_file=tmp_path / "calendar.toml"))
    assert materials_problems(config) == [
        f"[tls] ca: {copy.ca}: no such file",
        f"[tls] key: {copy.gateway_key}: no such file",
        f"[signing] key: {copy.gateway_signing_key}: no such file",
        f"[sla] calendar_file: {tmp_path / 'calendar.toml'}: no such file",
    ]


def test_a_signing_key_id_the_registry_does_not_list(pki: DevPaths, tmp_path: Path) -> None:
    config = replace(gateway_config(pki, tmp_path / "g.db"),
                     signing=SigningConfig(key=pki.gateway_signing_key, key_id="gateway-2027-1"))
    assert materials_problems(config) == [
        f"[signing] key_id: 'gateway-2027-1' is not a gateway key of the registry {pki.registry} "
        "(it lists: gateway-dev-1)"]


def test_a_signing_key_that_is_not_the_registered_one(pki: DevPaths, tmp_path: Path) -> None:
    config = replace(gateway_config(pki, tmp_path / "g.db"),
                     signing=SigningConfig(key=pki.platform_signing_key("jiangsu"), key_id="gateway-dev-1"))
    assert materials_problems(config) == [
        f"[signing] key: {pki.platform_signing_key('jiangsu')}: is not the key the registry lists as gateway-dev-1"]


def test_a_tls_key_of_another_certificate_and_files_that_are_not_pem(pki: DevPaths, tmp_path: Path) -> None:
    copy = copy_pki(pki, tmp_path)
    shutil.copy(copy.platform_key("jiangsu"), copy.gateway_key)
    copy.ca.write_text("not a certificate\n", encoding="utf-8")
    copy.registry.write_text("{", encoding="utf-8")
    found = materials_problems(gateway_config(copy, tmp_path / "g.db"))
    assert found[0].startswith(f"registry: {copy.registry}: registry is not a JSON document: Expecting property name")
    assert found[1:] == [f"[tls] ca: {copy.ca}: not a PEM certificate",
                         f"[tls] key: {copy.gateway_key}: does not match the certificate {copy.gateway_cert}"]


def test_an_expired_certificate_is_refused_and_one_about_to_expire_is_reported(pki: DevPaths, tmp_path: Path) -> None:
    copy = copy_pki(pki, tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now + dt.timedelta(days=3))
            .sign(key, hashes.SHA256()))
    copy.gateway_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    copy.gateway_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    config = gateway_config(copy, tmp_path / "g.db")
    soon = read_materials(config, now=now)
    assert soon.warnings == (f"[tls] cert: {copy.gateway_cert}: expires on {now + dt.timedelta(days=3):%Y-%m-%d}",)
    assert materials_problems_at(config, now + dt.timedelta(days=4)) == [
        f"[tls] cert: {copy.gateway_cert}: expired on {now + dt.timedelta(days=3):%Y-%m-%d}"]


def materials_problems_at(config: GatewayConfig, now: dt.datetime) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        read_materials(config, now=now)
    return list(caught.value.problems)


def test_a_calendar_that_does_not_parse(pki: DevPaths, tmp_path: Path) -> None:
    calendar = tmp_path / "calendar.toml"
    calendar.write_text('[2027]\nholidays = ["2027-02-30"]\n', encoding="utf-8")
    config = replace(gateway_config(pki, tmp_path / "g.db"), sla=SlaConfig(calendar_file=calendar))
    [problem] = materials_problems(config)
    assert problem.startswith("[sla] calendar_file: ") and "'2027-02-30' is not a date" in problem


def test_a_sqlite_file_whose_folder_cannot_be_made(pki: DevPaths, tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("", encoding="utf-8")
    config = gateway_config(pki, tmp_path / "plain-file" / "g.db")
    assert materials_problems(config) == [
        f"[store] sqlite: {tmp_path / 'plain-file' / 'g.db'}: {tmp_path / 'plain-file'} is not a folder"]


def test_a_private_key_others_can_read_is_reported_outside_dev(pki: DevPaths, tmp_path: Path) -> None:
    copy = copy_pki(pki, tmp_path)
    registry = json.loads(copy.registry.read_text(encoding="utf-8"))
    registry["dev_only"] = False
    copy.registry.write_text(json.dumps(registry), encoding="utf-8")
    copy.gateway_key.chmod(0o644)
    materials = read_materials(gateway_config(copy, tmp_path / "g.db"), now=utc_now())
    assert materials.warnings == (f"[tls] key: {copy.gateway_key}: private key readable by others (mode 0644); "
                                  "chmod 600 it",)


def test_a_registry_limit_the_gateway_does_not_know_is_a_warning(pki: DevPaths, tmp_path: Path) -> None:
    copy = copy_pki(pki, tmp_path)
    registry = json.loads(copy.registry.read_text(encoding="utf-8"))
    registry["platforms"][1]["limits"] = {"requests_per_second": 5, "calls_in_fligth": 3}
    copy.registry.write_text(json.dumps(registry), encoding="utf-8")
    materials = read_materials(gateway_config(copy, tmp_path / "g.db"), now=utc_now())
    assert materials.registry.platforms["zhejiang"].limits.requests_per_second == 5
    assert materials.warnings == (
        f"registry: {copy.registry}: platforms[1].limits.calls_in_fligth is not a limit the gateway knows "
        "(ignored; known: calls_in_flight, requests_per_second, burst, subscriptions)",)


def test_dev_pki_keys_are_private_and_an_existing_set_is_kept(tmp_path: Path) -> None:
    paths = write_dev_pki(tmp_path / "pki")
    for key in (paths.gateway_key, paths.gateway_signing_key, paths.platform_key("anhui"),
                paths.platform_signing_key("anhui"), paths.operator_key("reviewer")):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE(paths.ca.stat().st_mode) == 0o600  # the rest of a dev PKI too (tests/app/test_at_rest.py)
    before = paths.registry.read_bytes()
    with pytest.raises(PkiExists) as caught:
        write_dev_pki(tmp_path / "pki")
    assert "ca.pem" in caught.value.existing and paths.registry.read_bytes() == before
    paths.gateway_key.chmod(0o644)
    write_dev_pki(tmp_path / "pki", force=True)
    assert paths.registry.read_bytes() != before and stat.S_IMODE(paths.gateway_key.stat().st_mode) == 0o600


def test_constructing_the_gateway_opens_nothing(pki: DevPaths, tmp_path: Path) -> None:
    database = tmp_path / "data" / "g.db"
    assemble(gateway_config(pki, database))
    assert not database.parent.exists()


def held_port() -> socket.socket:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def lock_is_free(database: Path) -> bool:
    async def try_open() -> bool:
        store = SQLiteStore(SQLiteConfig(path=database), utc_now, Sla(WorkingCalendar()))
        try:
            await store.open()
        except StoreUnavailable:
            return False
        await store.close()
        return True

    return asyncio.run(try_open())


async def test_a_taken_grpc_port_fails_before_the_store_is_opened(pki: DevPaths, tmp_path: Path) -> None:
    with held_port() as holder:
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        server = assemble(gateway_config(pki, tmp_path / "g.db", listen=address))
        with pytest.raises(Unavailable, match=re.escape(f"listen {address}: address already in use")):
            await server.start()
    assert not (tmp_path / "g.db").exists()


async def test_a_taken_metrics_port_undoes_everything(pki: DevPaths, tmp_path: Path) -> None:
    grpc_port = free_port()
    with held_port() as holder:
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        server = assemble(gateway_config(pki, tmp_path / "g.db", listen=f"127.0.0.1:{grpc_port}",
                                         metrics_listen=address))
        with pytest.raises(Unavailable, match=re.escape(f"metrics_listen {address}: address already in use")):
            await server.start()
    with socket.socket() as again:  # the gRPC port was let go
        again.bind(("127.0.0.1", grpc_port))
    assert not (tmp_path / "g.db").exists()
    await server.stop()  # stopping what never started is harmless


async def test_a_store_that_cannot_open_leaves_no_port_behind(pki: DevPaths, tmp_path: Path) -> None:
    database = tmp_path / "g.db"
    first = assemble(gateway_config(pki, database))
    await first.start()
    try:
        grpc_port, metrics_port = free_port(), free_port()
        second = assemble(gateway_config(pki, database, listen=f"127.0.0.1:{grpc_port}",
                                      metrics_listen=f"127.0.0.1:{metrics_port}"))
        with pytest.raises(StoreUnavailable, match=re.escape(f"SQLite store {database} is in use")):
            await second.start()
        for port in (grpc_port, metrics_port):
            with socket.socket() as again:
                again.bind(("127.0.0.1", port))
    finally:
        await first.stop(grace=0.1)
    assert await asyncio.to_thread(lock_is_free, database)


async def test_a_second_process_on_one_sqlite_file_is_refused_by_name(tmp_path: Path) -> None:
    database = tmp_path / "g.db"
    store = SQLiteStore(SQLiteConfig(path=database), utc_now, Sla(WorkingCalendar()))
    await store.open()
    try:
        assert not await asyncio.to_thread(lock_is_free, database)
        assert (tmp_path / "g.db.lock").read_text(encoding="ascii").strip().isdigit()
    finally:
        await store.close()
    assert await asyncio.to_thread(lock_is_free, database)


async def test_stop_lets_no_task_outlive_the_store(pki: DevPaths, tmp_path: Path) -> None:
    """A checkpoint being published when the gateway stops (the interval's round, or a caller's that
    went away) finishes before the store closes: after `stop()` no task the gateway started is
    left, and none failed unseen ("Task exception was never retrieved")."""
    loop = asyncio.get_running_loop()
    unseen: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: unseen.append(context))
    before = asyncio.all_tasks()
    database = tmp_path / "g.db"
    server = assemble(gateway_config(pki, database))
    await server.start()
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the store's writer waits here, so the publication stays under way
    try:
        caller = asyncio.create_task(server.publisher.publish_now())
        await asyncio.sleep(0.05)
        caller.cancel()  # its caller is gone, as the periodic round's is when stop cancels it
        stopping = asyncio.create_task(server.stop(grace=0))
        await asyncio.sleep(0.3)  # stop goes as far as it will while the publication waits
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await stopping
    left = asyncio.all_tasks() - before - {asyncio.current_task(), caller, stopping}
    assert left == set()
    del left, server, caller, stopping
    for _ in range(3):  # a task that failed says so when it is collected
        gc.collect()
        await asyncio.sleep(0.05)
    assert unseen == []
