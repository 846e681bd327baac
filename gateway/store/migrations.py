"""The schema: numbered migrations, each upgrading the database from the version before it.

`migrate` is an operation like any other (`gateway.store.steps`): a driver runs it in one
transaction when it opens, under its own lock against other processes opening at once (SQLite
BEGIN IMMEDIATE, PostgreSQL an advisory lock). It creates `schema_version` if missing, reads the
version reached, and runs every migration after it, each followed by its version's row.

A migration is a function from the dialect's `ColumnTypes` to a script of statements separated
by `;` (so no `;` inside a statement, its literals or its comments: each piece runs as one
`Statement`). It names a column's type in portable SQL (TEXT) or by the dialect's word for it
(`{t.integer}`, `{t.blob}`): SQLite keeps `INTEGER PRIMARY KEY` as its row id and stores any
integer in 64 bits; PostgreSQL needs BIGINT for microsecond times and BYTEA for bytes.

Adding a table, a column or an index: append a function to MIGRATIONS. Never edit a released
one: a database that ran it will not run it again. tests/store/test_migrations.py pins the text
each released migration renders to on each engine, and upgrades a database made by the ones
before it; a new migration gets its pin when it is released. A migration that computes its rows
from others (as number 3 does) keeps that SQL here, where it cannot change with the write path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from google.protobuf.message import DecodeError

from gateway.store.rows import DEAD_LETTER, HELD, IN_FLIGHT, PENDING
from gateway.store.steps import Batch, Query, QueryOne, Statement, Steps
from mitransfer.protocol import entries
from mitransfer.v1 import envelope_pb2, tracking_pb2

_S = tracking_pb2


@dataclass(frozen=True)
class ColumnTypes:
    """A dialect's words for the types that differ between engines."""

    integer: str  # 64-bit signed: times in µs since the epoch, amounts in fen, sequences, codes
    blob: str     # bytes: person keys, fingerprints, signed messages, receipts


# The fund totals of the movements already stored: migration 3 runs it, and so do the bench's bulk
# loaders after they write movements straight into the tables.
FUND_TOTALS_FROM_MOVEMENTS = (
    "INSERT INTO fund_totals (outbound_province, inbound_province, status, amount_fen, transfers)"
    " SELECT substr(c.outbound, 1, 2), substr(c.inbound, 1, 2), f.status, SUM(f.amount_fen), COUNT(*)"
    " FROM fund_movements f JOIN cases c ON c.transfer_id = f.transfer_id GROUP BY 1, 2, 3")


