"""The log's audit, pure: every fund status the rules know has its number in the log, and a log
fed in by hand is recomputed as the rows must be (the store-level tampering tests are in
tests/app/test_logverify.py)."""

from __future__ import annotations

from gateway.core.audit import LogAudit
from gateway.core.case import FundStatus
from mitransfer.protocol import entries, note
from mitransfer.v1 import envelope_pb2, tracking_pb2


def test_every_fund_status_of_the_rules_has_its_number_in_the_log() -> None:
    """A new status (a fund returned, say) must be added to log.proto's FundStatus and to
    entries.FUND_STATUSES with it, or its accepts could not be logged."""
    assert {str(s) for s in FundStatus} <= set(entries.FUND_STATUSES)


def _audit() -> LogAudit:
    return LogAudit(origin="log", keys_at=lambda when: note.known_keys(()))


def _message(leaf: int, sequence: int, transfer_id: str, state: int) -> bytes:
    body = envelope_pb2.ReceiptBody(message_id=f"m{sequence}", transfer_id=transfer_id, sequence=sequence,
                                    leaf_index=leaf).SerializeToString()
    return entries.message_entry(b"f" * 32, body, state)


def test_the_ledger_and_the_cases_are_recomputed_from_the_entries() -> None:
    audit = _audit()
    log = [
        _message(0, 1, "T1", tracking_pb2.CASE_STATE_FUNDS_SENT),
        entries.fund_entry(transfer_id="T1", fund_message_id="m1", message_id="m1", previous=None, status="sent",
                           amount_fen=500, outbound="320100", inbound="330100"),
        _message(2, 2, "T1", tracking_pb2.CASE_STATE_FUNDS_CREDITED),
        entries.fund_entry(transfer_id="T1", fund_message_id="m1", message_id="m2", previous="sent",
                           status="credited", amount_fen=500, outbound="320100", inbound="330100"),
    ]
    audit.head(2, len(log), 0)
    for i, entry in enumerate(log):
        audit.entry(i, entry)
    audit.case("T1", tracking_pb2.CASE_STATE_FUNDS_CREDITED, False)
    audit.fund("T1", "m1", 500, "credited")
    audit.total("32", "33", "credited", 500, 1)
    for sequence in (1, 2):
        audit.message(sequence, f"m{sequence}", b"f" * 32, b"", None)
    findings = audit.finish()
    # the stored receipts were not given (b""): only those two disagree
    assert [f.kind for f in findings] == ["message", "message"]
    assert [(line.status, line.amount_fen, line.transfers) for line in audit.ledger()] == [("credited", 500, 1)]


def test_a_change_of_status_the_log_never_started_is_named() -> None:
    audit = _audit()
    audit.entry(0, _message(0, 1, "T1", tracking_pb2.CASE_STATE_FUNDS_SENT))
    audit.entry(1, entries.fund_entry(transfer_id="T1", fund_message_id="m0", message_id="m1", previous="held",
                                      status="sent", amount_fen=9, outbound="320100", inbound="330100"))
    problems = [f.line() for f in audit.finish()]
    assert any("moves from held a fund movement the log never created" in p for p in problems), problems
