"""Deliveries, from lease to acknowledgement or dead letter, as operations of steps
(`gateway.store.steps`).

A delivery is PENDING until a claim leases it: IN_FLIGHT, its `attempts` one higher (the lease's
token: a later lease of the same delivery has a higher one) and `visible_at` the lease's end.
Then one of: acknowledged (ACKNOWLEDGED, for good); the lease runs out (claimable again, and a
claim that finds it out of attempts dead-letters it, UNACKNOWLEDGED); or the lease is ended early
(`end_leases`: visible again at once, its attempt undone unless it counts, or dead-lettered with
the reason given). Operators put dead letters back (`redrive`: PENDING, attempts 0).

Order within a case: a claim takes only a case's oldest delivery to the platform that is not
acknowledged, so the next waits until the one before it is acknowledged. A dead letter counts as
not acknowledged: a case's later deliveries wait behind it until it is redriven and acknowledged
(a receiver must never see a fund transfer whose information table it never got).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import NamedTuple

from gateway.core.errors import NotFound
from gateway.core.messages import MessageKind
from gateway.core.timestamps import from_micros, micros
from gateway.store.port import (
    Claim,
    ClaimedDelivery,
    DeadLetter,
    DeadLetterCount,
    DeadLettered,
    DeadLetterQuery,
    DeadReason,
    LeaseEnd,
)
from gateway.store.rows import ACKNOWLEDGED, CANCELLED, DEAD_LETTER, HELD, IN_FLIGHT, PENDING, SEQUENCE_OF, opt_time
from gateway.store.steps import ROW_LOCK, Query, SkipLocked, Statement, Steps, Wake, marks


class _Claimed(NamedTuple):
    sequence: int
    receiver: str
    transfer_id: str
    state: int
    attempts: int  # after the claim: the lease's, or the attempts a dead letter had used
    message_id: str
    signed_message: bytes
    receipt: bytes


class _Found(NamedTuple):
    found: int


def claim_deliveries(platform: str, agencies: frozenset[str] | None, *, limit: int, lease: dt.timedelta,
                     max_attempts: int, now: dt.datetime) -> Steps[Claim]:
    """Lease the oldest open delivery of each case (order within a case holds across redeliveries
    and dead letters), dead-lettering any whose attempts ran out; rows another writer is claiming
    at the same moment are skipped, not awaited.

    One statement, the operation's last step (PostgreSQL sends its commit with it): the rows are
    picked and locked by the WITH, changed by the UPDATE (each SET reads the row as it was), and
    returned with their message and receipt, in no order (sorted here by sequence).
    """
    now_us = micros(now)
    where_agency = ""
    picking: list[object] = [platform, now_us]
    if agencies is not None:
        where_agency = f" AND d.receiver IN ({marks(len(agencies))})"
        picking += sorted(agencies)
    spent = "attempts >= ?"
    rows = yield from Query(
        f"""WITH picked AS MATERIALIZED (
              SELECT d.sequence, d.receiver FROM deliveries d
              WHERE d.platform = ? AND d.state IN ({PENDING}, {IN_FLIGHT}) AND d.visible_at <= ?{where_agency}
                AND NOT EXISTS (
                  SELECT 1 FROM deliveries e
                  WHERE e.platform = d.platform AND e.transfer_id = d.transfer_id
                    AND e.state IN ({PENDING}, {IN_FLIGHT}, {HELD}, {DEAD_LETTER}) AND e.sequence < d.sequence)
              ORDER BY d.sequence LIMIT ? {ROW_LOCK})
            UPDATE deliveries SET
              state = CASE WHEN {spent} THEN {DEAD_LETTER} ELSE {IN_FLIGHT} END,
              attempts = CASE WHEN {spent} THEN attempts ELSE attempts + 1 END,
              visible_at = CASE WHEN {spent} THEN visible_at ELSE ? END,
              first_delivered_at = CASE WHEN {spent} THEN first_delivered_at ELSE COALESCE(first_delivered_at, ?) END,
              dead_reason = CASE WHEN {spent} THEN ? ELSE dead_reason END,
              dead_at = CASE WHEN {spent} THEN ? ELSE dead_at END
            WHERE (sequence, receiver) IN (SELECT sequence, receiver FROM picked)
            RETURNING sequence, receiver, transfer_id, state, attempts,
              (SELECT m.message_id FROM messages m WHERE m.sequence = deliveries.sequence) AS message_id,
              (SELECT m.signed_message FROM messages m WHERE m.sequence = deliveries.sequence) AS signed_message,
              (SELECT m.receipt FROM messages m WHERE m.sequence = deliveries.sequence) AS receipt""",
        (*picking, limit, max_attempts, max_attempts, max_attempts, micros(now + lease), max_attempts, now_us,
         max_attempts, DeadReason.UNACKNOWLEDGED.value, max_attempts, now_us),
        _Claimed, lock=SkipLocked("d"), last=True)
    claimed, dead = [], []
    for d in sorted(rows, key=lambda row: (row.sequence, row.receiver)):
        if d.state == DEAD_LETTER:
            dead.append(DeadLettered(d.message_id, d.receiver, d.transfer_id, d.attempts, DeadReason.UNACKNOWLEDGED))
        else:
            claimed.append(ClaimedDelivery(d.message_id, d.receiver, d.transfer_id, bytes(d.signed_message),
                                           bytes(d.receipt), d.attempts))
    return Claim(claimed, dead)


def ack_delivery(platform: str, message_id: str, now: dt.datetime) -> Steps[None]:
    """Raises NotFound if `platform` receives no such delivery (or it is held or cancelled).

    The wake-up goes first, on the condition the update then meets (a row to acknowledge), so that
    the update is the operation's last step and PostgreSQL commits with it: one round trip. (Another
    transaction holding or cancelling that delivery between the two statements could only make the
    wake-up one too many or too few: a wake-up is news to look for, not a state.)
    """
    where = f" WHERE sequence = ({SEQUENCE_OF}) AND platform = ? AND state NOT IN (?, ?)"
    which = (message_id, platform, HELD, CANCELLED)
    # The next message of that case may now go out, wherever the stream that held this one is.
    yield Wake(platform, acknowledged=message_id, when=Query("SELECT 1 AS found FROM deliveries" + where, which,
                                                             _Found))
    updated = yield from Statement(
        "UPDATE deliveries SET state = ?, acknowledged_at = COALESCE(acknowledged_at, ?)" + where,
        (ACKNOWLEDGED, micros(now), *which), last=True)
    if not updated:
        raise NotFound(f"no delivery {message_id} for platform {platform}",
                       reason="DELIVERY_NOT_FOUND", metadata={"message_id": message_id})


def end_leases(platform: str, ends: Sequence[LeaseEnd], now: dt.datetime) -> Steps[None]:
    """Each lease as its LeaseEnd says, if the delivery is still in that lease; then wake the
    platform's subscribers everywhere (what was released is theirs to take)."""
    now_us = micros(now)
    where = f" WHERE sequence = ({SEQUENCE_OF}) AND receiver = ? AND platform = ? AND state = ? AND attempts = ?"
    changed = 0
    for end in ends:
        lease = (end.message_id, end.receiver, platform, IN_FLIGHT, end.attempt)
        if end.dead is not None:
            changed += yield from Statement(
                "UPDATE deliveries SET state = ?, dead_reason = ?, dead_at = ?" + where,
                (DEAD_LETTER, end.dead.value, now_us, *lease))
        elif end.counted:
            changed += yield from Statement("UPDATE deliveries SET state = ?, visible_at = ?" + where,
                                            (PENDING, now_us, *lease))
        else:
            changed += yield from Statement(
                "UPDATE deliveries SET state = ?, visible_at = ?, attempts = attempts - 1" + where,
                (PENDING, now_us, *lease))
    if changed:
        yield Wake(platform)


