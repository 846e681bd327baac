"""The write path, as operations of steps (`gateway.store.steps`): accept a message (what
becomes of its deliveries afterwards is `gateway.store.deliveries`). Each runs in one transaction
of its own (SQLite: several share a group commit, each under a savepoint when one fails).

An accept in order: lock the case; what the decision reads, all at once (one read answers both
"was this message id seen" and "what messages has the case"; the case as committed; its fund
movement; the index question); the decision (`gateway.store.decision`); the case row; the case's
stages; the log's head; the message and its transparency-log entries
(`gateway.store.transparency`); its effects (fund movement and totals, held deliveries released
or cancelled); its deliveries; wake-ups. Where a driver pipelines, it waits three times: for what
the decision reads, for the log's head, and for the commit. What a new table must keep
in step with each accepted message (a log of leaves, an index) goes here, as steps after the
message's row, so it commits or rolls back with it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from gateway.core.case import AUTOMATIC, Case, Decision
from gateway.core.errors import IdempotencyConflict
from gateway.core.messages import MessageKind
from gateway.core.personkeys import lock_names
from gateway.core.sla import Owner, Sla, Stage, Timeliness, owner_province, province
from gateway.core.timestamps import from_micros, micros
from gateway.store import transparency
from gateway.store.decision import decide_case, open_case_query
from gateway.store.port import (
    AcceptOutcome,
    Decide,
    IncomingMessage,
    MakeReceipt,
    StageRecord,
)
from gateway.store.rows import (
    CANCELLED,
    HELD,
    PENDING,
    SEQUENCE_OF,
    case_from,
    case_query,
)
from gateway.store.steps import Batch, Keys, LockCase, LockName, Prefetch, Query, QueryOne, Statement, Steps, Wake
from mitransfer.protocol import entries
from mitransfer.v1 import envelope_pb2, tracking_pb2

_STAGE_ORDER = {stage: i for i, stage in enumerate(Stage)}  # case_stages.stage_order


class _Known(NamedTuple):
    """A message of the case, or the message being accepted if its id was seen before, in a case or
    in the index (then `fingerprint` and `receipt` are its own; for every other row they are NULL)."""

    message_id: str
    kind: MessageKind
    sender: str
    transfer_id: str
    sequence: int
    fingerprint: bytes | None
    receipt: bytes | None


class _Fund(NamedTuple):
    status: str
    amount_fen: int


class _Finished(NamedTuple):
    started_at: int
    deadline: int
    owner: str
    owner_province: str
    outbound_province: str
    inbound_province: str
    provisional: int


class _Stored(NamedTuple):
    sequence: int
    receipt: bytes


def accept_keys(m: IncomingMessage) -> Keys:
    """What an accept of `m` reads and writes that another accept in its transaction must not:
    its case, its message id, and the person whose open case its decision asks about."""
    keys: Keys = (f"case:{m.transfer_id}", f"message:{m.message_id}")
    if m.opens_case_of is not None:
        person, outbound = m.opens_case_of
        keys += tuple(f"person:{k.digest.hex()}:{outbound}" for k in person)
    return keys


def accept(m: IncomingMessage, decide: Decide, make_receipt: MakeReceipt, clock: Callable[[], dt.datetime],
           sla: Sla, meter: transparency.LogMeter | None = None) -> Steps[AcceptOutcome]:
    """Idempotency check, case decision, log append, effects, stages, deliveries, receipt.
    Raises IdempotencyConflict, or what the decision raises."""
    if m.opens_case_of is not None:  # the person's locks before the case's, as the index takes them
        for name in lock_names(m.opens_case_of[0]):
            yield LockName(name)
    yield LockCase(m.transfer_id)
    # Everything the decision reads, at once: was this message id seen (in any case's log or in
    # the index: one id names one message whatever its kind, as `index.submit` checks the other
    # way) and what messages has the case so far; the case's row; its fund movement; the index
    # question. The case's messages are found by when it opened (that index appends: migration 10).
    known_query = Query(
        "SELECT message_id, kind, sender, transfer_id, sequence,"
        " CASE WHEN message_id = ? THEN fingerprint END AS fingerprint,"
        " CASE WHEN message_id = ? THEN receipt END AS receipt"
        " FROM messages WHERE message_id = ?"
        " OR (case_opened_at = (SELECT opened_at FROM cases WHERE transfer_id = ?) AND transfer_id = ?)"
        " UNION ALL SELECT message_id, kind, sender, transfer_id, sequence, fingerprint, receipt"
        " FROM index_messages WHERE message_id = ?",
        (m.message_id, m.message_id, m.message_id, m.transfer_id, m.transfer_id, m.message_id), _Known)
    row_query = case_query(m.transfer_id)
    fund_query = QueryOne("SELECT status, amount_fen FROM fund_movements WHERE transfer_id = ?", (m.transfer_id,),
                          _Fund)
    question = open_case_query(m)
    yield Prefetch(known_query, row_query, fund_query) if question is None else \
        Prefetch(known_query, row_query, fund_query, question)
    known = yield from known_query
    now = clock()  # the case's lock is held by now: within a case, acceptance times follow the log's order
    for seen in known:
        if seen.message_id == m.message_id:
            if seen.fingerprint is None or bytes(seen.fingerprint) != m.fingerprint:
                raise IdempotencyConflict(
                    f"message_id {m.message_id} was already used for a different message",
                    reason="MESSAGE_ID_REUSED", metadata={"message_id": m.message_id},
                )
            return AcceptOutcome(receipt=bytes(seen.receipt or b""), sequence=seen.sequence, replayed=True)
    row = yield from row_query
    before = None if row is None else case_from(m.transfer_id, row,
                                                [k for k in known if k.transfer_id == m.transfer_id])
    fund_was = yield from fund_query  # the case's fund movement as it was
    decision = decide_case(m, decide, before, None if question is None else (yield from question))
    if decision.replay_of is not None:  # the same decision again: its receipt, nothing written
        stored = yield from QueryOne("SELECT sequence, receipt FROM messages WHERE message_id = ?",
                                     (decision.replay_of,), _Stored)
        assert stored is not None  # the decision found it among the case's messages
        return AcceptOutcome(receipt=bytes(stored.receipt), sequence=stored.sequence, replayed=True)
    after = decision.case
    now_us = micros(now)
    stages = sla.changes(before, after, now)
    columns = (after.state, int(after.closed), after.insurance_type, after.inbound_insurance_type,
               after.suspension_date, after.enrollment_date, after.balance_fen, after.fund_message_id,
               after.retained_fen, after.insured_months, after.waiting_period_months, now_us)
    # A case keeps its person's key while it is open (what the one-open-case rule compares) and
    # nothing once it closes: no rule reads a closed case's person.
    if before is None:
        key_id, person_key = ("", b"") if after.closed else (after.key_id, after.person_key)
        yield Statement(
            "INSERT INTO cases (state, closed, insurance_type, inbound_insurance_type, suspension_date,"
            " enrollment_date, balance_fen, fund_message_id, retained_fen, insured_months, waiting_period_months,"
            " updated_at, opened_at, transfer_id, outbound, inbound, applicant, key_id, person_key, channel)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*columns, now_us, after.transfer_id, after.outbound, after.inbound, after.applicant, key_id, person_key,
             after.channel))
    elif after.closed and not before.closed:
        yield Statement(
            "UPDATE cases SET state = ?, closed = ?, insurance_type = ?, inbound_insurance_type = ?,"
            " suspension_date = ?, enrollment_date = ?, balance_fen = ?, fund_message_id = ?, retained_fen = ?,"
            " insured_months = ?, waiting_period_months = ?, updated_at = ?, key_id = '', person_key = ?"
            " WHERE transfer_id = ?", (*columns, b"", after.transfer_id))
    else:
        yield Statement(
            "UPDATE cases SET state = ?, closed = ?, insurance_type = ?, inbound_insurance_type = ?,"
            " suspension_date = ?, enrollment_date = ?, balance_fen = ?, fund_message_id = ?, retained_fen = ?,"
            " insured_months = ?, waiting_period_months = ?, updated_at = ? WHERE transfer_id = ?",
            (*columns, after.transfer_id))
    # A stage that ran before starts again (the outbound and total stages of an automatic case
    # whose blockers were resolved, as for a new application): its row holds the new run.
    yield Batch(
        "INSERT INTO case_stages (transfer_id, stage, stage_order, outbound_province, inbound_province, started_at,"
        " deadline, owner, owner_province, provisional, calendar_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (transfer_id, stage) DO UPDATE SET started_at = excluded.started_at,"
        " deadline = excluded.deadline, finished_at = NULL, owner = excluded.owner,"
        " owner_province = excluded.owner_province, provisional = excluded.provisional,"
        " calendar_version = excluded.calendar_version",
        [(after.transfer_id, str(s.stage), _STAGE_ORDER[s.stage], province(after.outbound),
          province(after.inbound), now_us, micros(s.deadline), str(s.owner),
          owner_province(s.owner, after.outbound, after.inbound), int(s.provisional), stages.calendar_version)
         for s in stages.started])
    finishing = [QueryOne(
        "UPDATE case_stages SET finished_at = ? WHERE transfer_id = ? AND stage = ? AND finished_at IS NULL"
        " RETURNING started_at, deadline, owner, owner_province, outbound_province, inbound_province, provisional",
        (now_us, after.transfer_id, str(stage)), _Finished) for stage in stages.finished]
    enrolled_query = None
    if after.channel == AUTOMATIC and after.state == tracking_pb2.CASE_STATE_COMPLETED and before is not None:
        enrolled_query = QueryOne("SELECT enrolled_at FROM automatic_cases WHERE transfer_id = ?",
                                  (after.transfer_id,), _Enrolled)
    # The log's head, taken last, with what the outcome reports of the stages finished: one
    # counter row makes sequences gapless and in commit order across replicas, hands out the
    # leaves of the transparency log in the same order, and holds its lock only for the rest of
    # this transaction.
    started = time.thread_time_ns()
    fund_entry = _fund_change(m, decision, fund_was)
    spent = time.thread_time_ns() - started
    leaves = 1 if fund_entry is None else 2
    head_query = transparency.head_query(leaves)
    yield Prefetch(*finishing, head_query) if enrolled_query is None else \
        Prefetch(*finishing, enrolled_query, head_query)
    sequence, leaf = transparency.taken(leaves, (yield from head_query))
    finished: list[StageRecord] = []
    for stage, finish in zip(stages.finished, finishing, strict=True):
        done = yield from finish
        if done is None:  # a case opened before stages were kept has nothing to finish
            continue
        record = StageRecord(stage, from_micros(done.started_at), from_micros(done.deadline), now,
                             Owner(done.owner), bool(done.provisional))
        finished.append(record)
        yield add_to_stage_totals(stage, done, [(sla.timeliness(record.deadline, now, now), 1)])
    enrolled = None if enrolled_query is None else (yield from enrolled_query)
    issued = make_receipt(sequence, leaf, now)
    receipt = issued.receipt
    yield Statement(
        "INSERT INTO messages (sequence, message_id, transfer_id, kind, sender, receiver, created_at,"
        " accepted_at, fingerprint, ack_status, signed_message, receipt, leaf_index, case_opened_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (sequence, m.message_id, m.transfer_id, m.kind, m.sender, m.receiver, micros(m.created_at),
         now_us, m.fingerprint, m.ack_status, m.signed_message, receipt, leaf,
         now_us if row is None else row.opened_at))
    started = time.thread_time_ns()
    logged = [entries.message_entry(m.fingerprint, issued.body, after.state)]
    if fund_entry is not None:
        logged.append(fund_entry)
    yield transparency.append(leaf, logged)
    if meter is not None:  # the log's own share of this accept (its head and column cost next to nothing)
        meter.ns += spent + time.thread_time_ns() - started
    yield from _effects(m, decision, now_us, fund_was)
    state = HELD if decision.hold_delivery else PENDING
    yield Batch(
        "INSERT INTO deliveries (sequence, receiver, platform, transfer_id, accepted_at, state,"
        " attempts, visible_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
        [(sequence, agency, platform, m.transfer_id, now_us, state, now_us)
         for platform, agency in m.deliveries])
    for platform in sorted({p for p, _ in m.deliveries}):
        yield Wake(platform)
    enrolled_at = None if enrolled is None else from_micros(enrolled.enrolled_at)
    return AcceptOutcome(receipt=receipt, sequence=sequence, replayed=False, outbound=after.outbound,
                         inbound=after.inbound, finished_stages=tuple(finished), opened=before is None,
                         channel=after.channel, enrolled_at=enrolled_at)


class _Enrolled(NamedTuple):
    enrolled_at: int


def _fund_change(m: IncomingMessage, decision: Decision, fund_was: _Fund | None) -> bytes | None:
    """The log entry of the change this message makes to its case's fund movement, if any: its
    creation by a fund transfer, or a move to another status."""
    if decision.fund_status is None:
        return None
    case = decision.case
    status = str(decision.fund_status)
    if m.kind == envelope_pb2.MESSAGE_KIND_FUND_TRANSFER:
        return entries.fund_entry(transfer_id=m.transfer_id, fund_message_id=m.message_id, message_id=m.message_id,
                                  previous=None, status=status, amount_fen=m.fund_amount_fen,
                                  outbound=case.outbound, inbound=case.inbound)
    if fund_was is None or fund_was.status == status:
        return None
    return entries.fund_entry(transfer_id=m.transfer_id, fund_message_id=case.fund_message_id or "",
                              message_id=m.message_id, previous=fund_was.status, status=status,
                              amount_fen=fund_was.amount_fen, outbound=case.outbound, inbound=case.inbound)


def _effects(m: IncomingMessage, decision: Decision, now_us: int, fund_was: _Fund | None) -> Steps[None]:
    if m.kind == envelope_pb2.MESSAGE_KIND_FUND_TRANSFER:
        yield Statement(
            "INSERT INTO fund_movements (transfer_id, message_id, amount_fen, status, accepted_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (m.transfer_id, m.message_id, m.fund_amount_fen, str(decision.fund_status), now_us, now_us))
        yield _add_to_totals(decision.case, [(str(decision.fund_status), m.fund_amount_fen, 1)])
    elif decision.fund_status is not None:
        status = str(decision.fund_status)
        yield Statement("UPDATE fund_movements SET status = ?, updated_at = ? WHERE transfer_id = ?",
                             (status, now_us, m.transfer_id))
        if fund_was is not None and fund_was.status != status:  # the movement moves from one total to another
            yield _add_to_totals(decision.case, [(fund_was.status, -fund_was.amount_fen, -1),
                                                      (status, fund_was.amount_fen, 1)])
    if decision.release_message is not None:
        yield Statement(f"UPDATE deliveries SET state = ?, visible_at = ? WHERE sequence = ({SEQUENCE_OF})"
                        " AND state = ?", (PENDING, now_us, decision.release_message, HELD))
    if decision.cancel_message is not None:
        yield Statement(f"UPDATE deliveries SET state = ? WHERE sequence = ({SEQUENCE_OF}) AND state = ?",
                        (CANCELLED, decision.cancel_message, HELD))


class StageLabels(Protocol):
    """What a stage total is kept by, besides the stage: any row with these columns."""

    @property
    def owner(self) -> str: ...

    @property
    def owner_province(self) -> str: ...

    @property
    def outbound_province(self) -> str: ...

    @property
    def inbound_province(self) -> str: ...


def add_to_stage_totals(stage: Stage, labels: StageLabels, changes: Sequence[tuple[Timeliness, int]]) -> Statement:
    """One statement adding (result, stages) `changes` to the finished stages of `stage` with `labels`."""
    key = (str(stage), labels.owner, labels.owner_province, labels.outbound_province, labels.inbound_province)
    return Statement(
        "INSERT INTO stage_totals (stage, owner, owner_province, outbound_province, inbound_province, result, stages)"
        f" VALUES {', '.join('(?, ?, ?, ?, ?, ?, ?)' for _ in changes)}"
        " ON CONFLICT (stage, owner, owner_province, outbound_province, inbound_province, result) DO UPDATE SET"
        " stages = stage_totals.stages + excluded.stages",
        tuple(v for result, count in changes for v in (*key, str(result), count)))


def _add_to_totals(case: Case, changes: Sequence[tuple[str, int, int]]) -> Statement:
    """One statement adding (status, fen, transfers) `changes` to the case's province pair, each
    to a status of its own."""
    provinces = (province(case.outbound), province(case.inbound))
    return Statement(
        "INSERT INTO fund_totals (outbound_province, inbound_province, status, amount_fen, transfers)"
        f" VALUES {', '.join('(?, ?, ?, ?, ?)' for _ in changes)}"
        " ON CONFLICT (outbound_province, inbound_province, status) DO UPDATE SET"
        " amount_fen = fund_totals.amount_fen + excluded.amount_fen,"
        " transfers = fund_totals.transfers + excluded.transfers",
        tuple(v for status, fen, transfers in changes for v in (*provinces, status, fen, transfers)))
