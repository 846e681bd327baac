"""Key rotation end to end, against a real gateway over mTLS whose clock the test moves.

A platform adds a key and retires the old one at T; the gateway's receipt key rotates at T too
(from Ed25519 to SM2, to show a rotation may change the algorithm). Before T the old keys sign
and are accepted; after T a message signed with the retired key is refused UNAUTHENTICATED naming
the key, the new key is accepted, receipts carry the new gateway key; and everything accepted
before T still verifies with the registry that retired its key, judged at its own time.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from clients.errors import VerificationError
from clients.scenario import CasePlan, outbound_messages
from clients.signing import KeyRing
from gateway.app.assembly import assemble, read_materials
from gateway.app.checks import summary
from gateway.app.devpki import DevPaths
from gateway.app.failures import ConfigError
from gateway.app.server import utc_now
from gateway.core.checkpoints import checkpoint_keys
from gateway.core.errors import SignatureRejected, SigningUnavailable
from gateway.core.keys import GatewaySigner
from gateway.core.registry import LiveRegistry, Registry
from gateway.core.signing import LocalSigner, pae
from gateway.service.receipts import issue_receipt, receipt_maker
from gateway.store import IncomingMessage
from mitransfer.protocol import note, suites
from mitransfer.protocol.kinds import RECEIPT_PAYLOAD_TYPE
from mitransfer.v1 import envelope_pb2
from tests.conftest import test_config as gateway_config
from tests.support import GatewayHandle, failure, sign

T = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)  # the rotation's moment


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass
class Rotation:
    handle: GatewayHandle
    clock: Clock
    keyring: KeyRing
    new_platform_key: LocalSigner


def rfc3339(when: dt.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def write_key(path: Path, key: suites.SigningKey) -> None:
    path.write_bytes(key.private_pem())
    path.chmod(0o600)


def rotated_pki(pki: DevPaths, root: Path) -> tuple[DevPaths, LocalSigner, Path]:
    """A copy of the dev PKI whose registry retires jiangsu-dev-1 and gateway-dev-1 at T and adds
    jiangsu-dev-2 (Ed25519) and gateway-dev-2 (SM2) from T."""
    shutil.copytree(pki.root, root)
    paths = DevPaths(root)
    registry = json.loads(paths.registry.read_text(encoding="utf-8"))
    new_platform = suites.signing_key("jiangsu-dev-2", suites.ED25519.generate())
    new_gateway = suites.signing_key("gateway-dev-2", suites.SM2_SM3.generate())
    gateway_key_file = root / "gateway-signing-2.key"
    write_key(gateway_key_file, new_gateway)
    registry["version"] = 2
    registry["gateway"]["keys"][0]["not_after"] = rfc3339(T)
    registry["gateway"]["keys"].append({"key_id": "gateway-dev-2", "algorithm": "sm2-sm3", "not_before": rfc3339(T),
                                        "public_key": new_gateway.verifying_key().public_pem().decode()})
    jiangsu = next(p for p in registry["platforms"] if p["id"] == "jiangsu")
    jiangsu["keys"][0]["not_after"] = rfc3339(T)
    jiangsu["keys"].append({"key_id": "jiangsu-dev-2", "algorithm": "ed25519", "not_before": rfc3339(T),
                            "public_key": new_platform.verifying_key().public_pem().decode()})
    paths.registry.write_text(json.dumps(registry, ensure_ascii=False), encoding="utf-8")
    return paths, LocalSigner(new_platform), gateway_key_file


@pytest.fixture
async def rotation(pki: DevPaths, tmp_path: Path) -> AsyncIterator[Rotation]:
    paths, new_platform_key, gateway_key_file = rotated_pki(pki, tmp_path / "pki")
    clock = Clock(T - dt.timedelta(minutes=30))
    config = gateway_config(paths, tmp_path / "gateway.db")
    config = replace(config, signing=replace(config.signing, rotation_keys=(gateway_key_file,)))
    server = assemble(config, clock=clock)
    await server.start()
    handle = GatewayHandle(server=server, pki=paths, database=tmp_path / "gateway.db")
    try:
        yield Rotation(handle, clock, KeyRing.load(paths.registry), new_platform_key)
    finally:
        await handle.close_channels()
        await server.stop(grace=0.1)


def notice(seed: int) -> object:
    return outbound_messages(CasePlan.synthetic("320100", "330100", seed=seed))[0]


async def test_platform_and_gateway_keys_rotate_and_old_messages_still_verify(rotation: Rotation) -> None:
    handle, keyring = rotation.handle, rotation.keyring
    old_key = handle.signer("jiangsu")
    before = sign(notice(1), old_key)  # type: ignore[arg-type]
    receipt_before = await handle.exchange("jiangsu").Submit(before)
    assert receipt_before.key_id == "gateway-dev-1"

    rotation.clock.now = T + dt.timedelta(minutes=1)
    late = sign(notice(2), old_key)  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await handle.exchange("jiangsu").Submit(late)
    refused = failure(caught.value)
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAUTHENTICATED, "KEY_EXPIRED")
    assert refused.metadata["key_id"] == "jiangsu-dev-1" and "jiangsu-dev-1" in refused.message

    after = sign(notice(3), rotation.new_platform_key)  # type: ignore[arg-type]
    receipt_after = await handle.exchange("jiangsu").Submit(after)
    assert receipt_after.key_id == "gateway-dev-2"  # the SM2 key signs from T on
    assert keyring.gateway_keys["gateway-dev-2"].algorithm == "sm2-sm3"

    # Checkpoints rotate with receipts: the one signed after T carries the new (SM2) key's ID.
    checkpoint = await handle.server.publisher.publish_now()
    assert checkpoint is not None
    registry = Registry.from_json(handle.pki.registry.read_bytes())
    [line] = note.parse(checkpoint.note).signatures
    assert line.key_id == note.key_id(registry.log_origin, registry.gateway_keys["gateway-dev-2"])
    assert line.key_id != note.key_id(registry.log_origin, registry.gateway_keys["gateway-dev-1"])
    opened = note.open_note(checkpoint.note, checkpoint_keys(registry.log_origin, registry.gateway_keys, T))
    assert [s.key_id for s in opened.signatures] == [line.key_id]  # the SM2 signature verifies
    with pytest.raises(note.NoteError):  # judged as if made after the new key's end: no key may have signed it
        ended = {k: replace(v, window=replace(v.window, not_after=T + dt.timedelta(seconds=1)))
                 for k, v in registry.gateway_keys.items()}
        note.open_note(checkpoint.note, checkpoint_keys(registry.log_origin, ended, T + dt.timedelta(minutes=5)))

    # Both receipts and both messages verify with the registry that retired the old keys, each
    # judged at its own acceptance time.
    for signed, receipt in ((before, receipt_before), (after, receipt_after)):
        body = keyring.verify_receipt(receipt)
        keyring.verify_message(signed, body.accepted_at.ToDatetime(dt.UTC))
    # The same old message presented as if accepted after T does not count.
    with pytest.raises(VerificationError) as err:
        keyring.verify_message(before, T + dt.timedelta(seconds=1))
    assert err.value.reason == "KEY_EXPIRED" and "jiangsu-dev-1" in str(err.value)


async def test_a_retry_after_the_keys_end_is_a_replay_on_a_replica_that_never_saw_it(pki: DevPaths,
                                                                                     tmp_path: Path) -> None:
    """A message accepted while its key was valid, sent again byte for byte after the key's end to a
    process that has not seen it (the recent receipts miss), is answered with its receipt: a retry
    is a replay whatever its age. A message never accepted, signed with the retired key, is refused."""
    paths, _, gateway_key_file = rotated_pki(pki, tmp_path / "pki")
    clock = Clock(T - dt.timedelta(minutes=30))
    config = gateway_config(paths, tmp_path / "gateway.db")
    config = replace(config, signing=replace(config.signing, rotation_keys=(gateway_key_file,)))
    old_key = LocalSigner.from_pem("jiangsu-dev-1", paths.platform_signing_key("jiangsu").read_bytes())
    accepted = sign(notice(5), old_key)  # type: ignore[arg-type]
    first = assemble(config, clock=clock)
    await first.start()
    handle = GatewayHandle(server=first, pki=paths, database=tmp_path / "gateway.db")
    try:
        receipt = await handle.exchange("jiangsu").Submit(accepted)
    finally:
        await handle.close_channels()
        await first.stop(grace=0.1)

    clock.now = T + dt.timedelta(minutes=1)  # jiangsu-dev-1 has ended
    second = assemble(config, clock=clock)  # another process: nothing of the first's recent receipts
    await second.start()
    handle = GatewayHandle(server=second, pki=paths, database=tmp_path / "gateway.db")
    try:
        assert await handle.exchange("jiangsu").Submit(accepted) == receipt
        assert second.prometheus.get_sample_value("transfer_gateway_signature_failures_total",
                                                  {"platform": "jiangsu"}) in (None, 0.0)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await handle.exchange("jiangsu").Submit(sign(notice(6), old_key))  # type: ignore[arg-type]
        refused = failure(caught.value)
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAUTHENTICATED, "KEY_EXPIRED")
        assert handle.count("messages") == 1
    finally:
        await handle.close_channels()
        await second.stop(grace=0.1)


async def test_a_receipt_made_with_the_retired_gateway_key_after_its_end_is_refused(rotation: Rotation) -> None:
    """Whoever holds the old gateway key cannot date receipts after its end: verifiers refuse them."""
    old_gateway_key = LocalSigner.from_pem("gateway-dev-1", rotation.handle.pki.gateway_signing_key.read_bytes())
    forged = envelope_pb2.Receipt.FromString(issue_receipt(
        old_gateway_key, message_id="m", transfer_id="t", kind=envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE,
        sender="320100", receiver="330100", payload_sha256=bytes(32), sequence=9,
        accepted_at=T + dt.timedelta(days=1)).receipt)
    assert old_gateway_key.verifying_key().verify(forged.signature, pae(RECEIPT_PAYLOAD_TYPE, forged.body))
    with pytest.raises(VerificationError) as err:
        rotation.keyring.verify_receipt(forged)
    assert err.value.reason == "KEY_EXPIRED" and "gateway-dev-1" in str(err.value)


async def test_with_no_valid_gateway_key_nothing_is_receipted(pki: DevPaths, tmp_path: Path) -> None:
    paths, new_platform_key, _ = rotated_pki(pki, tmp_path / "pki")  # gateway-dev-2 not configured: none after T
    server = assemble(gateway_config(paths, tmp_path / "gateway.db"), clock=Clock(T + dt.timedelta(minutes=1)))
    await server.start()
    handle = GatewayHandle(server=server, pki=paths, database=tmp_path / "gateway.db")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await handle.exchange("jiangsu").Submit(sign(notice(4), new_platform_key))  # type: ignore[arg-type]
        refused = failure(caught.value)
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "SIGNING_KEY_UNAVAILABLE")
        assert handle.count("messages") == 0
    finally:
        await handle.close_channels()
        await server.stop(grace=0.1)


def test_the_current_gateway_key_is_the_one_whose_window_began_last(pki: DevPaths, tmp_path: Path) -> None:
    paths, _, gateway_key_file = rotated_pki(pki, tmp_path / "pki")
    registry = Registry.from_json(paths.registry.read_bytes())
    old = LocalSigner.from_pem("gateway-dev-1", paths.gateway_signing_key.read_bytes())
    new = LocalSigner.from_pem("gateway-dev-2", gateway_key_file.read_bytes())
    signer = GatewaySigner([old, new], LiveRegistry(registry))
    assert signer.at(T - dt.timedelta(seconds=1)).key_id == "gateway-dev-1"
    assert signer.at(T).key_id == "gateway-dev-2"
    assert GatewaySigner([new, old], LiveRegistry(registry)).at(T).key_id == "gateway-dev-2"  # not by order
    with pytest.raises(SigningUnavailable) as err:
        GatewaySigner([old], LiveRegistry(registry)).at(T)
    assert err.value.reason == "SIGNING_KEY_UNAVAILABLE"


def test_a_key_that_ends_between_the_check_and_the_commit_refuses_the_message(pki: DevPaths, tmp_path: Path) -> None:
    """The receipt is made inside the store's transaction at accepted_at: the sender's key is
    judged there again, so no receipt attests a message signed after its key's end."""
    paths, _, gateway_key_file = rotated_pki(pki, tmp_path / "pki")
    registry = Registry.from_json(paths.registry.read_bytes())
    signer = GatewaySigner([LocalSigner.from_pem("gateway-dev-1", paths.gateway_signing_key.read_bytes()),
                            LocalSigner.from_pem("gateway-dev-2", gateway_key_file.read_bytes())],
                           LiveRegistry(registry))
    sender_key = registry.platforms["jiangsu"].keys["jiangsu-dev-1"]
    incoming = IncomingMessage(
        message_id="m", transfer_id="t", kind=envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE, sender="320100",
        receiver="330100", deliveries=(), created_at=T, fingerprint=bytes(32), signed_message=b"")
    make = receipt_maker(signer, incoming, bytes(32), sender_key)
    before = make(1, 0, T - dt.timedelta(microseconds=1))
    assert envelope_pb2.Receipt.FromString(before.receipt).key_id == "gateway-dev-1"
    with pytest.raises(SignatureRejected) as err:
        make(2, 1, T)
    assert err.value.reason == "KEY_EXPIRED" and err.value.metadata["key_id"] == "jiangsu-dev-1"


