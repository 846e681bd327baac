"""Structure-aware fuzzing of Submit: messages of every business kind built from strategies over
every field of their descriptors (plausible values beside hostile ones), and valid messages of a
real case with some of their fields changed; each signed properly by the platform that sends it,
some then broken on the way (payload changed after signing, another kind, a key id that is not
one, bytes cut short, unknown fields). Whatever arrives, the answer is never UNKNOWN or INTERNAL,
every refusal carries an ErrorInfo and stays small, the gateway logs no traceback, and its memory
stays under a bound.

The gateway runs as its own process (`transfer-gateway serve`), so that its memory is its own;
the test talks to it with gRPC's synchronous client from hypothesis's examples.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients import builders
from clients.scenario import CasePlan, outbound_messages
from gateway.app.devpki import DevPaths
from gateway.core.signing import LocalSigner, pae
from mitransfer.protocol import idnumbers, kinds
from mitransfer.v1 import admin_pb2, envelope_pb2, exchange_pb2, log_pb2, tracking_pb2
from tests.support import KEY_IDS, free_port, start_gateway_process, wait_serving

pytestmark = pytest.mark.slow

EXAMPLES = 400
MEMORY_GROWTH_MIB = 96  # what the whole run may add to the gateway's resident memory
PLATFORMS = ("jiangsu", "zhejiang", "anhui")
OPERATORS = ("operator", "reviewer")
AGENCIES = ("320100", "320500", "330100", "330200", "340100", "329900", "990100", "")
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
BUSINESS = sorted(k for k, row in kinds.KINDS.items() if not row.gateway_only)


# -- values ----------------------------------------------------------------------------------------

HOSTILE_TEXT = st.one_of(
    st.text(max_size=24),
    st.text(alphabet=st.sampled_from("张三李四\x00\n\r\t\x85\u2028\u202e\u2066\u200d\ue000a1 -"), max_size=40),
    st.builds(lambda c, n: c * n, st.sampled_from(["字", "x", "\u202e", "𠀀"]), st.integers(495, 1_100)),
)
IDS = st.one_of(st.builds(lambda: str(uuid.uuid4())), st.sampled_from(["", "42", "F" * 36]), HOSTILE_TEXT)
CODES = st.one_of(st.sampled_from(AGENCIES), HOSTILE_TEXT)
ID_NUMBERS = st.one_of(
    st.builds(lambda d, n: idnumbers.make("320102", d, n), st.dates(dt.date(1930, 1, 1), dt.date(2020, 1, 1)),
              st.integers(0, 999)),
    HOSTILE_TEXT)
INT32 = st.one_of(st.integers(-3, 3_000), st.sampled_from([-(2**31), 2**31 - 1]), st.integers(-(2**31), 2**31 - 1))
INT64 = st.one_of(st.integers(-3, 10**11), st.sampled_from([-(2**63), 2**63 - 1]), st.integers(-(2**63), 2**63 - 1))
NOW = int(dt.datetime.now(dt.UTC).timestamp())
SECONDS = st.one_of(st.integers(NOW - 10 * 86_400, NOW + 600), st.sampled_from([0, -(2**62), 2**62, 253_402_300_800]))
NANOS = st.one_of(st.integers(0, 999_999_999), st.sampled_from([-1, 1_000_000_000, 2**31 - 1]))
YEARS = st.one_of(st.integers(1940, 2030), st.sampled_from([0, 1, 9999, 10_000, -1, 2**31 - 1]))


def _string(field: FieldDescriptor) -> st.SearchStrategy[str]:
    name = field.name
    if name.endswith("_id") and name != "key_id":
        return IDS
    if name in ("sender", "receiver", "pooling_region", "agency") or name.endswith("agencies"):
        return CODES
    if name == "certificate_number":
        return ID_NUMBERS
    if name == "currency":
        return st.one_of(st.just("CNY"), HOSTILE_TEXT)
    if name == "account_number":
        return st.one_of(st.from_regex(r"\A[0-9]{6,34}\Z"), HOSTILE_TEXT)
    return HOSTILE_TEXT


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return _string(field)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=48)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        defined = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(defined), st.integers(-(2**31), 2**31 - 1))
    if field.name == "year":
        return YEARS
    if field.name in ("month", "day"):
        return st.integers(-1, 33)
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return INT64
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    return INT32


@st.composite
def message_of(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    """A message of `descriptor` with each field present or not, every value from the field's
    strategy (nested messages likewise, a few levels deep)."""
    message = message_factory.GetMessageClass(descriptor)()
    if descriptor.full_name == "google.protobuf.Timestamp":
        assert isinstance(message, timestamp_pb2.Timestamp)
        message.seconds, message.nanos = draw(SECONDS), draw(NANOS)
        return message
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3 or field.message_type is None:
                continue
            inner = message_of(field.message_type, depth + 1)
            if field.is_repeated:
                getattr(message, field.name).extend(draw(st.lists(inner, max_size=4)))
            else:
                getattr(message, field.name).CopyFrom(draw(inner))
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=4)))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


def _leaves(message: Message, depth: int = 0) -> list[tuple[Message, FieldDescriptor]]:
    """Every field of `message` that can be set, with the message holding it: scalars and
    repeated fields anywhere in it, nested messages (and each element of a repeated one) entered."""
    found: list[tuple[Message, FieldDescriptor]] = []
    for field in message.DESCRIPTOR.fields:
        found.append((message, field))
        if field.type != FieldDescriptor.TYPE_MESSAGE or depth >= 3:
            continue
        inner = getattr(message, field.name)
        for element in (inner if field.is_repeated else [inner]):
            found += _leaves(element, depth + 1)
    return found


@st.composite
def changed_case_message(draw: st.DrawFn) -> Message:
    """One of a real case's valid messages (notice, table, fund transfer) with one or two of its
    fields, anywhere in it, set from their strategies or cleared: it passes every check but the
    ones the change is aimed at."""
    plan = CasePlan.synthetic("320100", draw(st.sampled_from(["330100", "340100"])), insurance_type=builders.EMPLOYEE,
                              balance_fen=draw(st.integers(1, 2_000_000)), seed=draw(st.integers(0, 10_000)))
    message: Message = draw(st.sampled_from(outbound_messages(plan)))
    for _ in range(draw(st.integers(1, 2))):
        target, field = draw(st.sampled_from(_leaves(message)))
        if draw(st.integers(0, 5)) == 0:
            target.ClearField(field.name)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            assert field.message_type is not None
            value = draw(message_of(field.message_type, 2))
            if field.is_repeated:
                getattr(target, field.name).append(value)
            else:
                getattr(target, field.name).CopyFrom(value)
        elif field.is_repeated:
            getattr(target, field.name).append(draw(_scalar(field)))
        else:
            setattr(target, field.name, draw(_scalar(field)))
    return message


# -- what is sent ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sent:
    platform: str
    request: bytes


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


@st.composite
def submissions(draw: st.DrawFn, signers: dict[str, LocalSigner]) -> Sent:
    """A message (of any business kind, or a real case's, changed), signed by the platform that
    sends it, then perhaps broken on the way."""
    ways = ["unknown-field", "payload-changed", "other-kind", "foreign-key-id", "cut-short"]
    if draw(st.booleans()):  # mostly as its sender signs it: past the envelope, into the checks
        message = draw(changed_case_message())
        kind = kinds.kind_of(message)  # type: ignore[arg-type]
        platform = draw(st.sampled_from(["jiangsu"] * 6 + ["zhejiang", "anhui"]))
        how = draw(st.sampled_from(["signed"] * 12 + ways))
    else:
        kind = draw(st.sampled_from(BUSINESS))
        message = draw(message_of(kinds.business_class(kind).DESCRIPTOR))
        platform = draw(st.sampled_from(PLATFORMS))
        how = draw(st.sampled_from(["signed"] * 3 + ways))
    key = signers[platform]
    payload = message.SerializeToString()
    if how == "unknown-field":  # an unknown field inside what is signed: kept, never looked at
        payload += _varint(999 << 3 | 2) + _varint(8) + draw(st.binary(min_size=8, max_size=8))
    signed = envelope_pb2.SignedMessage(kind=kind, payload=payload, key_id=key.key_id,
                                        signature=key.sign(pae(kinds.payload_type(kind), payload)))
    if how == "payload-changed":
        signed.payload = payload + b"\x08\x01"
    elif how == "other-kind":
        signed.kind = draw(st.one_of(st.sampled_from(list(kinds.KINDS)), st.integers(-(2**31), 2**31 - 1)))
    elif how == "foreign-key-id":
        signed.key_id = draw(st.one_of(st.sampled_from(list(KEY_IDS.values())), HOSTILE_TEXT))
    request = signed.SerializeToString()
    if how == "cut-short" and request:
        request = request[:draw(st.integers(0, len(request) - 1))]
    return Sent(platform, request)


# -- the gateway -----------------------------------------------------------------------------------

@dataclass
class FuzzTarget:
    port: int
    pid: int
    log: Path
    channels: dict[str, grpc.Channel]  # by platform, and by operator ("operator", "reviewer")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def target(pki: DevPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    folder = tmp_path_factory.mktemp("fuzz")
    port, log = free_port(), folder / "gateway.log"
    # No platform's share limits the run (the fairness tests hold those): every example is
    # answered by the checks it is aimed at.
    proc = start_gateway_process(pki, folder / "gateway.toml", port, log, f'sqlite = "{folder / "g.db"}"',
                                 extra="[quota]\nrequests_per_second = 100000\nburst = 100000")
    channels: dict[str, grpc.Channel] = {}
    try:
        asyncio.run(wait_serving(pki, port))
        for platform in PLATFORMS:
            creds = grpc.ssl_channel_credentials(
                root_certificates=pki.ca.read_bytes(), private_key=pki.platform_key(platform).read_bytes(),
                certificate_chain=pki.platform_cert(platform).read_bytes())
            channels[platform] = grpc.secure_channel(f"127.0.0.1:{port}", creds)
        for operator in OPERATORS:
            creds = grpc.ssl_channel_credentials(
                root_certificates=pki.ca.read_bytes(), private_key=pki.operator_key(operator).read_bytes(),
                certificate_chain=pki.operator_cert(operator).read_bytes())
            channels[operator] = grpc.secure_channel(f"127.0.0.1:{port}", creds)
        yield FuzzTarget(port, proc.pid, log, channels)
    finally:
        for channel in channels.values():
            channel.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _signers(pki: DevPaths) -> dict[str, LocalSigner]:
    return {p: LocalSigner.from_pem(KEY_IDS[p], pki.platform_signing_key(p).read_bytes()) for p in PLATFORMS}


def test_submit_never_answers_unknown_or_internal_and_memory_stays_bounded(target: FuzzTarget,
                                                                            pki: DevPaths) -> None:
    signers = _signers(pki)
    start = target.rss_mib()
    answered: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(submissions(signers))
    def submit(sent: Sent) -> None:
        call = target.channels[sent.platform].unary_unary("/mitransfer.v1.Exchange/Submit")
        try:
            receipt = envelope_pb2.Receipt.FromString(call(sent.request, timeout=10))
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
            assert code not in NEVER, (code, err.details())  # type: ignore[attr-defined]
            status = rpc_status.from_call(err)  # type: ignore[arg-type]
            assert status is not None and any(d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) for d in status.details)
            assert len(status.SerializeToString()) < 4096 and len(err.details() or "") < 2048  # type: ignore[attr-defined]
            answered[code.name] = answered.get(code.name, 0) + 1
        else:
            assert receipt.body and receipt.signature
            answered["OK"] = answered.get("OK", 0) + 1

    submit()
    assert target.rss_mib() - start < MEMORY_GROWTH_MIB
    logged = target.log.read_text()
    assert "Traceback" not in logged and '"level": "error"' not in logged, logged[-3000:]
    # The examples reached past the envelope: into validation and beyond.
    assert answered.get("INVALID_ARGUMENT", 0) > 0 and sum(answered.values()) >= EXAMPLES


# -- every field at its bounds ---------------------------------------------------------------------

_EDGES: dict[int, tuple[Any, ...]] = {
    FieldDescriptor.TYPE_STRING: ("", "\x00", "\u202e", "x" * 600),
    FieldDescriptor.TYPE_BYTES: (b"", b"\xff" * 64),
    FieldDescriptor.TYPE_BOOL: (True, False),
    FieldDescriptor.TYPE_ENUM: (-1, 0, 999, 2**31 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), -1, 0, 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), -1, 0, 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}
_SECONDS_EDGES = (-(2**63), -62_135_596_801, 0, 2**62, 253_402_300_800)


def _edges(target: Message, field: FieldDescriptor) -> tuple[Any, ...]:
    if target.DESCRIPTOR.full_name == "google.protobuf.Timestamp" and field.name == "seconds":
        return _SECONDS_EDGES
    return _EDGES.get(field.type, ())


def _case_so_far(plan: CasePlan) -> list[Message]:
    """A case's messages in order: the notice, the table, the fund transfer, the inbound acceptance."""
    notice, table, fund = outbound_messages(plan)
    ack = builders.acknowledgement(table.header, builders.Ack.STATUS_ACCEPTED,
                                   inbound_insurance_type=builders.EMPLOYEE,
                                   inbound_enrollment_date=builders.today_in_china())
    return [notice, table, fund, ack]


def test_every_field_of_a_case_at_its_bounds_is_answered_by_name(target: FuzzTarget, pki: DevPaths) -> None:
    """Each scalar field of each message of a case (the first contribution period's and the
    timestamps' included) set to each bound of its type in an otherwise valid message, sent when
    the case is where that message belongs: refused by name, or accepted; never UNKNOWN."""
    signers = _signers(pki)
    seen: dict[str, int] = {}
    cases = iter(range(20_000, 30_000))  # people of their own: the random examples use seeds below 10,000
    for position in range(4):
        leaves = [(path, field) for path, field in _leaf_paths(_case_so_far(_plan(0))[position])
                  if not field.is_repeated and field.type != FieldDescriptor.TYPE_MESSAGE]
        for path, field in leaves:
            for value in _edges(_resolve(_case_so_far(_plan(0))[position], path), field):
                messages = _case_so_far(_plan(next(cases)))
                for earlier in messages[:position]:
                    _submit(target, signers, earlier, expect_ok=True)
                changed = messages[position]
                setattr(_resolve(changed, path), field.name, value)
                code = _submit(target, signers, changed, expect_ok=False)
                seen[code] = seen.get(code, 0) + 1
    assert not NEVER.intersection(grpc.StatusCode[c] for c in seen if c != "OK"), seen
    assert seen.get("INVALID_ARGUMENT", 0) > 0 and seen.get("OK", 0) > 0


def _plan(seed: int) -> CasePlan:
    return CasePlan.synthetic("320100", "330100", insurance_type=builders.EMPLOYEE, balance_fen=5_000, seed=seed)


def _leaf_paths(message: Message, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], FieldDescriptor]]:
    found: list[tuple[tuple[str, ...], FieldDescriptor]] = []
    for field in message.DESCRIPTOR.fields:
        found.append((prefix, field))
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            inner = getattr(message, field.name)
            if field.is_repeated:
                if len(inner):
                    found += _leaf_paths(inner[0], (*prefix, f"{field.name}[0]"))
            else:
                found += _leaf_paths(inner, (*prefix, field.name))
    return found


