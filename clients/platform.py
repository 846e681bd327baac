"""`PlatformClient`: a provincial platform's connection to the gateway over mutual TLS.

    async with PlatformClient.connect(PlatformConfig.dev("jiangsu", "127.0.0.1:50051")) as client:
        receipt = await client.submit(notice)             # signed once, retried safely, verified
        await client.subscribe(handle, stop=stop_event)   # verify → handle → ack, until stopped

Configuration files are read once, in `connect`. Everything that can be checked without the
network (signatures, receipts, deliveries) lives in pure modules; this one only does the calls.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias, TypeVar, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from clients.channel import channel_target
from clients.deliveries import RecentIds, VerifiedDelivery, open_delivery
from clients.dispatch import CaseOrderedRunner
from clients.errors import ClientError, GatewayRejected, GatewayUnavailable, RegistryError, VerificationError
from clients.messages import BusinessMessage, kind_of, parse
from clients.retry import PERMANENT, RETRYABLE, RetryPolicy, next_wait
from clients.signing import KeyRing, Signer
from clients.witness import CheckpointStore, Witness
from mitransfer.protocol import tlog
from mitransfer.protocol.checkpoint import Checkpoint
from mitransfer.protocol.errors import ProtocolError
from mitransfer.v1 import (
    envelope_pb2,
    exchange_pb2,
    exchange_pb2_grpc,
    log_pb2,
    log_pb2_grpc,
    tracking_pb2,
    tracking_pb2_grpc,
)

log = logging.getLogger("clients.platform")

T = TypeVar("T")
Handler: TypeAlias = Callable[[VerifiedDelivery], Awaitable[None]]


@dataclass(frozen=True)
class PlatformConfig:
    """Where the gateway is and where this platform's credentials are."""

    address: str           # host:port of the gateway, or several replicas' "ip:port,ip:port"
    platform: str          # platform id in the registry, e.g. "jiangsu"
    ca: Path               # CA certificate that signed the gateway's TLS certificate
    cert: Path             # this platform's TLS client certificate (SAN URI names the platform)
    key: Path              # its private key
    signing_key: Path      # message-signing private key, PKCS8 PEM (Ed25519, ECDSA P-256 or SM2)
    key_id: str            # the signing key's id in the registry
    registry: Path         # registry.json: platforms, agencies, public keys (incl. the gateway's)
    target_name_override: str | None = None  # TLS name to expect when the address is not in the certificate
    checkpoints: Path | None = None  # folder keeping the last verified checkpoint per gateway log (witness)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def dev(
        cls, platform: str, address: str = "127.0.0.1:50051", certs_dir: str | Path = "certs/dev"
    ) -> PlatformConfig:
        """The DEV ONLY layout written by `transfer-gateway certs dev` (key id "<platform>-dev-1")."""
        root = Path(certs_dir)
        return cls(
            address=address, platform=platform, ca=root / "ca.pem",
            cert=root / "platforms" / f"{platform}.pem", key=root / "platforms" / f"{platform}.key",
            signing_key=root / "platforms" / f"{platform}-signing.key", key_id=f"{platform}-dev-1",
            registry=root / "registry.json",
        )


class Accepted(NamedTuple):
    """A verified receipt: `body` to read, `receipt` (the signed original) to archive as proof."""

    body: envelope_pb2.ReceiptBody
    receipt: envelope_pb2.Receipt


