"""The transparency log's entries (mitransfer.v1.LogEntry): written by the gateway, read by
anyone who checks the log, and the check that a receipt's message is in a checkpoint's tree.

An entry is kept as the bytes it was serialized to once, when it was logged; its leaf hash is
over those bytes (`tlog.leaf_hash`), never over a re-serialization.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final, TypeAlias

from google.protobuf.message import DecodeError

from mitransfer.protocol import tlog
from mitransfer.protocol.checkpoint import Checkpoint
from mitransfer.protocol.errors import ProtocolError, UndecodablePayload
from mitransfer.v1 import envelope_pb2, log_pb2

FundStatus: TypeAlias = log_pb2.FundStatus.ValueType

FUND_STATUSES: Final[Mapping[str, FundStatus]] = MappingProxyType({
    "held": log_pb2.FUND_STATUS_HELD,
    "sent": log_pb2.FUND_STATUS_SENT,
    "credited": log_pb2.FUND_STATUS_CREDITED,
    "rejected": log_pb2.FUND_STATUS_REJECTED,
    "return_due": log_pb2.FUND_STATUS_RETURN_DUE,
    "returning": log_pb2.FUND_STATUS_RETURNING,
    "returned": log_pb2.FUND_STATUS_RETURNED,
})
"""The store's name of a fund movement's status → its number in the log."""
FUND_STATUS_NAMES: Final[Mapping[int, str]] = MappingProxyType({v: k for k, v in FUND_STATUSES.items()})


def message_entry(fingerprint: bytes, receipt_body: bytes, case_state: int) -> bytes:
    """The entry of an accepted message: its fingerprint, its receipt body as signed, and the
    state its case is in once it was accepted."""
    return log_pb2.LogEntry(message=log_pb2.LoggedMessage(
        fingerprint=fingerprint, receipt_body=receipt_body, case_state=case_state,  # type: ignore[arg-type]
    )).SerializeToString()


def fund_entry(*, transfer_id: str, fund_message_id: str, message_id: str, previous: str | None, status: str,
               amount_fen: int, outbound: str, inbound: str) -> bytes:
    """The entry of a fund movement created (`previous` None) or moved from `previous` to `status`
    (statuses by the store's names, see FUND_STATUSES).

    Raises KeyError for a status the log has no number for.
    """
    return log_pb2.LogEntry(fund_status=log_pb2.FundStatusChange(
        transfer_id=transfer_id, fund_message_id=fund_message_id, message_id=message_id,
        previous=FUND_STATUSES[previous] if previous is not None else log_pb2.FUND_STATUS_UNSPECIFIED,
        status=FUND_STATUSES[status], amount_fen=amount_fen, outbound=outbound, inbound=inbound,
    )).SerializeToString()


def read_entry(data: bytes) -> log_pb2.LogEntry:
    """Parse an entry. Raises UndecodablePayload if the bytes are not a LogEntry."""
    entry = log_pb2.LogEntry()
    try:
        entry.ParseFromString(data)
    except DecodeError as exc:
        raise UndecodablePayload("LogEntry", str(exc)) from exc
    return entry


def read_receipt_body(data: bytes) -> envelope_pb2.ReceiptBody:
    """Parse a logged receipt body. Raises UndecodablePayload."""
    body = envelope_pb2.ReceiptBody()
    try:
        body.ParseFromString(data)
    except DecodeError as exc:
        raise UndecodablePayload("ReceiptBody", str(exc)) from exc
    return body


def check_receipt_included(receipt_body: bytes, *, leaf_index: int, entry: bytes, proof: Sequence[bytes],
                           checkpoint: Checkpoint) -> None:
    """Check that the message a receipt acknowledges is in a (verified) checkpoint's tree.

    `receipt_body` is the body of a receipt whose signature the caller verified; `leaf_index`,
    `entry` and `proof` are what the gateway answered. The entry must be that very receipt's,
    at the leaf the receipt names, and lead to the checkpoint's root.

    Raises:
        ProtocolError: ENTRY_MISMATCH (the entry is not this receipt's, or not at its leaf);
            UndecodablePayload; ProofError (PROOF_INVALID).
    """
    body = read_receipt_body(receipt_body)
    if leaf_index != body.leaf_index:
        raise ProtocolError(f"the proof is for leaf {leaf_index}, the receipt says leaf {body.leaf_index}",
                            reason="ENTRY_MISMATCH")
    logged = read_entry(entry)
    if logged.WhichOneof("entry") != "message" or logged.message.receipt_body != receipt_body:
        raise ProtocolError(f"the entry at leaf {leaf_index} is not this receipt's", reason="ENTRY_MISMATCH")
    tlog.check_inclusion(proof, checkpoint.size, checkpoint.root_hash, leaf_index, tlog.leaf_hash(entry))
