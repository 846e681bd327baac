"""clients.platform, clients.deliveries and the reference platform's answering, against fake
gRPC stubs: safe retries with the identical SignedMessage, rich errors, receipt checks, and the
subscription loop (verify → handle → ack, duplicates dropped, unverifiable deliveries left
unacknowledged, reopening after transient errors, stop)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from clients import builders
from clients.deliveries import RecentIds, VerifiedDelivery, open_delivery
from clients.dispatch import CaseOrderedRunner
from clients.errors import GatewayRejected, GatewayUnavailable, VerificationError
from clients.messages import BusinessMessage, kind_of
from clients.platform import PlatformClient
from clients.retry import RetryPolicy, next_wait, retry_delay
from clients.scenario import ReferencePlatform
from clients.signing import pae
from mitransfer.v1 import envelope_pb2, exchange_pb2, messages_pb2
from tests.clients.test_signing import NORTH_AGENCIES, SOUTH_AGENCIES, Keys, issue_receipt, make_keys, sample_notice

FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.004, deadline=2.0, attempt_timeout=1.0)


def rpc_error(code: grpc.StatusCode, message: str = "boom", *, reason: str = "",
              fields: tuple[tuple[str, str], ...] = (), retry_after: float | None = None) -> grpc.aio.AioRpcError:
    """An AioRpcError carrying google.rpc.Status details, as the gateway sends them."""
    details = []
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(retry_after * 1e9))
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    if reason:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="transfer-gateway.mitransfer.v1"))
        details.append(info)
    if fields:
        bad = any_pb2.Any()
        bad.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in fields]))
        details.append(bad)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(),
                                grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
                                details=message)


class FakeCall:
    """A server stream: yields scripted items, then ends (EOF) or hangs until cancelled."""

    def __init__(self, items: list[Any], hang: bool) -> None:
        self.items, self.hang, self.cancelled = list(items), hang, False

    async def read(self) -> Any:
        await asyncio.sleep(0)
        if self.items:
            item = self.items.pop(0)
            if isinstance(item, grpc.aio.AioRpcError):
                raise item
            return item
        if self.hang:
            await asyncio.Event().wait()
        return grpc.aio.EOF

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeExchange:
    """Stands in for the gateway's Exchange service."""

    def __init__(self, keys: Keys, submit_script: list[grpc.aio.AioRpcError | None] | None = None) -> None:
        self.keys = keys
        self.submit_script = list(submit_script or [])
        self.submitted: list[envelope_pb2.SignedMessage] = []
        self.acked: list[str] = []
        self.streams: list[tuple[list[Any], bool]] = []
        self.calls: list[FakeCall] = []
        self.receipt_for: Callable[[envelope_pb2.SignedMessage], envelope_pb2.Receipt] = (
            lambda signed: issue_receipt(keys.gateway, signed))

    async def Submit(self, signed: envelope_pb2.SignedMessage, timeout: float) -> envelope_pb2.Receipt:
        self.submitted.append(signed)
        error = self.submit_script.pop(0) if self.submit_script else None
        if error is not None:
            raise error
        return self.receipt_for(signed)

    async def AckDelivery(self, request: exchange_pb2.AckDeliveryRequest, timeout: float) -> Any:
        self.acked.append(request.message_id)
        return exchange_pb2.AckDeliveryResponse()

    def Subscribe(self, request: exchange_pb2.SubscribeRequest) -> FakeCall:
        items, hang = self.streams.pop(0) if self.streams else ([], True)
        call = FakeCall(items, hang)
        self.calls.append(call)
        return call


def client_for(platform: str, keys: Keys, exchange: FakeExchange) -> PlatformClient:
    return PlatformClient(platform=platform, exchange=exchange, tracking=None,  # type: ignore[arg-type]
                          keyring=keys.keyring, signer=keys.signers[platform], retry=FAST, rng=random.Random(1))


def deliver(
    keys: Keys, message: BusinessMessage, *, platform: str = "north", attempt: int = 1
) -> exchange_pb2.Delivery:
    signed = keys.signers[platform].sign(kind_of(message), message)
    return exchange_pb2.Delivery(message=signed, receipt=issue_receipt(keys.gateway, signed), attempt=attempt)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return make_keys()


