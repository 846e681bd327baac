"""The suspended-record index, as operations of steps (`gateway.store.steps`): register and withdraw
records, report enrollments and opt-outs, open the cases they match, and keep the index (lapse
what waited too long, key entries again under a new secret).

What it holds (migration 5): `index_messages`, the signed messages as received, numbered in the
one log with every case's messages and each a leaf of the transparency log like them;
`suspended_records` and `enrollments`, each under the person's keyed hash
(`gateway.core.personkeys`) and never the certificate number, the hash kept only while the entry
can still match; `automatic_cases`, what opened each case the gateway opened itself.

Races. A record and an enrollment of one person arrive in either order, at once, on several
replicas: every operation on a person's entries first takes the person's locks (`LockName`, one
per key, in order), so the one that commits second sees the first and opens the case. A record
opens at most one case, ever: the case's transfer id is the record's, the case is opened under
that id's case lock, and both tables key on it. Opening a case is an accept of the gateway's own
AutomaticTransferRequest (`gateway.store.writes.accept`), composed into this transaction: the
report, its cases, their stages and deliveries commit together or not at all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import NamedTuple

from gateway.core.automatic import Enrollment, SuspendedRecord, enrollment_for, records_to_open
from gateway.core.errors import IdempotencyConflict, NotFound, RuleViolation
from gateway.core.personkeys import PersonKey, lock_names
from gateway.core.sla import Sla
from gateway.core.timestamps import from_micros, micros
from gateway.store import transparency
from gateway.store.decision import open_case_query
from gateway.store.port import (
    EnrollmentReport,
    IndexCount,
    IndexMessage,
    IndexOutcome,
    IssuedReceipt,
    MakeIndexReceipt,
    OpenCase,
    OpenedCase,
    Opening,
    OptOut,
    RecordRegistration,
    RecordWithdrawal,
    StaleEntry,
)
from gateway.store.steps import LockCase, LockName, Query, QueryOne, Statement, Steps, marks
from gateway.store.writes import accept
from mitransfer.protocol import entries

WAITING = "waiting"


def submit(m: IndexMessage, open_case: OpenCase, make_receipt: MakeIndexReceipt,
           clock: Callable[[], dt.datetime], sla: Sla) -> Steps[IndexOutcome]:
    """Store an index message and do what it says; open the cases it matches.

    Raises IdempotencyConflict (MESSAGE_ID_REUSED), NotFound (RECORD_NOT_FOUND,
    ENROLLMENT_NOT_FOUND), RuleViolation (TRANSFER_ID_IN_USE, RECORD_ALREADY_REGISTERED,
    RECORD_NOT_WAITING, ENROLLMENT_NOT_WAITING), or what opening a case raises.
    """
    facts = m.facts
    keys = facts.keys if isinstance(facts, RecordRegistration | EnrollmentReport) else ()
    for name in lock_names(keys):
        yield LockName(name)
    if isinstance(facts, RecordRegistration | RecordWithdrawal):
        yield LockCase(facts.transfer_id)  # the record's case: writers of it wait for the record
    now = clock()
    replay = yield from _seen(m)
    if replay is not None:
        return replay
    if isinstance(facts, RecordRegistration):
        return (yield from _register(m, facts, open_case, make_receipt, now, clock, sla))
    if isinstance(facts, EnrollmentReport):
        return (yield from _enroll(m, facts, open_case, make_receipt, now, clock, sla))
    if isinstance(facts, RecordWithdrawal):
        return (yield from _withdraw(m, facts, make_receipt, now))
    return (yield from _opt_out(m, facts, make_receipt, now))


class _Known(NamedTuple):
    fingerprint: bytes
    receipt: bytes
    sequence: int


def _seen(m: IndexMessage) -> Steps[IndexOutcome | None]:
    """The stored outcome if this message id was accepted before (here or in a case), else None.
    Raises IdempotencyConflict for the same id with other bytes."""
    row = yield from QueryOne(
        "SELECT fingerprint, receipt, sequence FROM index_messages WHERE message_id = ?"
        " UNION ALL SELECT fingerprint, receipt, sequence FROM messages WHERE message_id = ?",
        (m.message_id, m.message_id), _Known)
    if row is None:
        return None
    if bytes(row.fingerprint) != m.fingerprint:
        raise IdempotencyConflict(f"message_id {m.message_id} was already used for a different message",
                                  reason="MESSAGE_ID_REUSED", metadata={"message_id": m.message_id})
    return IndexOutcome(receipt=bytes(row.receipt), sequence=row.sequence, replayed=True)


def _log(m: IndexMessage, sequence: int, leaf: int, now: dt.datetime, receipt: bytes) -> Statement:
    """The message's row (its receipt is `b""` until it is signed: an enrollment's names the cases it
    opened, and opening them reads the person from this row)."""
    return Statement(
        "INSERT INTO index_messages (sequence, message_id, kind, sender, transfer_id, created_at, accepted_at,"
        " fingerprint, signed_message, receipt, leaf_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (sequence, m.message_id, m.kind, m.sender, m.transfer_id, micros(m.created_at), micros(now),
         m.fingerprint, m.signed_message, receipt, leaf))


def _entry(m: IndexMessage, leaf: int, issued: IssuedReceipt) -> Statement:
    """The message's leaf in the transparency log, as every accepted message has (no case state:
    it belongs to none)."""
    return transparency.append(leaf, [entries.message_entry(m.fingerprint, issued.body, 0)])


class _Id(NamedTuple):
    transfer_id: str


class _RecordRow(NamedTuple):
    transfer_id: str
    agency: str
    insurance_type: int
    suspension_date: str
    registered: int
    message_id: str


class _EnrollmentRow(NamedTuple):
    message_id: str
    agency: str
    insurance_type: int
    enrollment_date: str
    chosen: str
    reported: int
    accepted_at: int


def _digests(keys: Sequence[PersonKey]) -> list[bytes]:
    return [k.digest for k in keys]


def _register(m: IndexMessage, r: RecordRegistration, open_case: OpenCase, make_receipt: MakeIndexReceipt,
              now: dt.datetime, clock: Callable[[], dt.datetime], sla: Sla) -> Steps[IndexOutcome]:
    used = yield from QueryOne("SELECT transfer_id FROM suspended_records WHERE transfer_id = ?"
                               " UNION ALL SELECT transfer_id FROM cases WHERE transfer_id = ?",
                               (r.transfer_id, r.transfer_id), _Id)
    if used is not None:
        raise RuleViolation(f"transfer id {r.transfer_id} is in use: a record's id must be new (it becomes the id"
                            " of the case the record opens)", reason="TRANSFER_ID_IN_USE",
                            metadata={"transfer_id": r.transfer_id})
    digests = _digests(r.keys)
    waiting = yield from QueryOne(
        f"SELECT transfer_id FROM suspended_records WHERE person_key IN ({marks(len(digests))}) AND agency = ?"
        " AND state = 'waiting'", (*digests, r.agency), _Id)
    if waiting is not None:
        raise RuleViolation(f"agency {r.agency} has registered a suspended record of this person already"
                            f" ({waiting.transfer_id}): withdraw it first if it ended",
                            reason="RECORD_ALREADY_REGISTERED", metadata={"transfer_id": waiting.transfer_id})
    enrollments = yield from Query(
        "SELECT message_id, agency, insurance_type, enrollment_date, chosen, reported, accepted_at FROM enrollments"
        f" WHERE person_key IN ({marks(len(digests))}) AND state = 'waiting' AND waiting_until > ?",
        (*digests, micros(now)), _EnrollmentRow)
    sequence, leaf = yield from transparency.take_head(1)
    record = SuspendedRecord(r.transfer_id, r.agency, r.insurance_type, r.suspension_date, sequence)
    chosen = enrollment_for(record, [_enrollment(e) for e in enrollments])
    opened: list[OpenedCase] = []
    if chosen is not None:
        enrolled_at_us = next(e.accepted_at for e in enrollments if e.message_id == chosen.message_id)
        case = yield from _open(record, m.message_id, chosen, enrolled_at_us, open_case, now, clock, sla)
        if case is not None:
            opened.append(case)
            yield _remember(case, record_message_id=m.message_id, enrollment_message_id=chosen.message_id,
                            enrolled_at_us=enrolled_at_us)
    issued = make_receipt(sequence, leaf, now, [c.transfer_id for c in opened], None)
    yield _log(m, sequence, leaf, now, issued.receipt)
    yield _entry(m, leaf, issued)
    current = r.keys[0]
    yield Statement(
        "INSERT INTO suspended_records (transfer_id, agency, key_id, person_key, insurance_type, suspension_date,"
        " message_id, registered, state, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (r.transfer_id, r.agency, *_kept(current, opened=bool(opened)), r.insurance_type, r.suspension_date,
         m.message_id, sequence, "opened" if opened else WAITING, micros(now) if opened else None))
    return IndexOutcome(receipt=issued.receipt, sequence=sequence, replayed=False, opened=tuple(opened))


def _kept(key: PersonKey, *, opened: bool) -> tuple[str, bytes]:
    """What a row keeps of the person: the key while it can match, nothing once it cannot."""
    return ("", b"") if opened else (key.key_id, key.digest)


def _enrollment(row: _EnrollmentRow) -> Enrollment:
    chosen = frozenset(a for a in row.chosen.split(",") if a)
    return Enrollment(row.message_id, row.agency, row.insurance_type, row.enrollment_date, chosen, row.reported)


class _Signed(NamedTuple):
    signed_message: bytes


def _open(record: SuspendedRecord, record_message_id: str, enrollment: Enrollment, enrolled_at_us: int,
          open_case: OpenCase, now: dt.datetime, clock: Callable[[], dt.datetime],
          sla: Sla) -> Steps[OpenedCase | None]:
    """Open the case of a record and an enrollment: accept the gateway's request for it. None, and
    nothing written, when the person already has an open case at the record's agency (one applied
    for, say): the record keeps waiting."""
    signed = yield from QueryOne("SELECT signed_message FROM index_messages WHERE message_id = ?",
                                 (enrollment.message_id,), _Signed)
    assert signed is not None  # an enrollment row is written with its message
    authored = open_case(Opening(record, record_message_id, enrollment, bytes(signed.signed_message),
                                 from_micros(enrolled_at_us)), now)
    question = open_case_query(authored.message)
    assert question is not None
    busy = yield from question
    if busy is not None:
        return None
    outcome = yield from accept(authored.message, authored.decide, authored.make_receipt, clock, sla)
    return OpenedCase(record.transfer_id, authored.message, outcome)


def _remember(case: OpenedCase, *, record_message_id: str, enrollment_message_id: str,
              enrolled_at_us: int) -> Statement:
    """The automatic_cases row of a case just opened: what opened it, and when the enrollment came."""
    return Statement("INSERT INTO automatic_cases (transfer_id, record_message_id, enrollment_message_id,"
                     " enrolled_at) VALUES (?, ?, ?, ?)",
                     (case.transfer_id, record_message_id, enrollment_message_id, enrolled_at_us))


def _enroll(m: IndexMessage, e: EnrollmentReport, open_case: OpenCase, make_receipt: MakeIndexReceipt,
            now: dt.datetime, clock: Callable[[], dt.datetime], sla: Sla) -> Steps[IndexOutcome]:
    digests = _digests(e.keys)
    rows = yield from Query(
        "SELECT transfer_id, agency, insurance_type, suspension_date, registered, message_id FROM suspended_records"
        f" WHERE person_key IN ({marks(len(digests))}) AND state = 'waiting'", digests, _RecordRow)
    sequence, leaf = yield from transparency.take_head(1)
    enrollment = Enrollment(m.message_id, e.agency, e.insurance_type, e.enrollment_date, e.chosen, sequence)
    records = [SuspendedRecord(r.transfer_id, r.agency, r.insurance_type, r.suspension_date, r.registered)
               for r in rows]
    message_ids = {r.transfer_id: r.message_id for r in rows}
    waiting_until = now + e.retention
    now_us = micros(now)
    current = e.keys[0]
    # The enrollment's message and row first: opening a case reads the person from the message. Its
    # receipt, which names the cases opened, is signed and stored once they are.
    yield _log(m, sequence, leaf, now, b"")
    yield Statement(
        "INSERT INTO enrollments (message_id, agency, key_id, person_key, insurance_type, enrollment_date, chosen,"
        " reported, accepted_at, waiting_until, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (m.message_id, e.agency, current.key_id, current.digest, e.insurance_type, e.enrollment_date,
         ",".join(sorted(e.chosen)), sequence, now_us, micros(waiting_until), WAITING))
    opened: list[OpenedCase] = []
    for record in records_to_open(records, enrollment):
        case = yield from _open(record, message_ids[record.transfer_id], enrollment, now_us, open_case, now, clock,
                                sla)
        if case is None:
            continue
        opened.append(case)
        yield _remember(case, record_message_id=message_ids[record.transfer_id], enrollment_message_id=m.message_id,
                        enrolled_at_us=now_us)
        yield Statement("UPDATE suspended_records SET state = 'opened', key_id = '', person_key = ?, ended_at = ?"
                        " WHERE transfer_id = ?", (b"", now_us, record.transfer_id))
    issued = make_receipt(sequence, leaf, now, [c.transfer_id for c in opened], waiting_until)
    yield Statement("UPDATE index_messages SET receipt = ? WHERE message_id = ?", (issued.receipt, m.message_id))
    yield _entry(m, leaf, issued)
    return IndexOutcome(receipt=issued.receipt, sequence=sequence, replayed=False, opened=tuple(opened))


class _RecordState(NamedTuple):
    agency: str
    state: str


def _withdraw(m: IndexMessage, w: RecordWithdrawal, make_receipt: MakeIndexReceipt,
              now: dt.datetime) -> Steps[IndexOutcome]:
    row = yield from QueryOne("SELECT agency, state FROM suspended_records WHERE transfer_id = ?",
                              (w.transfer_id,), _RecordState)
    if row is None or row.agency != w.agency:  # another agency's record is no record of this one
        raise NotFound(f"agency {w.agency} registered no suspended record {w.transfer_id}",
                       reason="RECORD_NOT_FOUND", metadata={"transfer_id": w.transfer_id})
    if row.state != WAITING:
        opened = row.state == "opened"
        hint = (f": it opened case {w.transfer_id}, which is answered (or refused) in the case itself" if opened
                else ": it was withdrawn before")
        raise RuleViolation(f"suspended record {w.transfer_id} no longer waits{hint}", reason="RECORD_NOT_WAITING",
                            metadata={"transfer_id": w.transfer_id, "record_state": row.state})
    sequence, leaf = yield from transparency.take_head(1)
    issued = make_receipt(sequence, leaf, now, (), None)
    yield _log(m, sequence, leaf, now, issued.receipt)
    yield _entry(m, leaf, issued)
    yield Statement("UPDATE suspended_records SET state = 'withdrawn', key_id = '', person_key = ?, ended_at = ?"
                    " WHERE transfer_id = ?", (b"", micros(now), w.transfer_id))
    return IndexOutcome(receipt=issued.receipt, sequence=sequence, replayed=False)


class _EnrollmentState(NamedTuple):
    agency: str
    state: str
    waiting_until: int


def _opt_out(m: IndexMessage, o: OptOut, make_receipt: MakeIndexReceipt, now: dt.datetime) -> Steps[IndexOutcome]:
    row = yield from QueryOne("SELECT agency, state, waiting_until FROM enrollments WHERE message_id = ?",
                              (o.enrollment_message_id,), _EnrollmentState)
    if row is None or row.agency != o.agency:
        raise NotFound(f"agency {o.agency} reported no enrollment {o.enrollment_message_id}",
                       reason="ENROLLMENT_NOT_FOUND", metadata={"enrollment_message_id": o.enrollment_message_id})
    state = "lapsed" if row.state == WAITING and row.waiting_until <= micros(now) else row.state
    if state != WAITING:
        raise RuleViolation(f"enrollment {o.enrollment_message_id} no longer waits ({state}); the cases it opened"
                            " are withdrawn like any other", reason="ENROLLMENT_NOT_WAITING",
                            metadata={"enrollment_message_id": o.enrollment_message_id, "enrollment_state": state})
    sequence, leaf = yield from transparency.take_head(1)
    issued = make_receipt(sequence, leaf, now, (), None)
    yield _log(m, sequence, leaf, now, issued.receipt)
    yield _entry(m, leaf, issued)
    yield Statement("UPDATE enrollments SET state = 'opted_out', key_id = '', person_key = ? WHERE message_id = ?",
                    (b"", o.enrollment_message_id))
    return IndexOutcome(receipt=issued.receipt, sequence=sequence, replayed=False)


# -- upkeep -------------------------------------------------------------------------------------


def lapse_enrollments(now: dt.datetime, limit: int) -> Steps[int]:
    """Enrollments that waited their whole retention period stop waiting and lose their key; how many."""
    return (yield from Statement(
        "UPDATE enrollments SET state = 'lapsed', key_id = '', person_key = ? WHERE message_id IN"
        " (SELECT message_id FROM enrollments WHERE state = 'waiting' AND waiting_until <= ?"
        " ORDER BY waiting_until LIMIT ?)", (b"", micros(now), limit)))


class _StaleRow(NamedTuple):
    kind: str
    entry_id: str
    key_id: str
    person_key: bytes
    signed_message: bytes


# Open cases keyed under another secret, each with its first message (the one that opened it: a
# request, a notice, or the gateway's AutomaticTransferRequest, all naming the person). An open
# case with no key id is one opened before cases were keyed (migration 11): its key is a plain
# digest, keyed at start-up before the gateway serves.
_STALE_CASES = (
    "SELECT 'case' AS kind, c.transfer_id AS entry_id, c.key_id, c.person_key, m.signed_message"
    " FROM cases c JOIN messages m ON m.case_opened_at = c.opened_at AND m.transfer_id = c.transfer_id"
    " AND m.sequence = (SELECT MIN(f.sequence) FROM messages f"
    " WHERE f.case_opened_at = c.opened_at AND f.transfer_id = c.transfer_id)"
    " WHERE c.closed = 0 AND c.key_id {} ?")


def stale_entries(current_key_id: str, limit: int, *, unkeyed_only: bool = False) -> Steps[list[StaleEntry]]:
    """Waiting entries and open cases keyed under another secret than `current_key_id`, with their
    signed messages (`unkeyed_only`: the open cases keyed under none, nothing else)."""
    if unkeyed_only:
        rows = yield from Query(_STALE_CASES.format("=") + " LIMIT ?", ("", limit), _StaleRow)
    else:
        rows = yield from Query(
            "SELECT 'record' AS kind, r.transfer_id AS entry_id, r.key_id, r.person_key, i.signed_message"
            " FROM suspended_records r JOIN index_messages i ON i.message_id = r.message_id"
            " WHERE r.state = 'waiting' AND r.key_id <> ?"
            " UNION ALL SELECT 'enrollment' AS kind, e.message_id AS entry_id, e.key_id, e.person_key,"
            " i.signed_message FROM enrollments e JOIN index_messages i ON i.message_id = e.message_id"
            f" WHERE e.state = 'waiting' AND e.key_id <> ? UNION ALL {_STALE_CASES.format('<>')} LIMIT ?",
            (current_key_id, current_key_id, current_key_id, limit), _StaleRow)
    return [StaleEntry(r.kind, r.entry_id, r.key_id, bytes(r.person_key), bytes(r.signed_message)) for r in rows]


# Where each kind of entry is kept, and while it keeps a key: (table, id column, condition).
_KEPT = {"record": ("suspended_records", "transfer_id", "state = 'waiting'"),
         "enrollment": ("enrollments", "message_id", "state = 'waiting'"),
         "case": ("cases", "transfer_id", "closed = 0")}


def rekey(entry: StaleEntry, new: PersonKey) -> Steps[bool]:
    """Key one entry under `new`, if it is still as `entry` read it (under the person's locks, old
    and new, so no match or opening of that person runs meanwhile). Whether it changed."""
    for name in lock_names((PersonKey(entry.key_id, entry.person_key), new)):
        yield LockName(name)
    table, column, keeps = _KEPT[entry.kind]
    changed = yield from Statement(
        f"UPDATE {table} SET key_id = ?, person_key = ? WHERE {column} = ? AND key_id = ? AND person_key = ?"
        f" AND {keeps}", (new.key_id, new.digest, entry.entry_id, entry.key_id, entry.person_key))
    return changed == 1


class _CountRow(NamedTuple):
    kind: str
    key_id: str
    entries: int


def index_counts() -> Steps[list[IndexCount]]:
    """Entries waiting in the index, and open cases, by kind and key id."""
    rows = yield from Query(
        "SELECT 'record' AS kind, key_id, COUNT(*) AS entries FROM suspended_records WHERE state = 'waiting'"
        " GROUP BY key_id UNION ALL SELECT 'enrollment' AS kind, key_id, COUNT(*) AS entries FROM enrollments"
        " WHERE state = 'waiting' GROUP BY key_id UNION ALL SELECT 'case' AS kind, key_id, COUNT(*) AS entries"
        " FROM cases WHERE closed = 0 GROUP BY key_id", (), _CountRow)
    return [IndexCount(r.kind, r.key_id, r.entries) for r in rows]
