"""The suspended-record index through the store port, on both engines: records and enrollments in
either order, what they open, what they refuse, its upkeep, and races between replicas."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import random
import uuid
from collections.abc import Sequence
from typing import NamedTuple

import pytest

from gateway.core import case as case_rules
from gateway.core.audit import LogAudit
from gateway.core.errors import GatewayError, IdempotencyConflict, NotFound, RuleViolation
from gateway.core.personkeys import PersonKeys
from gateway.core.timestamps import timestamp_of
from gateway.store import (
    AuthoredOpening,
    EnrollmentReport,
    IncomingMessage,
    IndexCount,
    IndexMessage,
    IndexOutcome,
    IssuedReceipt,
    MakeIndexReceipt,
    Opening,
    OptOut,
    RecordRegistration,
    RecordWithdrawal,
    Store,
)
from gateway.store.base import SQLStore
from gateway.store.steps import Query, Steps
from gateway.store.transparency import audit
from mitransfer.protocol import note
from mitransfer.v1 import envelope_pb2, messages_pb2, tracking_pb2, types_pb2
from tests.store.support import T0, Clock, Factory, incoming, opening, receipt_for

K = envelope_pb2
KEYS = PersonKeys({"k1": b"1" * 32}, "k1")
RETENTION = dt.timedelta(days=90)
ZHEJIANG, JIANGSU, ANHUI = "330100", "320100", "340100"


def person(n: int = 1) -> types_pb2.Person:
    return types_pb2.Person(certificate_type=types_pb2.CERTIFICATE_TYPE_RESIDENT_ID_CARD,
                            certificate_number=f"1101051980010100{n:02d}", name="张三")


def record(agency: str = JIANGSU, who: types_pb2.Person | None = None, suspended: str = "2026-10-01",
           transfer_id: str | None = None, keys: PersonKeys = KEYS, message_id: str | None = None) -> IndexMessage:
    tid = transfer_id or str(uuid.uuid4())
    body = f"record:{tid}:{agency}".encode()
    return IndexMessage(
        message_id=message_id or str(uuid.uuid4()), kind=K.MESSAGE_KIND_SUSPENDED_RECORD, sender=agency,
        transfer_id=tid, created_at=T0, fingerprint=hashlib.sha256(body).digest(), signed_message=body,
        facts=RecordRegistration(tid, agency, 310, suspended, keys.keys(who or person())))


def enrollment(agency: str = ZHEJIANG, who: types_pb2.Person | None = None, enrolled: str = "2026-10-20",
               chosen: Sequence[str] = (), keys: PersonKeys = KEYS, message_id: str | None = None) -> IndexMessage:
    # The store keeps the signed bytes as they came; these tests' opener reads the person from them.
    body = (who or person()).SerializeToString()
    return IndexMessage(
        message_id=message_id or str(uuid.uuid4()), kind=K.MESSAGE_KIND_ENROLLMENT, sender=agency, transfer_id="",
        created_at=T0, fingerprint=hashlib.sha256(body + agency.encode()).digest(), signed_message=body,
        facts=EnrollmentReport(agency, 310, enrolled, frozenset(chosen), keys.keys(who or person()), RETENTION))


def withdrawal(of: IndexMessage) -> IndexMessage:
    return IndexMessage(message_id=str(uuid.uuid4()), kind=K.MESSAGE_KIND_SUSPENDED_RECORD_WITHDRAWAL,
                        sender=of.sender, transfer_id=of.transfer_id, created_at=T0, fingerprint=b"w" * 32,
                        signed_message=b"w", facts=RecordWithdrawal(of.transfer_id, of.sender))


def opt_out(of: IndexMessage) -> IndexMessage:
    return IndexMessage(message_id=str(uuid.uuid4()), kind=K.MESSAGE_KIND_ENROLLMENT_OPT_OUT, sender=of.sender,
                        transfer_id="", created_at=T0, fingerprint=b"o" * 32, signed_message=b"o",
                        facts=OptOut(of.message_id, of.sender))


def open_case(opening: Opening, now: dt.datetime) -> AuthoredOpening:
    """The gateway's request as the service writes it, without signatures: the store's part is to
    accept it in the report's transaction."""
    who = types_pb2.Person.FromString(opening.enrollment_signed)
    message_id = str(uuid.uuid4())
    request = messages_pb2.TransferRequest(
        person=who, outbound_insurance_type=opening.record.insurance_type,  # type: ignore[arg-type]
        inbound_insurance_type=opening.enrollment.insurance_type,  # type: ignore[arg-type]
        channel=messages_pb2.TransferRequest.CHANNEL_AUTOMATIC)
    request.header.message_id, request.header.transfer_id = message_id, opening.record.transfer_id
    request.header.sender, request.header.receiver = opening.enrollment.agency, opening.record.agency
    m = IncomingMessage(
        message_id=message_id, transfer_id=opening.record.transfer_id,
        kind=K.MESSAGE_KIND_AUTOMATIC_TRANSFER_REQUEST, sender="gateway", receiver="*",
        deliveries=(("jiangsu", opening.record.agency), ("zhejiang", opening.enrollment.agency)), created_at=now,
        fingerprint=hashlib.sha256(message_id.encode()).digest(), signed_message=request.SerializeToString(),
        created_by_gateway=True, opens_case_of=(KEYS.keys(who), opening.record.agency))
    return AuthoredOpening(m, lambda case, index: case_rules.open_automatic(case, request, message_id=message_id,
                                                                          index=index, keys=KEYS), receipt_for(m))