def _1_cases_messages_deliveries(t: ColumnTypes) -> str:
    return f"""
    CREATE TABLE cases (
        transfer_id     TEXT PRIMARY KEY,
        state           {t.integer} NOT NULL,
        closed          {t.integer} NOT NULL,
        outbound        TEXT NOT NULL,
        inbound         TEXT NOT NULL,
        applicant       TEXT NOT NULL,
        insurance_type  {t.integer} NOT NULL,
        inbound_insurance_type {t.integer} NOT NULL,
        person_key      {t.blob} NOT NULL,
        suspension_date TEXT NOT NULL,
        enrollment_date TEXT NOT NULL,
        balance_fen     {t.integer},
        fund_message_id TEXT,
        opened_at       {t.integer} NOT NULL,
        updated_at      {t.integer} NOT NULL
    );
    -- One open case per person and outbound agency, whatever the code above does.
    CREATE UNIQUE INDEX cases_one_open_per_person ON cases (person_key, outbound) WHERE closed = 0;
    CREATE TABLE messages (
        sequence        {t.integer} PRIMARY KEY,
        message_id      TEXT NOT NULL UNIQUE,
        transfer_id     TEXT NOT NULL REFERENCES cases (transfer_id),
        kind            {t.integer} NOT NULL,
        sender          TEXT NOT NULL,
        receiver        TEXT NOT NULL,
        created_at      {t.integer} NOT NULL,
        accepted_at     {t.integer} NOT NULL,
        fingerprint     {t.blob} NOT NULL,
        ack_status      {t.integer} NOT NULL,
        signed_message  {t.blob} NOT NULL,
        receipt         {t.blob} NOT NULL
    );
    CREATE INDEX messages_by_case ON messages (transfer_id, sequence);
    -- At most one fund movement per case, and its status is the settlement ledger.
    CREATE TABLE fund_movements (
        transfer_id     TEXT PRIMARY KEY REFERENCES cases (transfer_id),
        message_id      TEXT NOT NULL UNIQUE REFERENCES messages (message_id),
        amount_fen      {t.integer} NOT NULL CHECK (amount_fen > 0),
        status          TEXT NOT NULL CHECK (status IN ('held', 'sent', 'credited', 'rejected')),
        accepted_at     {t.integer} NOT NULL,
        updated_at      {t.integer} NOT NULL
    );
    CREATE INDEX fund_movements_by_day ON fund_movements (accepted_at);
    CREATE TABLE deliveries (
        message_id      TEXT NOT NULL REFERENCES messages (message_id),
        receiver        TEXT NOT NULL,
        platform        TEXT NOT NULL,
        transfer_id     TEXT NOT NULL,
        sequence        {t.integer} NOT NULL,
        accepted_at     {t.integer} NOT NULL,
        state           {t.integer} NOT NULL,
        attempts        {t.integer} NOT NULL DEFAULT 0,
        visible_at      {t.integer} NOT NULL,
        first_delivered_at {t.integer},
        acknowledged_at {t.integer},
        PRIMARY KEY (message_id, receiver)
    );
    CREATE INDEX deliveries_open ON deliveries (platform, sequence)
        WHERE state IN ({PENDING}, {IN_FLIGHT});
    CREATE INDEX deliveries_open_by_case ON deliveries (platform, transfer_id, sequence)
        WHERE state IN ({PENDING}, {IN_FLIGHT}, {HELD});
    CREATE INDEX deliveries_dead ON deliveries (platform) WHERE state = {DEAD_LETTER};
    CREATE INDEX deliveries_held ON deliveries (accepted_at) WHERE state = {HELD};
    CREATE INDEX cases_idle ON cases (state, updated_at) WHERE closed = 0;
    """


def _2_stages_and_log_head(t: ColumnTypes) -> str:
    return f"""
    -- Time-limited stages of each case (gateway.core.sla): started, due and finished.
    CREATE TABLE case_stages (
        transfer_id       TEXT NOT NULL REFERENCES cases (transfer_id),
        stage             TEXT NOT NULL,
        stage_order       {t.integer} NOT NULL,
        outbound_province TEXT NOT NULL,
        inbound_province  TEXT NOT NULL,
        started_at        {t.integer} NOT NULL,
        deadline          {t.integer} NOT NULL,
        finished_at       {t.integer},
        PRIMARY KEY (transfer_id, stage)
    );
    CREATE INDEX case_stages_open ON case_stages (deadline) WHERE finished_at IS NULL;
    CREATE INDEX cases_by_opening ON cases (opened_at, transfer_id);
    -- The log's head: the last sequence handed out.
    CREATE TABLE log_head (sequence {t.integer} NOT NULL);
    INSERT INTO log_head (sequence) SELECT COALESCE(MAX(sequence), 0) FROM messages;
    """


def _3_fund_totals(t: ColumnTypes) -> str:
    return f"""
    -- Fund movements added up per province pair and status, kept by every accept that inserts a
    -- movement or changes its status: the gauges read a few rows, not every movement ever made.
    CREATE TABLE fund_totals (
        outbound_province TEXT NOT NULL,
        inbound_province  TEXT NOT NULL,
        status            TEXT NOT NULL,
        amount_fen        {t.integer} NOT NULL,
        transfers         {t.integer} NOT NULL,
        PRIMARY KEY (outbound_province, inbound_province, status)
    );
    {FUND_TOTALS_FROM_MOVEMENTS};
    """


