"""What deploy/ gives an operator is valid: the systemd unit passes `systemd-analyze verify` and
the replica configuration loads (the calendar example is checked in test_workdays)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.app.config import load_config
from gateway.app.failures import ExitCode
from gateway.store.postgres import PostgresConfig

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (Debian package systemd; bash .ci/run installs it)")
        pytest.skip("SKIPPED, NOT TESTED: systemd-analyze is not installed")
    # verify checks that ExecStart exists: point it at this checkout's installed command.
    command = Path(sys.executable).parent / "transfer-gateway"
    unit = (DEPLOY / "systemd" / "transfer-gateway@.service").read_text(encoding="utf-8")
    assert "/opt/transfer-gateway/bin/transfer-gateway serve" in unit
    # A configuration error (exit 78) stops the restarts; and only the main process's status counts.
    assert f"RestartPreventExitStatus={ExitCode.CONFIG.value}" in unit and "\nExecStartPre=" not in unit
    instance = tmp_path / "transfer-gateway@1.service"
    instance.write_text(unit.replace("/opt/transfer-gateway/bin/transfer-gateway", str(command)), encoding="utf-8")
    run = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr


def test_the_replica_configuration_loads() -> None:
    config = load_config(DEPLOY / "config" / "replica-1.toml")
    assert isinstance(config.store, PostgresConfig)
    assert config.store.url.startswith("postgresql://") and config.store.pool_max == 16
    assert config.sla.calendar_file == DEPLOY / "config" / "calendar.toml"
