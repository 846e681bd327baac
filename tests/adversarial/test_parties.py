"""A platform that is not a party to a case learns nothing about it, from any answer: not its
sides, not its state, not whether it exists.

Before: an acknowledgement sent by Anhui with the transfer id of a Jiangsu → Zhejiang case was
refused PARTIES_MISMATCH with "case … is between outbound 320100 and inbound 330100" and the
case's state in its metadata, while Tracking refused Anhui the same case in words a transfer id
that does not exist never gets.

Every answer to Anhui about Jiangsu's case is compared with the answer to the same call about a
transfer (or message) id that was never used: the same code, reason, metadata and words, the id
aside.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest

from clients import builders
from clients.scenario import CasePlan, outbound_messages
from gateway.core.messages import BusinessMessage
from mitransfer.v1 import exchange_pb2, log_pb2, log_pb2_grpc, messages_pb2, tracking_pb2, types_pb2
from tests.adversarial.conftest import DEADLINE, everything_said
from tests.support import GatewayHandle, failure, sign

Ack = messages_pb2.Acknowledgement
EMPLOYEE = types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC
ANHUI = "340100"


@dataclass(frozen=True)
class Answer:
    """A refusal as its caller receives it, with one id replaced, so two answers can be compared."""

    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    said: str

    @classmethod
    def of(cls, err: grpc.aio.AioRpcError, ident: str) -> Answer:
        f = failure(err)
        return cls(f.code, f.reason, {k: v.replace(ident, "ID") for k, v in f.metadata.items()},
                   everything_said(err).replace(ident, "ID"))


async def answer(call: object, ident: str) -> Answer:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return Answer.of(caught.value, ident)


def foreign_view(said: str) -> None:
    """Nothing of Jiangsu's case: neither side's agency, no state."""
    assert "320100" not in said and "330100" not in said
    for state in (v.name for v in tracking_pb2.CaseState.DESCRIPTOR.values):
        assert state.removeprefix("CASE_STATE_") not in said.replace("CASE_NOT_OPENED", "")


async def jiangsu_case(gateway: GatewayHandle, seed: int, *, complete: bool = False) -> CasePlan:
    """A Jiangsu → Zhejiang case (employee insurance, funds sent), completed if asked."""
    plan = CasePlan.synthetic("320100", "330100", insurance_type=EMPLOYEE, balance_fen=12_000, seed=seed)
    notice, table, fund = outbound_messages(plan)
    for message in (notice, table, fund):
        await gateway.submit("jiangsu", message)
    if complete:
        enrolled = builders.today_in_china()
        for ack in (builders.acknowledgement(table.header, Ack.STATUS_ACCEPTED, inbound_insurance_type=EMPLOYEE,
                                             inbound_enrollment_date=enrolled),
                    builders.acknowledgement(fund.header, Ack.STATUS_FUNDS_CREDITED, credited_amount_fen=12_000),
                    builders.acknowledgement(table.header, Ack.STATUS_TRANSFER_IN_COMPLETED)):
            await gateway.submit("zhejiang", ack)
    return plan


def from_anhui(transfer_id: str, status: Ack.Status.ValueType) -> Ack:
    """An acknowledgement Anhui signs about `transfer_id`, as if it were the case's inbound side."""
    reasons = [builders.reason(types_pb2.REASON_CODE_ARREARS)] if status == Ack.STATUS_REJECTED else []
    return builders.acknowledgement(builders.header("320100", ANHUI, transfer_id), status, reasons=reasons)


@pytest.mark.parametrize("complete", [False, True], ids=["open", "completed"])
@pytest.mark.parametrize("status", [Ack.STATUS_RECEIVED, Ack.STATUS_REJECTED])
async def test_an_acknowledgement_naming_another_provinces_case_is_answered_as_for_no_case(
    gateway: GatewayHandle, complete: bool, status: Ack.Status.ValueType
) -> None:
    plan = await jiangsu_case(gateway, seed=1, complete=complete)
    tid, unused = plan.route.transfer_id, builders.new_id()
    stub = gateway.exchange("anhui")
    key = gateway.signer("anhui")
    told = await answer(stub.Submit(sign(from_anhui(tid, status), key), timeout=DEADLINE), tid)
    unseen = await answer(stub.Submit(sign(from_anhui(unused, status), key), timeout=DEADLINE), unused)
    assert told == unseen and told.reason == "CASE_NOT_OPENED"
    foreign_view(told.said)