def _4_transparency_log(t: ColumnTypes) -> str:
    return f"""
    -- The transparency log (gateway.store.transparency): its leaves, each written once by the
    -- accept that made it, their leaf index handed out by log_head like the sequence.
    ALTER TABLE log_head ADD COLUMN leaves {t.integer} NOT NULL DEFAULT 0;
    -- Where each message's entry is (NULL only until this migration's backfill has run).
    ALTER TABLE messages ADD COLUMN leaf_index {t.integer};
    CREATE TABLE log_entries (
        leaf_index      {t.integer} PRIMARY KEY,
        entry           {t.blob} NOT NULL
    );
    -- The Merkle tree's hashes by stored hash index (mitransfer.protocol.tlog), written once.
    CREATE TABLE log_hashes (
        hash_index      {t.integer} PRIMARY KEY,
        hash            {t.blob} NOT NULL
    );
    -- How many leaves log_hashes covers: the tree is extended after the accepts, off their path.
    CREATE TABLE log_tree (size {t.integer} NOT NULL);
    INSERT INTO log_tree (size) VALUES (0);
    -- Signed tree heads (C2SP tlog-checkpoint notes).
    CREATE TABLE log_checkpoints (
        tree_size       {t.integer} PRIMARY KEY,
        root_hash       {t.blob} NOT NULL,
        note            {t.blob} NOT NULL,
        published_at    {t.integer} NOT NULL
    );
    """


def _5_automatic_transfer(t: ColumnTypes) -> str:
    integer, blob = t.integer, t.blob
    return f"""
    -- How each case opened: its transfer request's channel (0: the outbound notice opened it).
    ALTER TABLE cases ADD COLUMN channel {integer} NOT NULL DEFAULT 0;
    -- The suspended-record index's messages (gateway.store.index): records and enrollments belong
    -- to no case until they open one. Numbered in the one log with every case's messages, each a
    -- leaf of the transparency log like them.
    CREATE TABLE index_messages (
        sequence        {integer} PRIMARY KEY,
        message_id      TEXT NOT NULL UNIQUE,
        kind            {integer} NOT NULL,
        sender          TEXT NOT NULL,
        transfer_id     TEXT NOT NULL,
        created_at      {integer} NOT NULL,
        accepted_at     {integer} NOT NULL,
        fingerprint     {blob} NOT NULL,
        signed_message  {blob} NOT NULL,
        receipt         {blob} NOT NULL,
        leaf_index      {integer} NOT NULL
    );
    -- Suspended records under the person's keyed hash (never the certificate number). A record's
    -- key is kept only while it waits: once it opened its case or was withdrawn it matches nothing.
    CREATE TABLE suspended_records (
        transfer_id     TEXT PRIMARY KEY,
        agency          TEXT NOT NULL,
        key_id          TEXT NOT NULL,
        person_key      {blob} NOT NULL,
        insurance_type  {integer} NOT NULL,
        suspension_date TEXT NOT NULL,
        message_id      TEXT NOT NULL REFERENCES index_messages (message_id),
        registered      {integer} NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('waiting', 'opened', 'withdrawn')),
        ended_at        {integer}
    );
    -- One waiting record per person and agency, whatever the code above does.
    CREATE UNIQUE INDEX suspended_records_one_per_agency ON suspended_records (person_key, agency)
        WHERE state = 'waiting';
    CREATE INDEX suspended_records_by_key_id ON suspended_records (key_id) WHERE state = 'waiting';
    -- Reported enrollments, each waiting for records until waiting_until, keyed like the records.
    CREATE TABLE enrollments (
        message_id      TEXT PRIMARY KEY REFERENCES index_messages (message_id),
        agency          TEXT NOT NULL,
        key_id          TEXT NOT NULL,
        person_key      {blob} NOT NULL,
        insurance_type  {integer} NOT NULL,
        enrollment_date TEXT NOT NULL,
        chosen          TEXT NOT NULL,
        reported        {integer} NOT NULL,
        accepted_at     {integer} NOT NULL,
        waiting_until   {integer} NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('waiting', 'opted_out', 'lapsed'))
    );
    CREATE INDEX enrollments_by_person ON enrollments (person_key) WHERE state = 'waiting';
    CREATE INDEX enrollments_to_lapse ON enrollments (waiting_until) WHERE state = 'waiting';
    CREATE INDEX enrollments_by_key_id ON enrollments (key_id) WHERE state = 'waiting';
    -- The cases the gateway opened itself, with what opened them. A record opens at most one
    -- case, ever: the case's transfer id is the record's, and both are primary keys.
    CREATE TABLE automatic_cases (
        transfer_id           TEXT PRIMARY KEY REFERENCES cases (transfer_id),
        record_message_id     TEXT NOT NULL,
        enrollment_message_id TEXT NOT NULL,
        enrolled_at           {integer} NOT NULL
    );
    """


