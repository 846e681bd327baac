"""Tracking service: where cases stand, with every message, stage and deadline.

A platform sees the cases one of whose sides is its agency; of any other it learns nothing, not
even that it exists: GetCase answers CASE_NOT_FOUND for it exactly as for a transfer id never
seen. Every request field is checked before the store is asked, and what is stored is shown
whatever it holds: a value an older gateway accepted that cannot be computed with now (a date far
beyond the calendar) leaves its derived figures out instead of failing the read.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, Final

from gateway.core.case import Case
from gateway.core.continuity import continuity
from gateway.core.errors import FieldViolation, InvalidMessage, NotFound
from gateway.core.registry import LiveRegistry, Registry
from gateway.core.sla import STAGES as STAGE_RULES
from gateway.core.sla import Owner, Sla, Stage, Timeliness, owner_agency
from gateway.core.timestamps import EPOCH, datetime_of
from gateway.core.validation import is_uuid, timestamp_problem
from gateway.core.workdays import local_date
from gateway.service.auth import Callers
from gateway.store import CaseQuery, CaseView, Store
from mitransfer.v1 import tracking_pb2, tracking_pb2_grpc, types_pb2

STAGES: Final = {Stage.OUTBOUND: tracking_pb2.STAGE_OUTBOUND, Stage.REVIEW: tracking_pb2.STAGE_REVIEW,
                 Stage.INBOUND: tracking_pb2.STAGE_INBOUND, Stage.TOTAL: tracking_pb2.STAGE_TOTAL,
                 Stage.RETURN: tracking_pb2.STAGE_RETURN, Stage.RETURN_RECEIPT: tracking_pb2.STAGE_RETURN_RECEIPT,
                 Stage.RESOLUTION: tracking_pb2.STAGE_RESOLUTION}
OWNERS: Final = {Owner.OUTBOUND: tracking_pb2.STAGE_OWNER_OUTBOUND, Owner.INBOUND: tracking_pb2.STAGE_OWNER_INBOUND,
                 Owner.REVIEWER: tracking_pb2.STAGE_OWNER_REVIEWER, Owner.BOTH: tracking_pb2.STAGE_OWNER_BOTH,
                 Owner.PERSON: tracking_pb2.STAGE_OWNER_PERSON}
_OWNER_OF: Final = {number: owner for owner, number in OWNERS.items()}
TIMELINESS: Final = {
    Timeliness.ON_TIME: tracking_pb2.TIMELINESS_ON_TIME, Timeliness.DUE_SOON: tracking_pb2.TIMELINESS_DUE_SOON,
    Timeliness.OVERDUE: tracking_pb2.TIMELINESS_OVERDUE, Timeliness.LATE: tracking_pb2.TIMELINESS_LATE,
}
MAX_PAGE: Final = 500
DEFAULT_PAGE: Final = 100
MAX_PAGE_TOKEN: Final = 256  # the tokens this service issues are about 100 characters
log = logging.getLogger("gateway.tracking")
_CASE_STATES: Final = frozenset(tracking_pb2.CaseState.values()) - {tracking_pb2.CASE_STATE_UNSPECIFIED}


class TrackingService(tracking_pb2_grpc.TrackingServicer):
    def __init__(self, *, registry: LiveRegistry, store: Store, sla: Sla,
                 clock: Callable[[], dt.datetime], callers: Callers) -> None:
        self._callers = callers
        self._registry = registry
        self._store = store
        self._sla = sla
        self._clock = clock

    async def GetCase(self, request: tracking_pb2.GetCaseRequest, context: Any) -> tracking_pb2.Case:
        scope = self._callers.tracking_scope(context, self._registry.current)
        if not is_uuid(request.transfer_id):
            raise InvalidMessage([FieldViolation("transfer_id", "must be a canonical lower-case UUID")])
        view = await self._store.get_case(request.transfer_id)
        if view is None or (scope is not None and view.case.outbound not in scope and view.case.inbound not in scope):
            raise NotFound(f"no case {request.transfer_id}", reason="CASE_NOT_FOUND")  # the same for both
        return case_to_proto(view, self._registry.current, self._sla, self._clock())

    async def ListCases(self, request: tracking_pb2.ListCasesRequest, context: Any) -> tracking_pb2.ListCasesResponse:
        scope = self._callers.tracking_scope(context, self._registry.current)
        now = self._clock()
        query, size = self._query(request, scope, now)
        views = await self._store.list_cases(query)
        page = views[:size]
        token = _token(page[-1]) if len(views) > size else ""
        return tracking_pb2.ListCasesResponse(
            cases=[case_to_proto(v, self._registry.current, self._sla, now) for v in page], next_page_token=token)

    def _query(self, r: tracking_pb2.ListCasesRequest, scope: frozenset[str] | None,
               now: dt.datetime) -> tuple[CaseQuery, int]:
        bad: list[FieldViolation] = []
        if not 0 <= r.page_size <= MAX_PAGE:
            bad.append(FieldViolation("page_size", f"must be 0 to {MAX_PAGE}"))
        for name in ("outbound_province", "inbound_province"):
            value = getattr(r, name)
            if value and not (len(value) == 2 and value.isdigit()):
                bad.append(FieldViolation(name, "must be a 2-digit province code"))
        if len(r.states) > len(_CASE_STATES):
            bad.append(FieldViolation("states", f"at most {len(_CASE_STATES)} states"))
        elif any(s not in _CASE_STATES for s in r.states):
            bad.append(FieldViolation("states", "must be defined case states"))
        for name, given in (("opened_from", r.HasField("opened_from")), ("opened_before", r.HasField("opened_before"))):
            problem = timestamp_problem(getattr(r, name)) if given else None
            if problem is not None:
                bad.append(FieldViolation(name, problem))
        if r.overdue and r.due_soon:
            bad.append(FieldViolation("due_soon", "cannot be combined with overdue (a stage is one or the other)"))
        if r.owner and (r.owner not in _OWNER_OF or not (r.overdue or r.due_soon)):
            bad.append(FieldViolation("owner", "must be a defined stage owner, with overdue or due_soon"))
        after = None
        if r.page_token:
            after = _parse_token(r.page_token)
            if after is None:
                bad.append(FieldViolation("page_token", "is not a token this service issued"))
        if bad:
            raise InvalidMessage(bad, reason="QUERY_INVALID")
        deadline_between = None
        if r.overdue:
            deadline_between = (EPOCH, now)
        elif r.due_soon:
            deadline_between = (now, self._sla.calendar.due_soon_before(now))
        size = r.page_size or DEFAULT_PAGE
        query = CaseQuery(
            agencies=scope, states=frozenset(r.states), deadline_between=deadline_between,
            outbound_province=r.outbound_province, inbound_province=r.inbound_province,
            opened_from=datetime_of(r.opened_from) if r.HasField("opened_from") else None,
            opened_before=datetime_of(r.opened_before) if r.HasField("opened_before") else None,
            after=after, owner=_OWNER_OF.get(r.owner),
            limit=size + 1,  # one more tells whether another page follows
        )
        return query, size


def _token(view: CaseView) -> str:
    """The last case of a page: its opening time (ISO, to the microsecond) and id."""
    return base64.urlsafe_b64encode(f"{view.opened_at.isoformat()} {view.case.transfer_id}".encode()).decode()


def _parse_token(token: str) -> tuple[dt.datetime, str] | None:
    """The (opening time, transfer id) of a token `_token` made; None for anything else."""
    if len(token) > MAX_PAGE_TOKEN:
        return None
    try:
        opened, _, transfer_id = base64.urlsafe_b64decode(token.encode()).decode().partition(" ")
        after = dt.datetime.fromisoformat(opened)
    except (binascii.Error, UnicodeError, ValueError):
        return None
    return (after, transfer_id) if after.tzinfo is not None and is_uuid(transfer_id) else None


def case_to_proto(view: CaseView, registry: Registry, sla: Sla, now: dt.datetime) -> tracking_pb2.Case:
    """The case as Tracking shows it. Continuity uses the waiting period the inbound region's policy
    set when it accepted (its current policy for cases accepted before that was kept), and the
    two-year rule when the case switches between employee and resident insurance."""
    c = view.case
    out = tracking_pb2.Case(
        transfer_id=c.transfer_id, state=c.state, outbound=c.outbound, inbound=c.inbound,
        insurance_type=c.insurance_type, account_balance_fen=c.balance_fen or 0, applicant=c.applicant,
        inbound_insurance_type=c.inbound_insurance_type, channel=c.channel,
        account_balance_retained_fen=c.retained_fen,
    )
    if c.suspension_date and c.enrollment_date:
        waiting = c.waiting_period_months
        shown_continuity = _continuity(c, registry.policy(c.inbound).waiting_period_months if waiting is None
                                       else waiting)
        if shown_continuity is not None:
            out.continuity.CopyFrom(shown_continuity)
        else:
            log.warning("continuity left out: stored dates cannot be computed with",
                        extra={"fields": {"transfer_id": c.transfer_id}})
    out.opened_at.FromDatetime(view.opened_at)
    out.updated_at.FromDatetime(view.updated_at)
    for record in view.stages:
        timing = sla.timing(record.stage, record.started_at, record.deadline, record.finished_at, now)
        owner = record.owner or STAGE_RULES[record.stage].owner
        last_day = local_date(record.deadline) - dt.timedelta(days=1)
        stage = out.stages.add(
            stage=STAGES[record.stage], working_days_limit=sla.limits.of(record.stage),
            working_days_used=timing.working_days_used, working_days_elapsed=round(timing.working_days_elapsed, 4),
            timeliness=TIMELINESS[timing.timeliness],
            last_day=types_pb2.Date(year=last_day.year, month=last_day.month, day=last_day.day),
            owner=OWNERS[owner], owner_agency=owner_agency(owner, c.outbound, c.inbound),
            provisional=record.provisional,
        )
        stage.started_at.FromDatetime(record.started_at)
        stage.deadline.FromDatetime(record.deadline)
        if record.finished_at is not None:
            stage.finished_at.FromDatetime(record.finished_at)
    for m in view.messages:
        entry = out.messages.add(
            message_id=m.message_id, kind=m.kind, sender=m.sender, receiver=m.receiver, sequence=m.sequence,
            delivery_state=m.delivery_state, delivery_attempts=m.delivery_attempts, ack_status=m.ack_status,
        )
        entry.created_at.FromDatetime(m.created_at)
        entry.accepted_at.FromDatetime(m.accepted_at)
        if m.delivered_at is not None:
            entry.delivered_at.FromDatetime(m.delivered_at)
        if m.acknowledged_at is not None:
            entry.acknowledged_at.FromDatetime(m.acknowledged_at)
    return out


def _continuity(c: Case, waiting_period_months: int) -> tracking_pb2.Continuity | None:
    """Continuity from the case's stored ISO dates; None when they cannot be computed with (a date
    an older gateway accepted, such as 9999-12-31, runs off the calendar)."""
    try:
        found = continuity(dt.date.fromisoformat(c.suspension_date), dt.date.fromisoformat(c.enrollment_date),
                           waiting_period_months=waiting_period_months, switch=c.switches_scheme,
                           insured_months=c.insured_months)
    except (ValueError, OverflowError):
        return None
    b = found.benefits_from
    return tracking_pb2.Continuity(gap_months=found.gap_months, continuous=found.continuous,
                                   waiting_period_months=found.waiting_period_months,
                                   benefits_from=types_pb2.Date(year=b.year, month=b.month, day=b.day),
                                   insured_months=c.insured_months or 0, rule=str(found.rule))
