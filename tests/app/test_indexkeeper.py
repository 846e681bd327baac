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
