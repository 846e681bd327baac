"""The national platform's staff at the command line: `transfer-gateway review list|approve|reject`
(role reviewer), `transfer-gateway case close`, `transfer-gateway calendar load|show`,
`transfer-gateway dead-letters list|redrive` and `transfer-gateway report settlement` (role
operator), over mutual TLS with an operator certificate whose SAN URI names them in the registry.

A decision's answer is the gateway's signed receipt; it is verified against the registry's
gateway keys before it is shown, and `--receipt FILE` keeps its bytes as proof. Failures go
through the same boundary as every command: the gateway not answering is 69, a refusal (wrong
role, unknown case, a transfer not held) is 1 with the gateway's reason, a missing certificate is
78. Each further Admin action is one more function registered in `add_operator_commands`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar, cast
from zoneinfo import ZoneInfo

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.app.devpki import DevPaths
from gateway.app.failures import ConfigError, ExitCode, OperatorError, Unavailable
from gateway.app.settlement import as_json, render
from gateway.core.messages import RECEIPT_PAYLOAD_TYPE, kind_name
from gateway.core.registry import Registry
from gateway.core.signing import VerifyingKey, pae
from gateway.core.workdays import CalendarFileError, YearNotice, load_notices
from mitransfer.v1 import admin_pb2, admin_pb2_grpc, envelope_pb2, types_pb2

T = TypeVar("T")
BEIJING: Final = ZoneInfo("Asia/Shanghai")
_UNREACHABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class OperatorConfig:
    """Where the gateway is and which operator credentials call it."""

    address: str
    operator: str
    ca: Path
    cert: Path
    key: Path
    registry: Path   # for the gateway's public keys, to verify receipts
    timeout: float   # seconds for one call

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OperatorConfig:
        """The dev layout of --certs for --operator, each file replaceable by its own option."""
        dev = DevPaths(Path(args.certs))
        return cls(address=args.gateway, operator=args.operator, ca=Path(args.ca or dev.ca),
                   cert=Path(args.cert or dev.operator_cert(args.operator)),
                   key=Path(args.key or dev.operator_key(args.operator)),
                   registry=Path(args.registry or dev.registry), timeout=args.timeout)


class AdminCalls:
    """The Admin calls an operator makes, each answered or raised as an OperatorError."""

    def __init__(self, stub: admin_pb2_grpc.AdminAsyncStub, config: OperatorConfig,
                 gateway_keys: Mapping[str, VerifyingKey]) -> None:
        self._stub = stub
        self._config = config
        self._gateway_keys = gateway_keys

    async def held(self) -> list[admin_pb2.HeldFundTransfer]:
        """Every fund transfer held for this reviewer, oldest first (a page at a time)."""
        held: list[admin_pb2.HeldFundTransfer] = []
        token = ""
        while True:
            reply = await self._call(self._stub.ListHeldFundTransfers(
                admin_pb2.ListHeldFundTransfersRequest(page_size=500, page_token=token), timeout=self._config.timeout))
            held += reply.held
            token = reply.next_page_token
            if not token:
                return held

    async def review(self, transfer_id: str, *, approve: bool, comment: str) -> tuple[envelope_pb2.ReceiptBody,
                                                                                        envelope_pb2.Receipt]:
        """Decide; returns the verified receipt body and the signed receipt (deciding the same way
        again returns the same receipt, so a retry after a lost answer is safe)."""
        request = admin_pb2.ReviewFundTransferRequest(transfer_id=transfer_id, approve=approve, comment=comment)
        receipt = await self._call(self._stub.ReviewFundTransfer(request, timeout=self._config.timeout))
        return self._verify(receipt), receipt

    async def close(self, transfer_id: str, *, reason: str) -> tuple[envelope_pb2.ReceiptBody, envelope_pb2.Receipt]:
        """Close an unanswered request, or an automatic case waiting for its blockers; returns the
        verified receipt body and the signed receipt (closing it again returns the same receipt)."""
        request = admin_pb2.CloseCaseRequest(transfer_id=transfer_id, reason=reason)
        receipt = await self._call(self._stub.CloseCase(request, timeout=self._config.timeout))
        return self._verify(receipt), receipt

    async def load_calendar(self, notices: Mapping[int, YearNotice]) -> admin_pb2.LoadCalendarResponse:
        request = admin_pb2.LoadCalendarRequest(years=[
            admin_pb2.CalendarYear(year=year, source=n.source, holidays=[_date(d) for d in sorted(n.holidays)],
                                   workdays=[_date(d) for d in sorted(n.workdays)])
            for year, n in sorted(notices.items())])
        return await self._call(self._stub.LoadCalendar(request, timeout=self._config.timeout))

    async def calendar(self) -> admin_pb2.CalendarCoverage:
        return await self._call(self._stub.GetCalendar(admin_pb2.GetCalendarRequest(), timeout=self._config.timeout))

    async def settlement(self, day: dt.date) -> admin_pb2.SettlementReport:
        request = admin_pb2.GetSettlementRequest(date=types_pb2.Date(year=day.year, month=day.month, day=day.day))
        return await self._call(self._stub.GetSettlement(request, timeout=self._config.timeout))

    async def dead_letters(self, platform: str, limit: int) -> list[admin_pb2.DeadLetter]:
        """Dead letters in log order, page after page, up to `limit` (0: every one)."""
        letters: list[admin_pb2.DeadLetter] = []
        token = ""
        while True:
            size = min(500, limit - len(letters)) if limit else 500
            request = admin_pb2.ListDeadLettersRequest(platform=platform, page_size=size, page_token=token)
            page = await self._call(self._stub.ListDeadLetters(request, timeout=self._config.timeout))
            letters += page.dead_letters
            token = page.next_page_token
            if not token or (limit and len(letters) >= limit):
                return letters

    async def redrive(self, platform: str, message_ids: list[str]) -> int:
        """Put `platform`'s dead letters back (those named; none named: every one); how many went."""
        request = admin_pb2.RedriveDeadLettersRequest(platform=platform, message_ids=message_ids,
                                                      all=not message_ids)
        reply = await self._call(self._stub.RedriveDeadLetters(request, timeout=self._config.timeout))
        return int(reply.redriven)

    def _verify(self, receipt: envelope_pb2.Receipt) -> envelope_pb2.ReceiptBody:
        key = self._gateway_keys.get(receipt.key_id)
        if key is None or not key.verify(receipt.signature, pae(RECEIPT_PAYLOAD_TYPE, receipt.body)):
            raise OperatorError(f"the gateway's receipt does not verify with the registry {self._config.registry} "
                                f"(key {receipt.key_id[:64]!r})",
                                hint="the decision may be recorded: check it with `review list`, and the registry")
        try:
            return envelope_pb2.ReceiptBody.FromString(receipt.body)
        except DecodeError as exc:
            raise OperatorError("the gateway's receipt body does not parse") from exc

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as err:
            raise self._refused(err) from err

    def _refused(self, err: grpc.aio.AioRpcError) -> OperatorError:
        address, details = self._config.address, " ".join((err.details() or "").split())[:200]
        if err.code() in _UNREACHABLE:
            return Unavailable(f"gateway {address} did not answer: {err.code().name}: {details}",
                               hint="is it running and reachable from here? (--gateway, --timeout)")
        reason = _reason(err)
        if err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            return OperatorError(f"gateway {address} refused operator {self._config.operator!r}: "
                                 f"{err.code().name} {reason}: {details}",
                                 hint="review commands need the role reviewer; case close, calendar, dead-letters"
                                      " and report settlement the role operator (--operator chooses the certificate)")
        return OperatorError(f"the gateway refused it: {err.code().name} {reason}: {details}")


