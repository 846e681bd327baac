"""Automatic transfer (免申请) for a platform: the messages of the gateway's suspended-record index,
and what the outbound side sends when the gateway opens a case for one of its records.

    record = suspended_record("320100", person, EMPLOYEE, suspended_on)     # 转出地: on suspension
    receipt = await client.submit(record)         # receipt.automatic: the case it opened, if any
    report = enrollment("330100", person, EMPLOYEE, enrolled_on)            # 转入地: on enrollment
    receipt = await client.submit(report)         # receipt.automatic: cases opened, waiting until

A record's transfer id (`record.header.transfer_id`) is the id of the case it opens: keep it with
the record, and answer the gateway's AutomaticTransferRequest for that id as any transfer request.
The index messages go to the gateway, not to another agency: their header has no receiver, and an
enrollment's has no transfer id either (it opens one case per matching record).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Final, TypeAlias

from clients.builders import Route, header, new_id, proto_date, today_in_china
from mitransfer.v1 import automatic_pb2, types_pb2

COVERED: Final = frozenset({types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC, types_pb2.INSURANCE_TYPE_RESIDENT_BASIC})
Withdrawn = automatic_pb2.SuspendedRecordWithdrawal
IndexMessage: TypeAlias = (automatic_pb2.SuspendedRecord | automatic_pb2.SuspendedRecordWithdrawal
                           | automatic_pb2.Enrollment | automatic_pb2.EnrollmentOptOut)


def certificate_only(person: types_pb2.Person) -> types_pb2.Person:
    """What the index needs of a person: certificate type and number, nothing else."""
    return types_pb2.Person(certificate_type=person.certificate_type, certificate_number=person.certificate_number)


def suspended_record(
    agency: str, person: types_pb2.Person, insurance_type: types_pb2.InsuranceType.ValueType,
    suspension_date: dt.date, *, transfer_id: str | None = None, created_at: dt.datetime | None = None,
) -> automatic_pb2.SuspendedRecord:
    """中止参保记录登记 by the outbound `agency`; its transfer id (new unless given) is the record's id.

    Raises ValueError for an insurance type the measures do not cover, or a suspension after today.
    """
    if insurance_type not in COVERED:
        raise ValueError("only 310 and 390 records transfer")
    if suspension_date > today_in_china(created_at):
        raise ValueError("a suspension date after today: register a record once it is suspended")
    return automatic_pb2.SuspendedRecord(
        header=header(agency, "", transfer_id or new_id(), created_at=created_at),
        person=certificate_only(person), insurance_type=insurance_type, suspension_date=proto_date(suspension_date))


def record_withdrawal(
    agency: str, record_id: str, reason: automatic_pb2.SuspendedRecordWithdrawal.Reason.ValueType, *,
    created_at: dt.datetime | None = None,
) -> automatic_pb2.SuspendedRecordWithdrawal:
    """撤销中止参保记录 by the `agency` that registered record `record_id` (its header's transfer id):
    the record ended otherwise (resumed, terminated, transferred on application)."""
    return automatic_pb2.SuspendedRecordWithdrawal(header=header(agency, "", record_id, created_at=created_at),
                                                   reason=reason)


def enrollment(
    agency: str, person: types_pb2.Person, insurance_type: types_pb2.InsuranceType.ValueType,
    enrollment_date: dt.date, *, outbound_agencies: Sequence[str] = (), created_at: dt.datetime | None = None,
) -> automatic_pb2.Enrollment:
    """新参保登记 by the inbound `agency`; `outbound_agencies`: the records the person chose, when not all.

    Raises ValueError for an insurance type the measures do not cover, or an agency of the person's
    choice in the enrollment's own province (the gateway transfers across provinces only).
    """
    if insurance_type not in COVERED:
        raise ValueError("only 310 and 390 enrollments transfer")
    if any(a[:2] == agency[:2] for a in outbound_agencies):
        raise ValueError("an outbound agency in the enrollment's own province never matches")
    return automatic_pb2.Enrollment(
        header=header(agency, "", "", created_at=created_at), person=person, insurance_type=insurance_type,
        enrollment_date=proto_date(enrollment_date), outbound_agencies=list(outbound_agencies))


def opt_out(agency: str, enrollment_message_id: str, text: str = "", *,
            created_at: dt.datetime | None = None) -> automatic_pb2.EnrollmentOptOut:
    """不参加自动转移 by the `agency` that reported enrollment `enrollment_message_id`: the person
    declines before a case opens; the enrollment stops waiting."""
    return automatic_pb2.EnrollmentOptOut(header=header(agency, "", "", created_at=created_at),
                                          enrollment_message_id=enrollment_message_id, text=text)


BLOCKERS: Final = frozenset({
    types_pb2.REASON_CODE_UNSETTLED_HOSPITAL_STAY, types_pb2.REASON_CODE_ARREARS,
    types_pb2.REASON_CODE_MULTIPLE_INSURED_NUMBERS, types_pb2.REASON_CODE_INCOMPLETE_CONTRIBUTIONS,
    types_pb2.REASON_CODE_ACCOUNT_OVERDRAWN,
})
"""What the person can clear (在院未结算, 欠费, 多重参保编号, 缴费信息不完整, 透支): an automatic case refused for
these alone waits for them, instead of closing."""


def blocker_resolution(
    route: Route, resolved: Sequence[types_pb2.ReasonCode.ValueType], text: str = "", *,
    created_at: dt.datetime | None = None,
) -> automatic_pb2.BlockerResolution:
    """阻断已解除 from the outbound agency of an automatic case that waits for its blockers: the case
    resumes, and the outbound side then answers the request as any other.

    Raises ValueError without blockers, or with a reason that is not one (a refusal for another
    reason is final)."""
    if not resolved or any(code not in BLOCKERS for code in resolved):
        raise ValueError("a resolution names the blockers cleared, and only blockers")
    return automatic_pb2.BlockerResolution(header=route.header(created_at=created_at), resolved=list(resolved),
                                           text=text)
