"""The reference client's command-line tools as an integrator meets them: a refusal's field
violations each said once, whole descriptions, a line per retry and one error when the gateway
is gone, an unknown platform or a missing argument answered in words, exit codes by kind."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import pytest

from clients import inbound, index, outbound, track
from clients._cli import description
from clients.errors import GatewayRejected
from gateway.app.devpki import DevPaths
from tests.support import GatewayHandle, free_port

ROOT = Path(__file__).resolve().parent.parent.parent


async def tool(name: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"clients.{name}", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


def connection(pki: DevPaths, address: str, platform: str = "jiangsu") -> list[str]:
    return ["--gateway", address, "--certs", str(pki.root), "--platform", platform]


def test_a_refusal_says_each_violation_once() -> None:
    err = GatewayRejected(grpc.StatusCode.INVALID_ARGUMENT, "invalid message: a.b: too long; c: missing",
                          "FIELD_INVALID", [("a.b", "too long"), ("c", "missing")])
    assert str(err) == "INVALID_ARGUMENT FIELD_INVALID: a.b: too long; c: missing"
    plain = GatewayRejected(grpc.StatusCode.FAILED_PRECONDITION, "case is closed", "CASE_CLOSED")
    assert str(plain) == "FAILED_PRECONDITION CASE_CLOSED: case is closed"


@pytest.mark.parametrize("module", [inbound, outbound, track, index], ids=["inbound", "outbound", "track", "index"])
def test_help_gives_the_whole_first_paragraph(module: object, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        module.main(["--help"])  # type: ignore[attr-defined]
    said = " ".join(capsys.readouterr().out.split())
    whole = description(module.__doc__)
    assert whole.endswith(".") and whole in said


async def test_the_gateway_refusing_a_message(gateway: GatewayHandle) -> None:
    address = f"127.0.0.1:{gateway.server.port}"
    code, out, err = await tool("outbound", *connection(gateway.pki, address), "--from", "320100", "--to", "440100")
    assert code == 1 and out.startswith("transfer ")
    assert err == ("error: the gateway refused it: INVALID_ARGUMENT UNKNOWN_AGENCY\n"
                   "  header.receiver: 440100 is not a registered agency\n")
    code, _, err = await tool("track", *connection(gateway.pki, address), "0f6b3c1e-0000-4000-8000-000000000000")
    assert (code, err) == (1, "error: the gateway refused it: NOT_FOUND CASE_NOT_FOUND: "
                              "no case 0f6b3c1e-0000-4000-8000-000000000000\n")
    code, out, _ = await tool("track", *connection(gateway.pki, address), "--list")
    assert (code, out) == (0, "(no cases)\n")


async def test_a_dead_gateway_is_a_line_per_retry_then_one_error(pki: DevPaths) -> None:
    address = f"127.0.0.1:{free_port()}"
    code, _, err = await tool("outbound", *connection(pki, address), "--from", "320100", "--to", "330100",
                              "--timeout", "1.5")
    assert code == 69
    lines = err.splitlines()
    retries = [line for line in lines if line.startswith("Submit attempt ")]
    assert len(retries) >= 2 and all(" UNAVAILABLE (" in line and "; retrying in " in line for line in retries)
    assert lines[len(retries)].startswith(f"error: gateway {address} did not answer: UNAVAILABLE after "
                                          f"{len(retries) + 1} attempt(s)")
    assert lines[-1] == "hint: is it running and reachable from here? --gateway names it; --timeout sets how long " \
                        "to keep trying"


async def test_our_own_configuration_is_named(pki: DevPaths, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    code, _, err = await tool("outbound", *connection(pki, address, "hainan"), "--from", "460100", "--to", "330100")
    assert code == 78
    assert err.splitlines() == [
        f"error: unknown platform 'hainan': the registry {pki.registry} lists anhui, jiangsu, zhejiang",
        "hint: --platform takes a platform id of the registry"]
    code, _, err = await tool("track", "--gateway", address, "--certs", str(tmp_path), "--platform", "jiangsu",
                              "--list")
    assert (code, err.splitlines()[0]) == (78, f"error: {tmp_path / 'registry.json'}: no such file")
    code, _, err = await tool("track", *connection(pki, "10.0.0.1:1,gw.example:2"), "--list")
    assert code == 78 and err.startswith("error: --gateway: 'gw.example:2': several gateway addresses must be")
    code, _, err = await tool("outbound", *connection(pki, address), "--from", "330100", "--to", "320100",
                              "--timeout", "0")
    assert code == 2 and "argument --timeout: must be more than 0 seconds" in err


async def test_missing_or_malformed_arguments_are_answered_in_words(pki: DevPaths, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    code, _, err = await tool("outbound", *connection(pki, address))
    assert code == 2 and err.endswith("error: give the agencies with --from and --to, or a case with --case\n")
    code, _, err = await tool("track", *connection(pki, address))
    assert code == 2 and err.endswith("error: give a transfer id, or --list\n")
    case = tmp_path / "case.json"
    case.write_text('{"from": "320100", "to": "330100", "periods": [{"pooling_region": "320100"}]}', encoding="utf-8")
    code, _, err = await tool("outbound", *connection(pki, address), "--case", str(case))
    assert (code, err) == (1, f"error: {case}: the case lacks 'first_month'\n")
    case.write_text("{", encoding="utf-8")
    code, _, err = await tool("outbound", *connection(pki, address), "--case", str(case))
    assert code == 78 and err.startswith(f"error: --case {case}: not JSON: ")
    code, _, err = await tool("outbound", *connection(pki, address), "--from", "320100", "--to", "330100",
                              "--insurance", "390", "--balance-fen", "5")
    assert code == 1 and err.startswith("error: the options: not a valid case: ") and "ValueError" not in err


async def test_the_index_from_the_command_line_opens_a_case_the_outbound_tool_answers(gateway: GatewayHandle) -> None:
    """A record, an enrollment of the same synthetic person, the case it opens answered by
    `clients.outbound --transfer-id`; nothing printed names the person."""
    from clients.builders import sample_person

    address = f"127.0.0.1:{gateway.server.port}"
    code, out, err = await tool("index", *connection(gateway.pki, address), "record", "--at", "320100",
                                "--seed", "71")
    assert code == 0, err
    record_id = out.split(" transfer ")[1].split()[0]
    assert out.rstrip().endswith("opened nothing yet")
    code, out, err = await tool("index", *connection(gateway.pki, address, "zhejiang"), "enroll", "--at", "330100",
                                "--seed", "71")
    assert code == 0, err
    assert f"opened {record_id}; waits until " in out
    code, out, err = await tool("outbound", *connection(gateway.pki, address), "--from", "320100", "--to", "330100",
                                "--transfer-id", record_id, "--seed", "71", "--balance-fen", "5000")
    assert code == 0, err
    assert out.count(f"transfer {record_id}") == 4  # the header line, then notice, table and funds
    person = sample_person(71)
    code, out, err = await tool("index", *connection(gateway.pki, address), "withdraw", "--at", "320100",
                                "--id", record_id, "--reason", "resumed")
    assert code == 1 and "RECORD_NOT_WAITING" in err  # its case is open: answered in the case
    assert person.certificate_number not in out + err and person.name not in out + err