def _resolve(message: Message, path: tuple[str, ...]) -> Message:
    for step in path:
        name, _, index = step.partition("[")
        message = getattr(message, name)
        if index:
            message = message[int(index.rstrip("]"))]  # type: ignore[index]
    return message


def _submit(target: FuzzTarget, signers: dict[str, LocalSigner], message: Message, *, expect_ok: bool) -> str:
    """Send `message` signed by its sender's platform; the code it got ("OK" for a receipt)."""
    platform = {"32": "jiangsu", "33": "zhejiang"}.get(message.header.sender[:2], "jiangsu")  # type: ignore[attr-defined]
    kind = kinds.kind_of(message)  # type: ignore[arg-type]
    payload = message.SerializeToString()
    key = signers[platform]
    signed = envelope_pb2.SignedMessage(kind=kind, payload=payload, key_id=key.key_id,
                                        signature=key.sign(pae(kinds.payload_type(kind), payload)))
    call = target.channels[platform].unary_unary("/mitransfer.v1.Exchange/Submit")
    try:
        call(signed.SerializeToString(), timeout=10)
    except grpc.RpcError as err:
        assert not expect_ok, err
        code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
        assert code not in NEVER, (code, err.details(), message)  # type: ignore[attr-defined]
        return code.name
    return "OK"