def test_check_config_lists_every_signing_key_with_its_window(pki: DevPaths, tmp_path: Path) -> None:
    paths, _, gateway_key_file = rotated_pki(pki, tmp_path / "pki")
    config = gateway_config(paths, tmp_path / "gateway.db")
    config = replace(config, signing=replace(config.signing, rotation_keys=(gateway_key_file,)))
    lines = summary(tmp_path / "gateway.toml", config, read_materials(config, now=utc_now()))
    signing = [line for line in lines if line.startswith("  signing:")]
    assert signing == [
        f"  signing: key gateway-dev-1 (ed25519) matches the registry, signs until {T:%Y-%m-%d %H:%M} UTC",
        f"  signing: key gateway-dev-2 (sm2-sm3) matches the registry, signs from {T:%Y-%m-%d %H:%M} UTC",
    ]


def test_a_rotation_key_the_registry_does_not_list_is_refused(pki: DevPaths, tmp_path: Path) -> None:
    paths, _, _ = rotated_pki(pki, tmp_path / "pki")
    stray = tmp_path / "stray.key"
    write_key(stray, suites.signing_key("x", suites.ED25519.generate()))
    config = gateway_config(paths, tmp_path / "gateway.db")
    config = replace(config, signing=replace(config.signing, rotation_keys=(stray,)))
    with pytest.raises(ConfigError) as caught:
        read_materials(config, now=utc_now())
    [problem] = caught.value.problems
    assert problem.startswith(f"[signing] rotation_keys: {stray}: its public key is not a gateway key of the registry")
