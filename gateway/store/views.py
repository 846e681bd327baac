"""Read models of cases, as operations of steps (`gateway.store.steps`): one case with its messages,
a filtered page of cases, a message's receipt.

A list of cases costs three queries however many there are: the cases, then the messages and the
stages of all of them at once (`_views`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol, TypeVar

from gateway.core.case import CaseState, Channel, InsuranceType
from gateway.core.messages import MessageKind
from gateway.core.sla import Owner, Stage
from gateway.core.timestamps import from_micros, micros
from gateway.store.port import CaseQuery, CaseView, MessageView, StageRecord
from gateway.store.rows import CaseMessage, CaseRow, case_from, opt_time
from gateway.store.steps import Query, QueryOne, Steps, marks


class _ViewRow(NamedTuple):
    """A case's row as its view needs it (`_VIEW_COLUMNS`, in this order)."""

    transfer_id: str
    opened_at: int
    updated_at: int
    state: CaseState
    outbound: str
    inbound: str
    applicant: str
    insurance_type: InsuranceType
    inbound_insurance_type: InsuranceType
    key_id: str
    person_key: bytes
    suspension_date: str
    enrollment_date: str
    balance_fen: int | None
    fund_message_id: str | None
    channel: Channel
    retained_fen: int
    insured_months: int | None
    waiting_period_months: int | None

    def case_row(self) -> CaseRow:
        return CaseRow(self.state, self.outbound, self.inbound, self.applicant, self.insurance_type,
                       self.inbound_insurance_type, self.key_id, self.person_key, self.suspension_date,
                       self.enrollment_date, self.balance_fen, self.fund_message_id, self.channel, self.retained_fen,
                       self.insured_months, self.waiting_period_months, self.opened_at)


_VIEW_COLUMNS = ", ".join(_ViewRow._fields)


class _MessageRow(NamedTuple):
    """A message of a listed case with its delivery progress (NULLs: delivered to no platform)."""

    message_id: str
    kind: MessageKind
    sender: str
    receiver: str
    sequence: int
    created_at: int
    accepted_at: int
    ack_status: int
    delivery_state: int | None
    delivery_attempts: int | None
    delivered_at: int | None
    acknowledged_at: int | None
    transfer_id: str


class _RefRow(NamedTuple):
    """A message of a listed case, only as its rules need it."""

    message_id: str
    kind: MessageKind
    sender: str
    transfer_id: str


class _StageRow(NamedTuple):
    transfer_id: str
    stage: str
    started_at: int
    deadline: int
    finished_at: int | None
    owner: str
    provisional: int


def get_case(transfer_id: str) -> Steps[CaseView | None]:
    rows = yield from Query(f"SELECT {_VIEW_COLUMNS} FROM cases WHERE transfer_id = ?", (transfer_id,), _ViewRow)
    views = yield from _views(rows, with_messages=True)
    return views[0] if views else None


def list_cases(query: CaseQuery) -> Steps[list[CaseView]]:
    where: list[str] = ["1 = 1"]
    args: list[object] = []
    if query.agencies is not None:
        agencies = marks(len(query.agencies))
        where.append(f"(outbound IN ({agencies}) OR inbound IN ({agencies}))")
        args += [*sorted(query.agencies), *sorted(query.agencies)]
    if query.states:
        where.append(f"state IN ({marks(len(query.states))})")
        args += sorted(query.states)
    if query.outbound_province:
        where.append("substr(outbound, 1, 2) = ?")
        args.append(query.outbound_province)
    if query.inbound_province:
        where.append("substr(inbound, 1, 2) = ?")
        args.append(query.inbound_province)
    if query.opened_from is not None:
        where.append("opened_at >= ?")
        args.append(micros(query.opened_from))
    if query.opened_before is not None:
        where.append("opened_at < ?")
        args.append(micros(query.opened_before))
    if query.deadline_between is not None:
        owned = "" if query.owner is None else " AND s.owner = ?"
        where.append("EXISTS (SELECT 1 FROM case_stages s WHERE s.transfer_id = cases.transfer_id"
                     f" AND s.finished_at IS NULL AND s.deadline > ? AND s.deadline <= ?{owned})")
        args += [micros(query.deadline_between[0]), micros(query.deadline_between[1])]
        if query.owner is not None:
            args.append(str(query.owner))
    if query.after is not None:
        where.append("(opened_at, transfer_id) > (?, ?)")
        args += [micros(query.after[0]), query.after[1]]
    rows = yield from Query(f"SELECT {_VIEW_COLUMNS} FROM cases WHERE {' AND '.join(where)}"
                            " ORDER BY opened_at, transfer_id LIMIT ?", (*args, query.limit), _ViewRow)
    return (yield from _views(rows, with_messages=False))


class _Receipt(NamedTuple):
    receipt: bytes