def _6_registry_documents(t: ColumnTypes) -> str:
    return f"""
    -- Every published version of the agency registry, so replicas converge on the newest
    -- (gateway.store.registry_documents).
    CREATE TABLE registry_documents (
        version   {t.integer} PRIMARY KEY,
        digest    {t.blob} NOT NULL,
        document  {t.blob} NOT NULL,
        stored_at {t.integer} NOT NULL
    );
    """


# The first instant of 2027 in Asia/Shanghai, in µs: chinese-calendar 1.11, which this schema was
# released with, knows no later year, so a deadline after it was counted Monday to Friday.
_FIRST_UNKNOWN_DAY_US = 1_798_732_800_000_000


def _7_measures(t: ColumnTypes) -> str:
    integer = t.integer
    return f"""
    -- Facts of the 2021 measures kept with each case: the balance retained at the outbound side
    -- (310 → 390), months insured without a break (the two-year rule of a switch of scheme), the
    -- inbound region's waiting period fixed when it accepted.
    ALTER TABLE cases ADD COLUMN retained_fen {integer} NOT NULL DEFAULT 0;
    ALTER TABLE cases ADD COLUMN insured_months {integer};
    ALTER TABLE cases ADD COLUMN waiting_period_months {integer};

    -- Each stage's owner (whose clock it is) and the province answerable for it: the calendar
    -- version its deadline was counted on, and whether that counted days of a year only the
    -- Monday-to-Friday fallback knew (then it is counted again when the year's notice is loaded).
    ALTER TABLE case_stages ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE case_stages ADD COLUMN owner_province TEXT NOT NULL DEFAULT '';
    ALTER TABLE case_stages ADD COLUMN provisional {integer} NOT NULL DEFAULT 0;
    ALTER TABLE case_stages ADD COLUMN calendar_version {integer} NOT NULL DEFAULT 0;
    UPDATE case_stages SET
        owner = CASE stage WHEN 'outbound' THEN 'outbound' WHEN 'inbound' THEN 'inbound'
                           WHEN 'review' THEN 'reviewer' ELSE 'both' END,
        owner_province = CASE stage WHEN 'inbound' THEN inbound_province WHEN 'total' THEN ''
                                    ELSE outbound_province END,
        provisional = CASE WHEN deadline > {_FIRST_UNKNOWN_DAY_US} THEN 1 ELSE 0 END;

    -- The inbound stage starts when the inbound side has all it needs: not while the funds are
    -- awaited or held for review ...
    DELETE FROM case_stages WHERE stage = 'inbound' AND transfer_id IN (
        SELECT transfer_id FROM cases
        WHERE state IN ({_S.CASE_STATE_HELD_FOR_REVIEW}, {_S.CASE_STATE_REVIEW_REJECTED})
           OR (state = {_S.CASE_STATE_TABLE_SENT} AND insurance_type = 310 AND inbound_insurance_type IN (310, 0)
               AND balance_fen > 0));
    -- ... and where funds were sent, when they were released to it (the review's approval, or
    -- the fund transfer itself). Counted again, and judged again, on the next open (version -1).
    UPDATE case_stages SET provisional = 1, calendar_version = -1, started_at = COALESCE(
        (SELECT MAX(m.accepted_at) FROM messages m
         WHERE m.transfer_id = case_stages.transfer_id AND m.kind = {envelope_pb2.MESSAGE_KIND_REVIEW_DECISION}),
        (SELECT f.accepted_at FROM fund_movements f WHERE f.transfer_id = case_stages.transfer_id))
    WHERE stage = 'inbound' AND transfer_id IN (SELECT transfer_id FROM fund_movements);

    -- The settlement ledger with returns: money the inbound side rejected after it arrived is owed
    -- back (return_due), sent back (returning), confirmed back (returned). Movements stored before
    -- keep their status: "rejected" is money stopped in review, or rejected by the inbound side
    -- before returns were tracked (as the log says). The table is rebuilt for its CHECK alone.
    CREATE TABLE fund_movements_7 (
        transfer_id     TEXT PRIMARY KEY REFERENCES cases (transfer_id),
        message_id      TEXT NOT NULL UNIQUE REFERENCES messages (message_id),
        amount_fen      {integer} NOT NULL CHECK (amount_fen > 0),
        status          TEXT NOT NULL CHECK (status IN ('held', 'sent', 'credited', 'rejected', 'return_due',
                                                        'returning', 'returned')),
        accepted_at     {integer} NOT NULL,
        updated_at      {integer} NOT NULL
    );
    INSERT INTO fund_movements_7 (transfer_id, message_id, amount_fen, status, accepted_at, updated_at)
        SELECT transfer_id, message_id, amount_fen, status, accepted_at, updated_at FROM fund_movements;
    DROP TABLE fund_movements;
    ALTER TABLE fund_movements_7 RENAME TO fund_movements;
    CREATE INDEX fund_movements_by_day ON fund_movements (accepted_at);

    -- Finished stages added up by owner, province pair and result, kept by every accept that
    -- finishes one and by every judgement counted again: the gauges read a few rows.
    CREATE TABLE stage_totals (
        stage             TEXT NOT NULL,
        owner             TEXT NOT NULL,
        owner_province    TEXT NOT NULL,
        outbound_province TEXT NOT NULL,
        inbound_province  TEXT NOT NULL,
        result            TEXT NOT NULL,
        stages            {integer} NOT NULL,
        PRIMARY KEY (stage, owner, owner_province, outbound_province, inbound_province, result)
    );
    INSERT INTO stage_totals (stage, owner, owner_province, outbound_province, inbound_province, result, stages)
        SELECT stage, owner, owner_province, outbound_province, inbound_province,
               CASE WHEN finished_at < deadline THEN 'on_time' ELSE 'late' END, COUNT(*)
        FROM case_stages WHERE finished_at IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6;

    -- The working-day calendar every replica counts on: the State Council's notices, a year each,
    -- and a version that every load raises.
    CREATE TABLE calendar_years (
        calendar_year   {integer} PRIMARY KEY,
        source          TEXT NOT NULL,
        holidays        TEXT NOT NULL,
        workdays        TEXT NOT NULL,
        loaded_at       {integer} NOT NULL
    );
    CREATE TABLE calendar_head (version {integer} NOT NULL);
    INSERT INTO calendar_head (version) VALUES (0);
    CREATE INDEX case_stages_to_retime ON case_stages (calendar_version)
        WHERE finished_at IS NULL OR provisional = 1;
    """


