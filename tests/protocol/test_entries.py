"""Log entries: written once, read back, and the check a platform makes that its receipt's
message is in a checkpoint's tree — refusing another receipt's entry, another leaf, another root."""

from __future__ import annotations

import pytest

from mitransfer.protocol import entries, tlog
from mitransfer.protocol.checkpoint import Checkpoint
from mitransfer.protocol.errors import ProtocolError
from mitransfer.v1 import envelope_pb2, log_pb2, tracking_pb2


def body(message_id: str, leaf_index: int) -> bytes:
    return envelope_pb2.ReceiptBody(message_id=message_id, transfer_id="T1", sequence=leaf_index + 1,
                                    leaf_index=leaf_index).SerializeToString()


def logged() -> tuple[tlog.Tree, list[bytes], list[bytes]]:
    tree = tlog.Tree()
    bodies, leaves = [], []
    for i in range(6):
        if i == 3:
            leaf = entries.fund_entry(transfer_id="T1", fund_message_id="m2", message_id="m2", previous=None,
                                      status="held", amount_fen=100, outbound="320100", inbound="330100")
        else:
            bodies.append(body(f"m{i}", i))
            leaf = entries.message_entry(b"f" * 32, bodies[-1], tracking_pb2.CASE_STATE_OPENED)
        leaves.append(leaf)
        tree.append(leaf)
    return tree, bodies, leaves


def test_entries_read_back() -> None:
    _, bodies, leaves = logged()
    first = entries.read_entry(leaves[0])
    assert first.WhichOneof("entry") == "message" and first.message.receipt_body == bodies[0]
    fund = entries.read_entry(leaves[3]).fund_status
    assert (fund.previous, fund.status, fund.amount_fen) == (log_pb2.FUND_STATUS_UNSPECIFIED,
                                                           log_pb2.FUND_STATUS_HELD, 100)
    with pytest.raises(ProtocolError) as err:
        entries.read_entry(b"\xff\xff")
    assert err.value.reason == "PAYLOAD_UNDECODABLE"


def test_a_receipt_in_the_tree_checks_and_nothing_else_does() -> None:
    tree, bodies, leaves = logged()
    head = Checkpoint("log", tree.size, tree.root())
    entries.check_receipt_included(bodies[1], leaf_index=1, entry=leaves[1], proof=tree.inclusion(1), checkpoint=head)
    wrong = {
        "another receipt's entry": (bodies[1], 2, leaves[2], tree.inclusion(2), head),
        "a fund entry": (bodies[1], 3, leaves[3], tree.inclusion(3), head),
        "another leaf": (bodies[1], 2, leaves[1], tree.inclusion(2), head),
        "another root": (bodies[1], 1, leaves[1], tree.inclusion(1), Checkpoint("log", tree.size, tree.root(5))),
        "a shorter tree": (bodies[1], 1, leaves[1], tree.inclusion(1), Checkpoint("log", 5, tree.root(5))),
    }
    for name, (b, index, leaf, proof, checkpoint) in wrong.items():
        with pytest.raises(ProtocolError) as err:
            entries.check_receipt_included(b, leaf_index=index, entry=leaf, proof=proof, checkpoint=checkpoint)
        assert err.value.reason in ("ENTRY_MISMATCH", "PROOF_INVALID"), name