# --- submit ---------------------------------------------------------------------------------------

async def test_submit_retries_the_identical_signed_message(keys: Keys) -> None:
    exchange = FakeExchange(keys, [rpc_error(grpc.StatusCode.UNAVAILABLE), rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED),
                                   rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED), rpc_error(grpc.StatusCode.ABORTED)])
    client = client_for("north", keys, exchange)
    notice = sample_notice()
    body = await client.submit(notice)
    assert body.message_id == notice.header.message_id
    assert len(exchange.submitted) == 5
    assert all(s is exchange.submitted[0] for s in exchange.submitted)  # never re-built or re-signed


@pytest.mark.parametrize("code", [
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.INTERNAL,
])
async def test_submit_does_not_retry_refusals(keys: Keys, code: grpc.StatusCode) -> None:
    exchange = FakeExchange(keys, [rpc_error(code)])
    with pytest.raises(GatewayRejected) as err:
        await client_for("north", keys, exchange).submit(sample_notice())
    assert err.value.code == code and len(exchange.submitted) == 1


async def test_rejection_carries_reason_and_field_violations(keys: Keys) -> None:
    exchange = FakeExchange(keys, [rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, "invalid message", reason="FIELD_INVALID",
        fields=(("person.certificate_number", "wrong check character"),))])
    with pytest.raises(GatewayRejected) as err:
        await client_for("north", keys, exchange).submit(sample_notice())
    assert err.value.reason == "FIELD_INVALID" and err.value.message == "invalid message"
    assert err.value.field_violations == (("person.certificate_number", "wrong check character"),)


async def test_rejection_without_details(keys: Keys) -> None:
    error = grpc.aio.AioRpcError(grpc.StatusCode.FAILED_PRECONDITION, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                 details="no details")
    with pytest.raises(GatewayRejected) as err:
        await client_for("north", keys, FakeExchange(keys, [error])).submit(sample_notice())
    assert (err.value.reason, err.value.field_violations) == ("", ())


async def test_submit_gives_up_at_the_deadline(keys: Keys) -> None:
    exchange = FakeExchange(keys, [rpc_error(grpc.StatusCode.UNAVAILABLE)] * 10_000)
    client = PlatformClient(platform="north", exchange=exchange, tracking=None,  # type: ignore[arg-type]
                            keyring=keys.keyring, signer=keys.signers["north"],
                            retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.02, deadline=0.1))
    with pytest.raises(GatewayUnavailable) as err:
        await client.submit(sample_notice())
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.attempts == len(exchange.submitted) > 1


async def test_receipt_for_another_message_is_refused(keys: Keys) -> None:
    exchange = FakeExchange(keys)
    other = keys.signers["north"].sign(envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE, sample_notice())
    exchange.receipt_for = lambda signed: issue_receipt(keys.gateway, other)
    with pytest.raises(VerificationError) as err:
        await client_for("north", keys, exchange).submit(sample_notice())
    assert err.value.reason == "RECEIPT_MISMATCH"


async def test_receipt_not_signed_by_the_gateway_is_refused(keys: Keys) -> None:
    exchange = FakeExchange(keys)
    exchange.receipt_for = lambda signed: issue_receipt(keys.signers["south"], signed)
    with pytest.raises(VerificationError) as err:
        await client_for("north", keys, exchange).submit(sample_notice())
    assert err.value.reason == "UNKNOWN_KEY"


async def test_a_refusal_that_says_when_to_come_back_is_waited_out(
        keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    exchange = FakeExchange(keys, [rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, reason="RATE_EXCEEDED",
                                             retry_after=0.2)])
    caplog.set_level("INFO", logger="clients.platform")
    await client_for("north", keys, exchange).submit(sample_notice())
    assert len(exchange.submitted) == 2
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 1 and "RESOURCE_EXHAUSTED" in retries[0] and "retrying in 0.2 s" in retries[0]


