"""`transfer-gateway review …` and `report settlement` against a real gateway: a reviewer lists,
approves and rejects held transfers and gets the gateway's verified receipt; every failure (wrong
role, unknown case, a dead gateway, a missing certificate, a bad date) is one line and its code."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from gateway.app.devpki import DevPaths
from mitransfer.v1 import envelope_pb2, tracking_pb2
from tests.service.test_admin import BIG, send_big_case
from tests.service.test_dead_letters import dead_letters
from tests.support import GatewayHandle, free_port

ROOT = Path(__file__).resolve().parent.parent.parent


async def cli(*args: str) -> tuple[int, str, str]:
    """The command in a process of its own (the gateway under test runs on this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


def options(gateway: GatewayHandle, *extra: str) -> list[str]:
    return ["--gateway", f"127.0.0.1:{gateway.server.port}", "--certs", str(gateway.pki.root), *extra]


async def test_a_reviewer_lists_approves_and_rejects(gateway: GatewayHandle, tmp_path: Path) -> None:
    code, out, _ = await cli("review", "list", *options(gateway))
    assert (code, out) == (0, "(no fund transfers held for review)\n")
    first = (await send_big_case(gateway))[0].header.transfer_id
    second = (await send_big_case(gateway, BIG + 1))[0].header.transfer_id

    code, out, _ = await cli("review", "list", *options(gateway, "--json"))
    held = json.loads(out)["held"]
    assert code == 0 and {h["transfer_id"] for h in held} == {first, second}
    assert {h["amount_fen"] for h in held} == {BIG, BIG + 1}
    code, out, _ = await cli("review", "list", *options(gateway))
    assert code == 0 and first in out and "25,000.00" in out

    code, out, _ = await cli("review", "approve", first, *options(gateway, "--comment", "checked"))
    assert code == 0 and out.startswith(f"approved the fund transfer of {first}: review_decision ")
    assert "receipt signed by gateway-dev-1 and verified" in out
    code, out, err = await cli("review", "reject", second, *options(gateway, "--reason", "amount differs",
                                                                    "--receipt", str(tmp_path / "r.bin")))
    assert code == 0, err
    receipt = envelope_pb2.Receipt.FromString((tmp_path / "r.bin").read_bytes())
    assert envelope_pb2.ReceiptBody.FromString(receipt.body).transfer_id == second
    case = await gateway.tracking("jiangsu").GetCase(tracking_pb2.GetCaseRequest(transfer_id=second))
    assert case.state == tracking_pb2.CASE_STATE_REVIEW_REJECTED

    code, _, err = await cli("review", "approve", second, *options(gateway))
    assert code == 1
    assert err == (f"error: the gateway refused it: FAILED_PRECONDITION REVIEW_ALREADY_DECIDED: case {second} "
                   "was already rejected in review\n")


async def test_refusals_are_one_line_with_their_reason(gateway: GatewayHandle) -> None:
    code, _, err = await cli("review", "list", *options(gateway, "--operator", "operator"))
    assert code == 1
    port = gateway.server.port
    assert err.splitlines() == [
        f"error: gateway 127.0.0.1:{port} refused operator 'operator': PERMISSION_DENIED ROLE_MISSING: "
        "operator operator lacks the role reviewer",
        "hint: review commands need the role reviewer; case close, calendar, dead-letters and report settlement "
        "the role operator (--operator chooses the certificate)"]
    code, _, err = await cli("review", "reject", "00000000-0000-4000-8000-000000000000", *options(gateway, "--reason",
                                                                                                   "x"))
    assert (code, err.splitlines()[0]) == (
        1, "error: the gateway refused it: NOT_FOUND CASE_NOT_FOUND: no case 00000000-0000-4000-8000-000000000000")
    code, _, err = await cli("review", "reject", "some-id", *options(gateway, "--reason", "  "))
    assert (code, err) == (1, "error: --reason must say why the transfer is rejected\n")
    code, _, err = await cli("report", "settlement", "--date", "2026-13-01", *options(gateway))
    assert (code, err) == (1, "error: --date '2026-13-01': expected a day as YYYY-MM-DD, e.g. 2026-11-22\n")
    code, out, _ = await cli("report", "settlement", "--date", "2026-11-22", *options(gateway, "--json"))
    assert code == 0 and json.loads(out) == {"date": "2026-11-22", "lines": []}


async def test_an_operator_lists_and_redrives_dead_letters(gateway: GatewayHandle) -> None:
    code, out, _ = await cli("dead-letters", "list", *options(gateway))
    assert (code, out) == (0, "(no dead letters)\n")
    ids = await dead_letters(gateway, 2)
    code, out, _ = await cli("dead-letters", "list", "--platform", "zhejiang", *options(gateway))
    header, *rows = out.splitlines()
    assert code == 0 and header.split()[:2] == ["message", "id"] and len(rows) == 2
    assert rows[0].split()[:7] == [ids[0], rows[0].split()[1], "zhejiang", "330100", "outbound_notice",
                                   "STREAM_ENDED", "3"]
    code, out, _ = await cli("dead-letters", "list", "--json", "--limit", "1", *options(gateway))
    [letter] = json.loads(out)["dead_letters"]
    assert (letter["message_id"], letter["reason"], letter["attempts"]) == (ids[0], "STREAM_ENDED", 3)
    code, _, err = await cli("dead-letters", "redrive", "--platform", "zhejiang", *options(gateway))
    assert (code, err) == (1, "error: name the dead letters to redrive (MESSAGE_ID …) or give --all, not both\n")
    code, _, err = await cli("dead-letters", "redrive", "--platform", "nowhere", "--all", *options(gateway))
    assert code == 1 and err.startswith("error: the gateway refused it: INVALID_ARGUMENT FIELD_INVALID: ")
    code, out, _ = await cli("dead-letters", "redrive", "--platform", "zhejiang", ids[1], *options(gateway))
    assert (code, out) == (0, "redrove 1 dead letter(s) of 1 named of platform zhejiang: pending again, delivered in"
                              " their case's order\n")
    code, out, _ = await cli("dead-letters", "redrive", "--platform", "zhejiang", "--all", *options(gateway))
    assert (code, out.split()[:2]) == (0, ["redrove", "1"])
    code, _, err = await cli("dead-letters", "list", *options(gateway, "--operator", "reviewer"))
    assert code == 1 and "PERMISSION_DENIED ROLE_MISSING" in err


async def test_a_dead_gateway_and_a_missing_certificate(pki: DevPaths) -> None:
    address = f"127.0.0.1:{free_port()}"
    code, _, err = await cli("review", "list", "--gateway", address, "--certs", str(pki.root), "--timeout", "2")
    assert code == 69
    assert err.startswith(f"error: gateway {address} did not answer: UNAVAILABLE: ")
    assert err.splitlines()[1] == "hint: is it running and reachable from here? (--gateway, --timeout)"
    code, _, err = await cli("report", "settlement", "--date", "2026-11-22", "--gateway", address,
                             "--certs", str(pki.root), "--operator", "auditor")
    assert code == 78
    assert err.splitlines()[0] == (f"error: {pki.operator_cert('auditor')}: no such file (the certificate of "
                                   "operator 'auditor') (operators there: operator, reviewer)")