def redrive(platform: str, message_ids: Sequence[str] | None, now: dt.datetime) -> Steps[int]:
    """Dead letters of `platform` back to PENDING with no attempt used; how many."""
    chosen = "" if message_ids is None else \
        f" AND sequence IN (SELECT sequence FROM messages WHERE message_id IN ({marks(len(message_ids))}))"
    changed = yield from Statement(
        "UPDATE deliveries SET state = ?, attempts = 0, visible_at = ?, dead_reason = NULL, dead_at = NULL"
        f" WHERE platform = ? AND state = ?{chosen}",
        (PENDING, micros(now), platform, DEAD_LETTER, *(message_ids or ())))
    if changed:
        yield Wake(platform)
    return changed


class _Acknowledged(NamedTuple):
    message_id: str


def acknowledged(platform: str, message_ids: Sequence[str]) -> Steps[set[str]]:
    if not message_ids:
        return set()
    rows = yield from Query(
        f"SELECT m.message_id FROM messages m JOIN deliveries d ON d.sequence = m.sequence"
        f" WHERE d.platform = ? AND d.state = {ACKNOWLEDGED} AND m.message_id IN ({marks(len(message_ids))})",
        (platform, *message_ids), _Acknowledged)
    return {r.message_id for r in rows}


class _Expiry(NamedTuple):
    platform: str
    visible_at: int