def _8_dead_letter_reasons(t: ColumnTypes) -> str:
    return f"""
    -- Why and when a delivery went to the dead-letter state (gateway.store.port.DeadReason). The
    -- only way there before this migration was leases expiring unacknowledged.
    ALTER TABLE deliveries ADD COLUMN dead_reason TEXT;
    ALTER TABLE deliveries ADD COLUMN dead_at {t.integer};
    UPDATE deliveries SET dead_reason = 'UNACKNOWLEDGED' WHERE state = {DEAD_LETTER};
    -- A dead letter now holds back its case's later deliveries: the order check counts it.
    CREATE INDEX deliveries_unfinished_by_case ON deliveries (platform, transfer_id, sequence)
        WHERE state IN ({PENDING}, {IN_FLIGHT}, {HELD}, {DEAD_LETTER});
    DROP INDEX deliveries_open_by_case;
    -- Dead letters listed in log order.
    CREATE INDEX deliveries_dead_in_order ON deliveries (sequence, receiver) WHERE state = {DEAD_LETTER};
    """


def _9_write_probes(t: ColumnTypes) -> str:
    return f"""
    -- Each replica's last write probe (gateway.store.probe): health asks whether the store can
    -- write, and only a committed write answers that.
    CREATE TABLE write_probes (
        replica   TEXT PRIMARY KEY,
        probed_at {t.integer} NOT NULL
    );
    """


