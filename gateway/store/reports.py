"""Reports, as operations of steps (`gateway.store.steps`): the settlement ledger and its running
totals, fund transfers held for review, the delivery backlog, the stages against their deadlines
by owning side, the finished stages' running totals and the requests escalated unanswered. The
monitor reads them every interval, the admin service on request; each is a few grouped queries
whose cost does not grow with the history (running totals, partial indexes), or is bounded by a
period.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import NamedTuple

from gateway.core.sla import Owner, Stage, Timeliness
from gateway.core.timestamps import from_micros, micros
from gateway.store.port import (
    DeliveryStats,
    Escalation,
    HeldQuery,
    HeldTransfer,
    SettlementLine,
    StageCount,
    StageTotal,
)
from gateway.store.rows import DEAD_LETTER, IN_FLIGHT, PENDING, opt_time
from gateway.store.steps import Query, Steps, marks
from mitransfer.v1 import tracking_pb2

# Fund movement statuses (gateway.core.case.FundStatus) by where the money stands.
_AWAY = ("sent", "return_due", "returning")   # away from the outbound side, not credited
_BACK = ("returned", "rejected")              # with the outbound side again, or never released
_REJECTED = ("rejected", "return_due", "returning", "returned")
_EVERY = ("held", "credited", *_AWAY, *_BACK)


class _Held(NamedTuple):
    transfer_id: str
    message_id: str
    outbound: str
    inbound: str
    amount_fen: int
    accepted_at: int


def held_transfers(query: HeldQuery) -> Steps[list[HeldTransfer]]:
    where = ["f.status = 'held'"]
    args: list[object] = []
    if query.provinces:
        provinces = sorted(query.provinces)
        where.append(f"substr(c.outbound, 1, 2) IN ({marks(len(provinces))})")
        args += provinces
    if query.after is not None:
        since, transfer_id = micros(query.after[0]), query.after[1]
        where.append("(f.accepted_at > ? OR (f.accepted_at = ? AND f.transfer_id > ?))")
        args += [since, since, transfer_id]
    rows = yield from Query(
        "SELECT f.transfer_id, f.message_id, c.outbound, c.inbound, f.amount_fen, f.accepted_at"
        " FROM fund_movements f JOIN cases c ON c.transfer_id = f.transfer_id"
        f" WHERE {' AND '.join(where)} ORDER BY f.accepted_at, f.transfer_id LIMIT ?", (*args, query.limit), _Held)
    return [HeldTransfer(transfer_id=r.transfer_id, message_id=r.message_id, outbound=r.outbound, inbound=r.inbound,
                         amount_fen=r.amount_fen, held_since=from_micros(r.accepted_at)) for r in rows]


class _Total(NamedTuple):
    """Fund movements of one province pair in one status: their sum and their number."""

    outbound_province: str
    inbound_province: str
    status: str
    amount_fen: int  # a Decimal where PostgreSQL adds bigints up: read through int()
    transfers: int


def settlement(start: dt.datetime, end: dt.datetime) -> Steps[list[SettlementLine]]:
    rows = yield from Query(
        "SELECT substr(c.outbound, 1, 2) AS outbound_province, substr(c.inbound, 1, 2) AS inbound_province,"
        " f.status, SUM(f.amount_fen) AS amount_fen, COUNT(*) AS transfers"
        " FROM fund_movements f JOIN cases c ON c.transfer_id = f.transfer_id"
        " WHERE f.accepted_at >= ? AND f.accepted_at < ? GROUP BY 1, 2, 3",
        (micros(start), micros(end)), _Total)
    return _settlement_lines(rows)


def fund_totals() -> Steps[list[SettlementLine]]:
    rows = yield from Query(
        "SELECT outbound_province, inbound_province, status, amount_fen, transfers FROM fund_totals", (), _Total)
    return _settlement_lines(rows)


def _settlement_lines(rows: Iterable[_Total]) -> list[SettlementLine]:
    """Lines per province pair from totals per pair and status."""
    pairs: dict[tuple[str, str], dict[str, int]] = {}
    for r in rows:
        totals = pairs.setdefault((r.outbound_province, r.inbound_province), {"transfers": 0})
        totals[r.status] = totals.get(r.status, 0) + int(r.amount_fen)
        totals["transfers"] += int(r.transfers)
    return [
        SettlementLine(
            outbound_province=out_p, inbound_province=in_p,
            sent_fen=sum(t.get(k, 0) for k in _EVERY),  # = credited + returned + held + in flight
            credited_fen=t.get("credited", 0), held_fen=t.get("held", 0),
            rejected_fen=sum(t.get(k, 0) for k in _REJECTED),
            in_flight_fen=sum(t.get(k, 0) for k in _AWAY), transfers=t["transfers"],
            returned_fen=sum(t.get(k, 0) for k in _BACK),
            awaiting_return_fen=t.get("return_due", 0) + t.get("returning", 0),
        )
        for (out_p, in_p), t in sorted(pairs.items())
    ]


class _Open(NamedTuple):
    platform: str
    state: int
    deliveries: int
    oldest: int


class _Dead(NamedTuple):
    platform: str
    deliveries: int


def delivery_stats() -> Steps[list[DeliveryStats]]:
    opened = yield from Query(
        f"SELECT platform, state, COUNT(*) AS deliveries, MIN(accepted_at) AS oldest FROM deliveries"
        f" WHERE state IN ({PENDING}, {IN_FLIGHT}) GROUP BY platform, state", (), _Open)
    dead = yield from Query(
        f"SELECT platform, COUNT(*) AS deliveries FROM deliveries WHERE state = {DEAD_LETTER} GROUP BY platform",
        (), _Dead)
    pending: dict[str, int] = {}
    in_flight: dict[str, int] = {}
    oldest: dict[str, int] = {}
    for r in opened:
        (pending if r.state == PENDING else in_flight)[r.platform] = int(r.deliveries)
        oldest[r.platform] = min(oldest.get(r.platform, r.oldest), r.oldest)
    dead_letters = {r.platform: int(r.deliveries) for r in dead}
    return [DeliveryStats(p, pending.get(p, 0), in_flight.get(p, 0), dead_letters.get(p, 0), opt_time(oldest.get(p)))
            for p in sorted({*oldest, *dead_letters})]


class _StageTally(NamedTuple):
    stage: str
    owner: str
    owner_province: str
    outbound_province: str
    inbound_province: str
    open: int
    overdue: int
    due_soon: int


def stage_counts(now: dt.datetime, due_soon_before: dt.datetime) -> Steps[list[StageCount]]:
    rows = yield from Query(
        "SELECT stage, owner, owner_province, outbound_province, inbound_province, COUNT(*) AS open,"
        " SUM(CASE WHEN deadline <= ? THEN 1 ELSE 0 END) AS overdue,"
        " SUM(CASE WHEN deadline > ? AND deadline <= ? THEN 1 ELSE 0 END) AS due_soon"
        " FROM case_stages WHERE finished_at IS NULL"
        " GROUP BY stage, owner, owner_province, outbound_province, inbound_province"
        " ORDER BY stage, owner, owner_province, outbound_province, inbound_province",
        (micros(now), micros(now), micros(due_soon_before)), _StageTally)
    return [StageCount(Stage(r.stage), r.outbound_province, r.inbound_province, int(r.open), int(r.overdue),
                       int(r.due_soon), Owner(r.owner), r.owner_province) for r in rows]


class _StageTotalRow(NamedTuple):
    stage: str
    owner: str
    owner_province: str
    outbound_province: str
    inbound_province: str
    result: str
    stages: int


def stage_totals() -> Steps[list[StageTotal]]:
    rows = yield from Query(
        "SELECT stage, owner, owner_province, outbound_province, inbound_province, result, stages FROM stage_totals"
        " ORDER BY stage, owner, owner_province, outbound_province, inbound_province, result", (), _StageTotalRow)
    return [StageTotal(Stage(r.stage), Owner(r.owner), r.owner_province, r.outbound_province, r.inbound_province,
                       Timeliness(r.result), int(r.stages)) for r in rows]


class _Escalated(NamedTuple):
    outbound_province: str
    inbound_province: str
    requests: int


def escalations(now: dt.datetime) -> Steps[list[Escalation]]:
    """Requests (cases still OPENED) whose outbound stage passed its deadline: the unfinished stages'
    deadline index finds them, however long the history."""
    rows = yield from Query(
        "SELECT s.outbound_province, s.inbound_province, COUNT(*) AS requests"
        " FROM case_stages s JOIN cases c ON c.transfer_id = s.transfer_id"
        f" WHERE s.finished_at IS NULL AND s.deadline <= ? AND s.stage = 'outbound'"
        f" AND c.state = {tracking_pb2.CASE_STATE_OPENED}"
        " GROUP BY s.outbound_province, s.inbound_province ORDER BY 1, 2", (micros(now),), _Escalated)
    return [Escalation(r.outbound_province, r.inbound_province, int(r.requests)) for r in rows]
