"""The gateway's signed receipts (non-repudiation of receipt)."""

from __future__ import annotations

import datetime as dt

from gateway.core.messages import RECEIPT_PAYLOAD_TYPE, MessageKind
from gateway.core.signing import Signer, pae
from gateway.core.timestamps import timestamp_of
from gateway.store import IncomingMessage, IssuedReceipt, MakeReceipt
from mitransfer.v1 import envelope_pb2


def issue_receipt(
    signer: Signer,
    *,
    message_id: str,
    transfer_id: str,
    kind: MessageKind,
    sender: str,
    receiver: str,
    payload_sha256: bytes,
    sequence: int,
    accepted_at: dt.datetime,
    leaf_index: int = 0,
    automatic: envelope_pb2.AutomaticOutcome | None = None,
) -> IssuedReceipt:
    """A signed Receipt attesting that the gateway committed this message, and its body as signed
    (the transparency log keeps the body; the receipt names its leaf). For a suspended record or
    an enrollment the body says what it opened (`automatic`)."""
    body = envelope_pb2.ReceiptBody(
        message_id=message_id, transfer_id=transfer_id, kind=kind, sender=sender, receiver=receiver,
        payload_sha256=payload_sha256, sequence=sequence,
        accepted_at=timestamp_of(accepted_at), leaf_index=leaf_index, automatic=automatic,
    )
    body_bytes = body.SerializeToString()
    receipt = envelope_pb2.Receipt(
        body=body_bytes, key_id=signer.key_id, signature=signer.sign(pae(RECEIPT_PAYLOAD_TYPE, body_bytes))
    )
    return IssuedReceipt(receipt.SerializeToString(), body_bytes)


def receipt_maker(signer: Signer, message: IncomingMessage, payload_sha256: bytes) -> MakeReceipt:
    """What the store calls, inside its transaction, once it knows the sequence and time."""

    def make(sequence: int, leaf_index: int, accepted_at: dt.datetime) -> IssuedReceipt:
        return issue_receipt(
            signer, message_id=message.message_id, transfer_id=message.transfer_id, kind=message.kind,
            sender=message.sender, receiver=message.receiver, payload_sha256=payload_sha256,
            sequence=sequence, accepted_at=accepted_at, leaf_index=leaf_index,
        )

    return make
