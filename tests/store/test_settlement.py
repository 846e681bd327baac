"""The settlement ledger balances after any history of cases: hypothesis drives random cases
through the real rules (gateway.core.case) and the real SQLite store — reviews, credits, inbound
rejections after the funds arrived and their returns — and after every step the ledger must equal
a model kept by the test, with sent = credited + returned + held + in flight, and the running
fund totals must equal the ledger."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, multiple, rule

from clients import builders
from clients.scenario import CasePlan, outbound_messages
from gateway.core import case as rules
from gateway.core.errors import RuleViolation
from gateway.core.messages import BusinessMessage, kind_of, payload_type
from gateway.core.signing import fingerprint
from gateway.core.sla import Sla
from gateway.core.workdays import WorkingCalendar
from gateway.store import IncomingMessage, IssuedReceipt
from gateway.store.sqlite import SQLiteConfig, SQLiteStore
from mitransfer.protocol.registry import RegionPolicy, policy_of
from mitransfer.v1 import envelope_pb2, messages_pb2, types_pb2
from tests.store.support import KEYS

# Jiangsu and Ningbo review their outbound transfers above 10,000 yuan; Anhui reviews none.
POLICIES = {"32": RegionPolicy("32", review_above_fen=1_000_000),
            "330200": RegionPolicy("330200", review_above_fen=1_000_000)}
Ack = messages_pb2.Acknowledgement
PAIRS = [("320100", "330100"), ("330200", "320500"), ("340100", "329900")]


def incoming(message: BusinessMessage) -> IncomingMessage:
    kind = kind_of(message)
    payload = message.SerializeToString()
    h = message.header
    return IncomingMessage(
        message_id=h.message_id, transfer_id=h.transfer_id, kind=kind, sender=h.sender, receiver=h.receiver,
        deliveries=(("p", h.receiver),), created_at=dt.datetime.now(dt.UTC),
        fingerprint=fingerprint(payload_type(kind), payload), signed_message=payload,
        fund_amount_fen=message.amount_fen if isinstance(message, messages_pb2.FundTransfer) else 0,
        opens_case_of=rules.index_question(message, KEYS),
    )


def answer(to: messages_pb2.Header, status: int, **fields: object) -> messages_pb2.Acknowledgement:
    ack = messages_pb2.Acknowledgement(answers_message_id=to.message_id, status=status, **fields)  # type: ignore[arg-type]
    ack.header.CopyFrom(builders.header(to.receiver, to.sender, to.transfer_id))
    return ack


class Ledger(RuleBasedStateMachine):
    cases = Bundle("cases")
    rejected_with_funds = Bundle("rejected_with_funds")  # their money is owed back to the outbound side

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        self.store = SQLiteStore(SQLiteConfig(Path(self.tmp.name) / "ledger.db"), lambda: dt.datetime.now(dt.UTC),
                                 Sla(WorkingCalendar()))
        self.loop.run_until_complete(self.store.open())
        self.model: dict[str, tuple[str, str, int, str]] = {}  # transfer → (out prov, in prov, amount, status)
        self.decided: dict[str, bool] = {}  # transfer → approved, once reviewed
        self.seed = 0

    def teardown(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()
        self.tmp.cleanup()

    def submit(self, message: BusinessMessage) -> None:
        def decide(case: rules.Case | None, index: rules.CaseIndex) -> rules.Decision:
            return rules.apply(case, message, policies=POLICIES, index=index, keys=KEYS)

        self.loop.run_until_complete(self.store.accept(incoming(message), decide, _receipt))

    @rule(target=cases, pair=st.sampled_from(PAIRS), balance=st.sampled_from([0, 1, 5_000, 999_999, 1_000_000,
                                                                              1_000_001, 4_321_000]))
    def open_case(self, pair: tuple[str, str], balance: int) -> tuple[CasePlan, list[BusinessMessage]]:
        self.seed += 1
        plan = CasePlan.synthetic(*pair, insurance_type=types_pb2.INSURANCE_TYPE_EMPLOYEE_BASIC, balance_fen=balance,
                                  seed=self.seed)
        messages = outbound_messages(plan)
        for m in messages:
            self.submit(m)
        if plan.funds_expected:
            status = "held" if policy_of(POLICIES, pair[0]).reviews(balance) else "sent"
            self.model[plan.route.transfer_id] = (pair[0][:2], pair[1][:2], balance, status)
        return plan, messages

    @rule(case=cases, approve=st.booleans())
    def review(self, case: tuple[CasePlan, list[BusinessMessage]], approve: bool) -> None:
        tid = case[0].route.transfer_id
        entry = self.model.get(tid)

        def decide(current: rules.Case | None, _index: rules.CaseIndex) -> rules.Decision:
            return rules.review(current, approved=approve, message_id=decision_id)

        decision_id = builders.new_id()
        message = IncomingMessage(
            message_id=decision_id, transfer_id=tid, kind=envelope_pb2.MESSAGE_KIND_REVIEW_DECISION,
            sender="gateway", receiver="*", deliveries=(), created_at=dt.datetime.now(dt.UTC),
            fingerprint=hashlib.sha256(decision_id.encode()).digest(), signed_message=b"d",
        )
        try:
            outcome = self.loop.run_until_complete(self.store.accept(message, decide, _receipt))
        except RuleViolation as refused:  # never held, or decided the other way
            assert entry is None or entry[3] != "held"
            assert refused.reason == ("REVIEW_ALREADY_DECIDED" if tid in self.decided else "NOT_HELD_FOR_REVIEW")
            assert self.decided.get(tid, approve) != approve or tid not in self.decided
            return
        if tid in self.decided:  # the same decision again: the first one's receipt, nothing moves
            assert outcome.replayed and self.decided[tid] == approve
            return
        assert entry is not None and entry[3] == "held"
        self.decided[tid] = approve
        self.model[tid] = (*entry[:3], "sent" if approve else "rejected")

    @rule(target=rejected_with_funds, case=consumes(cases), credit=st.booleans())
    def inbound_answers(self, case: tuple[CasePlan, list[BusinessMessage]], credit: bool) -> object:
        plan, messages = case
        tid = plan.route.transfer_id
        table = messages[1].header
        entry = self.model.get(tid)
        try:
            if credit:
                accepted = answer(table, Ack.STATUS_ACCEPTED, inbound_insurance_type=plan.insurance_type,
                                  inbound_enrollment_date=builders.proto_date(builders.today_in_china()))
                self.submit(accepted)
                if plan.funds_expected:
                    self.submit(answer(messages[2].header, Ack.STATUS_FUNDS_CREDITED,
                                       credited_amount_fen=plan.balance_fen))
                self.submit(answer(table, Ack.STATUS_TRANSFER_IN_COMPLETED))
            else:
                self.submit(answer(table, Ack.STATUS_REJECTED,
                                   reasons=[builders.reason(types_pb2.REASON_CODE_IDENTITY_MISMATCH)]))
        except RuleViolation:  # a held or already rejected case cannot be answered now
            assert entry is not None and entry[3] in ("held", "rejected")
            return multiple()
        if entry is None:
            return multiple()
        self.model[tid] = (*entry[:3], "credited" if credit else "return_due")
        return case if not credit else multiple()

    @rule(case=consumes(rejected_with_funds), confirm=st.booleans())
    def funds_return(self, case: tuple[CasePlan, list[BusinessMessage]], confirm: bool) -> None:
        """The inbound side sends the money back; the outbound side confirms it (or not yet)."""
        plan, messages = case
        fund = messages[2]
        assert isinstance(fund, messages_pb2.FundTransfer)
        back = builders.fund_return(fund, builders.fund_account(plan.route.inbound, receiving=False), fund.payer,
                                    "RET1", builders.today_in_china())
        self.submit(back)
        entry = self.model[plan.route.transfer_id]
        self.model[plan.route.transfer_id] = (*entry[:3], "returning")
        if confirm:
            self.submit(answer(back.header, Ack.STATUS_FUNDS_RETURN_RECEIVED))
            self.model[plan.route.transfer_id] = (*entry[:3], "returned")

    @invariant()
    def ledger_matches_the_model(self) -> None:
        now = dt.datetime.now(dt.UTC)
        lines = self.loop.run_until_complete(self.store.settlement(now - dt.timedelta(days=1),
                                                                   now + dt.timedelta(days=1)))
        expected: dict[tuple[str, str], dict[str, int]] = {}
        for out_p, in_p, amount, status in self.model.values():
            bucket = expected.setdefault((out_p, in_p), dict.fromkeys(
                ("held", "sent", "credited", "rejected", "return_due", "returning", "returned", "n"), 0))
            bucket[status] += amount
            bucket["n"] += 1
        got = {(x.outbound_province, x.inbound_province): x for x in lines}
        assert set(got) == set(expected)
        for pair, e in expected.items():
            line = got[pair]
            assert line.sent_fen == line.credited_fen + line.returned_fen + line.held_fen + line.in_flight_fen
            awaiting = e["return_due"] + e["returning"]
            assert (line.held_fen, line.in_flight_fen, line.credited_fen, line.returned_fen, line.awaiting_return_fen,
                    line.rejected_fen, line.transfers) == (
                e["held"], e["sent"] + awaiting, e["credited"], e["returned"] + e["rejected"], awaiting,
                e["rejected"] + awaiting + e["returned"], e["n"])
        # The running totals the gauges read agree with the ledger added up from every movement.
        assert self.loop.run_until_complete(self.store.fund_totals()) == lines


Ledger.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
TestLedger = Ledger.TestCase


def _receipt(_sequence: int, _leaf: int, _at: dt.datetime) -> IssuedReceipt:
    return IssuedReceipt(b"r", b"b")
