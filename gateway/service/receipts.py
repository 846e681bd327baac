"""The gateway's signed receipts (non-repudiation of receipt)."""

from __future__ import annotations

import datetime as dt

from gateway.core.errors import SignatureRejected
from gateway.core.keys import GatewaySigner
from gateway.core.messages import RECEIPT_PAYLOAD_TYPE, MessageKind
from gateway.core.signing import Signer, VerifyingKey, pae
from gateway.core.timestamps import timestamp_of
from gateway.store import IncomingMessage, IssuedReceipt, MakeReceipt
from mitransfer.protocol.validity import KeyNotValid
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


def receipt_maker(signer: GatewaySigner, message: IncomingMessage, payload_sha256: bytes,
                  sender_key: VerifyingKey | None = None) -> MakeReceipt:
    """What the store calls, inside its transaction, once it knows the sequence and the time of
    acceptance: the message is judged, and the receipt signed, by the keys valid at that time.

    `sender_key` is the key the sender signed with (None for what the gateway writes itself): a
    key whose window ended between the signature check and the commit refuses the message
    (SignatureRejected, the transaction rolls back), so no receipt ever attests a message signed
    outside its key's window. The receipt is signed with `signer.at(accepted_at)`.
    """

    def make(sequence: int, leaf_index: int, accepted_at: dt.datetime) -> IssuedReceipt:
        if sender_key is not None:
            try:
                sender_key.window.check(sender_key.key_id, accepted_at)
            except KeyNotValid as exc:
                raise SignatureRejected(str(exc), reason=exc.reason, metadata={"key_id": exc.key_id}) from exc
        return issue_receipt(
            signer.at(accepted_at), message_id=message.message_id, transfer_id=message.transfer_id,
            kind=message.kind, sender=message.sender, receiver=message.receiver, payload_sha256=payload_sha256,
            sequence=sequence, accepted_at=accepted_at, leaf_index=leaf_index,
        )

    return make
