"""`transfer-gateway` as an operator meets it: every failure of `serve`, `migrate`, `check-config`
and `certs` is one `error:` line naming the file, setting or address, with the exit code of its
kind (78 configuration, 69 unavailable, 1 otherwise), and never a traceback or a half-closed
server's complaints."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.app.devpki import DevPaths
from tests.support import free_port, postgres_url

ROOT = Path(__file__).resolve().parent.parent.parent
NOISE = ("Traceback", "Event loop is closed", "never awaited", "Exception ignored")


def run(*args: str, cwd: Path = ROOT, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The `error:`/`hint:` lines, after checking stderr holds nothing a broken shutdown prints."""
    assert not any(noise in result.stderr for noise in NOISE), result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith(("error:", "hint:"))]


def write_config(path: Path, pki: DevPaths, *, listen: str = "127.0.0.1:0", metrics: str = "",
                 store: str = 'sqlite = "gateway.db"', extra: str = "", person_keys: bool = True) -> Path:
    automatic = f"""
[automatic]
current_person_key = "person-dev-1"

[automatic.person_key_secrets]
"person-dev-1" = "{pki.person_key_secret}"
""" if person_keys else ""
    path.write_text(f"""
listen = "{listen}"
metrics_listen = "{metrics}"
registry = "{pki.registry}"
{extra}
[tls]
ca = "{pki.ca}"
cert = "{pki.gateway_cert}"
key = "{pki.gateway_key}"

[signing]
key = "{pki.gateway_signing_key}"
key_id = "gateway-dev-1"

[store]
{store}
{automatic}""", encoding="utf-8")
    return path


def test_a_missing_configuration_file(tmp_path: Path) -> None:
    result = run("serve", "--config", str(tmp_path / "gateway.toml"))
    assert result.returncode == 78
    assert errors(result) == [f"error: {tmp_path / 'gateway.toml'}: no such configuration file"]


def test_a_malformed_configuration_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("listen = \n", encoding="utf-8")
    result = run("serve", "--config", str(path))
    assert result.returncode == 78
    assert errors(result)[0].startswith(f"error: {path}: not valid TOML: ")


def test_every_bad_setting_is_named_before_anything_starts(pki: DevPaths, tmp_path: Path) -> None:
    path = write_config(tmp_path / "gateway.toml", pki, listen="localhost",
                        extra='[delivery]\nmax_attempts = "ten"\nvisibility_timeout_secs = 5\n')
    result = run("serve", "--config", str(path))
    assert result.returncode == 78
    lines = errors(result)
    assert lines[:3] == [
        f"error: {path}: listen: expected host:port, e.g. 127.0.0.1:50051, got 'localhost'",
        f"error: {path}: [delivery] max_attempts: expected an integer, got a string 'ten'",
        f"error: {path}: [delivery] visibility_timeout_secs: unknown setting (did you mean"
        " visibility_timeout_seconds?)",
    ]
    assert lines[3].startswith("hint: `transfer-gateway check-config FILE`")
    assert not (tmp_path / "gateway.db").exists()