def _reason(err: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a refusal ("-" when it has none)."""
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        return "-"
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason or "-"
    return "-"


def _read(what: str, path: Path, config: OperatorConfig) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        dev = path.parent.parent if path.parent.name == "operators" else None
        known = sorted(p.stem for p in (dev / "operators").glob("*.pem")) if dev is not None else []
        more = f" (operators there: {', '.join(known)})" if known and what != "CA certificate" else ""
        raise ConfigError(f"{path}: no such file (the {what} of operator {config.operator!r}){more}",
                          hint="--certs names a folder laid out like certs/dev; --ca, --cert, --key and"
                               " --registry name the files one by one") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror} (the {what} of operator {config.operator!r})") from exc


@asynccontextmanager
async def connect(config: OperatorConfig) -> AsyncIterator[AdminCalls]:
    """Read the operator's files, open the mTLS channel, close it on exit.

    Raises ConfigError naming a file that is missing or unusable.
    """
    ca, cert, key = (_read("CA certificate", config.ca, config), _read("certificate", config.cert, config),
                     _read("key", config.key, config))
    _read("registry", config.registry, config)
    try:
        registry = Registry.load(config.registry)
    except ValueError as exc:
        raise ConfigError(f"registry {config.registry}: {exc}") from exc
    try:
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
    except Exception as exc:  # grpc accepts any bytes here; a bad PEM fails at the handshake
        raise ConfigError(f"the certificate files of operator {config.operator!r} cannot be used: {exc}") from exc
    async with grpc.aio.secure_channel(config.address, credentials) as channel:
        stub = cast("admin_pb2_grpc.AdminAsyncStub", admin_pb2_grpc.AdminStub(channel))
        yield AdminCalls(stub, config, registry.gateway_keys)


def _when(stamp: Timestamp) -> str:
    return stamp.ToDatetime(dt.UTC).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M")


def render_held(held: list[admin_pb2.HeldFundTransfer]) -> str:
    """One line per held transfer (Beijing time, yuan); ids and agencies only, never a person."""
    if not held:
        return "(no fund transfers held for review)"
    lines = [f"{'transfer id':<36}  {'out':>6} → {'in':<6} {'amount (yuan)':>16}  held since (Beijing)"]
    lines += [f"{h.transfer_id:<36}  {h.outbound:>6} → {h.inbound:<6} {h.amount_fen / 100:>16,.2f}  "
              f"{_when(h.held_since)}" for h in held]
    return "\n".join(lines)


def _held_json(held: list[admin_pb2.HeldFundTransfer]) -> str:
    return json.dumps({"held": [{
        "transfer_id": h.transfer_id, "message_id": h.message_id, "outbound": h.outbound, "inbound": h.inbound,
        "amount_fen": h.amount_fen, "held_since": h.held_since.ToDatetime(dt.UTC).isoformat()} for h in held]})


def _run(args: argparse.Namespace, work: Callable[[AdminCalls], Any]) -> int:
    async def go() -> int:
        async with connect(OperatorConfig.from_args(args)) as calls:
            return int(await work(calls))

    return asyncio.run(go())


def _review_list(args: argparse.Namespace) -> int:
    async def work(calls: AdminCalls) -> int:
        held = await calls.held()
        print(_held_json(held) if args.json else render_held(held))
        return ExitCode.OK

    return _run(args, work)


def _decide(args: argparse.Namespace, *, approve: bool) -> int:
    comment = args.comment if approve else args.reason
    if not approve and not comment.strip():
        raise OperatorError("--reason must say why the transfer is rejected")

    async def work(calls: AdminCalls) -> int:
        body, receipt = await calls.review(args.transfer_id, approve=approve, comment=comment)
        if args.receipt:
            Path(args.receipt).write_bytes(receipt.SerializeToString())
        accepted = body.accepted_at.ToDatetime(dt.UTC).astimezone(BEIJING).isoformat(timespec="seconds")
        print(f"{'approved' if approve else 'rejected'} the fund transfer of {body.transfer_id}: "
              f"{kind_name(body.kind)} {body.message_id} seq {body.sequence} accepted {accepted}, "
              f"receipt signed by {receipt.key_id} and verified"
              + (f", kept in {args.receipt}" if args.receipt else ""))
        return ExitCode.OK

    return _run(args, work)


def _close(args: argparse.Namespace) -> int:
    if not args.reason.strip():
        raise OperatorError("--reason must say why the request is closed")

    async def work(calls: AdminCalls) -> int:
        body, receipt = await calls.close(args.transfer_id, reason=args.reason)
        if args.receipt:
            Path(args.receipt).write_bytes(receipt.SerializeToString())
        accepted = body.accepted_at.ToDatetime(dt.UTC).astimezone(BEIJING).isoformat(timespec="seconds")
        print(f"closed {body.transfer_id}: {kind_name(body.kind)} {body.message_id} seq {body.sequence} "
              f"accepted {accepted}, receipt signed by {receipt.key_id} and verified"
              + (f", kept in {args.receipt}" if args.receipt else ""))
        return ExitCode.OK

    return _run(args, work)


def _date(day: dt.date) -> types_pb2.Date:
    return types_pb2.Date(year=day.year, month=day.month, day=day.day)


def _calendar_load(args: argparse.Namespace) -> int:
    try:
        notices = load_notices(Path(args.file))
    except CalendarFileError as exc:
        raise ConfigError(str(exc), hint="deploy/calendar/example.toml shows the format") from None
    if not notices:
        raise ConfigError(f"{args.file}: no year in it", hint="one [YYYY] table per year")

    async def work(calls: AdminCalls) -> int:
        done = await calls.load_calendar(notices)
        print(f"loaded {', '.join(str(y) for y in sorted(notices))} as calendar version {done.version} for every "
              f"replica: {done.stages_retimed} stage(s) counted again, {done.stages_rejudged} finished stage(s) "
              f"judged again ({done.now_on_time} now on time, {done.now_late} now late)")
        return ExitCode.OK

    return _run(args, work)


_SOURCE_WORDS: Final = {admin_pb2.YearCoverage.SOURCE_NOTICE: "notice", admin_pb2.YearCoverage.SOURCE_PACKAGE:
                        "chinese-calendar", admin_pb2.YearCoverage.SOURCE_FALLBACK: "FALLBACK (Monday to Friday)"}


def _calendar_show(args: argparse.Namespace) -> int:
    async def work(calls: AdminCalls) -> int:
        coverage = await calls.calendar()
        print(f"calendar version {coverage.version}")
        for y in coverage.years:
            loaded = f", loaded {_when(y.loaded_at)}" if y.HasField("loaded_at") else ""
            notice = f": {y.notice}" if y.notice else ""
            print(f"  {y.year}  {_SOURCE_WORDS.get(y.source, '?')}{notice}{loaded}")
        return ExitCode.OK

    return _run(args, work)


def _settlement(args: argparse.Namespace) -> int:
    try:
        day = dt.date.fromisoformat(args.date)
    except ValueError:
        raise OperatorError(f"--date {args.date[:40]!r}: expected a day as YYYY-MM-DD, e.g. 2026-11-22") from None

    async def work(calls: AdminCalls) -> int:
        report = await calls.settlement(day)
        print(as_json(report) if args.json else render(report))
        return ExitCode.OK

    return _run(args, work)


def render_dead_letters(letters: list[admin_pb2.DeadLetter]) -> str:
    """One line per dead letter (Beijing time): ids, kind, reason, attempts and size, never a person."""
    if not letters:
        return "(no dead letters)"
    lines = [f"{'message id':<36}  {'transfer id':<36}  {'platform':<10} {'to':<6} {'kind':<16} "
             f"{'reason':<14} {'tries':>5} {'bytes':>8}  dead since (Beijing)"]
    lines += [f"{d.message_id:<36}  {d.transfer_id:<36}  {d.platform:<10} {d.receiver:<6} {kind_name(d.kind):<16} "
              f"{d.reason:<14} {d.attempts:>5} {d.size_bytes:>8,}  "
              f"{_when(d.dead_since) if d.HasField('dead_since') else '-'}" for d in letters]
    return "\n".join(lines)


def _dead_letters_json(letters: list[admin_pb2.DeadLetter]) -> str:
    return json.dumps({"dead_letters": [{
        "platform": d.platform, "receiver": d.receiver, "message_id": d.message_id, "transfer_id": d.transfer_id,
        "kind": kind_name(d.kind), "sequence": d.sequence, "attempts": d.attempts, "reason": d.reason,
        "size_bytes": d.size_bytes,
        "dead_since": d.dead_since.ToDatetime(dt.UTC).isoformat() if d.HasField("dead_since") else None}
        for d in letters]})


def _dead_letters_list(args: argparse.Namespace) -> int:
    async def work(calls: AdminCalls) -> int:
        letters = await calls.dead_letters(args.platform or "", args.limit)
        print(_dead_letters_json(letters) if args.json else render_dead_letters(letters))
        return ExitCode.OK

    return _run(args, work)


def _dead_letters_redrive(args: argparse.Namespace) -> int:
    if args.all == bool(args.message_ids):
        raise OperatorError("name the dead letters to redrive (MESSAGE_ID …) or give --all, not both")

    async def work(calls: AdminCalls) -> int:
        redriven = await calls.redrive(args.platform, list(args.message_ids))
        named = f"of {len(args.message_ids)} named" if args.message_ids else "(all)"
        print(f"redrove {redriven} dead letter(s) {named} of platform {args.platform}: pending again, delivered"
              " in their case's order")
        return ExitCode.OK

    return _run(args, work)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _connection_options(parser: argparse.ArgumentParser, operator: str) -> None:
    parser.add_argument("--gateway", default="127.0.0.1:50051", help="gateway address host:port")
    parser.add_argument("--certs", default="certs/dev",
                        help="folder laid out like certs/dev (ca.pem, operators/<id>.pem|key, registry.json)")
    parser.add_argument("--operator", default=operator,
                        help=f"operator id: whose certificate to use (default {operator})")
    parser.add_argument("--ca", help="CA certificate of the gateway (instead of --certs)")
    parser.add_argument("--cert", help="the operator's certificate (instead of --certs)")
    parser.add_argument("--key", help="its private key (instead of --certs)")
    parser.add_argument("--registry", help="the registry, for the gateway's keys (instead of --certs)")
    parser.add_argument("--timeout", type=_positive, default=10.0, help="seconds to wait for the gateway (default 10)")


Command = Callable[[Any, str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def add_operator_commands(commands: Any, reports: Any, command: Command, common: argparse.ArgumentParser) -> None:
    """`review …` under `commands`, `settlement` under `reports`; `command(parent, name, run, help)`
    makes a subcommand with the options every command has (`common`)."""
    review = commands.add_parser("review", help="held fund transfers: list, approve, reject (role reviewer)",
                                 parents=[common])
    actions = review.add_subparsers(dest="review_command", required=True, metavar="ACTION")
    listing = command(actions, "list", _review_list, "list the fund transfers held for review")
    _connection_options(listing, "reviewer")
    listing.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    approve = command(actions, "approve", lambda a: _decide(a, approve=True), "approve a held fund transfer")
    _connection_options(approve, "reviewer")
    approve.add_argument("transfer_id", help="the case whose held fund transfer is approved")
    approve.add_argument("--comment", default="", help="the reviewer's note, recorded with the decision")
    approve.add_argument("--receipt", help="write the gateway's signed receipt (protobuf bytes) to this file")
    reject = command(actions, "reject", lambda a: _decide(a, approve=False), "reject a held fund transfer")
    _connection_options(reject, "reviewer")
    reject.add_argument("transfer_id", help="the case whose held fund transfer is rejected")
    reject.add_argument("--reason", required=True, help="why (recorded with the decision and sent to both sides)")
    reject.add_argument("--receipt", help="write the gateway's signed receipt (protobuf bytes) to this file")

    case = commands.add_parser("case", help="cases: close an unanswered request or a case waiting for its blockers"
                               " (role operator)", parents=[common])
    case_actions = case.add_subparsers(dest="case_command", required=True, metavar="ACTION")
    close = command(case_actions, "close", _close,
                    "close a transfer request the outbound side never answered, or an automatic case waiting for"
                    " blockers nobody clears, with a reason sent to both sides")
    _connection_options(close, "operator")
    close.add_argument("transfer_id", help="the case")
    close.add_argument("--reason", required=True, help="why (at most 500 characters; signed and sent to both sides)")
    close.add_argument("--receipt", help="write the gateway's signed receipt (protobuf bytes) to this file")

    calendar = commands.add_parser("calendar", help="the working-day calendar every replica counts on (role operator)",
                                   parents=[common])
    calendar_actions = calendar.add_subparsers(dest="calendar_command", required=True, metavar="ACTION")
    load = command(calendar_actions, "load", _calendar_load,
                   "load the State Council's holiday notice for one or more years into the store, for every replica")
    _connection_options(load, "operator")
    load.add_argument("file", help="notices as TOML, one [YYYY] table a year (deploy/calendar/example.toml)")
    show = command(calendar_actions, "show", _calendar_show, "where each year's working days come from")
    _connection_options(show, "operator")

    dead = commands.add_parser("dead-letters", help="deliveries given up: list, redrive (role operator)",
                               parents=[common])
    dead_actions = dead.add_subparsers(dest="dead_letters_command", required=True, metavar="ACTION")
    listing = command(dead_actions, "list", _dead_letters_list, "list dead letters in log order, with their reason")
    _connection_options(listing, "operator")
    listing.add_argument("--platform", help="one receiving platform's (registry id; default: every platform's)")
    listing.add_argument("--limit", type=_count, default=100, help="at most this many (default 100; 0: every one)")
    listing.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    redrive = command(dead_actions, "redrive", _dead_letters_redrive,
                      "put dead letters of a platform back in the queue (their attempts anew)")
    _connection_options(redrive, "operator")
    redrive.add_argument("--platform", required=True, help="the receiving platform (registry id)")
    redrive.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID", help="the dead letters to put back")
    redrive.add_argument("--all", action="store_true", help="every dead letter of the platform")

    settlement = command(reports, "settlement", _settlement, "funds in transit per province pair for one day")
    _connection_options(settlement, "operator")
    settlement.add_argument("--date", required=True, help="the day (Asia/Shanghai), e.g. 2026-11-22")
    settlement.add_argument("--json", action="store_true", help="one JSON object instead of a table")