def receipts(m: IndexMessage) -> MakeIndexReceipt:
    """Unsigned receipts of `m` (the store keeps what it is given; signing is the service's)."""

    def make(sequence: int, leaf: int, at: dt.datetime, opened: Sequence[str],
             until: dt.datetime | None) -> IssuedReceipt:
        body = envelope_pb2.ReceiptBody(
            message_id=m.message_id, transfer_id=m.transfer_id, kind=m.kind, sender=m.sender, sequence=sequence,
            leaf_index=leaf, accepted_at=timestamp_of(at),
            automatic=envelope_pb2.AutomaticOutcome(opened_transfer_ids=list(opened)))
        if until is not None:
            body.automatic.waiting_until.CopyFrom(timestamp_of(until))
        serialized = body.SerializeToString()
        return IssuedReceipt(envelope_pb2.Receipt(body=serialized, key_id="test").SerializeToString(), serialized)

    return make


def body(outcome: IndexOutcome) -> envelope_pb2.ReceiptBody:
    return envelope_pb2.ReceiptBody.FromString(envelope_pb2.Receipt.FromString(outcome.receipt).body)


async def submit(store: Store, m: IndexMessage) -> IndexOutcome:
    return await store.submit_index(m, open_case, receipts(m))


def opened_ids(outcome: IndexOutcome) -> list[str]:
    return [c.transfer_id for c in outcome.opened]


