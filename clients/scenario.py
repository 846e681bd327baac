"""Reference platforms playing whole cases through the gateway.

A `ReferencePlatform` is both sides at once, as a real provincial platform is: as outbound
(转出地) it sends notice → table → fund transfer and waits for the inbound side's
TRANSFER_IN_COMPLETED; as inbound (转入地) it answers deliveries with `roles.answer_as_inbound`.

Its memory (open cases, outbox, outcomes) is in-process. A real platform keeps all of it in its
own database: the delivery, the decision and the signed answers in one transaction, before the
answers are submitted and the delivery acknowledged, so that after a crash it resends the very
same signed bytes instead of deciding again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from clients.automatic import blocker_resolution, enrollment, suspended_record
from clients.builders import (
    EMPLOYEE,
    RESIDENT,
    Route,
    balance_moves,
    fund_account,
    fund_transfer,
    information_table,
    outbound_notice_accepted,
    outbound_notice_refused,
    reason,
    sample_periods,
    sample_person,
    today_in_china,
)
from clients.deliveries import VerifiedDelivery
from clients.errors import ClientError, GatewayRejected, VerificationError
from clients.messages import BusinessMessage
from clients.platform import PlatformClient
from clients.reviewer import ReviewerClient
from clients.roles import CaseOutcome, InboundCase, answer_as_inbound, answer_as_outbound, outcome_for_outbound
from mitransfer.v1 import admin_pb2, automatic_pb2, envelope_pb2, messages_pb2, types_pb2

log = logging.getLogger("clients.scenario")


class CaseFailed(ClientError):
    """A case cannot complete: its answers were refused or a subscription ended."""


@dataclass(frozen=True)
class CasePlan:
    """Everything the outbound side sends in one case."""

    route: Route
    person: types_pb2.Person
    insurance_type: types_pb2.InsuranceType.ValueType
    suspension_date: dt.date
    periods: tuple[messages_pb2.ContributionPeriod, ...]
    balance_fen: int  # the personal-account balance (moved 310 → 310, retained at the outbound 310 → 390)
    inbound_insurance_type: types_pb2.InsuranceType.ValueType = types_pb2.INSURANCE_TYPE_UNSPECIFIED  # same
    cumulative_months: int | None = None  # None: the periods' sum (they must not overlap)

    @classmethod
    def synthetic(
        cls, outbound: str, inbound: str, *, insurance_type: types_pb2.InsuranceType.ValueType = EMPLOYEE,
        balance_fen: int = 0, seed: int = 0, today: dt.date | None = None,
        inbound_insurance_type: types_pb2.InsuranceType.ValueType | None = None,
    ) -> CasePlan:
        """A case for the synthetic person `seed`, suspended on `today` (default: today, Beijing).

        A resident → resident case is suspended on the last day of last year by default: the
        measures handle it only after the person enrolled at the inbound side for a later year.
        """
        inbound_type = insurance_type if inbound_insurance_type is None else inbound_insurance_type
        suspension = today or today_in_china()
        if today is None and insurance_type == RESIDENT and inbound_type == RESIDENT:
            suspension = dt.date(suspension.year - 1, 12, 31)
        return cls(Route.new(outbound, inbound), sample_person(seed), insurance_type, suspension,
                   tuple(sample_periods(outbound, suspension, seed)), balance_fen, inbound_type)

    @property
    def inbound_type(self) -> types_pb2.InsuranceType.ValueType:
        return self.inbound_insurance_type or self.insurance_type

    @property
    def funds_expected(self) -> bool:
        return balance_moves(self.insurance_type, self.inbound_type, self.balance_fen)


OutboundMessage = messages_pb2.OutboundNotice | messages_pb2.InformationTable | messages_pb2.FundTransfer


def outbound_messages(plan: CasePlan) -> list[OutboundMessage]:
    """The outbound side's messages of a case, in sending order: notice, table, and the fund
    transfer when funds are expected. Raises ValueError for a plan the builders refuse."""
    route = plan.route
    messages: list[OutboundMessage] = [
        outbound_notice_accepted(route, plan.person, plan.insurance_type, plan.suspension_date,
                                 inbound_insurance_type=plan.inbound_type),
        information_table(route, plan.person, plan.insurance_type, plan.suspension_date, plan.periods,
                          plan.balance_fen, inbound_insurance_type=plan.inbound_type,
                          cumulative_months=plan.cumulative_months),
    ]
    if plan.funds_expected:
        messages.append(fund_transfer(
            route, plan.balance_fen, fund_account(route.outbound, receiving=False),
            fund_account(route.inbound, receiving=True), f"SIM{uuid.uuid4().hex[:20].upper()}",
            today_in_china(),
        ))
    return messages


async def send_case(client: PlatformClient, plan: CasePlan) -> list[envelope_pb2.ReceiptBody]:
    """Submit the outbound side's messages of a case in order; returns their receipts.

    All are built before the first is sent, so a plan the builders refuse sends nothing.
    """
    return [await client.submit(m) for m in outbound_messages(plan)]  # in order: each needs the last


class ReferencePlatform:
    """One platform playing both roles. `run` subscribes; `play_outbound` sends a case and waits."""

    def __init__(
        self, client: PlatformClient, *, agencies: Sequence[str] = (),
        on_case_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.client = client
        self.agencies = tuple(agencies)
        self.errors: list[str] = []
        self._on_case_error = on_case_error
        self._cases: dict[str, InboundCase] = {}                           # open inbound cases
        self._outbox: dict[str, list[envelope_pb2.SignedMessage]] = {}     # by delivered message id
        self._waiting: dict[str, asyncio.Future[CaseOutcome]] = {}         # our outbound cases
        self._records: dict[str, CasePlan] = {}  # our suspended records in the gateway's index, by their id
        self._blockers: dict[str, tuple[types_pb2.ReasonCode.ValueType, ...]] = {}  # what each record awaits
        self._answering: dict[str, CasePlan] = {}  # automatic cases we answer, with their inbound side known
        self.registered: set[str] = set()        # the ids of those the gateway has receipted
        self._broken: str | None = None

    async def run(self, stop: asyncio.Event, *, concurrency: int = 16) -> None:
        """Receive and answer deliveries until `stop` is set, up to `concurrency` cases at once."""
        await self.client.subscribe(self.handle, self.agencies, stop=stop, concurrency=concurrency)

    async def play_outbound(self, plan: CasePlan) -> CaseOutcome:
        """Send the case and wait until the inbound side completes or rejects it.

        Raises:
            ClientError: a submission failed, or the case was abandoned (`abandon`, `break_all`).
        """
        if self._broken:
            raise CaseFailed(self._broken)
        transfer_id = plan.route.transfer_id
        waiter: asyncio.Future[CaseOutcome] = asyncio.get_running_loop().create_future()
        self._waiting[transfer_id] = waiter  # before sending: the answer may come back at once
        try:
            await send_case(self.client, plan)
            return await waiter
        finally:
            self._waiting.pop(transfer_id, None)

    async def register_record(
        self, plan: CasePlan, blockers: Sequence[types_pb2.ReasonCode.ValueType] = (),
    ) -> envelope_pb2.ReceiptBody:
        """Register the suspended record `plan` describes in the gateway's index (its transfer id is the
        record's id); the case opens when the person's new enrollment is reported, and is answered
        then with the plan's notice, table and funds, or, if the record has `blockers` (在院未结算,
        欠费, …), refused for them until `resolve` reports them cleared. Returns the verified receipt
        body: its `automatic.opened_transfer_ids` holds the record's id if an enrollment was already
        waiting."""
        self._records[plan.route.transfer_id] = plan
        if blockers:
            self._blockers[plan.route.transfer_id] = tuple(blockers)
        body = await self.client.submit(suspended_record(plan.route.outbound, plan.person, plan.insurance_type,
                                                         plan.suspension_date, transfer_id=plan.route.transfer_id))
        self.registered.add(plan.route.transfer_id)
        return body

    async def play_automatic_outbound(self, plan: CasePlan) -> CaseOutcome:
        """Register the record and wait until the case it opens completes or is rejected (the
        inbound side's enrollment opens it, whenever it comes).

        Raises:
            ClientError: the registration failed, or the case was abandoned.
        """
        if self._broken:
            raise CaseFailed(self._broken)
        transfer_id = plan.route.transfer_id
        waiter: asyncio.Future[CaseOutcome] = asyncio.get_running_loop().create_future()
        self._waiting[transfer_id] = waiter
        try:
            await self.register_record(plan)
            return await waiter
        finally:
            self._waiting.pop(transfer_id, None)

    def _answer_automatic(self, request: automatic_pb2.AutomaticTransferRequest) -> list[envelope_pb2.SignedMessage]:
        """What this platform sends for the gateway's automatic request: as the outbound side, the
        record's notice, table and funds, as for any request; as the inbound side, nothing (the
        notice will say what it needs)."""
        if request.outbound not in self.client.agencies:
            return []
        plan = self._records.get(request.transfer_id)
        if plan is None:  # a real platform looks its record up in its own database
            raise CaseFailed(f"no record {request.transfer_id} remembered for the gateway's automatic request")
        r = request.request
        plan = replace(plan, route=Route(request.transfer_id, request.outbound, request.inbound),
                       inbound_insurance_type=r.inbound_insurance_type)
        self._answering[request.transfer_id] = plan
        blockers = self._blockers.get(request.transfer_id)
        if blockers:  # refused for what the person must clear first: the gateway keeps the case waiting
            return [self.client.sign(outbound_notice_refused(plan.route, plan.person, plan.insurance_type,
                                                             [reason(code) for code in blockers]))]
        return [self.client.sign(m) for m in outbound_messages(plan)]

    async def resolve(self, transfer_id: str, text: str = "") -> list[envelope_pb2.ReceiptBody]:
        """The person cleared the blockers of the automatic case `transfer_id` (ours as the outbound
        side, refused for them): report them resolved, then answer the request as any other (notice,
        table, funds). Returns the receipts. Raises ValueError for a case not waiting on us."""
        plan = self._answering.get(transfer_id)
        blockers = self._blockers.pop(transfer_id, ())
        if plan is None or not blockers:
            raise ValueError(f"case {transfer_id} does not wait for blockers of ours")
        messages = [blocker_resolution(plan.route, blockers, text), *outbound_messages(plan)]
        return [await self.client.submit(m) for m in messages]  # in order: each needs the one before

    def abandon(self, transfer_id: str, why: str) -> None:
        """Stop waiting for one of our outbound cases; `play_outbound` raises CaseFailed."""
        waiter = self._waiting.get(transfer_id)
        if waiter is not None and not waiter.done():
            waiter.set_exception(CaseFailed(why))

    def break_all(self, why: str) -> None:
        """Fail every waiting and future case (e.g. a subscription ended for good)."""
        self._broken = why
        for transfer_id in list(self._waiting):
            self.abandon(transfer_id, why)

    async def handle(self, delivery: VerifiedDelivery) -> None:
        """Answer one verified delivery; raising leaves it unacknowledged, to come again."""
        message = delivery.message
        if isinstance(message, automatic_pb2.AutomaticTransferRequest):
            if delivery.message_id not in self._outbox:
                self._outbox[delivery.message_id] = self._answer_automatic(message)
            await self._send(delivery)
            return
        if isinstance(message, admin_pb2.ReviewDecision | admin_pb2.CaseExpired | admin_pb2.CaseClosed):
            # The gateway's word on the case: a rejected review, an operator's closure or an
            # expiry (older cases) ends it for both sides.
            if not (isinstance(message, admin_pb2.ReviewDecision) and message.approved):
                why = ("fund transfer rejected in review" if isinstance(message, admin_pb2.ReviewDecision)
                       else "closed by an operator" if isinstance(message, admin_pb2.CaseClosed)
                       else "case expired unanswered")
                self._cases.pop(delivery.transfer_id, None)
                self.abandon(delivery.transfer_id, why)
            return
        if isinstance(message, messages_pb2.Acknowledgement):
            outcome = outcome_for_outbound(message)
            waiter = self._waiting.get(delivery.transfer_id)
            if outcome is not None and waiter is not None and not waiter.done():
                waiter.set_result(outcome)
            return
        if delivery.message_id not in self._outbox and isinstance(message, messages_pb2.FundReturn):
            # as the outbound side: confirm the money is back
            self._outbox[delivery.message_id] = [self.client.sign(a) for a in answer_as_outbound(message)]
        if delivery.message_id not in self._outbox:  # first time: decide once, and keep the signed answers
            decision = answer_as_inbound(self._cases.get(delivery.transfer_id), message)
            if decision.unanswerable:  # our memory of the case is lost: leave it unacknowledged, so
                # that it ends in the gateway's dead-letter state, where operators look
                self._record(delivery.transfer_id, decision.unanswerable)
                raise CaseFailed(decision.unanswerable)
            if decision.case is None:
                self._cases.pop(delivery.transfer_id, None)
            else:
                self._cases[delivery.transfer_id] = decision.case
            answers: list[BusinessMessage] = [*decision.acknowledgements, *decision.returns]
            self._outbox[delivery.message_id] = [self.client.sign(m) for m in answers]
        await self._send(delivery)

    async def _send(self, delivery: VerifiedDelivery) -> None:
        """Submit the answers kept for a delivery, in order, then forget them."""
        for signed in self._outbox[delivery.message_id]:  # a retry resends the same bytes: receipts replay
            try:
                await self.client.submit_signed(signed)
            except (GatewayRejected, VerificationError) as err:
                self._record(delivery.transfer_id, f"answer refused: {err}")
                if self._on_case_error is not None:
                    self._on_case_error(delivery.transfer_id, str(err))
                raise
        del self._outbox[delivery.message_id]

    def _record(self, transfer_id: str, text: str) -> None:
        self.errors.append(f"{self.client.platform} case {transfer_id}: {text}")
        log.warning("%s case %s: %s", self.client.platform, transfer_id, text)


@dataclass(frozen=True)
class ScenarioResult:
    transfers: int      # cases started
    completed: int      # cases whose outbound platform received TRANSFER_IN_COMPLETED
    failed: int         # the rest: refused, rejected, abandoned or timed out
    errors: list[str]   # what went wrong, by transfer id (no personal data)
    seconds: float
    automatic: int = 0            # of the cases, those opened by the gateway from a record and an enrollment
    automatic_completed: int = 0  # of those, the completed


def plan_cases(
    transfers: int, a_agencies: Sequence[str], b_agencies: Sequence[str], *, seed: int | None = None,
) -> list[tuple[bool, CasePlan]]:
    """(a is outbound, plan) for each case: alternating directions; 7 in 10 employee cases with
    a balance, 1 in 10 employee with zero balance, 1 in 10 resident insurance, 1 in 10 from
    employee to resident insurance (the balance stays at the outbound side)."""
    rng = random.Random(seed)
    base = rng.randrange(1_000_000)
    plans = []
    for i in range(transfers):
        a_outbound = i % 2 == 0
        sources, targets = (a_agencies, b_agencies) if a_outbound else (b_agencies, a_agencies)
        slot = i // 2
        outbound, inbound = sources[slot % len(sources)], targets[(slot + 1) % len(targets)]
        mix = i % 10
        # About one case in ten has a balance above 10,000 yuan, from b to a: where b's region reviews
        # such balances (the dev registry's Zhejiang does), it waits for a reviewer.
        big = rng.randint(1_000_001, 5_000_000)
        insurance, balance = (EMPLOYEE, big if mix == 1 else rng.randint(100, 1_000_000)) if mix < 7 else (
            (EMPLOYEE, 0) if mix == 7 else (RESIDENT, 0) if mix == 8 else (EMPLOYEE, rng.randint(100, 1_000_000)))
        plans.append((a_outbound, CasePlan.synthetic(outbound, inbound, insurance_type=insurance,
                                                     balance_fen=balance, seed=base + i,
                                                     inbound_insurance_type=RESIDENT if mix == 9 else insurance)))
    return plans


async def run_cases(
    a: PlatformClient, b: PlatformClient, *, transfers: int, a_agencies: Sequence[str],
    b_agencies: Sequence[str], on_progress: Callable[[int, int], None] | None = None, timeout: float = 120.0,
    concurrency: int = 16, seed: int | None = None, reviewer: ReviewerClient | None = None,
    automatic: int = 0,
) -> ScenarioResult:
    """Play `transfers` cases between platforms a and b, half in each direction, at most
    `concurrency` at once. A case completes when its outbound platform receives the
    TRANSFER_IN_COMPLETED acknowledgement through its subscription; cases not done within
    `timeout` seconds fail. Large balances wait for review: give a `reviewer` to approve them.

    The first `automatic` cases (every other one while they last) open without an application: the
    outbound platform registers the suspended record and the inbound platform reports the person's
    enrollment, one or the other first in turn, and the gateway opens the case; the others open
    with the outbound notice, as an application lodged at the outbound side does."""
    started = time.perf_counter()
    errors: list[str] = []
    outcomes: list[bool] = []
    automatic_outcomes: list[bool] = []

    def case_error(transfer_id: str, why: str) -> None:
        for p in platforms:
            p.abandon(transfer_id, why)

    platforms = (ReferencePlatform(a, agencies=a_agencies, on_case_error=case_error),
                 ReferencePlatform(b, agencies=b_agencies, on_case_error=case_error))
    stop = asyncio.Event()
    subscriptions = [asyncio.create_task(p.run(stop, concurrency=concurrency)) for p in platforms]
    approvals = asyncio.create_task(reviewer.auto_approve(stop)) if reviewer is not None else None

    def subscription_ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not stop.is_set():
            for p in platforms:
                p.break_all(f"subscription ended: {task.exception()}")

    for task in subscriptions:
        task.add_done_callback(subscription_ended)
    gate = asyncio.Semaphore(concurrency)

    async def play(a_outbound: bool, plan: CasePlan, opens_automatically: int) -> None:
        outbound, inbound = platforms if a_outbound else platforms[::-1]
        async with gate:
            try:
                if opens_automatically:
                    outcome = await play_automatic(outbound, inbound, plan, enrollment_first=opens_automatically == 2)
                else:
                    outcome = await outbound.play_outbound(plan)
            except ClientError as err:
                errors.append(f"case {plan.route.transfer_id}: {err}")
                outcome = None
            if outcome is CaseOutcome.REJECTED:
                errors.append(f"case {plan.route.transfer_id}: rejected by the inbound side")
            outcomes.append(outcome is CaseOutcome.COMPLETED)
            if opens_automatically:
                automatic_outcomes.append(outcome is CaseOutcome.COMPLETED)
            if on_progress is not None:
                on_progress(len(outcomes), transfers)

    plans = plan_cases(transfers, a_agencies, b_agencies, seed=seed)
    # 0: applied; 1: automatic, the record first; 2: automatic, the enrollment first.
    how = [0] * len(plans)
    for n, i in enumerate([i for i in range(len(plans)) if i % 2 == 1] + [i for i in range(len(plans))
                                                                          if i % 2 == 0]):
        if n < automatic:
            how[i] = 1 + n % 2
    tasks = [asyncio.create_task(play(a_out, plan, how[i])) for i, (a_out, plan) in enumerate(plans)]
    try:
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                errors.append(f"{len(pending)} case(s) did not finish within {timeout:g} s")
                await asyncio.gather(*pending, return_exceptions=True)
    finally:
        stop.set()
        for result in await asyncio.gather(*subscriptions, return_exceptions=True):
            if isinstance(result, BaseException):
                errors.append(f"subscription ended: {result}")
        if approvals is not None:
            await approvals
    errors.extend(e for p in platforms for e in p.errors)
    completed = sum(outcomes)
    return ScenarioResult(transfers, completed, transfers - completed, errors, time.perf_counter() - started,
                          automatic=len(automatic_outcomes), automatic_completed=sum(automatic_outcomes))


async def play_automatic(outbound: ReferencePlatform, inbound: ReferencePlatform, plan: CasePlan, *,
                         enrollment_first: bool) -> CaseOutcome:
    """One case opened by the gateway: `outbound` registers the suspended record `plan` describes,
    `inbound` reports the person's enrollment today (one of them first), and the case runs as an
    applied one. Raises ClientError as `ReferencePlatform.play_automatic_outbound` does."""
    report = enrollment(plan.route.inbound, plan.person, plan.inbound_type, today_in_china())
    if enrollment_first:
        await inbound.client.submit(report)
        return await outbound.play_automatic_outbound(plan)
    outcome = asyncio.ensure_future(outbound.play_automatic_outbound(plan))
    try:
        while plan.route.transfer_id not in outbound.registered and not outcome.done():
            await asyncio.sleep(0.01)  # the record is in the index before the enrollment comes
        if not outcome.done():
            await inbound.client.submit(report)
        return await outcome
    finally:
        if not outcome.done():
            outcome.cancel()