def test_the_wait_is_the_longer_of_the_backoff_and_what_the_gateway_asks() -> None:
    asks = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=1.5)
    silent = rpc_error(grpc.StatusCode.UNAVAILABLE)
    assert retry_delay(asks) == pytest.approx(1.5) and retry_delay(silent) is None
    assert next_wait(asks, iter([0.1])) == pytest.approx(1.5)
    assert next_wait(asks, iter([3.0])) == 3.0
    assert next_wait(silent, iter([0.1])) == 0.1
    inconsistent = grpc.aio.AioRpcError(  # details whose status differs from the call's: none to trust
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), asks.trailing_metadata(), details="other")
    assert retry_delay(inconsistent) is None


async def test_a_subscription_refused_for_too_many_open_reopens_when_the_gateway_says(
        keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    exchange = FakeExchange(keys)
    exchange.streams = [([rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, reason="SUBSCRIPTIONS_EXCEEDED",
                                    retry_after=0.3)], False)]
    client = client_for("south", keys, exchange)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(client.subscribe(_ignore, stop=stop))
    while len(exchange.calls) < 2:
        await asyncio.sleep(0.01)
    reopened = loop.time() - started
    stop.set()
    await task
    assert reopened >= 0.3  # FAST's own backoff is at most 4 ms


async def _ignore(delivery: VerifiedDelivery) -> None:
    return None


def test_backoffs_grow_with_full_jitter() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    waits = [w for w, _ in zip(policy.backoffs(random.Random(7)), range(50), strict=False)]
    caps = [min(0.1 * 2**i, 1.0) for i in range(50)]
    assert all(0 <= w <= cap for w, cap in zip(waits, caps, strict=True))
    assert max(waits[10:]) > 0.5  # reaches towards the cap


# --- verifying deliveries -------------------------------------------------------------------------

def test_open_delivery(keys: Keys) -> None:
    notice = sample_notice()
    verified = open_delivery(keys.keyring, deliver(keys, notice, attempt=2), receiving_platform="south")
    assert verified.message == notice and verified.sender_platform == "north" and verified.attempt == 2
    assert (verified.message_id, verified.transfer_id) == (notice.header.message_id, notice.header.transfer_id)


def _receipt_of_other_message(keys: Keys, d: exchange_pb2.Delivery) -> None:
    d.receipt.CopyFrom(deliver(keys, sample_notice()).receipt)


def _receipt_with_other_header(keys: Keys, d: exchange_pb2.Delivery) -> None:
    body = envelope_pb2.ReceiptBody.FromString(d.receipt.body)
    body.receiver = SOUTH_AGENCIES[1]
    data = body.SerializeToString()
    d.receipt.CopyFrom(envelope_pb2.Receipt(body=data, key_id="gw-1", signature=keys.gateway.sign_bytes(
        pae("mitransfer.v1.ReceiptBody", data))))


def _receipt_badly_signed(keys: Keys, d: exchange_pb2.Delivery) -> None:
    d.receipt.signature = bytes(64)


def _message_tampered(keys: Keys, d: exchange_pb2.Delivery) -> None:
    d.message.payload = d.message.payload + b"\x00"


@pytest.mark.parametrize(("tamper", "reason"), [
    (_receipt_of_other_message, "RECEIPT_MISMATCH"),
    (_receipt_with_other_header, "RECEIPT_MISMATCH"),
    (_receipt_badly_signed, "BAD_SIGNATURE"),
    (_message_tampered, "BAD_SIGNATURE"),
])
def test_unverifiable_deliveries(keys: Keys, tamper: Any, reason: str) -> None:
    delivery = deliver(keys, sample_notice())
    tamper(keys, delivery)
    with pytest.raises(VerificationError) as err:
        open_delivery(keys.keyring, delivery, receiving_platform="south")
    assert err.value.reason == reason


def test_a_platform_cannot_sign_for_another_platforms_agency(keys: Keys) -> None:
    forged = sample_notice(outbound=NORTH_AGENCIES[0], inbound=SOUTH_AGENCIES[0])
    with pytest.raises(VerificationError) as err:  # south's valid key, north's agency as sender
        open_delivery(keys.keyring, deliver(keys, forged, platform="south"), receiving_platform="south")
    assert err.value.reason == "SENDER_NOT_OF_SIGNER"