def receipt_of(message_id: str) -> Steps[bytes | None]:
    """The stored receipt of a case's message or of a message to the suspended-record index."""
    row = yield from QueryOne("SELECT receipt FROM messages WHERE message_id = ? UNION ALL"
                              " SELECT receipt FROM index_messages WHERE message_id = ?", (message_id, message_id),
                              _Receipt)
    return None if row is None else bytes(row.receipt)


def _views(rows: Sequence[_ViewRow], *, with_messages: bool) -> Steps[list[CaseView]]:
    """Views of the cases of `rows`, in their order. The messages and stages of all of them are
    read with one query each, whatever their number: with their delivery state if
    `with_messages`, else only as the case's rules need them."""
    if not rows:
        return []
    transfer_ids = tuple(r.transfer_id for r in rows)
    # The list padded to a power of two (repeating its last id) keeps the number of statement
    # texts small, so that pages of every size do not crowd PostgreSQL's prepared statements.
    padded = transfer_ids + transfer_ids[-1:] * ((1 << (len(transfer_ids) - 1).bit_length()) - len(transfer_ids))
    ids = marks(len(padded))
    refs: Mapping[str, Sequence[CaseMessage]]
    shown: Mapping[str, Sequence[MessageView]] = {}
    if with_messages:
        full = yield from Query(
            f"""SELECT m.message_id, m.kind, m.sender, m.receiver, m.sequence, m.created_at, m.accepted_at,
                       m.ack_status, MIN(d.state) AS delivery_state, MIN(d.attempts) AS delivery_attempts,
                       MIN(d.first_delivered_at) AS delivered_at, MAX(d.acknowledged_at) AS acknowledged_at,
                       m.transfer_id
                FROM cases c JOIN messages m ON m.case_opened_at = c.opened_at AND m.transfer_id = c.transfer_id
                LEFT JOIN deliveries d ON d.sequence = m.sequence
                WHERE c.transfer_id IN ({ids})
                GROUP BY m.sequence, m.message_id, m.kind, m.sender, m.receiver, m.created_at, m.accepted_at,
                         m.ack_status, m.transfer_id
                ORDER BY m.sequence""", padded, _MessageRow)
        by_case = _by_case(transfer_ids, full)
        refs = by_case
        # A message without a delivery (to no platform) is the case's, but not a MessageView.
        shown = {t: [_message_view(m) for m in ms if m.delivery_state is not None] for t, ms in by_case.items()}
    else:
        only_refs = yield from Query(
            "SELECT m.message_id, m.kind, m.sender, m.transfer_id FROM cases c JOIN messages m"
            f" ON m.case_opened_at = c.opened_at AND m.transfer_id = c.transfer_id WHERE c.transfer_id IN ({ids})",
            padded, _RefRow)
        refs = _by_case(transfer_ids, only_refs)
    stage_rows = yield from Query(
        f"SELECT transfer_id, stage, started_at, deadline, finished_at, owner, provisional FROM case_stages"
        f" WHERE transfer_id IN ({ids}) ORDER BY started_at, stage_order", padded, _StageRow)
    stages: dict[str, list[StageRecord]] = {t: [] for t in transfer_ids}
    for s in stage_rows:
        stages[s.transfer_id].append(StageRecord(Stage(s.stage), from_micros(s.started_at), from_micros(s.deadline),
                                                 opt_time(s.finished_at), Owner(s.owner) if s.owner else None,
                                                 bool(s.provisional)))
    return [
        CaseView(case=case_from(r.transfer_id, r.case_row(), refs[r.transfer_id]), opened_at=from_micros(r.opened_at),
                 updated_at=from_micros(r.updated_at), stages=stages[r.transfer_id],
                 messages=shown[r.transfer_id] if with_messages else ())
        for r in rows
    ]


class _OfCase(Protocol):
    @property
    def transfer_id(self) -> str: ...


Row = TypeVar("Row", bound=_OfCase)


def _by_case(transfer_ids: Sequence[str], rows: Sequence[Row]) -> dict[str, list[Row]]:
    """`rows` by their case, every case of `transfer_ids` present."""
    grouped: dict[str, list[Row]] = {t: [] for t in transfer_ids}
    for row in rows:
        grouped[row.transfer_id].append(row)
    return grouped


def _message_view(m: _MessageRow) -> MessageView:
    assert m.delivery_state is not None and m.delivery_attempts is not None
    return MessageView(
        message_id=m.message_id, kind=m.kind, sender=m.sender, receiver=m.receiver, sequence=m.sequence,
        created_at=from_micros(m.created_at), accepted_at=from_micros(m.accepted_at), ack_status=m.ack_status,
        delivery_state=m.delivery_state, delivery_attempts=m.delivery_attempts,
        delivered_at=opt_time(m.delivered_at), acknowledged_at=opt_time(m.acknowledged_at),
    )
