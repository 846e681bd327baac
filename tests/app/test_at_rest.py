"""At rest: what the gateway writes is its user's alone, whatever the umask; /metrics stays on
loopback in the shipped configuration, and the systemd unit sets the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.app.assembly import read_materials
from gateway.app.config import load_config
from gateway.app.devpki import DevPaths, write_dev_pki
from gateway.app.server import utc_now
from gateway.core.sla import Sla
from gateway.core.workdays import WorkingCalendar
from gateway.store.sqlite import SQLiteConfig, SQLiteStore
from tests.conftest import test_config as gateway_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would leave files readable by everyone, as a careless shell has."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


async def test_the_sqlite_database_and_its_wal_and_shm_are_0600(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "var" / "gateway.db"
    store = SQLiteStore(SQLiteConfig(path=path), utc_now, Sla(WorkingCalendar()))
    await store.open()
    try:
        await store.fund_totals()  # a read: the -shm exists while the store is open
        files = {p.name: mode(p) for p in path.parent.iterdir()}
    finally:
        await store.close()
    assert {"gateway.db", "gateway.db-wal", "gateway.db-shm", "gateway.db.lock"} <= set(files)
    assert all(m == 0o600 for m in files.values()), files
    assert mode(path.parent) == 0o700


async def test_a_database_left_readable_by_an_older_version_is_tightened(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "gateway.db"
    store = SQLiteStore(SQLiteConfig(path=path), utc_now, Sla(WorkingCalendar()))
    await store.open()
    await store.close()
    path.chmod(0o644)
    store = SQLiteStore(SQLiteConfig(path=path), utc_now, Sla(WorkingCalendar()))
    await store.open()
    await store.close()
    assert mode(path) == 0o600


def test_every_dev_pki_file_is_0600(tmp_path: Path, open_umask: None) -> None:
    paths = write_dev_pki(tmp_path / "pki")
    files = [p for p in paths.root.rglob("*") if p.is_file()]
    assert len(files) >= 15 and {mode(p) for p in files} == {0o600}
    assert {mode(paths.root / "platforms"), mode(paths.root / "operators")} == {0o700}


def test_the_shipped_replica_keeps_metrics_on_loopback() -> None:
    config = load_config(DEPLOY / "config" / "replica-1.toml")
    assert config.metrics_listen is not None and config.metrics_listen.startswith("127.0.0.1:")


@pytest.mark.parametrize(("address", "warned"), [("127.0.0.1:9095", False), ("[::1]:9095", False),
                                                 ("localhost:9095", False), ("0.0.0.0:9095", True),
                                                 ("10.1.2.3:9095", True)])
def test_metrics_off_loopback_is_warned(pki: DevPaths, tmp_path: Path, address: str, warned: bool) -> None:
    materials = read_materials(replace(gateway_config(pki, tmp_path / "g.db"), metrics_listen=address), now=utc_now())
    assert any("metrics_listen" in w and "loopback" in w for w in materials.warnings) is warned


def test_the_systemd_unit_sets_a_private_umask_and_reloads_with_sighup() -> None:
    unit = (DEPLOY / "systemd" / "transfer-gateway@.service").read_text(encoding="utf-8")
    assert "\nUMask=0077\n" in unit and "\nStateDirectoryMode=0700\n" in unit
    assert "\nExecReload=/bin/kill -HUP $MAINPID\n" in unit  # what docs/operating.md's reload runs