# -- every other call ------------------------------------------------------------------------------

UNARY_METHODS = sorted(
    (f"/{service.full_name}/{method.name}", method.input_type)
    for module in (exchange_pb2, tracking_pb2, admin_pb2, log_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
    if not method.client_streaming and not method.server_streaming and method.name != "Submit"
)


def test_every_other_call_never_answers_unknown_or_internal(target: FuzzTarget) -> None:
    """Every unary method of the gateway's services (Submit apart, above), with requests built from
    strategies over every field of their descriptors, called by platforms and operators."""
    answered: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(UNARY_METHODS), st.sampled_from(["zhejiang", *OPERATORS]), st.data())
    def call(method: tuple[str, Descriptor], caller: str, data: st.DataObject) -> None:
        path, request_type = method
        request = data.draw(message_of(request_type))
        try:
            target.channels[caller].unary_unary(path)(request.SerializeToString(), timeout=10)
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
            assert code not in NEVER, (path, code, err.details())  # type: ignore[attr-defined]
            status = rpc_status.from_call(err)  # type: ignore[arg-type]
            assert status is not None and any(d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) for d in status.details)
            answered[code.name] = answered.get(code.name, 0) + 1
        else:
            answered["OK"] = answered.get("OK", 0) + 1

    call()
    assert "Traceback" not in target.log.read_text()
    assert answered.get("INVALID_ARGUMENT", 0) > 0 and answered.get("OK", 0) > 0, answered
