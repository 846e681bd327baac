"""The person keys' upkeep, a round every `[automatic] upkeep_interval_seconds` on every replica
(each round's writes are small transactions that replicas may run at once):

- enrollments that waited their whole retention period lapse: they stop waiting and their keys
  are dropped (`transfer_gateway_enrollments_lapsed_total`);
- index entries and open cases still keyed under another secret than the current one are keyed
  again under it, each read afresh from the signed message it came in (a case: the message that
  opened it), so this works even once the old secret is gone: what makes a rotation finish
  (`transfer_gateway_index_rekeyed_total`);
- the index's size and the open cases, by kind and key id, are read into
  `transfer_gateway_index_entries`.

Before a replica serves, `key_unkeyed_cases` keys every open case that has no key id yet: the ones
opened before cases were keyed (migration 11), whose key is still a plain digest of the certificate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from google.protobuf.message import DecodeError

from gateway.core.errors import RuleViolation
from gateway.core.personkeys import PersonKeys
from gateway.service.metrics import Metrics
from gateway.store import StaleEntry, Store
from mitransfer.v1 import automatic_pb2, envelope_pb2, messages_pb2, types_pb2

log = logging.getLogger("gateway.app.indexkeeper")


# The kinds of message a person is read from: an index entry's, or the one that opened a case.
_PERSON_OF: dict[int, Callable[[bytes], types_pb2.Person]] = {
    envelope_pb2.MESSAGE_KIND_SUSPENDED_RECORD: lambda b: automatic_pb2.SuspendedRecord.FromString(b).person,
    envelope_pb2.MESSAGE_KIND_ENROLLMENT: lambda b: automatic_pb2.Enrollment.FromString(b).person,
    envelope_pb2.MESSAGE_KIND_TRANSFER_REQUEST: lambda b: messages_pb2.TransferRequest.FromString(b).person,
    envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE: lambda b: messages_pb2.OutboundNotice.FromString(b).person,
    envelope_pb2.MESSAGE_KIND_AUTOMATIC_TRANSFER_REQUEST:
        lambda b: automatic_pb2.AutomaticTransferRequest.FromString(b).request.person,
}


def person_of(entry: StaleEntry) -> types_pb2.Person | None:
    """The person of an index entry or an open case, from the signed message it came in (verified
    when accepted); None if it cannot be read (never expected: logged, and the entry stays as it is)."""
    try:
        signed = envelope_pb2.SignedMessage.FromString(entry.signed_message)
        read = _PERSON_OF.get(signed.kind)
        return None if read is None else read(signed.payload)
    except DecodeError:
        return None


class IndexKeeper:
    def __init__(self, *, store: Store, keys: PersonKeys, metrics: Metrics, clock: Callable[[], dt.datetime],
                 batch: int) -> None:
        self._store = store
        self._keys = keys
        self._metrics = metrics
        self._clock = clock
        self._batch = batch

    async def keep_once(self) -> tuple[int, int]:
        """One round; (enrollments lapsed, entries keyed again)."""
        lapsed = await self._store.lapse_enrollments(self._clock(), self._batch)
        self._metrics.enrollments_lapsed.inc(lapsed)
        rekeyed, _ = await self._rekey(await self._store.stale_index_entries(self._keys.current, self._batch))
        self._metrics.observe_index(await self._store.index_counts(), self._keys.current)
        return lapsed, rekeyed

    async def key_unkeyed_cases(self) -> int:
        """Key every open case that has no key id (opened before cases were keyed) under the current
        secret, a batch at a time, until none is left (or only ones it cannot key); how many it keyed.

        It reads again until a read finds nothing it could key, not until a batch keys nothing:
        replicas or workers starting together key the same cases at once, and a batch the other
        one keyed first says nothing of the cases after it.
        """
        total = 0
        while True:
            keyed, settled = await self._rekey(await self._store.stale_index_entries(
                self._keys.current, self._batch, unkeyed_only=True))
            total += keyed
            if settled == 0:
                return total

    async def _rekey(self, entries: list[StaleEntry]) -> tuple[int, int]:
        """Each entry keyed again under the current secret if it is still as read: (how many were,
        how many are settled: keyed, or changed since by another replica or by their case closing,
        so that no read finds them again). An entry that cannot be read, or that the store refuses
        to key (its person has another open case, or entry, under the current key: a secret removed
        too early let it in) is logged and left as it is, and holds up none of the others."""
        rekeyed = settled = 0
        for entry in entries:
            person = person_of(entry)
            if person is None:
                log.error("index entry unreadable", extra={"fields": {"kind": entry.kind, "id": entry.entry_id}})
                continue
            try:
                changed = await self._store.rekey_index_entry(entry, self._keys.key(person))
            except RuleViolation as refused:
                log.error("index entry not keyed again", extra={"fields": {
                    "kind": entry.kind, "id": entry.entry_id, "reason": refused.reason}})
                continue
            settled += 1
            rekeyed += int(changed)
        self._metrics.index_rekeyed.inc(rekeyed)
        return rekeyed, settled

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.keep_once()
            except Exception:
                log.exception("index upkeep failed")
            await asyncio.sleep(interval)