class PlatformClient:
    """Calls to the gateway as one platform. Build it with `connect`; the stubs are injectable
    so that tests can stand in for the network."""

    def __init__(
        self, *, platform: str, exchange: exchange_pb2_grpc.ExchangeAsyncStub,
        tracking: tracking_pb2_grpc.TrackingAsyncStub, keyring: KeyRing, signer: Signer,
        retry: RetryPolicy | None = None, recent: RecentIds | None = None, rng: random.Random | None = None,
        log: log_pb2_grpc.LogServiceAsyncStub | None = None, witness: Witness | None = None,
    ) -> None:
        self.platform = platform
        self._log = log
        self.witness = witness
        self.keyring = keyring
        self._exchange = exchange
        self._tracking = tracking
        self._signer = signer
        self._retry = retry or RetryPolicy()
        self._recent = recent or RecentIds()
        self._rng = rng or random.Random()

    @classmethod
    @asynccontextmanager
    async def connect(cls, config: PlatformConfig) -> AsyncIterator[PlatformClient]:
        """Read the credentials, open an mTLS channel, and close it on exit.

        Raises:
            RegistryError: the registry is unusable, or does not list `key_id` as a key of this
                platform matching the signing key file.
            OSError: a credential file cannot be read.
        """
        keyring = KeyRing.load(config.registry)
        signer = Signer.from_pem(config.key_id, config.signing_key.read_bytes())
        _check_own_key(keyring, signer, config.platform)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=config.ca.read_bytes(), private_key=config.key.read_bytes(),
            certificate_chain=config.cert.read_bytes(),
        )
        target, options = channel_target(config.address)
        if config.target_name_override:
            options.append(("grpc.ssl_target_name_override", config.target_name_override))
        channel = grpc.aio.secure_channel(target, credentials, options=options)
        try:
            # On an aio channel the generated stubs are the *AsyncStub types of the .pyi files.
            exchange = cast("exchange_pb2_grpc.ExchangeAsyncStub", exchange_pb2_grpc.ExchangeStub(channel))
            tracking = cast("tracking_pb2_grpc.TrackingAsyncStub", tracking_pb2_grpc.TrackingStub(channel))
            log_stub = cast("log_pb2_grpc.LogServiceAsyncStub", log_pb2_grpc.LogServiceStub(channel))
            witness = Witness(keyring, CheckpointStore(config.checkpoints)) if config.checkpoints else None
            yield cls(platform=config.platform, exchange=exchange, tracking=tracking, keyring=keyring,
                      signer=signer, retry=config.retry, log=log_stub, witness=witness)
        finally:
            await channel.close()

    @property
    def agencies(self) -> tuple[str, ...]:
        """The agencies this platform speaks for, per the registry."""
        return self.keyring.agencies_of(self.platform)

    def sign(self, message: BusinessMessage) -> envelope_pb2.SignedMessage:
        """Serialize and sign once. Store the result before sending if you must survive a crash:
        after one, resend these bytes, never a rebuilt message."""
        return self._signer.sign(kind_of(message), message)

    async def submit(self, message: BusinessMessage) -> envelope_pb2.ReceiptBody:
        """Sign `message` once and submit it (see `submit_signed`); returns the verified receipt body."""
        return (await self.submit_signed(self.sign(message))).body

    async def submit_signed(self, signed: envelope_pb2.SignedMessage) -> Accepted:
        """Submit an already signed message, retrying the very same bytes on transient errors.

        Raises:
            GatewayRejected: the gateway refused it (INVALID_ARGUMENT, FAILED_PRECONDITION, ...).
            GatewayUnavailable: no answer before the retry deadline; resend `signed` later.
            VerificationError: the receipt is not validly signed or attests something else.
        """
        header = parse(signed.kind, signed.payload).header  # our own bytes: only to read the header
        receipt = await self._call("Submit", lambda timeout: self._exchange.Submit(signed, timeout=timeout))
        body = self.keyring.verify_receipt(receipt)
        expected = (header.message_id, header.transfer_id, signed.kind, header.sender, header.receiver,
                    hashlib.sha256(signed.payload).digest())
        if (body.message_id, body.transfer_id, body.kind, body.sender, body.receiver,
                body.payload_sha256) != expected:
            raise VerificationError(f"the receipt for {header.message_id} attests another message",
                                    reason="RECEIPT_MISMATCH")
        return Accepted(body, receipt)

    async def get_case(self, transfer_id: str) -> tracking_pb2.Case:
        """The gateway's view of a case. Raises GatewayRejected (NOT_FOUND, PERMISSION_DENIED)."""
        request = tracking_pb2.GetCaseRequest(transfer_id=transfer_id)
        return await self._call("GetCase", lambda timeout: self._tracking.GetCase(request, timeout=timeout))

    async def list_cases(self, request: tracking_pb2.ListCasesRequest) -> tracking_pb2.ListCasesResponse:
        """One page of the cases of this platform's agencies that match `request`'s filters."""
        return await self._call("ListCases", lambda timeout: self._tracking.ListCases(request, timeout=timeout))

    async def checkpoint(self) -> bytes:
        """The gateway's latest signed checkpoint (a note; `Witness.open` verifies it)."""
        stub = self._log_stub()
        response: log_pb2.GetCheckpointResponse = await self._call("GetCheckpoint", lambda timeout: stub.GetCheckpoint(
            log_pb2.GetCheckpointRequest(), timeout=timeout))
        return response.checkpoint.note

    async def inclusion_proof(self, message_id: str, tree_size: int = 0) -> log_pb2.GetInclusionProofResponse:
        """The proof that a message of this platform's cases is in the log (tree_size 0: the latest
        checkpoint, published at once if none covers the message yet)."""
        stub = self._log_stub()
        request = log_pb2.GetInclusionProofRequest(message_id=message_id, tree_size=tree_size)
        return await self._call("GetInclusionProof", lambda timeout: stub.GetInclusionProof(request, timeout=timeout))

    async def consistency_proof(self, first: int, second: int = 0) -> log_pb2.GetConsistencyProofResponse:
        """The proof that the checkpoint of `second` (0: the latest) extends the tree of `first`."""
        stub = self._log_stub()
        request = log_pb2.GetConsistencyProofRequest(first=first, second=second)
        return await self._call("GetConsistencyProof",
                                lambda timeout: stub.GetConsistencyProof(request, timeout=timeout))

    async def witness_receipt(self, receipt: envelope_pb2.Receipt) -> Checkpoint:
        """Check that a receipt's message is in the gateway's log, and that the log still extends
        the last checkpoint this platform kept; keep the newer one. Returns it.

        Raises:
            VerificationError: the receipt, the checkpoint or a proof does not verify
                (RECEIPT_NOT_LOGGED, CHECKPOINT_INVALID, LOG_FORKED, LOG_ROLLED_BACK): the
                gateway's history is not what it showed before; keep the evidence.
            GatewayRejected, GatewayUnavailable: as the calls are.
            RuntimeError: the client was built without a checkpoint folder (`PlatformConfig.checkpoints`).
        """
        if self.witness is None:
            raise RuntimeError("no checkpoint folder configured: PlatformConfig.checkpoints")
        body = self.keyring.verify_receipt(receipt)
        proof = await self.inclusion_proof(body.message_id)
        accepted = body.accepted_at.ToDatetime(dt.UTC)  # the checkpoint was signed then or later
        head = self.witness.open(proof.checkpoint.note, accepted)
        kept = self.witness.kept()
        if kept is None or kept.size <= head.size:  # the usual case: the log grew since, or not at all
            extension = (await self.consistency_proof(kept.size, head.size)).hashes if kept is not None else []
            head = self.witness.advance(proof.checkpoint.note, extension, accepted)
        else:  # proved against an older tree than the one kept (a lagging replica): it must be a prefix of it
            prefix = (await self.consistency_proof(head.size, kept.size)).hashes
            try:
                tlog.check_consistency(prefix, kept.size, kept.root_hash, head.size, head.root_hash)
            except ProtocolError as exc:
                raise VerificationError(f"tree size {head.size} is not a prefix of the kept tree of size"
                                        f" {kept.size}: {exc}", reason="LOG_FORKED") from exc
        self.witness.check_receipt(receipt, leaf_index=proof.leaf_index, entry=proof.entry, proof=proof.hashes,
                                   head=head)
        return head

    def _log_stub(self) -> log_pb2_grpc.LogServiceAsyncStub:
        if self._log is None:
            raise RuntimeError("this client was built without the LogService stub")
        return self._log

    async def ack(self, message_id: str) -> None:
        """Tell the gateway a delivery is durably handled (idempotent, so retried freely)."""
        request = exchange_pb2.AckDeliveryRequest(message_id=message_id)
        await self._call("AckDelivery", lambda timeout: self._exchange.AckDelivery(request, timeout=timeout))

    async def subscribe(
        self, handler: Handler, agencies: Sequence[str] = (), *, stop: asyncio.Event | None = None,
        concurrency: int = 1,
    ) -> None:
        """Receive deliveries until `stop` is set (then return) or the task is cancelled.

        Each delivery is first verified completely: an unverifiable one is logged and NOT
        acknowledged, so the gateway redelivers it and finally dead-letters it where operators
        look. Then, unless its message id was already handled, `handler` is awaited; only then is
        it acknowledged. A handler that raises is logged and its delivery left unacknowledged: it
        comes again. Up to `concurrency` handlers run at once, one at a time per case in arrival
        order. On `stop`, running handlers finish (and ack) before this returns. The stream is
        reopened with backoff whenever it ends or fails for a transient reason.

        Raises:
            GatewayRejected: the gateway refuses the subscription itself (e.g. PERMISSION_DENIED
                for an agency that is not this platform's).
        """
        stop = stop or asyncio.Event()
        stopped = asyncio.ensure_future(stop.wait())
        request = exchange_pb2.SubscribeRequest(agencies=list(agencies))
        backoffs = self._retry.backoffs(self._rng)
        runner = CaseOrderedRunner(concurrency)
        try:
            while not stop.is_set():
                call = self._exchange.Subscribe(request)
                received = False
                wait: float | None = None
                try:
                    while (delivery := await _next_delivery(call, stopped)) is not None:
                        received = True
                        verified = self._verify(delivery)
                        if verified is not None:
                            await runner.run(verified.transfer_id, partial(self._handle, verified, handler))
                except grpc.aio.AioRpcError as err:
                    if err.code() in PERMANENT:
                        raise _rejected(err) from err
                    log.warning("subscription interrupted (%s); reopening", err.code().name)
                    if received:  # the stream worked: back off from the start again
                        backoffs = self._retry.backoffs(self._rng)
                    wait = next_wait(err, backoffs)  # too many open: the gateway says when to come back
                finally:
                    call.cancel()
                if received and wait is None:
                    backoffs = self._retry.backoffs(self._rng)
                if not stop.is_set():
                    await asyncio.wait({stopped}, timeout=next(backoffs) if wait is None else wait)
        except asyncio.CancelledError:
            runner.cancel()
            raise
        finally:
            await runner.drain()
            stopped.cancel()

    def _verify(self, delivery: exchange_pb2.Delivery) -> VerifiedDelivery | None:
        try:
            return open_delivery(self.keyring, delivery, receiving_platform=self.platform)
        except VerificationError as err:
            log.warning("delivery refused and not acknowledged: %s: %s", err.reason, err)
            return None

    async def _handle(self, verified: VerifiedDelivery, handler: Handler) -> None:
        message_id = verified.message_id
        if message_id not in self._recent:
            try:
                await handler(verified)
            except ClientError as err:  # expected failures (gateway refused, unavailable): no trace
                log.warning("handler failed for message %s, left unacknowledged: %s", message_id, err)
                return
            except Exception:  # one bad delivery must not end the subscription; it comes again
                log.exception("handler failed for message %s; left unacknowledged", message_id)
                return
        self._recent.add(message_id)
        try:
            await self.ack(message_id)
        except ClientError as err:  # it comes again, and is then dropped as a duplicate and acked
            log.warning("ack of %s failed: %s", message_id, err)

    async def _call(self, what: str, attempt: Callable[[float], Awaitable[T]]) -> T:
        """Run `attempt(timeout)` until it succeeds, fails permanently, or the deadline passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry.deadline
        backoffs = self._retry.backoffs(self._rng)
        attempts = 0
        while True:
            attempts += 1
            try:
                return await attempt(min(self._retry.attempt_timeout, max(deadline - loop.time(), 0.001)))
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE:
                    raise _rejected(err) from err
                wait = next_wait(err, backoffs)  # at least what a RESOURCE_EXHAUSTED's RetryInfo asks
                if loop.time() + wait >= deadline:
                    raise GatewayUnavailable(err.code(), err.details() or "", attempts) from err
                # One line per retry (the command-line tools show them): what failed, how, and when
                # the next attempt goes out, so a dead gateway is not 30 silent seconds.
                log.info("%s attempt %d: %s (%s); retrying in %.1f s, %.0f s left", what, attempts, err.code().name,
                         _detail(err), wait, max(deadline - loop.time(), 0.0))
                await asyncio.sleep(wait)


async def _next_delivery(
    call: grpc.aio.UnaryStreamCall, stopped: asyncio.Future[Any]
) -> exchange_pb2.Delivery | None:
    """The next delivery; None when the stream ends or `stopped` completes first."""
    read = asyncio.ensure_future(call.read())
    try:
        done, _ = await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not read.done():
            read.cancel()
    if read not in done:
        return None
    result = read.result()  # raises the stream's AioRpcError
    return None if result is grpc.aio.EOF else result


def _detail(err: grpc.aio.AioRpcError, limit: int = 160) -> str:
    """gRPC's own detail of a failed call, on one line and bounded."""
    text = " ".join((err.details() or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _rejected(err: grpc.aio.AioRpcError) -> GatewayRejected:
    """A GatewayRejected with the ErrorInfo reason and BadRequest violations of a failed call."""
    reason, violations, metadata = "", [], {}
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # details inconsistent with the status line: keep the status line only
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    return GatewayRejected(err.code(), err.details() or "", reason, violations, metadata)


def _check_own_key(keyring: KeyRing, signer: Signer, platform: str) -> None:
    """Fail at start-up, not at the first Submit, if the key file and the registry disagree."""
    registered = keyring.platform_keys.get(signer.key_id)
    if registered is None or registered.owner != platform:
        raise RegistryError(f"the registry lists no key {signer.key_id} for platform {platform}")
    probe = b"transfer-gateway key probe"
    if not registered.verify(signer.sign_bytes(probe), probe):
        raise RegistryError(f"signing key file does not match the registry's public key {signer.key_id}")