def test_delivery_for_another_platform(keys: Keys) -> None:
    with pytest.raises(VerificationError) as err:
        open_delivery(keys.keyring, deliver(keys, sample_notice()), receiving_platform="north")
    assert err.value.reason == "NOT_FOR_US"


def test_recent_ids_are_bounded() -> None:
    recent = RecentIds(capacity=3)
    for i in "abcd":
        recent.add(i)
    assert "a" not in recent and all(i in recent for i in "bcd") and len(recent) == 3
    recent.add("b")  # refreshed: now the newest
    recent.add("e")
    assert "c" not in recent and "b" in recent


# --- concurrency without reordering a case ------------------------------------------------------

async def test_runner_keeps_each_case_in_order_and_runs_cases_concurrently() -> None:
    runner, log, running, peak = CaseOrderedRunner(limit=3), [], set(), [0]

    def job(case: str, n: int, delay: float) -> Callable[[], Any]:
        async def run() -> None:
            running.add((case, n))
            peak[0] = max(peak[0], len(running))
            await asyncio.sleep(delay)
            running.discard((case, n))
            log.append((case, n))
        return run

    # the first job of case A is the slowest: A's later jobs must still wait for it
    for case, n, delay in [("A", 1, 0.05), ("B", 1, 0.0), ("A", 2, 0.0), ("C", 1, 0.01), ("A", 3, 0.0),
                           ("B", 2, 0.0)]:
        await runner.run(case, job(case, n, delay))
    await runner.drain()
    for case in "ABC":
        assert [n for c, n in log if c == case] == sorted(n for c, n in log if c == case)
    assert log.index(("B", 1)) < log.index(("A", 1))  # B did not wait for A
    assert peak[0] <= 3 and len(log) == 6


# --- the subscription loop ------------------------------------------------------------------------

async def _subscribe(client: PlatformClient, handler: Callable[[VerifiedDelivery], Any], stop: asyncio.Event) -> None:
    await asyncio.wait_for(client.subscribe(handler, stop=stop), timeout=5)


async def test_subscription_verifies_handles_then_acks_and_drops_duplicates(keys: Keys) -> None:
    exchange = FakeExchange(keys)
    first, second = sample_notice(), sample_notice()
    forged = deliver(keys, sample_notice())
    _message_tampered(keys, forged)
    exchange.streams.append(([deliver(keys, first), deliver(keys, first, attempt=2), forged,
                              deliver(keys, second)], True))
    client, stop, handled = client_for("south", keys, exchange), asyncio.Event(), []

    async def handler(d: VerifiedDelivery) -> None:
        assert d.message_id not in exchange.acked  # handled before acknowledged
        handled.append(d.message_id)
        if d.message_id == second.header.message_id:
            stop.set()

    await _subscribe(client, handler, stop)
    ids = (first.header.message_id, second.header.message_id)
    assert handled == list(ids)
    assert exchange.acked == [ids[0], ids[0], ids[1]]  # the duplicate acked again; the forgery never
    assert exchange.calls[0].cancelled


async def test_handler_failure_leaves_the_delivery_unacknowledged(keys: Keys) -> None:
    exchange = FakeExchange(keys)
    notice = sample_notice()
    exchange.streams.append(([deliver(keys, notice), deliver(keys, notice, attempt=2)], True))
    client, stop, attempts = client_for("south", keys, exchange), asyncio.Event(), []

    async def handler(d: VerifiedDelivery) -> None:
        attempts.append(d.attempt)
        if d.attempt == 1:
            raise RuntimeError("database down")
        stop.set()

    await _subscribe(client, handler, stop)
    assert attempts == [1, 2] and exchange.acked == [notice.header.message_id]