def _10_keys_that_append(t: ColumnTypes) -> str:
    integer = t.integer
    return f"""
    -- Keys that append: every accept inserts into the indexes below, and a key a caller chose (a
    -- message id, a transfer id) lands on a random page of an index as large as the store, a page
    -- that misses the cache and that each commit and checkpoint writes again. Keyed by the log's
    -- sequence, or by when the case opened, an accept writes at the indexes' right edge, where
    -- the cases still moving are. Only the message id's own index, which every accept must ask,
    -- and the case's row keep a caller's key.
    --
    -- A message's case by when it opened (cases.opened_at, set once): a case's messages together,
    -- in the order cases opened, in place of messages_by_case (transfer_id, sequence).
    ALTER TABLE messages ADD COLUMN case_opened_at {integer} NOT NULL DEFAULT 0;
    UPDATE messages SET case_opened_at = (SELECT c.opened_at FROM cases c WHERE c.transfer_id = messages.transfer_id);
    DROP INDEX messages_by_case;
    CREATE INDEX messages_by_case_opening ON messages (case_opened_at, transfer_id, sequence);
    -- Deliveries keyed by their message's sequence (message ids are found through messages): the
    -- table is rebuilt, since SQLite cannot change a primary key.
    CREATE TABLE deliveries_10 (
        sequence        {integer} NOT NULL REFERENCES messages (sequence),
        receiver        TEXT NOT NULL,
        platform        TEXT NOT NULL,
        transfer_id     TEXT NOT NULL,
        accepted_at     {integer} NOT NULL,
        state           {integer} NOT NULL,
        attempts        {integer} NOT NULL DEFAULT 0,
        visible_at      {integer} NOT NULL,
        first_delivered_at {integer},
        acknowledged_at {integer},
        dead_reason     TEXT,
        dead_at         {integer},
        PRIMARY KEY (sequence, receiver)
    );
    INSERT INTO deliveries_10 (sequence, receiver, platform, transfer_id, accepted_at, state, attempts, visible_at,
                               first_delivered_at, acknowledged_at, dead_reason, dead_at)
        SELECT sequence, receiver, platform, transfer_id, accepted_at, state, attempts, visible_at,
               first_delivered_at, acknowledged_at, dead_reason, dead_at
        FROM deliveries ORDER BY sequence, receiver;
    DROP TABLE deliveries;
    ALTER TABLE deliveries_10 RENAME TO deliveries;
    CREATE INDEX deliveries_open ON deliveries (platform, sequence) WHERE state IN ({PENDING}, {IN_FLIGHT});
    CREATE INDEX deliveries_unfinished_by_case ON deliveries (platform, transfer_id, sequence)
        WHERE state IN ({PENDING}, {IN_FLIGHT}, {HELD}, {DEAD_LETTER});
    CREATE INDEX deliveries_dead ON deliveries (platform) WHERE state = {DEAD_LETTER};
    CREATE INDEX deliveries_dead_in_order ON deliveries (sequence, receiver) WHERE state = {DEAD_LETTER};
    CREATE INDEX deliveries_held ON deliveries (accepted_at) WHERE state = {HELD}
    """


def _11_case_person_keys(t: ColumnTypes) -> str:
    return """
    -- Cases keep their person's key as the index does: an HMAC under a person-key secret
    -- (gateway.core.personkeys), the secret's id beside it. Until now it was a plain SHA-256 of the
    -- certificate, which a dictionary of ID numbers reverses. SQL cannot compute an HMAC: the
    -- closed cases' digests are erased right after this (no rule reads a closed case's person),
    -- the open ones keep theirs under no key id until the gateway keys them at start-up, from
    -- each case's opening message, before it serves.
    ALTER TABLE cases ADD COLUMN key_id TEXT NOT NULL DEFAULT ''
    """


