"""Exchange service: Submit, Subscribe, AckDelivery.

Submit runs the gateway's pipeline in this order, and stores nothing until every step passed:
who is calling (mTLS) → size → which key (registry) → signature over the bytes as received →
parse → validate fields → may this platform send as this agency → store atomically with the case
decision → signed receipt. A request byte for byte identical to one this process already verified
and committed, from the same platform, is answered with its receipt right after the size check.

A message accepted before is answered as a replay whatever has changed since: its `created_at`
may have left the freshness window, a field rule may have tightened, or the key that signed it
may have ended or been revoked. The store decides replays inside `accept`, after validation; so
when a refusal depends on when the message comes (its key's window, validation), Submit first asks
the store whether that very payload was accepted under its id (any replica may have accepted it:
the recent-receipts shortcut knows only this process) and answers with its receipt if so. The
signature must still verify, with the key's material whatever its window: only what its sender
signed is answered so.

A message to the suspended-record index (a suspended record, an enrollment, their withdrawals)
goes, once validated, to `gateway.service.automatic` instead of to a case.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from google.protobuf.message import DecodeError

from gateway.core import case as case_rules
from gateway.core import messages
from gateway.core.errors import (
    CallerError,
    FieldViolation,
    InvalidMessage,
    NotPermitted,
    RuleViolation,
    SignatureRejected,
)
from gateway.core.keys import GatewaySigner, platform_key_at
from gateway.core.limits import MessageLimits
from gateway.core.personkeys import PersonKeys
from gateway.core.registry import LiveRegistry, Platform, Registry
from gateway.core.signing import VerifyingKey, pae
from gateway.core.sla import Sla
from gateway.core.text import shown
from gateway.core.timestamps import datetime_of
from gateway.core.validation import is_region_code, is_uuid, validate
from gateway.core.wire import undecodable
from gateway.service.auth import Callers
from gateway.service.automatic import AutomaticTransfer
from gateway.service.instrument import raw_bytes
from gateway.service.metrics import Metrics
from gateway.service.receipts import receipt_maker
from gateway.service.routing import Router
from gateway.service.status import grpc_code
from gateway.store import IncomingMessage, Store
from mitransfer.v1 import automatic_pb2, envelope_pb2, exchange_pb2, exchange_pb2_grpc, messages_pb2

log = logging.getLogger("gateway.exchange")
MAX_SUBSCRIBED_AGENCIES: Final = 256  # a subscription's agencies: more than any platform has


def _signed_message(data: bytes) -> envelope_pb2.SignedMessage:
    try:
        return envelope_pb2.SignedMessage.FromString(data)
    except DecodeError as exc:
        raise undecodable(envelope_pb2.SignedMessage.DESCRIPTOR, data) from exc


class RecentReceipts:
    """Receipts of requests this process saw committed, by the SHA-256 of the request's bytes,
    most recent kept.

    A retry storm resends the same signed bytes. Bytes identical to a request whose signature was
    verified and whose message was committed need neither again: answering from here skips
    parsing, the signature check, validation and a store transaction. Other bytes (another
    signature over the same payload, say) miss and are checked in full. Only committed facts
    enter, so replicas may each keep their own. The submitting platform must match: another
    platform sending the same bytes is checked in full, and refused.
    """

    def __init__(self, capacity: int = 65_536) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[bytes, tuple[str, str, bytes]] = OrderedDict()

    def get(self, request_digest: bytes, platform: str) -> tuple[str, bytes] | None:
        """(kind label, receipt) of a committed request from `platform` with these bytes."""
        entry = self._entries.get(request_digest)
        if entry is None or entry[0] != platform:
            return None
        self._entries.move_to_end(request_digest)
        return entry[1], entry[2]

    def put(self, request_digest: bytes, platform: str, kind: str, receipt: bytes) -> None:
        self._entries[request_digest] = (platform, kind, receipt)
        self._entries.move_to_end(request_digest)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)


INDEX_MESSAGES: Final = (automatic_pb2.SuspendedRecord, automatic_pb2.SuspendedRecordWithdrawal,
                         automatic_pb2.Enrollment, automatic_pb2.EnrollmentOptOut)


def _ids(signed: envelope_pb2.SignedMessage | None) -> dict[str, str]:
    """The message and transfer ids of a refused message, as far as its header parses (ids only:
    the header never holds a person's data): as they are when they are UUIDs, else shown as a
    short escaped prefix (a log line repeats nothing unbounded or unprintable)."""
    if signed is None:
        return {"message_id": "", "transfer_id": ""}
    try:
        header = messages.parse(signed.kind, signed.payload).header
    except CallerError:  # an unknown kind or a payload that does not parse
        return {"message_id": "", "transfer_id": ""}
    return {name: value if is_uuid(value) else shown(value)
            for name, value in (("message_id", header.message_id), ("transfer_id", header.transfer_id))}


class ExchangeService(exchange_pb2_grpc.ExchangeServicer):
    def __init__(
        self, *, registry: LiveRegistry, store: Store, router: Router, signer: GatewaySigner, metrics: Metrics,
        sla: Sla, clock: Callable[[], dt.datetime], automatic: AutomaticTransfer, callers: Callers,
        keys: PersonKeys, limits: MessageLimits | None = None,
    ) -> None:
        self._callers = callers
        self._keys = keys
        self._limits = limits or MessageLimits()
        self._registry = registry
        self._automatic = automatic
        self._sla = sla
        self._store = store
        self._router = router
        self._signer = signer
        self._metrics = metrics
        self._clock = clock
        self._recent = RecentReceipts()

    @raw_bytes
    async def Submit(self, request: bytes, context: Any) -> bytes:  # type: ignore[override]
        """Takes the SignedMessage as it arrived, bytes that are also what the log keeps (nothing
        re-serialized), and answers with the stored Receipt's bytes."""
        kind_label = "unknown"
        signed: envelope_pb2.SignedMessage | None = None
        platform: Platform | None = None
        registry = self._registry.current  # one snapshot for the whole call
        try:
            platform = self._callers.platform(context, registry)
            self._check_size(request)
            request_digest = hashlib.sha256(request).digest()
            known = self._recent.get(request_digest, platform.id)
            if known is not None:  # byte-identical to a request already verified and committed
                kind_label, receipt = known
                self._metrics.count_message(kind_label, "replayed")
                return receipt
            signed = _signed_message(request)
            kind_label = messages.kind_name(signed.kind)
            key, signed_bytes, outside_window = self._verify(platform, signed)
            digest = hashlib.sha256(signed_bytes).digest()
            try:
                message = messages.parse(signed.kind, signed.payload)
            except CallerError:
                if outside_window is None:
                    raise
                self._metrics.signature_failures.labels(platform.id).inc()
                raise outside_window from None
            try:
                if outside_window is not None:
                    raise outside_window
                validate(message, now=self._clock(), limits=self._limits)
            except (InvalidMessage, SignatureRejected) as refused:  # refusals that depend on when it comes
                earlier = await self._accepted_before(registry, platform, signed, message)
                if earlier is None:
                    if refused is outside_window:
                        self._metrics.signature_failures.labels(platform.id).inc()
                    raise
                self._recent.put(request_digest, platform.id, kind_label, earlier)
                self._metrics.count_message(kind_label, "replayed")
                return earlier
            if isinstance(message, INDEX_MESSAGES):
                indexed = await self._automatic.submit(platform, signed.kind, message, request, digest,
                                                       hashlib.sha256(signed.payload).digest())
                self._recent.put(request_digest, platform.id, kind_label, indexed.receipt)
                self._metrics.count_message(kind_label, "replayed" if indexed.replayed else "accepted")
                return indexed.receipt
            incoming = self._admit(registry, platform, signed, message, request, digest)
            case_message, keys = message, self._keys
            outcome = await self._store.accept(
                incoming,
                lambda case, index: case_rules.apply(case, case_message, policies=registry.policies, index=index,
                                                     keys=keys),
                receipt_maker(self._signer, incoming, hashlib.sha256(signed.payload).digest(), key),
            )
        except CallerError as refused:
            err = await self._as_told(refused, platform)
            self._metrics.count_message(kind_label, "rejected", err.reason)
            log.info("rejected", extra={"fields": {
                "platform": platform.id if platform is not None else "", "kind": kind_label,
                **_ids(signed), "code": grpc_code(err).name, "reason": err.reason}})
            if err is refused:
                raise
            raise err from None
        self._recent.put(request_digest, platform.id, kind_label, outcome.receipt)
        result = "replayed" if outcome.replayed else "accepted"
        self._metrics.count_message(kind_label, result)
        if not outcome.replayed:
            self._metrics.observe_finished(outcome, self._sla)
            self._metrics.observe_opened(outcome)
            for receiving_platform, _ in incoming.deliveries:
                self._router.notify(receiving_platform)
        # Per message at DEBUG: the store's log is the record of every message, and a JSON line
        # per message costs as much as verifying its signature.
        if log.isEnabledFor(logging.DEBUG):
            log.debug(result, extra={"fields": {
                "kind": kind_label, "message_id": incoming.message_id, "transfer_id": incoming.transfer_id,
                "sender": incoming.sender, "receiver": incoming.receiver, "sequence": outcome.sequence,
            }})
        return outcome.receipt

    async def _as_told(self, err: CallerError, platform: Platform | None) -> CallerError:
        """`err` as the calling platform may hear it. A refusal naming another case
        (CASE_ALREADY_OPEN's `open_transfer_id`) names it only to a platform that is one of that
        case's sides: the person's open case at another province's agency is none of its business
        beyond its existence, which is the rule itself."""
        other = err.metadata.get("open_transfer_id")
        if other is None or platform is None or not isinstance(err, RuleViolation):
            return err
        view = await self._store.get_case(other)
        mine = self._registry.current.agencies_of(platform.id)
        if view is not None and {view.case.outbound, view.case.inbound} & mine:
            return err
        metadata = {k: v for k, v in err.metadata.items() if k != "open_transfer_id"}
        return RuleViolation(err.message, reason=err.reason, metadata=metadata)

    def _check_size(self, request: bytes) -> None:
        """Refuse a request above the configured size before anything else is done with it."""
        limit = self._limits.max_message_bytes
        if len(request) > limit:
            raise InvalidMessage([FieldViolation("request", f"is {len(request)} bytes; at most {limit} are taken")],
                                 reason="MESSAGE_TOO_LARGE", metadata={"max_bytes": str(limit)})

    async def _accepted_before(
        self, registry: Registry, platform: Platform, signed: envelope_pb2.SignedMessage,
        message: messages.BusinessMessage,
    ) -> bytes | None:
        """The stored receipt if this payload, of this kind, was accepted under its message id from
        one of `platform`'s agencies; None otherwise. Its receipt names the payload's SHA-256, so
        the same payload means the same fingerprint, as the store's own replay check requires."""
        header = message.header
        if not is_uuid(header.message_id) or registry.platform_of_agency(header.sender) != platform.id:
            return None
        stored = await self._store.receipt_of(header.message_id)
        if stored is None:
            return None
        body = envelope_pb2.ReceiptBody.FromString(envelope_pb2.Receipt.FromString(stored).body)
        same = (body.message_id == header.message_id and body.kind == signed.kind and body.sender == header.sender
                and body.payload_sha256 == hashlib.sha256(signed.payload).digest())
        return stored if same else None

    def _verify(self, platform: Platform, signed: envelope_pb2.SignedMessage
                ) -> tuple[VerifyingKey, bytes, SignatureRejected | None]:
        """Check the key (the caller's own) and the signature over the bytes as received; returns
        the key, those bytes, PAE(type, payload), whose SHA-256 is the fingerprint, and the refusal
        of a key used outside its window (KEY_EXPIRED, KEY_REVOKED, KEY_NOT_YET_VALID) when the
        signature verifies all the same: a retry of a message accepted while the key was valid is
        still a replay (Submit asks the store), anything else is refused with it.

        Raises SignatureRejected: not a key of this platform, or a signature that does not verify
        (a key outside its window says so rather than SIGNATURE_INVALID, as it always did)."""
        payload_type = messages.payload_type(signed.kind)
        outside_window: SignatureRejected | None = None
        try:
            key = platform_key_at(platform, signed.key_id, self._clock())
        except SignatureRejected as refused:
            known = platform.keys.get(signed.key_id)
            if known is None:  # not a key of this platform at all
                self._metrics.signature_failures.labels(platform.id).inc()
                raise
            key, outside_window = known, refused
        signed_bytes = pae(payload_type, signed.payload)
        if not key.verify(signed.signature, signed_bytes):
            self._metrics.signature_failures.labels(platform.id).inc()
            raise outside_window or SignatureRejected(
                f"signature does not verify with key {signed.key_id} over PAE({payload_type}, payload)",
                reason="SIGNATURE_INVALID", metadata={"key_id": signed.key_id},
            )
        return key, signed_bytes, outside_window

    def _admit(
        self, registry: Registry, platform: Platform, signed: envelope_pb2.SignedMessage,
        message: messages.CaseMessage, received: bytes, digest: bytes,
    ) -> IncomingMessage:
        """Authorize a validated case message; raises the CallerError that says what is wrong."""
        header = message.header
        registry.check_acts_for(platform, header.sender, what="header.sender")
        receiver_platform = registry.platform_of_agency(header.receiver)
        if receiver_platform is None:
            raise InvalidMessage(
                [FieldViolation("header.receiver", f"{header.receiver} is not a registered agency")],
                reason="UNKNOWN_AGENCY",
            )
        incoming = IncomingMessage(
            message_id=header.message_id,
            transfer_id=header.transfer_id,
            kind=signed.kind,
            sender=header.sender,
            receiver=header.receiver,
            deliveries=((receiver_platform, header.receiver),),
            created_at=datetime_of(header.created_at),
            fingerprint=digest,
            signed_message=received,
            ack_status=message.status if isinstance(message, messages_pb2.Acknowledgement) else 0,
            fund_amount_fen=message.amount_fen if isinstance(message, messages_pb2.FundTransfer) else 0,
            opens_case_of=case_rules.index_question(message, self._keys),
        )
        return incoming

    async def Subscribe(
        self, request: exchange_pb2.SubscribeRequest, context: Any
    ) -> AsyncIterator[exchange_pb2.Delivery]:
        registry = self._registry.current
        platform = self._callers.platform(context, registry)
        agencies = self._subscribed_agencies(request, platform, registry)
        log.info("subscribed", extra={"fields": {"platform": platform.id}})
        async with self._router.subscribe(platform.id, agencies) as subscription:
            async for claimed in subscription:
                self._metrics.deliveries.labels(platform.id, "first" if claimed.attempt == 1 else "redelivery").inc()
                yield exchange_pb2.Delivery(
                    message=envelope_pb2.SignedMessage.FromString(claimed.signed_message),
                    receipt=envelope_pb2.Receipt.FromString(claimed.receipt),
                    attempt=claimed.attempt,
                )

    @staticmethod
    def _subscribed_agencies(request: exchange_pb2.SubscribeRequest, platform: Platform,
                             registry: Registry) -> frozenset[str] | None:
        """The agencies a subscription is for (None: all of the platform's). Raises InvalidMessage
        for too many or malformed codes, NotPermitted naming (a few of) another platform's."""
        if not request.agencies:
            return None
        if len(request.agencies) > MAX_SUBSCRIBED_AGENCIES:
            raise InvalidMessage([FieldViolation("agencies", f"at most {MAX_SUBSCRIBED_AGENCIES} agencies, not "
                                                 f"{len(request.agencies)}")])
        malformed = [FieldViolation(f"agencies[{i}]", f"{shown(code)} is not a 6-digit 医保区划 code of a province")
                     for i, code in enumerate(request.agencies) if not is_region_code(code)]
        if malformed:
            raise InvalidMessage(malformed)
        agencies = frozenset(request.agencies)
        foreign = sorted(agencies - registry.agencies_of(platform.id))
        if foreign:
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise NotPermitted(
                f"platform {platform.id} may not subscribe for agencies {', '.join(foreign[:5])}{more}",
                reason="AGENCY_NOT_OF_PLATFORM", metadata={"platform": platform.id},
            )
        return agencies

    async def AckDelivery(
        self, request: exchange_pb2.AckDeliveryRequest, context: Any
    ) -> exchange_pb2.AckDeliveryResponse:
        platform = self._callers.platform(context, self._registry.current)
        if not is_uuid(request.message_id):
            raise InvalidMessage([FieldViolation("message_id", "must be a canonical lower-case UUID")])
        await self._store.ack_delivery(platform.id, request.message_id, self._clock())
        self._router.acknowledged(platform.id, request.message_id)  # room on its stream; the case's next may go
        return exchange_pb2.AckDeliveryResponse()