async def test_a_record_then_an_enrollment_opens_one_automatic_case(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    r = record()
    registered = await submit(store, r)
    assert opened_ids(registered) == [] and not registered.replayed
    reported = await submit(store, enrollment())
    assert opened_ids(reported) == [r.transfer_id]
    said = body(reported)
    assert (said.sequence, list(said.automatic.opened_transfer_ids)) == (reported.sequence, [r.transfer_id])
    assert said.automatic.waiting_until.ToDatetime(dt.UTC) == T0 + RETENTION
    view = await store.get_case(r.transfer_id)
    assert view is not None
    assert (view.case.state, view.case.channel, view.case.outbound, view.case.inbound, view.case.applicant) == (
        tracking_pb2.CASE_STATE_OPENED, messages_pb2.TransferRequest.CHANNEL_AUTOMATIC, JIANGSU, ZHEJIANG, ZHEJIANG)
    # The request follows the report in the log, delivered to both sides.
    assert [m.sequence for m in view.messages] == [reported.sequence + 1]
    assert {s.stage.value for s in view.stages} == {"outbound", "total"}
    assert reported.opened[0].outcome.sequence == reported.sequence + 1


async def test_an_enrollment_then_its_record_opens_the_case_on_registration(
        store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    reported = await submit(store, enrollment())
    assert opened_ids(reported) == []
    assert body(reported).automatic.waiting_until.ToDatetime(dt.UTC) == T0 + RETENTION  # says how long it waits
    clock.advance(86_400 * 30)
    r = record()
    registered = await submit(store, r)
    assert opened_ids(registered) == [r.transfer_id]
    view = await store.get_case(r.transfer_id)
    assert view is not None and view.case.channel == messages_pb2.TransferRequest.CHANNEL_AUTOMATIC
    assert await store.index_counts() == [IndexCount("enrollment", "k1", 1),  # the record no longer waits
                                          IndexCount("case", "k1", 1)]  # the case it opened keeps the key


async def test_two_records_open_two_cases_oldest_suspension_first(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    newer, older = record(JIANGSU, suspended="2026-10-01"), record(ANHUI, suspended="2026-09-15")
    await submit(store, newer)
    await submit(store, older)
    reported = await submit(store, enrollment())
    assert opened_ids(reported) == [older.transfer_id, newer.transfer_id]
    assert [c.outcome.sequence for c in reported.opened] == [reported.sequence + 1, reported.sequence + 2]


async def test_an_enrollment_naming_one_agency_opens_only_its_record(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    js, ah = record(JIANGSU), record(ANHUI)
    await submit(store, js)
    await submit(store, ah)
    reported = await submit(store, enrollment(chosen=[ANHUI]))
    assert opened_ids(reported) == [ah.transfer_id]
    # The other record keeps waiting; a later enrollment of the person may open it.
    assert opened_ids(await submit(store, enrollment())) == [js.transfer_id]


async def test_nothing_opens_within_one_province_or_for_another_person(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    await submit(store, record("330200"))
    await submit(store, record(JIANGSU, who=person(2)))
    assert opened_ids(await submit(store, enrollment())) == []
    assert sorted(await store.index_counts(), key=lambda c: c.kind) == [
        IndexCount("enrollment", "k1", 1), IndexCount("record", "k1", 2)]


async def test_an_index_message_is_idempotent(store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    await submit(store, record())
    e = enrollment()
    first = await submit(store, e)
    clock.advance(60)
    again = await submit(store, e)
    assert again.replayed and again.receipt == first.receipt and again.opened == ()
    with pytest.raises(IdempotencyConflict):
        await submit(store, enrollment(message_id=e.message_id, who=person(3)))


async def test_a_record_id_is_new_and_one_record_waits_per_person_and_agency(
        store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    r = record()
    await submit(store, r)
    with pytest.raises(RuleViolation) as reused:
        await submit(store, record(ANHUI, transfer_id=r.transfer_id))
    assert reused.value.reason == "TRANSFER_ID_IN_USE"
    with pytest.raises(RuleViolation) as twice:
        await submit(store, record())
    assert (twice.value.reason, twice.value.metadata["transfer_id"]) == ("RECORD_ALREADY_REGISTERED", r.transfer_id)
    case = incoming(str(uuid.uuid4()))
    await store.accept(case, opening(case), receipt_for(case))
    with pytest.raises(RuleViolation) as taken:
        await submit(store, record(ANHUI, transfer_id=case.transfer_id))
    assert taken.value.reason == "TRANSFER_ID_IN_USE"


async def test_a_withdrawn_record_opens_nothing(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    r = record()
    await submit(store, r)
    with pytest.raises(NotFound):  # only the agency that registered it may withdraw it
        await submit(store, withdrawal(record(ANHUI, transfer_id=r.transfer_id)))
    await submit(store, withdrawal(r))
    assert opened_ids(await submit(store, enrollment())) == []
    with pytest.raises(RuleViolation) as again:
        await submit(store, withdrawal(r))
    assert again.value.metadata["record_state"] == "withdrawn"


async def test_a_record_whose_case_opened_is_answered_in_the_case(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    r = record()
    await submit(store, r)
    await submit(store, enrollment())
    with pytest.raises(RuleViolation) as opened:
        await submit(store, withdrawal(r))
    assert (opened.value.reason, opened.value.metadata["record_state"]) == ("RECORD_NOT_WAITING", "opened")


async def test_an_opted_out_enrollment_opens_nothing_more(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    e = enrollment()
    await submit(store, e)
    with pytest.raises(NotFound):
        await submit(store, opt_out(enrollment(agency="340100", message_id=e.message_id)))
    await submit(store, opt_out(e))
    assert opened_ids(await submit(store, record())) == []
    with pytest.raises(RuleViolation) as again:
        await submit(store, opt_out(e))
    assert again.value.metadata["enrollment_state"] == "opted_out"


async def test_an_enrollment_waits_its_retention_period_and_no_longer(store_and_clock: tuple[Store, Clock]) -> None:
    store, clock = store_and_clock
    e = enrollment()
    await submit(store, e)
    clock.advance(RETENTION.total_seconds())
    assert opened_ids(await submit(store, record())) == []  # it waited until then, not at then
    assert await store.lapse_enrollments(clock(), 100) == 1
    assert [c for c in await store.index_counts() if c.kind == "enrollment"] == []
    with pytest.raises(RuleViolation) as late:
        await submit(store, opt_out(e))
    assert late.value.metadata["enrollment_state"] == "lapsed"


async def test_a_person_with_an_open_case_at_the_agency_keeps_the_record_waiting(
        store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    key = KEYS.key(person())
    applied = incoming(str(uuid.uuid4()), sender=JIANGSU, opens_case_of=(KEYS.keys(person()), JIANGSU))
    await store.accept(applied, lambda case, _i: case_rules.Decision(case_rules.Case(
        transfer_id=applied.transfer_id, state=tracking_pb2.CASE_STATE_OUTBOUND_ACCEPTED, outbound=JIANGSU,
        inbound=ZHEJIANG, applicant=JIANGSU, insurance_type=310, person_key=key.digest, key_id=key.key_id)),
        receipt_for(applied))
    await submit(store, record())
    assert opened_ids(await submit(store, enrollment())) == []
    assert {c.kind for c in await store.index_counts()} == {"record", "enrollment", "case"}


class _Keys(NamedTuple):
    key_id: str
    person_key: bytes


def _stored_keys() -> Steps[list[_Keys]]:
    return (yield from Query("SELECT key_id, person_key FROM suspended_records UNION ALL"
                             " SELECT key_id, person_key FROM enrollments", (), _Keys))


async def test_entries_keep_no_key_once_they_cannot_match(store_and_clock: tuple[SQLStore, Clock]) -> None:
    store, _ = store_and_clock
    await submit(store, record())
    await submit(store, enrollment())
    gone = record(ANHUI, who=person(4))
    await submit(store, gone)
    await submit(store, withdrawal(gone))
    kept = await store.read(_stored_keys)
    assert sorted(k.key_id for k in kept) == ["", "", "k1"]  # the opened record, the withdrawn one; the enrollment
    assert b"110105198001010001" not in b"".join(bytes(k.person_key) for k in kept)


async def test_a_new_secret_matches_old_entries_and_keys_them_again(store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    rotating = PersonKeys({"k1": b"1" * 32, "k2": b"2" * 32}, "k2")
    r = record()  # keyed under k1
    await submit(store, r)
    stale = await store.stale_index_entries("k2", 10)
    assert [(s.kind, s.entry_id, s.key_id) for s in stale] == [("record", r.transfer_id, "k1")]
    assert stale[0].signed_message == r.signed_message  # the person is read again from what came in
    assert await store.rekey_index_entry(stale[0], rotating.key(person(), "k2"))
    assert not await store.rekey_index_entry(stale[0], rotating.key(person(), "k2"))  # already done
    assert await store.stale_index_entries("k2", 10) == []
    only_new = PersonKeys({"k2": b"2" * 32}, "k2")
    assert opened_ids(await submit(store, enrollment(keys=only_new))) == [r.transfer_id]


async def test_during_a_rotation_an_entry_under_the_old_secret_still_matches(
        store_and_clock: tuple[Store, Clock]) -> None:
    store, _ = store_and_clock
    await submit(store, enrollment())  # k1
    rotating = PersonKeys({"k1": b"1" * 32, "k2": b"2" * 32}, "k2")
    r = record(keys=rotating)
    assert opened_ids(await submit(store, r)) == [r.transfer_id]


async def _race(stores: Sequence[Store], messages: list[IndexMessage]) -> list[IndexOutcome | GatewayError]:
    """Submit every message at once, spread over the stores; each one's outcome or refusal."""
    async def one(i: int, m: IndexMessage) -> IndexOutcome | GatewayError:
        try:
            return await submit(stores[i % len(stores)], m)
        except (RuleViolation, IdempotencyConflict) as err:
            return err
    return list(await asyncio.gather(*(one(i, m) for i, m in enumerate(messages))))


@pytest.mark.parametrize("first", ["records", "enrollments"])
async def test_a_32_way_race_opens_exactly_one_case_per_record(factory_and_clock: tuple[Factory, Clock],
                                                               first: str) -> None:
    """Registrations (retried, and sent again under new message ids) and enrollments of one person,
    32 at once, over two stores on one database (two replicas: on SQLite, one after the other)."""
    make, _ = factory_and_clock
    stores = [make(), make()] if "Postgres" in type(make()).__name__ else [make()]
    for s in stores:
        await s.open()
    try:
        js, ah = record(JIANGSU), record(ANHUI, suspended="2026-09-01")
        registrations = [js, ah] * 6 + [record(JIANGSU, transfer_id=js.transfer_id) for _ in range(4)]
        enrollments = [enrollment() for _ in range(16)]
        # Interleaved, each kind first in turn: a record and an enrollment of the person are in flight
        # together throughout.
        rng = random.Random(first)
        rng.shuffle(registrations)
        rng.shuffle(enrollments)
        pairs = zip(registrations, enrollments, strict=True)
        ordered = [m for a, b in pairs for m in ((a, b) if first == "records" else (b, a))]
        outcomes = await _race(stores, ordered)
        opened = [tid for o in outcomes if isinstance(o, IndexOutcome) for tid in opened_ids(o)]
        assert sorted(opened) == sorted([js.transfer_id, ah.transfer_id])
        refused = {o.reason for o in outcomes if isinstance(o, GatewayError)}
        assert refused <= {"TRANSFER_ID_IN_USE", "RECORD_ALREADY_REGISTERED"}, refused
        for tid in (js.transfer_id, ah.transfer_id):
            view = await stores[0].get_case(tid)
            assert view is not None and len(view.messages) == 1
    finally:
        for s in stores:
            await s.close()


async def test_the_index_messages_and_the_cases_they_open_are_in_the_transparency_log(
        store_and_clock: tuple[SQLStore, Clock]) -> None:
    """Every index message is a leaf like every case's message, in the one sequence: the log's
    audit finds the store and its log in agreement."""
    store, _ = store_and_clock
    await submit(store, record())
    e = enrollment()
    await submit(store, e)            # opens a case: its request is logged after it
    gone = record(ANHUI, who=person(5))
    await submit(store, gone)
    await submit(store, withdrawal(gone))
    await submit(store, opt_out(e))
    found = await store.leaf_of(e.message_id)
    assert found is not None and (found.outbound, found.inbound) == (ZHEJIANG, "")
    auditor = LogAudit(origin="log", keys_at=lambda when: note.known_keys(()))
    await store.read(lambda: audit(auditor))
    assert auditor.finish() == []
    assert auditor.entries == 6


async def test_a_stage_that_ran_before_starts_again(store_and_clock: tuple[Store, Clock]) -> None:
    """An automatic case refused for blockers, then resolved: its outbound and total stages finish at
    the refusal and start again at the resolution (one row each, holding the new run)."""
    store, clock = store_and_clock
    r = record()
    await submit(store, r)
    await submit(store, enrollment())

    async def move_to(state: int, kind: int = K.MESSAGE_KIND_OUTBOUND_NOTICE) -> None:
        m = incoming(r.transfer_id, kind=kind, body=uuid.uuid4().bytes, sender=JIANGSU, receiver=ZHEJIANG)
        await store.accept(m, lambda case, _i: case_rules.Decision(  # type: ignore[misc]
            dataclasses.replace(case, state=state)), receipt_for(m))

    clock.advance(3600)
    await move_to(tracking_pb2.CASE_STATE_AWAITING_RESOLUTION)
    clock.advance(86_400 * 7)
    await move_to(tracking_pb2.CASE_STATE_OPENED, K.MESSAGE_KIND_BLOCKER_RESOLUTION)
    view = await store.get_case(r.transfer_id)
    assert view is not None
    runs = {s.stage.value: (s.started_at, s.finished_at) for s in view.stages}
    resumed = T0 + dt.timedelta(seconds=3600 + 86_400 * 7)
    assert runs["outbound"] == (resumed, None) and runs["total"] == (resumed, None)
    assert runs["resolution"] == (T0 + dt.timedelta(seconds=3600), resumed)
