"""The schema's migrations: released ones never change, and databases made by older releases open
and upgrade, on both engines."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import replace
from typing import NamedTuple

import pytest

from gateway.core.case import Case, CaseIndex, Decision, FundStatus
from gateway.core.sla import Stage
from gateway.store import postgres, sqlite
from gateway.store.migrations import MIGRATIONS, ColumnTypes
from gateway.store.steps import QueryOne, Statement, Steps
from mitransfer.protocol import entries, tlog
from mitransfer.v1 import envelope_pb2, tracking_pb2
from tests.store.support import T0, Clock, Factory, incoming, open_case, opening, receipt_for

# SHA-256 of the text each released migration renders to, as the release that shipped it ran it:
# a database that ran a migration never runs it again, so an edit would split the fleet in two.
RELEASED = {
    1: ("b202cda2f33e5bfea57318722b260253f33db9b507afa5b541a26908c4761651",
        "b05c48407a970d843bfd15bfb8482aa3dab5f4ae8e0e35d59f3e47b62bf09dcd"),
    2: ("28ee2bbfd80989ca90eed1296d57d65ae6698ced52b5f232b84ce1797318de02",
        "5ac45ca3fc6859e809106d8718286b4af3a3440462658d54ce263ea4ab513900"),
    3: ("8187c55c618607dc4db580f02899ac298f8fd2e05c93c200143e5bc2f8df10e7",
        "00a7dbdec478281bae0271f4b5e86e2e74318f8d4aee36cb0fe6ea1b3b2c63d8"),
}


@pytest.mark.parametrize("version", sorted(RELEASED))
def test_released_migrations_render_as_they_were_released(version: int) -> None:
    for types, pinned in zip((sqlite.TYPES, postgres.TYPES), RELEASED[version], strict=True):
        assert hashlib.sha256(MIGRATIONS[version - 1](types).encode()).hexdigest() == pinned, types


def test_the_types_that_differ_are_the_dialects_words() -> None:
    """SQLite's INTEGER PRIMARY KEY is its row id; PostgreSQL's times need BIGINT: no migration
    names either itself."""
    marked = ColumnTypes(integer="<integer>", blob="<blob>")
    scripts = [migration(marked) for migration in MIGRATIONS]
    assert "sequence        <integer> PRIMARY KEY" in scripts[0] and "person_key      <blob> NOT NULL" in scripts[0]
    for word in ("INTEGER", "BIGINT", "BLOB", "BYTEA"):
        assert not any(word in script for script in scripts), word


class _Versions(NamedTuple):
    versions: int
    version: int


def _versions() -> Steps[_Versions | None]:
    return (yield from QueryOne("SELECT COUNT(*) AS versions, MAX(version) AS version FROM schema_version", (),
                                _Versions))


def _back_to(version: int) -> Steps[None]:
    """The schema as the release with `version` left it (the tables and index added later dropped)."""
    undo = {6: ["DROP TABLE registry_documents"],
            5: ["DROP TABLE automatic_cases", "DROP TABLE enrollments", "DROP TABLE suspended_records",
                "DROP TABLE index_messages", "ALTER TABLE cases DROP COLUMN channel"],
            4: ["DROP TABLE log_checkpoints", "DROP TABLE log_tree", "DROP TABLE log_hashes", "DROP TABLE log_entries",
                "ALTER TABLE log_head DROP COLUMN leaves", "ALTER TABLE messages DROP COLUMN leaf_index"],
            3: ["DROP TABLE fund_totals"],
            2: ["DROP TABLE case_stages", "DROP INDEX cases_by_opening", "DROP TABLE log_head"]}
    for newer in sorted(undo, reverse=True):
        if newer > version:
            for statement in undo[newer]:
                yield from Statement(statement)
    yield from Statement("DELETE FROM schema_version WHERE version > ?", (version,))


async def test_migrations_run_once(factory_and_clock: tuple[Factory, Clock]) -> None:
    make, _ = factory_and_clock
    for _ in range(2):
        store = make()
        await store.open()
        try:
            assert await store.read(_versions) == _Versions(len(MIGRATIONS), len(MIGRATIONS))
        finally:
            await store.close()


async def test_fund_totals_are_added_up_from_the_movements_stored_before_them(
    factory_and_clock: tuple[Factory, Clock],
) -> None:
    """A database from before the running totals (migration 3) gets them from its movements."""
    make, _ = factory_and_clock
    store = make()
    await store.open()
    try:
        for i, status in enumerate([FundStatus.SENT, FundStatus.HELD, FundStatus.CREDITED]):
            m = await open_case(store)
            fund = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, body=f"f{i}".encode(),
                            amount=100 * (i + 1))
            await store.accept(fund, lambda case, _i, s=status: Decision(case, fund_status=s), receipt_for(fund))
        kept = await store.fund_totals()
        await store.write(lambda: _back_to(2))
    finally:
        await store.close()
    store = make()
    await store.open()
    try:
        upgraded = await store.fund_totals()
        everything = await store.settlement(T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1))
    finally:
        await store.close()
    assert upgraded == kept == everything and len(everything) == 1
    assert (everything[0].transfers, everything[0].sent_fen, everything[0].held_fen) == (3, 600, 200)


async def test_a_database_of_the_first_schema_upgrades_and_its_cases_move_on(
    factory_and_clock: tuple[Factory, Clock],
) -> None:
    """Cases opened before stages were kept have no stage rows: a message that would finish one
    is accepted, not refused, and the log goes on after the messages already stored."""
    make, clock = factory_and_clock
    store = make()
    await store.open()
    try:
        m = await open_case(store)
        other = await open_case(store)
        await store.write(lambda: _back_to(1))
    finally:
        await store.close()
    store = make()
    await store.open()
    try:
        clock.advance(60)
        table = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_INFORMATION_TABLE, body=b"table")

        def sent(case: Case | None, _index: CaseIndex) -> Decision:
            assert case is not None
            return Decision(replace(case, state=tracking_pb2.CASE_STATE_TABLE_SENT, balance_fen=0))

        outcome = await store.accept(table, sent, receipt_for(table))
        assert not outcome.replayed and outcome.finished_stages == ()
        assert outcome.sequence == 3  # after the two messages from before the log's head was kept
        view = await store.get_case(m.transfer_id)
        assert view is not None and [s.stage for s in view.stages] == [Stage.INBOUND]
        assert (await store.get_case(other.transfer_id)) is not None
        fresh = incoming(str(uuid.uuid4()))
        assert (await store.accept(fresh, opening(fresh), receipt_for(fresh))).sequence == 4
    finally:
        await store.close()



async def test_messages_from_before_the_log_are_logged_when_it_arrives(
    factory_and_clock: tuple[Factory, Clock],
) -> None:
    """Migration 4 logs every message already stored, in sequence order, each fund transfer
    followed by its movement as it stands; the log goes on after them, and they are provable."""
    make, _ = factory_and_clock
    store = make()
    await store.open()
    try:
        m = await open_case(store)
        fund = incoming(m.transfer_id, kind=envelope_pb2.MESSAGE_KIND_FUND_TRANSFER, body=b"fund", amount=700)
        await store.accept(fund, lambda case, _i: Decision(case, fund_status=FundStatus.HELD), receipt_for(fund))
        await store.write(lambda: _back_to(3))
    finally:
        await store.close()
    store = make()
    await store.open()
    try:
        later = await open_case(store)
        # after the 2 messages and 1 movement from before
        assert (await store.leaf_of(later.message_id) or (None, None))[:2] == (later.transfer_id, 3)
        published = await store.publish_checkpoint(lambda size, root: f"{size}".encode())
        assert published is not None and published.tree_size == 4
        proof = await store.inclusion_proof(m.message_id, 0)
        tlog.check_inclusion(proof.hashes, 4, published.root_hash, proof.leaf_index, tlog.leaf_hash(proof.entry))
        logged = entries.read_entry(proof.entry).message
        assert logged.case_state == 0  # not the case's last message: its state then is not known
        assert (await store.leaf_of(fund.message_id) or (None, None))[:2] == (fund.transfer_id, 1)
    finally:
        await store.close()
