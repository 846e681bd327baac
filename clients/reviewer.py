"""The national platform's reviewer: decides on large fund transfers the gateway holds.

Reviewers call the gateway's Admin service with an operator certificate whose SAN URI names them
in the registry (role `reviewer`). `auto_approve` exists for demos and tests only: a real review
looks at each transfer (Zhejiang practice: within one working day).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from clients.channel import channel_target
from clients.signing import KeyRing
from mitransfer.v1 import admin_pb2, admin_pb2_grpc, envelope_pb2

log = logging.getLogger("clients.reviewer")


@dataclass(frozen=True)
class OperatorConfig:
    address: str   # host:port of the gateway
    operator: str  # operator id in the registry
    ca: Path
    cert: Path     # TLS client certificate whose SAN URI names the operator
    key: Path
    registry: Path  # to verify the gateway's receipts

    @classmethod
    def dev(
        cls, operator: str, address: str = "127.0.0.1:50051", certs_dir: str | Path = "certs/dev"
    ) -> OperatorConfig:
        """The DEV ONLY layout of `transfer-gateway certs dev` (operators: reviewer, operator)."""
        root = Path(certs_dir)
        return cls(address=address, operator=operator, ca=root / "ca.pem",
                   cert=root / "operators" / f"{operator}.pem", key=root / "operators" / f"{operator}.key",
                   registry=root / "registry.json")


class ReviewerClient:
    def __init__(self, admin: admin_pb2_grpc.AdminAsyncStub, keyring: KeyRing) -> None:
        self._admin = admin
        self._keyring = keyring

    @classmethod
    @asynccontextmanager
    async def connect(cls, config: OperatorConfig) -> AsyncIterator[ReviewerClient]:
        credentials = grpc.ssl_channel_credentials(
            config.ca.read_bytes(), config.key.read_bytes(), config.cert.read_bytes())
        target, options = channel_target(config.address)
        async with grpc.aio.secure_channel(target, credentials, options=options) as channel:
            admin = cast("admin_pb2_grpc.AdminAsyncStub", admin_pb2_grpc.AdminStub(channel))
            yield cls(admin, KeyRing.load(config.registry))

    async def list_held(self) -> list[admin_pb2.HeldFundTransfer]:
        reply = await self._admin.ListHeldFundTransfers(admin_pb2.ListHeldFundTransfersRequest(), timeout=10)
        return list(reply.held)

    async def review(self, transfer_id: str, *, approve: bool, comment: str = "") -> envelope_pb2.ReceiptBody:
        """Decide; returns the gateway's verified receipt for the decision. Deciding the same way
        twice is answered with the same receipt, so a retry after a lost answer is safe."""
        request = admin_pb2.ReviewFundTransferRequest(transfer_id=transfer_id, approve=approve, comment=comment)
        receipt = await self._admin.ReviewFundTransfer(request, timeout=10)
        return self._keyring.verify_receipt(receipt)

    async def auto_approve(self, stop: asyncio.Event, poll_interval: float = 0.2) -> int:
        """Approve every held transfer until `stop` is set; returns how many (demos and tests only)."""
        approved = 0
        while not stop.is_set():
            try:
                for held in await self.list_held():
                    await self.review(held.transfer_id, approve=True, comment="auto-approved (demo)")
                    approved += 1
            except grpc.aio.AioRpcError as err:
                log.warning("review failed: %s", err.code().name)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_interval)
        return approved
