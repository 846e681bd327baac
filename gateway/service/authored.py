"""Messages the gateway itself writes into a case's log (review decisions, expiries, the requests of
the cases it opens from the suspended-record index).

They are signed with the gateway's key like receipts, stored and receipted through the same
atomic `Store.accept`, and delivered to both sides of the case.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Final

from google.protobuf.message import Message

from gateway.core.keys import GatewaySigner
from gateway.core.messages import MessageKind
from gateway.core.personkeys import PersonKey
from gateway.core.registry import LiveRegistry
from gateway.core.signing import fingerprint, pae
from gateway.core.sla import Sla
from gateway.service.metrics import Metrics
from gateway.service.receipts import receipt_maker
from gateway.service.routing import Router
from gateway.store import AcceptOutcome, Decide, IncomingMessage, MakeReceipt, Store
from mitransfer.v1 import envelope_pb2

GATEWAY_SENDER: Final = "gateway"  # sender of what the gateway writes into a case's log
BOTH_SIDES: Final = "*"


class GatewayAuthor:
    def __init__(self, *, registry: LiveRegistry, store: Store, router: Router, signer: GatewaySigner, metrics: Metrics,
                 sla: Sla) -> None:
        self._registry = registry
        self._metrics = metrics
        self._sla = sla
        self._store = store
        self._router = router
        self._signer = signer

    def prepare(
        self, *, kind: MessageKind, message_id: str, transfer_id: str, payload: Message, sides: tuple[str, str],
        now: dt.datetime, opens_case_of: tuple[tuple[PersonKey, ...], str] | None = None,
    ) -> tuple[IncomingMessage, MakeReceipt]:
        """`payload` signed, as a message ready for the store to accept into the case's log and deliver
        to both sides, and the maker of its receipt. Pure (the signer's work): the suspended-record
        index calls it inside its transaction to write the request of a case it opens."""
        body = payload.SerializeToString()
        payload_type = payload.DESCRIPTOR.full_name
        key = self._signer.at(now)
        signed = envelope_pb2.SignedMessage(kind=kind, payload=body, key_id=key.key_id,
                                            signature=key.sign(pae(payload_type, body)))
        registry = self._registry.current
        deliveries = tuple((platform, agency) for agency in sides
                           if (platform := registry.platform_of_agency(agency)) is not None)
        incoming = IncomingMessage(
            message_id=message_id, transfer_id=transfer_id, kind=kind, sender=GATEWAY_SENDER, receiver=BOTH_SIDES,
            deliveries=deliveries, created_at=now, fingerprint=fingerprint(payload_type, body),
            signed_message=signed.SerializeToString(), created_by_gateway=True, opens_case_of=opens_case_of,
        )
        return incoming, receipt_maker(self._signer, incoming, hashlib.sha256(body).digest())

    async def record(
        self, *, kind: MessageKind, message_id: str, transfer_id: str, payload: Message, sides: tuple[str, str],
        decide: Decide, now: dt.datetime,
    ) -> AcceptOutcome:
        """Sign `payload`, store it in the case's log with `decide`'s decision, deliver it to both sides.
        A decision that finds it repeats an earlier message of the case (the same review decision,
        the same closure) stores nothing: the outcome is that message's, `replayed`."""
        incoming, make_receipt = self.prepare(kind=kind, message_id=message_id, transfer_id=transfer_id,
                                              payload=payload, sides=sides, now=now)
        deliveries = incoming.deliveries
        outcome = await self._store.accept(incoming, decide, make_receipt)
        if not outcome.replayed:
            self._metrics.observe_finished(outcome, self._sla)
            for platform, _ in deliveries:
                self._router.notify(platform)
        return outcome
