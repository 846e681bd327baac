"""Tracking service: one case with every message and its delivery progress."""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.case import CaseRules
from gateway.continuity import continuity
from gateway.errors import NotFound, NotPermitted
from gateway.registry import Registry
from gateway.service.auth import calling_platform
from gateway.store import CaseView, Store
from mitransfer.v1 import tracking_pb2, tracking_pb2_grpc, types_pb2


class TrackingService(tracking_pb2_grpc.TrackingServicer):
    def __init__(self, *, registry: Registry, store: Store, rules: CaseRules) -> None:
        self._registry = registry
        self._store = store
        self._rules = rules

    async def GetCase(self, request: tracking_pb2.GetCaseRequest, context: Any) -> tracking_pb2.Case:
        platform = calling_platform(context, self._registry)
        view = await self._store.get_case(request.transfer_id)
        if view is None:
            raise NotFound(f"no case {request.transfer_id}", reason="CASE_NOT_FOUND")
        own = self._registry.agencies_of(platform.id)
        if view.case.outbound not in own and view.case.inbound not in own:
            raise NotPermitted(f"case {request.transfer_id} is not a case of platform {platform.id}",
                               reason="CASE_NOT_OF_PLATFORM")
        return case_to_proto(view, self._rules)


def case_to_proto(view: CaseView, rules: CaseRules) -> tracking_pb2.Case:
    c = view.case
    out = tracking_pb2.Case(
        transfer_id=c.transfer_id, state=c.state, outbound=c.outbound, inbound=c.inbound,
        insurance_type=c.insurance_type, account_balance_fen=c.balance_fen or 0, applicant=c.applicant,
        inbound_insurance_type=c.inbound_insurance_type,
    )
    if c.suspension_date and c.enrollment_date:
        found = continuity(dt.date.fromisoformat(c.suspension_date), dt.date.fromisoformat(c.enrollment_date),
                           waiting_period_months=rules.waiting_period_months)
        b = found.benefits_from
        out.continuity.CopyFrom(tracking_pb2.Continuity(
            gap_months=found.gap_months, continuous=found.continuous,
            waiting_period_months=found.waiting_period_months,
            benefits_from=types_pb2.Date(year=b.year, month=b.month, day=b.day),
        ))
    out.opened_at.FromDatetime(view.opened_at)
    out.updated_at.FromDatetime(view.updated_at)
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