@pytest.mark.parametrize("opener", ["request", "notice"])
async def test_a_message_opening_a_case_under_a_taken_transfer_id_learns_only_that(
    gateway: GatewayHandle, opener: str
) -> None:
    plan = await jiangsu_case(gateway, seed=2)
    person = CasePlan.synthetic("340100", "320100", seed=3).person
    message: BusinessMessage
    if opener == "notice":  # Anhui as the outbound side
        message = builders.outbound_notice_accepted(builders.Route(plan.route.transfer_id, ANHUI, "320100"), person,
                                                    EMPLOYEE, plan.suspension_date)
    else:  # Anhui as the inbound side, applying
        message = builders.transfer_request(builders.Route(plan.route.transfer_id, "320100", ANHUI), person,
                                            EMPLOYEE, EMPLOYEE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.submit("anhui", message)
    refusal = failure(caught.value)
    assert (refusal.code, refusal.reason, refusal.metadata) == (
        grpc.StatusCode.FAILED_PRECONDITION, "TRANSFER_ID_IN_USE",
        {"rule": "TRANSFER_ID_IN_USE", "transfer_id": plan.route.transfer_id})
    foreign_view(everything_said(caught.value))


async def test_tracking_and_the_log_answer_for_another_provinces_case_as_for_none(gateway: GatewayHandle) -> None:
    plan = await jiangsu_case(gateway, seed=4)
    tid, unused = plan.route.transfer_id, builders.new_id()
    tracking = gateway.tracking("anhui")
    told = await answer(tracking.GetCase(tracking_pb2.GetCaseRequest(transfer_id=tid), timeout=DEADLINE), tid)
    unseen = await answer(tracking.GetCase(tracking_pb2.GetCaseRequest(transfer_id=unused), timeout=DEADLINE),
                          unused)
    assert told == unseen and told.code == grpc.StatusCode.NOT_FOUND
    listed = await tracking.ListCases(tracking_pb2.ListCasesRequest(), timeout=DEADLINE)
    assert tid not in [c.transfer_id for c in listed.cases]

    unused_message = builders.new_id()
    notice_id = (await gateway.tracking("jiangsu").GetCase(tracking_pb2.GetCaseRequest(transfer_id=tid))).messages[
        0].message_id
    log = log_pb2_grpc.LogServiceStub(gateway.channel("anhui"))
    told = await answer(log.GetInclusionProof(log_pb2.GetInclusionProofRequest(message_id=notice_id),
                                              timeout=DEADLINE), notice_id)
    unseen = await answer(log.GetInclusionProof(log_pb2.GetInclusionProofRequest(message_id=unused_message),
                                                timeout=DEADLINE), unused_message)
    assert told == unseen and told.code == grpc.StatusCode.NOT_FOUND

    # A delivery addressed to Zhejiang, acknowledged by Anhui: as a message id never delivered.
    exchange = gateway.exchange("anhui")
    told = await answer(exchange.AckDelivery(exchange_pb2.AckDeliveryRequest(message_id=notice_id),
                                             timeout=DEADLINE), notice_id)
    unseen = await answer(exchange.AckDelivery(exchange_pb2.AckDeliveryRequest(message_id=unused_message),
                                               timeout=DEADLINE), unused_message)
    assert told == unseen and told.code == grpc.StatusCode.NOT_FOUND


async def test_an_open_case_elsewhere_is_named_only_to_its_own_sides(gateway: GatewayHandle) -> None:
    """The person has an open Jiangsu → Zhejiang case. Anhui, applying for the same person at the
    same outbound agency, is told the rule (one open case there) and nothing of that case; Zhejiang,
    a side of it, is told which case it is."""
    plan = await jiangsu_case(gateway, seed=5)
    for platform, inbound, named in (("anhui", "340100", False), ("zhejiang", "330200", True)):
        route = builders.Route.new("320100", inbound)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.submit(platform, builders.transfer_request(route, plan.person, EMPLOYEE, EMPLOYEE))
        refusal = failure(caught.value)
        assert (refusal.code, refusal.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CASE_ALREADY_OPEN")
        said = everything_said(caught.value)
        if named:
            assert refusal.metadata["open_transfer_id"] == plan.route.transfer_id
        else:
            assert "open_transfer_id" not in refusal.metadata and plan.route.transfer_id not in said
            assert "330100" not in said