Migration = Callable[[ColumnTypes], str]
MIGRATIONS: tuple[Migration, ...] = (
    _1_cases_messages_deliveries,
    _2_stages_and_log_head,
    _3_fund_totals,
    _4_transparency_log,
    _5_automatic_transfer,
    _6_registry_documents,
    _7_measures,
    _8_dead_letter_reasons,
    _9_write_probes,
    _10_keys_that_append,
    _11_case_person_keys,
)
# Rows a migration computes in Python from those already stored, run right after its SQL in the
# same transaction: migration 4 logs the messages accepted before the log existed; migration 11
# erases the plain digests of closed cases (a statement of its own: an empty blob has no literal
# that both engines read).
AFTER: dict[int, Callable[[], Steps[None]]] = {4: lambda: _backfill_log(), 11: lambda: _erase_closed_keys()}


def _erase_closed_keys() -> Steps[None]:
    yield Statement("UPDATE cases SET person_key = ? WHERE closed = 1", (b"",))


class _Logged(NamedTuple):
    sequence: int
    message_id: str
    transfer_id: str
    fingerprint: bytes
    receipt: bytes
    case_state: int
    amount_fen: int | None
    status: str | None
    outbound: str
    inbound: str


def _backfill_log(page: int = 5_000) -> Steps[None]:
    """Log what was accepted before the log existed, in sequence order: each message (its receipt
    body as stored, which names no leaf; the case's state only on the case's last message, the
    one state known), and after each fund transfer its movement with the status it has now.
    Kept here, not beside the write path, so that it cannot change with it."""
    after, leaf = 0, 0
    while True:
        rows = yield from Query(
            "SELECT m.sequence, m.message_id, m.transfer_id, m.fingerprint, m.receipt,"
            " CASE WHEN m.sequence = (SELECT MAX(x.sequence) FROM messages x WHERE x.transfer_id = m.transfer_id)"
            " THEN c.state ELSE 0 END AS case_state, f.amount_fen, f.status, c.outbound, c.inbound"
            " FROM messages m JOIN cases c ON c.transfer_id = m.transfer_id"
            " LEFT JOIN fund_movements f ON f.message_id = m.message_id"
            " WHERE m.sequence > ? ORDER BY m.sequence LIMIT ?", (after, page), _Logged)
        logged: list[tuple[int, bytes]] = []
        placed: list[tuple[int, int]] = []  # (leaf index, sequence) of each message
        for r in rows:
            try:
                body = envelope_pb2.Receipt.FromString(bytes(r.receipt)).body
            except DecodeError:  # a receipt that does not parse is logged as it is stored
                body = bytes(r.receipt)
            logged.append((leaf, entries.message_entry(bytes(r.fingerprint), body, r.case_state)))
            placed.append((leaf, r.sequence))
            leaf += 1
            if r.status is not None and r.amount_fen is not None:
                logged.append((leaf, entries.fund_entry(
                    transfer_id=r.transfer_id, fund_message_id=r.message_id, message_id=r.message_id, previous=None,
                    status=r.status, amount_fen=r.amount_fen, outbound=r.outbound, inbound=r.inbound)))
                leaf += 1
        for at in range(0, len(logged), 500):
            chunk = logged[at:at + 500]
            yield Statement(
                f"INSERT INTO log_entries (leaf_index, entry) VALUES {', '.join('(?, ?)' for _ in chunk)}",
                tuple(v for pair in chunk for v in pair))
        yield Batch("UPDATE messages SET leaf_index = ? WHERE sequence = ?", placed)
        if len(rows) < page:
            break
        after = rows[-1].sequence
    yield Statement("UPDATE log_head SET leaves = ?", (leaf,))


class _Version(NamedTuple):
    version: int | None


def migrate(types: ColumnTypes) -> Steps[list[int]]:
    """Bring the schema to the last version; the versions it ran, oldest first (none: it was
    current). Run it in one transaction that nothing else migrates at the same time."""
    yield Statement("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    reached = yield from QueryOne("SELECT MAX(version) AS version FROM schema_version", (), _Version)
    current = (reached.version if reached is not None else None) or 0
    ran = []
    for version, migration in enumerate(MIGRATIONS[current:], start=current + 1):
        for statement in migration(types).split(";"):
            if statement.strip():
                yield Statement(statement)
        if version in AFTER:
            yield from AFTER[version]()
        yield Statement("INSERT INTO schema_version (version) VALUES (?)", (version,))
        ran.append(version)
    return ran
