"""Field values: what a field's meaning bounds, end to end through Submit.

Before: an acceptance with enrollment date 9999-12-31 was accepted (and broke every read of its
case); text and code fields took NUL, line breaks and right-to-left overrides; a table balance of
INT64_MAX was accepted while a fund transfer was capped at 1e10 fen; a creation time of
2000-01-02 and a suspension date of 0001-01-01 were accepted. A freshness window must not break
retries: a byte-identical retry of an accepted message is a replay whatever its age, on a replica
that never saw it too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from clients import builders
from clients.scenario import CasePlan, outbound_messages
from gateway.app.assembly import assemble
from gateway.app.devpki import DevPaths
from gateway.core.messages import BusinessMessage
from mitransfer.v1 import messages_pb2, types_pb2
from tests.adversarial.conftest import DEADLINE, everything_said
from tests.conftest import test_config as gateway_config
from tests.support import GatewayHandle, failure, sign

Ack = messages_pb2.Acknowledgement


def plan(seed: int) -> CasePlan:
    return CasePlan.synthetic("320100", "330100", insurance_type=builders.EMPLOYEE, balance_fen=5_000, seed=seed)


async def refused(gateway: GatewayHandle, platform: str, message: BusinessMessage) -> tuple[str, list[str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.submit(platform, message)
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT
    return f.reason, f.fields, everything_said(caught.value)


Mutation = Callable[[BusinessMessage], object]
# (name, which of the case's messages, how it is broken, the field that must be named)
HOSTILE: list[tuple[str, int, Mutation, str]] = [
    ("suspension-0001-01-01", 0, lambda m: m.suspension_date.CopyFrom(types_pb2.Date(year=1, month=1, day=1)),
     "suspension_date"),
    ("created-2000-01-02", 0,
     lambda m: m.header.created_at.FromDatetime(dt.datetime(2000, 1, 2, tzinfo=dt.UTC)), "header.created_at"),
    ("name-nul", 0, lambda m: setattr(m.person, "name", "张\x00三"), "person.name"),
    ("name-line-break", 0, lambda m: setattr(m.person, "name", "张三\r\n"), "person.name"),
    ("name-right-to-left-override", 0, lambda m: setattr(m.person, "name", "\u202e三张"), "person.name"),
    ("balance-int64-max", 1, lambda m: setattr(m, "account_balance_fen", 2**63 - 1), "account_balance_fen"),
    ("bank-name-right-to-left-override", 2, lambda m: setattr(m.payer, "bank_name", "银行\u202e行分"),
     "payer.bank_name"),
    ("account-name-nul", 2, lambda m: setattr(m.payee, "account_name", "\x00"), "payee.account_name"),
    ("value-date-9999-12-31", 2, lambda m: m.value_date.CopyFrom(types_pb2.Date(year=9999, month=12, day=31)),
     "value_date"),
]


@pytest.mark.parametrize(("which", "mutate", "field"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
async def test_an_implausible_value_is_refused_naming_its_field(
    gateway: GatewayHandle, which: int, mutate: Mutation, field: str
) -> None:
    p = plan(seed=10 + which)
    sent = outbound_messages(p)
    for earlier in sent[:which]:
        await gateway.submit("jiangsu", earlier)
    message = sent[which]
    mutate(message)
    reason, fields, said = await refused(gateway, "jiangsu", message)
    assert (reason, fields) == ("FIELD_INVALID", [field])
    for unsafe in ("\x00", "\u202e", "\r"):
        assert unsafe not in said
    assert gateway.count("messages") == which


async def test_an_acceptance_enrolled_on_9999_12_31_is_refused(gateway: GatewayHandle) -> None:
    p = plan(seed=20)
    notice, table, _ = outbound_messages(p)
    for message in (notice, table):
        await gateway.submit("jiangsu", message)
    ack = builders.acknowledgement(table.header, Ack.STATUS_ACCEPTED, inbound_insurance_type=builders.EMPLOYEE,
                                   inbound_enrollment_date=builders.today_in_china())
    ack.inbound_enrollment_date.CopyFrom(types_pb2.Date(year=9999, month=12, day=31))
    assert (await refused(gateway, "zhejiang", ack))[:2] == ("FIELD_INVALID", ["inbound_enrollment_date"])
    assert gateway.count("messages") == 2


async def test_a_retry_of_an_accepted_message_is_a_replay_whatever_its_age(pki: DevPaths, tmp_path: Path) -> None:
    """Accepted today; retried byte for byte 30 days later (outside the 7-day window) to a
    replica that never saw it: the same receipt. The same id with another payload is still
    refused for its age, and a message never accepted is refused for its age."""
    database = tmp_path / "gateway.db"
    p = plan(seed=30)
    notice, table, _ = outbound_messages(p)
    first = assemble(gateway_config(pki, database))
    await first.start()
    handle = GatewayHandle(server=first, pki=pki, database=database)
    try:
        key = handle.signer("jiangsu")
        signed = sign(notice, key)
        receipt = await handle.exchange("jiangsu").Submit(signed, timeout=DEADLINE)
    finally:
        await handle.close_channels()
        await first.stop(grace=0.1)

    later = assemble(gateway_config(pki, database), clock=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=30))
    await later.start()
    handle = GatewayHandle(server=later, pki=pki, database=database)
    try:
        stub = handle.exchange("jiangsu")
        assert await stub.Submit(signed, timeout=DEADLINE) == receipt
        assert await stub.Submit(signed, timeout=DEADLINE) == receipt  # and again, from this replica's memory
        other = messages_pb2.OutboundNotice()
        other.CopyFrom(notice)
        other.retired = True  # another payload under the same id
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Submit(sign(other, key), timeout=DEADLINE)
        assert (failure(caught.value).reason, failure(caught.value).fields) == ("FIELD_INVALID",
                                                                                ["header.created_at"])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Submit(sign(table, key), timeout=DEADLINE)  # made with the notice, never submitted
        assert failure(caught.value).fields == ["header.created_at"]
        # Zhejiang sending Jiangsu's bytes: its own key does not sign them, refused as ever.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await handle.exchange("zhejiang").Submit(signed, timeout=DEADLINE)
        assert failure(caught.value).reason == "UNKNOWN_SIGNING_KEY"
        assert handle.count("messages") == 1
    finally:
        await handle.close_channels()
        await later.stop(grace=0.1)

