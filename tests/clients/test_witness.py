"""A platform as a witness of the log, against real gateways over mutual TLS: its receipts are
proved in the log, each checkpoint it keeps extends the last, and a gateway showing another
history under the same keys (a rewritten store) is caught. Then the Log service's refusals."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from clients.errors import GatewayRejected, VerificationError
from clients.platform import PlatformClient, PlatformConfig
from clients.scenario import CasePlan, outbound_messages
from clients.witness import CheckpointStore, Witness
from gateway.app.assembly import assemble
from mitransfer.protocol import note
from mitransfer.v1 import envelope_pb2, log_pb2, log_pb2_grpc
from tests.conftest import test_config as gateway_config
from tests.support import GatewayHandle, failure

JIANGSU, ZHEJIANG = "320100", "330100"


def _config(gateway: GatewayHandle, folder: Path) -> PlatformConfig:
    return replace(PlatformConfig.dev("jiangsu", f"127.0.0.1:{gateway.server.port}", gateway.pki.root),
                   checkpoints=folder)


async def _submit_case(client: PlatformClient, seed: int) -> list[envelope_pb2.Receipt]:
    plan = CasePlan.synthetic(JIANGSU, ZHEJIANG, balance_fen=500, seed=seed)
    return [(await client.submit_signed(client.sign(m))).receipt for m in outbound_messages(plan)[:1]]


@pytest.fixture
async def client(gateway: GatewayHandle, tmp_path: Path) -> AsyncIterator[PlatformClient]:
    async with PlatformClient.connect(_config(gateway, tmp_path / "checkpoints")) as c:
        yield c


async def test_receipts_are_proved_and_each_checkpoint_extends_the_last(
        client: PlatformClient, tmp_path: Path) -> None:
    first = (await _submit_case(client, 1))[0]
    head = await client.witness_receipt(first)
    assert head.size >= 1 and head.origin == client.keyring.log_origin
    kept = (tmp_path / "checkpoints").iterdir().__next__()
    assert kept.stat().st_mode & 0o777 == 0o600
    later = [r for seed in range(2, 5) for r in await _submit_case(client, seed)]
    newer = await client.witness_receipt(later[-1])
    assert newer.size > head.size
    again = await client.witness_receipt(first)  # an old receipt, proved in the newest tree
    assert again.size == newer.size
    assert client.witness is not None and client.witness.kept() == newer


async def test_a_gateway_with_a_rewritten_history_is_caught(
        gateway: GatewayHandle, client: PlatformClient, tmp_path: Path) -> None:
    for seed in range(3):
        receipt = (await _submit_case(client, 10 + seed))[0]
    await client.witness_receipt(receipt)
    # The same keys and origin, another history: a store rebuilt by someone with the database.
    other = assemble(gateway_config(gateway.pki, tmp_path / "rewritten.db"))
    await other.start()
    try:
        rewritten = GatewayHandle(server=other, pki=gateway.pki, database=tmp_path / "rewritten.db")
        async with PlatformClient.connect(_config(rewritten, tmp_path / "checkpoints")) as same_platform:
            for seed in range(5):  # a longer log than the one the platform saw, but not an extension of it
                receipt = (await _submit_case(same_platform, 20 + seed))[0]
            with pytest.raises(VerificationError) as caught:
                await same_platform.witness_receipt(receipt)
            assert caught.value.reason == "LOG_FORKED"
    finally:
        await other.stop(grace=0.1)


async def test_a_forged_checkpoint_is_refused(client: PlatformClient, tmp_path: Path) -> None:
    await client.witness_receipt((await _submit_case(client, 30))[0])
    signed = await client.checkpoint()
    assert client.witness is not None
    forged = signed.replace(b"\n1\n", b"\n9\n") if b"\n1\n" in signed else signed[:-6] + b"AAAAA\n"
    with pytest.raises(VerificationError) as refused:
        client.witness.open(forged)
    assert refused.value.reason == "CHECKPOINT_INVALID"
    stranger = Witness(replace(client.keyring, log_origin="another.example/log"), CheckpointStore(tmp_path / "x"))
    with pytest.raises(VerificationError):
        stranger.open(signed)


async def test_the_log_service_refusals(gateway: GatewayHandle, client: PlatformClient) -> None:
    receipt = (await _submit_case(client, 40))[0]
    body = client.keyring.verify_receipt(receipt)
    stub = log_pb2_grpc.LogServiceStub(gateway.channel("anhui"))  # not a side of the case
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.GetInclusionProof(log_pb2.GetInclusionProofRequest(message_id=body.message_id))
    # As for a message that does not exist: nothing is learnt of another platform's case.
    assert (denied.value.code(), failure(denied.value).reason) == (grpc.StatusCode.NOT_FOUND, "MESSAGE_NOT_FOUND")
    with pytest.raises(GatewayRejected) as unknown:
        await client.inclusion_proof(str(uuid.uuid4()))
    assert unknown.value.reason == "MESSAGE_NOT_FOUND"
    with pytest.raises(GatewayRejected) as malformed:
        await client.inclusion_proof("no-such-message")
    assert (malformed.value.reason, malformed.value.field_violations[0][0]) == ("QUERY_INVALID", "message_id")
    await client.inclusion_proof(body.message_id)  # publishes a checkpoint covering it
    with pytest.raises(GatewayRejected) as no_size:
        await client.consistency_proof(1, 12345)
    assert no_size.value.reason == "CHECKPOINT_NOT_FOUND"
    signed = await client.checkpoint()
    assert client.witness is not None
    head = client.witness.open(signed)
    with pytest.raises(GatewayRejected) as backwards:
        await client.consistency_proof(head.size + 1, head.size)
    assert backwards.value.reason == "TREE_SIZE_INVALID"
    assert note.parse(signed).signatures[0].name == client.keyring.log_origin


def test_a_checkpoint_is_judged_by_its_key_window(tmp_path: Path) -> None:
    """A key revoked before a receipt it would prove was accepted cannot have signed the checkpoint
    that includes it: refused then, as the gateway's log verify refuses it; a kept checkpoint is
    not judged again by time."""
    import datetime as dt

    from cryptography.hazmat.primitives.asymmetric import ed25519

    from clients.signing import KeyRing
    from mitransfer.protocol import checkpoint, suites
    from mitransfer.protocol.checkpoint import Checkpoint
    from mitransfer.protocol.note import NoteSigner

    key = suites.signing_key("gw-old", ed25519.Ed25519PrivateKey.generate())
    keyring = KeyRing.from_registry({
        "gateway": {"log_origin": "test/log", "keys": [{
            "key_id": "gw-old", "algorithm": "ed25519", "public_key": key.verifying_key().public_pem().decode(),
            "revoked_at": "2026-12-01T00:00:00+00:00"}]},
        "platforms": [], "agencies": []})
    signed = checkpoint.sign(Checkpoint("test/log", 5, bytes(32)),
                             [NoteSigner("test/log", key.verifying_key(), key.sign)])
    witness = Witness(keyring, CheckpointStore(tmp_path))
    assert witness.open(signed, dt.datetime(2026, 11, 30, tzinfo=dt.UTC)).size == 5
    assert witness.open(signed).size == 5
    with pytest.raises(VerificationError) as refused:
        witness.open(signed, dt.datetime(2026, 12, 1, 0, 0, 1, tzinfo=dt.UTC))
    assert refused.value.reason == "CHECKPOINT_INVALID"
