"""The schema: numbered migrations, each upgrading the database from the version before it.

`migrate` is an operation like any other (`gateway.store.steps`): a driver runs it in one
transaction when it opens, under its own lock against other processes opening at once (SQLite
BEGIN IMMEDIATE, PostgreSQL an advisory lock). It creates `schema_version` if missing, reads the
version reached, and runs every migration after it, each followed by its version's row.

A migration is a function from the dialect's `ColumnTypes` to a script of statements separated
by `;`. It names a column's type in portable SQL (TEXT) or by the dialect's word for it
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

from gateway.store.rows import DEAD_LETTER, HELD, IN_FLIGHT, PENDING
from gateway.store.steps import QueryOne, Statement, Steps


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


Migration = Callable[[ColumnTypes], str]
MIGRATIONS: tuple[Migration, ...] = (
    _1_cases_messages_deliveries,
    _2_stages_and_log_head,
    _3_fund_totals,
)


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
        yield Statement("INSERT INTO schema_version (version) VALUES (?)", (version,))
        ran.append(version)
    return ran
