"""The person keys' upkeep (gateway.app.indexkeeper) on a real store."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from clients import builders
from gateway.app.indexkeeper import IndexKeeper, person_of
from gateway.core.case import Decision
from gateway.service.metrics import Metrics
from gateway.store import StaleEntry
from gateway.store.sqlite import SQLiteConfig, SQLiteStore
from mitransfer.v1 import envelope_pb2, messages_pb2
from tests.store.support import KEYS, SLA, Clock, incoming, opened, receipt_for


class _Overtaken(SQLiteStore):
    """A replica's store whose first batch of unkeyed cases another replica (a worker started at
    the same moment) keys before this one can: what each of them reads, the other may have done."""

    armed = False

    async def stale_index_entries(self, current_key_id: str, limit: int, *, unkeyed_only: bool = False
                                  ) -> list[StaleEntry]:
        entries = await super().stale_index_entries(current_key_id, limit, unkeyed_only=unkeyed_only)
        if self.armed:
            self.armed = False
            for entry in entries:  # the other replica's rekeying, committed first
                person = person_of(entry)
                assert person is not None
                assert await self.rekey_index_entry(entry, KEYS.key(person))
        return entries


def _notice(seed: int) -> bytes:
    notice = messages_pb2.OutboundNotice(person=builders.sample_person(seed))
    return envelope_pb2.SignedMessage(kind=envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE,
                                      payload=notice.SerializeToString()).SerializeToString()


async def test_start_up_keys_every_case_even_when_another_replica_keys_a_batch_first(tmp_path: Path) -> None:
    """Replicas or workers starting together after migration 11 key the same unkeyed open cases at
    once. One whose batch was keyed by the other before it could must read again: it serves only
    once no open case is left under no key (a case it missed would not meet its person's next case)."""
    clock = Clock()
    store = _Overtaken(SQLiteConfig(path=tmp_path / "store.db"), clock, SLA)
    await store.open()
    try:
        for seed in range(3):  # open cases as the release before keyed cases left them: no key id
            m = incoming(str(uuid.uuid4()), body=_notice(seed))
            await store.accept(m, lambda case, _i, m=m: Decision(case or replace(opened(m), key_id="")),
                               receipt_for(m))
        assert len(await store.stale_index_entries(KEYS.current, 10, unkeyed_only=True)) == 3
        store.armed = True
        keeper = IndexKeeper(store=store, keys=KEYS, metrics=Metrics(CollectorRegistry()), clock=clock, batch=2)
        assert await keeper.key_unkeyed_cases() == 1  # the other replica keyed two of them
        assert await store.stale_index_entries(KEYS.current, 10, unkeyed_only=True) == []
    finally:
        await store.close()


async def test_an_entry_the_store_refuses_to_key_again_holds_up_no_other(tmp_path: Path) -> None:
    """A case that cannot be keyed again (its person has another open case at its outbound agency,
    keyed under the current secret: opened while the case's secret had been removed too early) is
    logged and left as it is; the upkeep keys the others, round after round, and start-up ends."""
    clock = Clock()
    store = SQLiteStore(SQLiteConfig(path=tmp_path / "store.db"), clock, SLA)
    await store.open()

    async def case(seed: int, key_id: str, person_key: bytes) -> str:
        m = incoming(str(uuid.uuid4()), body=_notice(seed))
        await store.accept(m, lambda c, _i: Decision(c or replace(opened(m), key_id=key_id, person_key=person_key)),
                           receipt_for(m))
        return m.transfer_id

    try:
        stuck = await case(1, "", b"plain digest")  # one of each kind of stale case: unkeyed…
        await case(1, "gone", b"under a removed secret")  # …and under a secret no longer held
        await case(1, KEYS.current, KEYS.key(builders.sample_person(1)).digest)  # the person's newer case
        other = await case(2, "gone", b"another person")
        keeper = IndexKeeper(store=store, keys=KEYS, metrics=Metrics(CollectorRegistry()), clock=clock, batch=10)
        assert await keeper.key_unkeyed_cases() == 0  # ends, though the unkeyed case stays as it was
        assert await keeper.keep_once() == (0, 1)  # the other person's case is keyed again
        stale = {e.entry_id: e.key_id for e in await store.stale_index_entries(KEYS.current, 10)}
        assert other not in stale and stale[stuck] == "" and len(stale) == 2
    finally:
        await store.close()
