"""Automatic transfer (免申请) at the edge: the suspended-record index's messages, admitted and
stored, and the transfer request the gateway writes for each case they open.

`ExchangeService.Submit` verifies, parses and validates every message alike; a message to the
index (`gateway.core.messages.is_index_kind`) then comes here instead of to a case. Here the
sender's agency is checked, the person's certificate becomes their keys (`gateway.core.personkeys`,
and the number goes no further), and the store does the rest in one transaction
(`gateway.store.index`), calling back `_open_case` for each record and enrollment that meet: the
gateway's AutomaticTransferRequest, the TransferRequest the person would have lodged at the
inbound side, signed by the gateway and delivered to both sides like a reviewer's decision.

What an answer tells a platform (docs/integrating.md, "What the index tells whom"): the receipt of
an enrollment names the cases it opened and how long it waits; the request names the outbound
agency. An inbound platform learns that a person it enrolled has a suspended record elsewhere
(which a transfer request of theirs would have told it too), never anything of a person it did
not report, and every report is signed, logged and opens a real case the outbound side sees.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Sequence

from gateway.core import case as case_rules
from gateway.core.automatic import AutomaticRules
from gateway.core.keys import GatewaySigner
from gateway.core.messages import IndexMessage as IndexPayload
from gateway.core.personkeys import PersonKeys
from gateway.core.registry import LiveRegistry, Platform
from gateway.core.timestamps import datetime_of, timestamp_of
from gateway.service.authored import GatewayAuthor
from gateway.service.metrics import Metrics
from gateway.service.receipts import issue_receipt
from gateway.service.routing import Router
from gateway.store import (
    AuthoredOpening,
    EnrollmentReport,
    IndexFacts,
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
from mitransfer.v1 import automatic_pb2, envelope_pb2, messages_pb2, types_pb2

log = logging.getLogger("gateway.automatic")


def iso(d: types_pb2.Date) -> str:
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"


def date_of(text: str) -> types_pb2.Date:
    day = dt.date.fromisoformat(text)
    return types_pb2.Date(year=day.year, month=day.month, day=day.day)


class AutomaticTransfer:
    """The suspended-record index's messages, from a verified SignedMessage to a signed receipt."""

    def __init__(
        self, *, registry: LiveRegistry, store: Store, router: Router, author: GatewayAuthor, signer: GatewaySigner,
        metrics: Metrics, keys: PersonKeys, rules: AutomaticRules, clock: Callable[[], dt.datetime],
    ) -> None:
        self._registry = registry
        self._store = store
        self._router = router
        self._author = author
        self._signer = signer
        self._metrics = metrics
        self._keys = keys
        self._rules = rules
        self._clock = clock

    async def submit(self, platform: Platform, kind: envelope_pb2.MessageKind.ValueType, message: IndexPayload,
                     received: bytes, fingerprint: bytes, payload_sha256: bytes) -> IndexOutcome:
        """Store a validated index message and open what it matches.

        Raises RuleViolation (what the index refuses), NotPermitted (the platform does not speak for the
        sender agency), NotFound, IdempotencyConflict, StoreUnavailable.
        """
        header = message.header
        self._registry.current.check_acts_for(platform, header.sender, what="header.sender")
        stored = IndexMessage(
            message_id=header.message_id, kind=kind, sender=header.sender, transfer_id=header.transfer_id,
            created_at=datetime_of(header.created_at), fingerprint=fingerprint, signed_message=received,
            facts=self._facts(message, self._keys),
        )
        outcome = await self._store.submit_index(stored, self._open_case, self._receipts(stored, payload_sha256))
        if not outcome.replayed:
            self._observe(stored, outcome)
        return outcome

    def _facts(self, message: IndexPayload, keys: PersonKeys) -> IndexFacts:
        """What the store needs of a message: the person only as their keys."""
        sender = message.header.sender
        if isinstance(message, automatic_pb2.SuspendedRecord):
            return RecordRegistration(message.header.transfer_id, sender, message.insurance_type,
                                      iso(message.suspension_date), keys.keys(message.person))
        if isinstance(message, automatic_pb2.Enrollment):
            return EnrollmentReport(sender, message.insurance_type, iso(message.enrollment_date),
                                    frozenset(message.outbound_agencies), keys.keys(message.person),
                                    self._rules.enrollment_retention)
        if isinstance(message, automatic_pb2.SuspendedRecordWithdrawal):
            return RecordWithdrawal(message.header.transfer_id, sender)
        return OptOut(message.enrollment_message_id, sender)

    def _receipts(self, stored: IndexMessage, payload_sha256: bytes) -> MakeIndexReceipt:
        says_what_opened = isinstance(stored.facts, RecordRegistration | EnrollmentReport)

        def make(sequence: int, leaf_index: int, accepted_at: dt.datetime, opened: Sequence[str],
                 waiting_until: dt.datetime | None) -> IssuedReceipt:
            automatic = None
            if says_what_opened:
                automatic = envelope_pb2.AutomaticOutcome(opened_transfer_ids=list(opened))
                if waiting_until is not None:
                    automatic.waiting_until.CopyFrom(timestamp_of(waiting_until))
            return issue_receipt(
                self._signer.at(accepted_at), message_id=stored.message_id, transfer_id=stored.transfer_id,
                kind=stored.kind,
                sender=stored.sender, receiver="", payload_sha256=payload_sha256, sequence=sequence,
                accepted_at=accepted_at, leaf_index=leaf_index, automatic=automatic)

        return make

    def _open_case(self, opening: Opening, now: dt.datetime) -> AuthoredOpening:
        """The gateway's request for the case of a record and an enrollment (called by the store, inside
        its transaction: pure but for the signature)."""
        signed = envelope_pb2.SignedMessage.FromString(opening.enrollment_signed)
        enrollment = automatic_pb2.Enrollment.FromString(signed.payload)  # verified when it was accepted
        record = opening.record
        outbound, inbound = record.agency, opening.enrollment.agency
        message_id = str(uuid.uuid4())
        request = messages_pb2.TransferRequest(
            person=enrollment.person, outbound_insurance_type=record.insurance_type,  # type: ignore[arg-type]
            inbound_insurance_type=enrollment.insurance_type,
            channel=messages_pb2.TransferRequest.CHANNEL_AUTOMATIC)
        request.header.CopyFrom(messages_pb2.Header(message_id=message_id, transfer_id=record.transfer_id,
                                                    sender=inbound, receiver=outbound, created_at=timestamp_of(now)))
        written = automatic_pb2.AutomaticTransferRequest(
            message_id=message_id, transfer_id=record.transfer_id, outbound=outbound, inbound=inbound, request=request,
            record_message_id=opening.record_message_id, enrollment_message_id=opening.enrollment.message_id,
            suspension_date=date_of(record.suspension_date), enrollment_date=enrollment.enrollment_date,
            opened_at=timestamp_of(now))
        incoming, make_receipt = self._author.prepare(
            kind=envelope_pb2.MESSAGE_KIND_AUTOMATIC_TRANSFER_REQUEST, message_id=message_id,
            transfer_id=record.transfer_id, payload=written, sides=(outbound, inbound), now=now,
            opens_case_of=(self._keys.keys(enrollment.person), outbound))
        keys = self._keys
        return AuthoredOpening(
            incoming, lambda case, index: case_rules.open_automatic(case, request, message_id=message_id, index=index,
                                                                    keys=keys),
            make_receipt)

    def _observe(self, stored: IndexMessage, outcome: IndexOutcome) -> None:
        facts = stored.facts
        if isinstance(facts, RecordRegistration | EnrollmentReport):
            kind = "record" if isinstance(facts, RecordRegistration) else "enrollment"
            self._metrics.index_reports.labels(kind, facts.agency[:2], "opened" if outcome.opened else "waiting").inc()
        for opened in outcome.opened:
            self._metrics.observe_opened(opened.outcome)
            log.info("automatic case opened", extra={"fields": {
                "transfer_id": opened.transfer_id, "outbound": opened.outcome.outbound,
                "inbound": opened.outcome.inbound, "by": stored.message_id}})
            for platform, _ in opened.request.deliveries:
                self._router.notify(platform)