async def test_subscription_reopens_after_transient_errors_and_stream_end(keys: Keys) -> None:
    exchange = FakeExchange(keys)
    notice = sample_notice()
    exchange.streams += [([rpc_error(grpc.StatusCode.UNAVAILABLE)], False), ([], False),
                         ([deliver(keys, notice)], True)]
    client, stop = client_for("south", keys, exchange), asyncio.Event()

    async def handler(d: VerifiedDelivery) -> None:
        stop.set()

    await _subscribe(client, handler, stop)
    assert len(exchange.calls) == 3 and exchange.acked == [notice.header.message_id]


async def test_subscription_refused_for_good(keys: Keys) -> None:
    exchange = FakeExchange(keys)
    exchange.streams.append(([rpc_error(grpc.StatusCode.PERMISSION_DENIED, reason="AGENCY_NOT_OF_PLATFORM")], False))

    async def handler(d: VerifiedDelivery) -> None:
        raise AssertionError("nothing to handle")

    with pytest.raises(GatewayRejected) as err:
        await _subscribe(client_for("south", keys, exchange), handler, asyncio.Event())
    assert err.value.reason == "AGENCY_NOT_OF_PLATFORM"


async def test_stop_ends_an_idle_subscription(keys: Keys) -> None:
    exchange = FakeExchange(keys)
    stop = asyncio.Event()

    async def handler(d: VerifiedDelivery) -> None:
        raise AssertionError("nothing to handle")

    task = asyncio.create_task(client_for("south", keys, exchange).subscribe(handler, stop=stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, timeout=1)
    assert exchange.calls[-1].cancelled


# --- the reference platform answering -------------------------------------------------------------

async def test_reference_platform_resends_the_same_answers_after_a_failure(keys: Keys) -> None:
    """A table is answered with ACCEPTED then TRANSFER_IN_COMPLETED. If the second submission is
    refused, the redelivered table is answered with the very same signed bytes, not new ones."""
    exchange = FakeExchange(keys, [None, rpc_error(grpc.StatusCode.FAILED_PRECONDITION)])
    south = client_for("south", keys, exchange)
    platform = ReferencePlatform(south)
    route = builders.Route.new(NORTH_AGENCIES[0], SOUTH_AGENCIES[0])
    person = builders.sample_person(5)
    last_year = dt.date(builders.today_in_china().year - 1, 12, 31)  # resident → resident: a later year
    table = builders.information_table(route, person, builders.RESIDENT, last_year,
                                       builders.sample_periods(route.outbound, last_year, 5), 0)
    delivery = open_delivery(keys.keyring, deliver(keys, table), receiving_platform="south")
    with pytest.raises(GatewayRejected):
        await platform.handle(delivery)
    await platform.handle(delivery)  # the redelivery
    payloads = [s.payload for s in exchange.submitted]
    assert len(payloads) == 4 and payloads[0] == payloads[2] and payloads[1] == payloads[3]
    statuses = [messages_pb2.Acknowledgement.FromString(p).status for p in payloads[:2]]
    assert statuses == [messages_pb2.Acknowledgement.STATUS_ACCEPTED,
                        messages_pb2.Acknowledgement.STATUS_TRANSFER_IN_COMPLETED]
    assert platform.errors  # the refusal was recorded


async def test_reference_platform_leaves_an_unanswerable_delivery_unacknowledged(keys: Keys) -> None:
    """A fund transfer of a case it does not remember (e.g. after a restart of a platform without
    a database) must not be acknowledged: it should end in the gateway's dead-letter state."""
    exchange = FakeExchange(keys)
    route = builders.Route.new(NORTH_AGENCIES[0], SOUTH_AGENCIES[0])
    funds = builders.fund_transfer(route, 100, builders.fund_account(route.outbound, receiving=False),
                                   builders.fund_account(route.inbound, receiving=True), "R1",
                                   builders.today_in_china())
    exchange.streams.append(([deliver(keys, funds)], True))
    south, stop = client_for("south", keys, exchange), asyncio.Event()
    platform = ReferencePlatform(south)

    async def handle(d: VerifiedDelivery) -> None:
        stop.set()
        await platform.handle(d)

    await _subscribe(south, handle, stop)
    assert exchange.acked == [] and exchange.submitted == [] and platform.errors
