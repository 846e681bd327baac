"""Validation of the suspended-record index's messages: a table of named bad inputs, each refused
on its field; valid messages from the reference client's builders (clients.automatic)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from clients import automatic, builders
from gateway.core.errors import InvalidMessage
from gateway.core.messages import IndexMessage
from gateway.core.validation import validate
from mitransfer.v1 import automatic_pb2, messages_pb2, types_pb2

NOW = dt.datetime.now(dt.UTC)
TODAY = builders.today_in_china()
EMPLOYEE = builders.EMPLOYEE
PERSON = builders.sample_person(7)


def valid() -> dict[str, IndexMessage]:
    record = automatic.suspended_record("320100", PERSON, EMPLOYEE, TODAY - dt.timedelta(days=10))
    report = automatic.enrollment("330100", PERSON, EMPLOYEE, TODAY, outbound_agencies=["320100"])
    return {
        "record": record,
        "withdrawal": automatic.record_withdrawal(
            record.header.sender, record.header.transfer_id, automatic.Withdrawn.REASON_TERMINATED),
        "enrollment": report,
        "opt_out": automatic.opt_out(report.header.sender, report.header.message_id, "自行申请"),
    }


@pytest.mark.parametrize("name", sorted(valid()))
def test_the_builders_make_valid_messages(name: str) -> None:
    validate(valid()[name], now=NOW)


Mutation = Callable[[IndexMessage], object]
CASES: list[tuple[str, str, Mutation, str]] = [
    ("record-with-a-receiver", "record", lambda m: setattr(m.header, "receiver", "330100"), "header.receiver"),
    ("record-without-its-id", "record", lambda m: setattr(m.header, "transfer_id", ""), "header.transfer_id"),
    ("record-sender-not-a-region", "record", lambda m: setattr(m.header, "sender", "32"), "header.sender"),
    ("record-with-a-name", "record", lambda m: setattr(m.person, "name", "张三"), "person.name"),  # type: ignore[attr-defined]
    ("record-with-a-psn-no", "record", lambda m: setattr(m.person, "psn_no", "X1"), "person.psn_no"),  # type: ignore[attr-defined]
    ("record-bad-id-number", "record", lambda m: setattr(m.person, "certificate_number", "110105194912310021"),  # type: ignore[attr-defined]
     "person.certificate_number"),
    ("record-no-certificate-type", "record", lambda m: setattr(m.person, "certificate_type", 0),  # type: ignore[attr-defined]
     "person.certificate_type"),
    ("record-not-covered", "record", lambda m: setattr(m, "insurance_type", 510), "insurance_type"),
    ("record-suspended-tomorrow", "record",
     lambda m: m.suspension_date.CopyFrom(builders.proto_date(TODAY + dt.timedelta(days=1))),  # type: ignore[attr-defined]
     "suspension_date"),
    ("record-without-suspension", "record", lambda m: m.ClearField("suspension_date"), "suspension_date"),  # type: ignore[arg-type]
    ("withdrawal-without-reason", "withdrawal", lambda m: setattr(m, "reason", 0), "reason"),
    ("withdrawal-unknown-reason", "withdrawal", lambda m: setattr(m, "reason", 77), "reason"),
    ("enrollment-with-a-transfer-id", "enrollment",
     lambda m: setattr(m.header, "transfer_id", builders.new_id()), "header.transfer_id"),
    ("enrollment-without-a-name", "enrollment", lambda m: setattr(m.person, "name", ""), "person.name"),  # type: ignore[attr-defined]
    ("enrollment-two-years-ahead", "enrollment",
     lambda m: m.enrollment_date.CopyFrom(builders.proto_date(TODAY + dt.timedelta(days=800))),  # type: ignore[attr-defined]
     "enrollment_date"),
    ("enrollment-not-covered", "enrollment", lambda m: setattr(m, "insurance_type", 392), "insurance_type"),
    ("enrollment-chooses-its-own-province", "enrollment",
     lambda m: m.outbound_agencies.append("330200"), "outbound_agencies[1]"),  # type: ignore[attr-defined]
    ("enrollment-chooses-twice", "enrollment", lambda m: m.outbound_agencies.append("320100"),  # type: ignore[attr-defined]
     "outbound_agencies[1]"),
    ("enrollment-chooses-no-region", "enrollment", lambda m: m.outbound_agencies.append("x"),  # type: ignore[attr-defined]
     "outbound_agencies[1]"),
    ("enrollment-chooses-eleven", "enrollment",
     lambda m: m.outbound_agencies.extend(f"3{i}0100" for i in range(4, 14)), "outbound_agencies"),  # type: ignore[attr-defined]
    ("opt-out-names-no-enrollment", "opt_out", lambda m: setattr(m, "enrollment_message_id", "e1"),
     "enrollment_message_id"),
    ("opt-out-long-text", "opt_out", lambda m: setattr(m, "text", "x" * 501), "text"),
    ("opt-out-with-a-receiver", "opt_out", lambda m: setattr(m.header, "receiver", "320100"), "header.receiver"),
]


@pytest.mark.parametrize(("name", "base", "mutate", "field"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_index_message_is_refused_on_its_field(name: str, base: str, mutate: Mutation, field: str) -> None:
    message = valid()[base]
    mutate(message)
    with pytest.raises(InvalidMessage) as caught:
        validate(message, now=NOW)
    assert field in [v.field for v in caught.value.violations], caught.value.violations


def test_a_refusal_never_repeats_the_certificate_number() -> None:
    record = valid()["record"]
    assert isinstance(record, automatic_pb2.SuspendedRecord)
    record.person.certificate_number = PERSON.certificate_number[:-1] + ("0" if PERSON.certificate_number[-1] != "0"
                                                                          else "1")
    with pytest.raises(InvalidMessage) as caught:
        validate(record, now=NOW)
    assert PERSON.certificate_number[:17] not in str(caught.value)


def test_only_the_gateway_opens_a_case_automatically() -> None:
    request = messages_pb2.TransferRequest(person=PERSON, outbound_insurance_type=EMPLOYEE,
                                           inbound_insurance_type=EMPLOYEE,
                                           channel=messages_pb2.TransferRequest.CHANNEL_AUTOMATIC)
    request.header.CopyFrom(builders.header("330100", "320100", builders.new_id()))
    with pytest.raises(InvalidMessage) as caught:
        validate(request, now=NOW)
    assert [v.field for v in caught.value.violations] == ["channel"]


def test_the_builders_refuse_what_the_gateway_would() -> None:
    with pytest.raises(ValueError, match="310 and 390"):
        automatic.suspended_record("320100", PERSON, types_pb2.INSURANCE_TYPE_MATERNITY, TODAY)
    with pytest.raises(ValueError, match="after today"):
        automatic.suspended_record("320100", PERSON, EMPLOYEE, TODAY + dt.timedelta(days=1))
    with pytest.raises(ValueError, match="own province"):
        automatic.enrollment("330100", PERSON, EMPLOYEE, TODAY, outbound_agencies=["330200"])
    assert automatic.certificate_only(PERSON) == types_pb2.Person(
        certificate_type=PERSON.certificate_type, certificate_number=PERSON.certificate_number)


def resolution(*codes: int) -> automatic_pb2.BlockerResolution:
    m = automatic_pb2.BlockerResolution(resolved=list(codes), text="已结清")  # type: ignore[arg-type]
    m.header.CopyFrom(builders.header("320100", "330100", builders.new_id()))
    return m


@pytest.mark.parametrize(("codes", "field"), [
    ((), "resolved"),
    ((types_pb2.REASON_CODE_RETIRED,), "resolved[0]"),         # final, never resolved
    ((types_pb2.REASON_CODE_ARREARS, types_pb2.REASON_CODE_ARREARS), "resolved[1]"),
    ((types_pb2.REASON_CODE_ARREARS, types_pb2.REASON_CODE_OTHER), "resolved[1]"),
    ((1, 2, 3, 4, 6, 1), "resolved"),
])
def test_a_resolution_names_blockers_each_once(codes: tuple[int, ...], field: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        validate(resolution(*codes), now=NOW)
    assert field in [v.field for v in caught.value.violations]


def test_a_resolution_of_every_blocker_is_valid_and_the_builder_refuses_others() -> None:
    validate(resolution(*sorted(automatic.BLOCKERS)), now=NOW)
    route = builders.Route.new("320100", "330100")
    assert list(automatic.blocker_resolution(route, [types_pb2.REASON_CODE_ARREARS]).resolved) == [
        types_pb2.REASON_CODE_ARREARS]
    with pytest.raises(ValueError, match="only blockers"):
        automatic.blocker_resolution(route, [types_pb2.REASON_CODE_NOT_SUSPENDED])