def lease_expiries(platforms: Sequence[str]) -> Steps[dict[str, dt.datetime]]:
    if not platforms:
        return {}
    rows = yield from Query(
        f"SELECT platform, MIN(visible_at) AS visible_at FROM deliveries WHERE state = {IN_FLIGHT}"
        f" AND platform IN ({marks(len(platforms))}) GROUP BY platform", tuple(platforms), _Expiry)
    return {r.platform: from_micros(r.visible_at) for r in rows}


class _Letter(NamedTuple):
    platform: str
    receiver: str
    message_id: str
    transfer_id: str
    kind: MessageKind
    sequence: int
    attempts: int
    dead_reason: str | None
    dead_at: int | None
    size_bytes: int


def dead_letters(query: DeadLetterQuery) -> Steps[list[DeadLetter]]:
    where: list[str] = [f"d.state = {DEAD_LETTER}"]
    args: list[object] = []
    if query.platform is not None:
        where.append("d.platform = ?")
        args.append(query.platform)
    if query.after is not None:
        where.append("(d.sequence > ? OR (d.sequence = ? AND d.receiver > ?))")
        args += [query.after[0], query.after[0], query.after[1]]
    rows = yield from Query(
        "SELECT d.platform, d.receiver, m.message_id, d.transfer_id, m.kind, d.sequence, d.attempts, d.dead_reason,"
        " d.dead_at, length(m.signed_message) AS size_bytes FROM deliveries d"
        f" JOIN messages m ON m.sequence = d.sequence WHERE {' AND '.join(where)}"
        " ORDER BY d.sequence, d.receiver LIMIT ?", (*args, query.limit), _Letter)
    return [DeadLetter(platform=r.platform, receiver=r.receiver, message_id=r.message_id, transfer_id=r.transfer_id,
                       kind=r.kind, sequence=r.sequence, attempts=r.attempts,
                       reason=r.dead_reason or DeadReason.UNACKNOWLEDGED.value, dead_at=opt_time(r.dead_at),
                       size_bytes=int(r.size_bytes)) for r in rows]


class _Count(NamedTuple):
    platform: str
    kind: MessageKind
    dead_reason: str | None
    letters: int


def dead_letter_counts() -> Steps[list[DeadLetterCount]]:
    rows = yield from Query(
        "SELECT d.platform, m.kind, d.dead_reason, COUNT(*) AS letters FROM deliveries d"
        f" JOIN messages m ON m.sequence = d.sequence WHERE d.state = {DEAD_LETTER}"
        " GROUP BY d.platform, m.kind, d.dead_reason", (), _Count)
    return [DeadLetterCount(r.platform, r.kind, r.dead_reason or DeadReason.UNACKNOWLEDGED.value, int(r.letters))
            for r in rows]