def test_check_config_accepts_a_good_file_and_says_what_it_found(pki: DevPaths, tmp_path: Path) -> None:
    result = run("check-config", str(write_config(tmp_path / "gateway.toml", pki)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{tmp_path / 'gateway.toml'}: the configuration is valid"
    assert "signing: key gateway-dev-1 (ed25519) matches the registry" in result.stdout
    assert not (tmp_path / "gateway.db").exists()  # nothing was opened


def test_a_configuration_without_a_person_key_secret_is_refused(pki: DevPaths, tmp_path: Path) -> None:
    """Every open case keeps its person under a person-key secret: without one nothing starts."""
    path = write_config(tmp_path / "gateway.toml", pki, person_keys=False)
    for command in (["check-config", str(path)], ["serve", "--config", str(path)]):
        result = run(*command)
        assert result.returncode == 78
        assert errors(result)[0].startswith("error: [automatic.person_key_secrets]: none configured")
    assert not (tmp_path / "gateway.db").exists()


def test_check_config_names_every_file_that_cannot_be_used(pki: DevPaths, tmp_path: Path) -> None:
    path = write_config(tmp_path / "gateway.toml", pki)
    text = path.read_text(encoding="utf-8").replace(str(pki.gateway_cert), str(tmp_path / "missing.pem"))
    path.write_text(text.replace('key_id = "gateway-dev-1"', 'key_id = "gateway-2027-1"'), encoding="utf-8")
    result = run("check-config", str(path))
    assert result.returncode == 78
    assert errors(result) == [
        f"error: [tls] cert: {tmp_path / 'missing.pem'}: no such file",
        f"error: [signing] key_id: 'gateway-2027-1' is not a gateway key of the registry {pki.registry} "
        "(it lists: gateway-dev-1)",
    ]


def test_a_missing_key_names_the_setting_not_just_errno(pki: DevPaths, tmp_path: Path) -> None:
    path = write_config(tmp_path / "gateway.toml", pki)
    path.write_text(path.read_text(encoding="utf-8").replace(str(pki.gateway_key), "nowhere/gateway.key"),
                    encoding="utf-8")
    result = run("serve", "--config", str(path))
    assert result.returncode == 78
    assert errors(result) == [f"error: [tls] key: {tmp_path / 'nowhere' / 'gateway.key'}: no such file"]


@pytest.mark.parametrize("which", ["listen", "metrics"])
def test_a_port_in_use_fails_cleanly_and_first(pki: DevPaths, tmp_path: Path, which: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        ports = {"listen": taken, "metrics": f"127.0.0.1:{free_port()}"} if which == "listen" else {
            "listen": f"127.0.0.1:{free_port()}", "metrics": taken}
        result = run("serve", "--config", str(write_config(tmp_path / "gateway.toml", pki, **ports)))
    assert result.returncode == 69
    setting = "listen" if which == "listen" else "metrics_listen"
    port = taken.rpartition(":")[2]
    assert errors(result) == [f"error: {setting} {taken}: address already in use",
                              f"hint: another process listens there (`ss -ltnp 'sport = :{port}'` shows which)"]
    assert not (tmp_path / "gateway.db").exists()  # the store was never opened


def test_an_address_of_another_machine_is_a_configuration_error(pki: DevPaths, tmp_path: Path) -> None:
    result = run("serve", "--config", str(write_config(tmp_path / "gateway.toml", pki, listen="192.0.2.1:50051")))
    assert result.returncode == 78
    assert errors(result) == ["error: listen 192.0.2.1:50051: not an address of this machine"]


def test_a_database_folder_that_cannot_be_made(pki: DevPaths, tmp_path: Path) -> None:
    (tmp_path / "var").write_text("a file where a folder should be", encoding="utf-8")
    result = run("serve", "--config", str(write_config(tmp_path / "gateway.toml", pki)),
                 "--store", str(tmp_path / "var" / "gateway.db"))
    assert result.returncode == 78
    assert errors(result) == [f"error: [store] sqlite: {tmp_path / 'var' / 'gateway.db'}: {tmp_path / 'var'} "
                              "is not a folder"]


def test_a_postgresql_server_that_refuses_says_so(pki: DevPaths, tmp_path: Path) -> None:
    postgres_url()  # the refusal below must not be the test machine's missing server
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    for command in ("serve", "migrate"):
        result = run(command, "--config", str(write_config(tmp_path / "gateway.toml", pki)), "--store", url)
        assert result.returncode == 69, result.stderr
        [line] = errors(result)
        assert line.startswith("error: cannot connect to PostgreSQL: ") and "Connection refused" in line, line


def test_the_dev_layout_without_certificates(tmp_path: Path) -> None:
    result = run("serve", cwd=tmp_path)
    assert result.returncode == 78
    assert errors(result) == ["error: certs/dev: no dev certificates there (no registry.json)",
                              "hint: run `transfer-gateway certs dev`, or give --config FILE"]


def test_log_level_choices_are_checked_in_either_place() -> None:
    for args in (["--log-level", "LOUD", "migrate"], ["migrate", "--log-level", "LOUD"]):
        result = run(*args)
        assert result.returncode == 2 and "invalid choice: 'LOUD'" in result.stderr


def test_log_level_after_the_command_wins_and_is_honoured(pki: DevPaths, tmp_path: Path) -> None:
    with socket.socket() as holder:  # serve fails on the port, after its DEV ONLY warning
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        config = str(write_config(tmp_path / "gateway.toml", pki, listen=f"127.0.0.1:{holder.getsockname()[1]}"))
        for args, logged in ((["serve", "--config", config], True),
                             (["--log-level", "ERROR", "serve", "--config", config], False),
                             (["--log-level", "ERROR", "serve", "--config", config, "--log-level", "warning"], True)):
            result = run(*args)
            warnings = [json.loads(line)["event"] for line in result.stderr.splitlines() if line.startswith("{")]
            assert result.returncode == 69
            assert warnings == (["running with a DEV ONLY registry and certificates"] if logged else []), args


def test_version_names_the_gateway_and_its_libraries() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert re.fullmatch(r"transfer-gateway \S+ \(python 3\.\d+\.\d+, grpcio \S+, protobuf \S+, cryptography \S+, "
                        r"psycopg \S+, sqlite \S+\)\n", result.stdout)


def test_certs_dev_keeps_an_existing_set_unless_forced(tmp_path: Path) -> None:
    first = run("certs", "dev", "--out", str(tmp_path / "pki"))
    assert first.returncode == 0 and "private keys mode 0600" in first.stdout
    registry = (tmp_path / "pki" / "registry.json").read_bytes()
    again = run("certs", "dev", "--out", str(tmp_path / "pki"))
    assert again.returncode == 1
    assert errors(again) == [
        f"error: {tmp_path / 'pki'} already holds a PKI (ca.pem, gateway.pem, gateway.key, …)",
        "hint: --force replaces it; every platform then needs its new files and the new registry"]
    assert (tmp_path / "pki" / "registry.json").read_bytes() == registry
    assert run("certs", "dev", "--out", str(tmp_path / "pki"), "--force").returncode == 0
    assert (tmp_path / "pki" / "registry.json").read_bytes() != registry


@pytest.mark.slow
def test_a_second_gateway_on_one_sqlite_file_and_the_start_up_line(pki: DevPaths, tmp_path: Path) -> None:
    """One process per SQLite file, said by name; the first process's start-up line says what runs."""
    config = write_config(tmp_path / "gateway.toml", pki, metrics=f"127.0.0.1:{free_port()}")
    first = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert first.stderr is not None
        started = None
        for line in first.stderr:  # until the start-up line (or the process ends)
            entry = json.loads(line)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", entry["ts"])
            if entry["event"] == "started":
                started = entry
                break
        assert started is not None
        assert started["config"] == str(config) and started["store"] == "sqlite"
        assert started["store_location"] == str(tmp_path / "gateway.db") and started["schema_version"] >= 3
        assert started["listen"].startswith("127.0.0.1:") and started["metrics_listen"].startswith("127.0.0.1:")
        assert started["version"]
        second = run("serve", "--config", str(config), "--log-level", "ERROR", "--metrics-listen", "")
        assert second.returncode == 69
        assert errors(second) == [
            f"error: SQLite store {tmp_path / 'gateway.db'} is in use by another process (pid {first.pid}); "
            "one gateway process per SQLite file (PostgreSQL for several)"]
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)
    assert first.returncode == 0
    assert os.path.exists(tmp_path / "gateway.db.lock")  # kept: removing it would race a starting process


def test_the_demo_opens_cases_both_ways_and_reports_each() -> None:
    """`transfer-gateway demo --json`: half the cases by an application, half by the gateway from a
    suspended record and an enrollment (in both orders); the last line says how each way went."""
    result = run("demo", "--transfers", "6", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["transfers"], summary["completed"], summary["failed"], summary["errors"]) == (6, 6, 0, [])
    by = summary["by_opening"]
    assert by["application"] == {"transfers": 3, "completed": 3, "opened": 3}
    assert {k: by["automatic"][k] for k in ("transfers", "completed", "opened")} == {
        "transfers": 3, "completed": 3, "opened": 3}
    assert by["automatic"]["enrollment_to_completion_workdays_mean"] is not None
