"""Admin service: reviewers decide on held fund transfers of the provinces they are scoped to;
operators read the settlement ledger, list and redrive dead letters, close requests the outbound
side never answered (and automatic cases whose blockers are never cleared), load the State
Council's holiday notices every replica counts on, and load newer versions of the agency registry.

A decision (review, closure) is decided on the case as committed, inside the transaction that
records it (`gateway.core.case.review`, `close`): two identical decisions racing each other get
the one receipt, and opposite ones exactly one winner.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeVar

from gateway.core import case as case_rules
from gateway.core.errors import FieldViolation, InvalidMessage, NotFound, NotPermitted, RegistryRefused
from gateway.core.registry import LiveRegistry, RegistryError, Reloaded
from gateway.core.text import shown
from gateway.core.timestamps import from_micros, micros, timestamp_of
from gateway.core.validation import (
    DATE_HORIZON,
    EARLIEST_DATE,
    date_problem,
    is_region_code,
    is_uuid,
    text_problem,
)
from gateway.core.workdays import CalendarFileError, DaySource, YearNotice, local_date, start_of, year_notice
from gateway.service.auth import Callers
from gateway.service.authored import GatewayAuthor
from gateway.service.calendar import CalendarKeeper
from gateway.service.metrics import Metrics
from gateway.service.routing import Router
from gateway.store import DeadLetter, DeadLetterQuery, HeldQuery, HeldTransfer, Store
from mitransfer.v1 import admin_pb2, admin_pb2_grpc, envelope_pb2

log = logging.getLogger("gateway.admin")

T = TypeVar("T")

MAX_PAGE: Final = 500
DEFAULT_PAGE: Final = 100
MAX_REDRIVE: Final = 1000  # message ids one redrive names


class RegistryReloader(Protocol):
    """What loads a newer registry (`gateway.app.registry_sync.RegistrySync`)."""

    async def reload_file(self) -> Reloaded: ...

    async def reload(self, data: bytes, *, source: str) -> Reloaded: ...


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(
        self, *, registry: LiveRegistry, store: Store, author: GatewayAuthor, router: Router, metrics: Metrics,
        calendar: CalendarKeeper, clock: Callable[[], dt.datetime], reloader: RegistryReloader, callers: Callers,
    ) -> None:
        self._callers = callers
        self._reloader = reloader
        self._calendar = calendar
        self._router = router
        self._metrics = metrics
        self._registry = registry
        self._store = store
        self._author = author
        self._clock = clock

    async def ListHeldFundTransfers(
        self, request: admin_pb2.ListHeldFundTransfersRequest, context: Any
    ) -> admin_pb2.ListHeldFundTransfersResponse:
        reviewer = self._callers.operator(context, self._registry.current, "reviewer")
        bad: list[FieldViolation] = []
        size, after = _page(request.page_size, request.page_token, _parse_held_token, bad, default=MAX_PAGE)
        if bad:
            raise InvalidMessage(bad, reason="QUERY_INVALID")
        # another province's reviewers decide its transfers: the page holds only this reviewer's
        held = await self._store.held_transfers(HeldQuery(provinces=reviewer.provinces, after=after, limit=size + 1))
        page = held[:size]
        out = admin_pb2.ListHeldFundTransfersResponse(
            next_page_token=_held_token(page[-1]) if len(held) > size else "")
        for h in page:
            entry = out.held.add(transfer_id=h.transfer_id, message_id=h.message_id, outbound=h.outbound,
                                 inbound=h.inbound, amount_fen=h.amount_fen)
            entry.held_since.FromDatetime(h.held_since)
        return out

    async def ReviewFundTransfer(
        self, request: admin_pb2.ReviewFundTransferRequest, context: Any
    ) -> envelope_pb2.Receipt:
        reviewer = self._callers.operator(context, self._registry.current, "reviewer")
        _check_review(request)
        view = await self._store.get_case(request.transfer_id)
        if view is None:
            raise NotFound(f"no case {request.transfer_id}", reason="CASE_NOT_FOUND")
        province = view.case.outbound[:2]
        if not reviewer.covers(province):
            raise NotPermitted(f"reviewer {reviewer.id} decides transfers of provinces "
                               f"{', '.join(sorted(reviewer.provinces))}, not of {province}",
                               reason="REVIEWER_NOT_OF_PROVINCE",
                               metadata={"reviewer": reviewer.id, "province": province})
        case = view.case
        decision = admin_pb2.ReviewDecision(
            message_id=str(uuid.uuid4()), transfer_id=case.transfer_id,
            fund_transfer_message_id=case.fund_message_id or "",
            approved=request.approve, reviewer=reviewer.id, comment=request.comment, outbound=case.outbound,
            inbound=case.inbound,
        )
        now = self._clock()
        decision.decided_at.FromDatetime(now)
        outcome = await self._author.record(
            kind=envelope_pb2.MESSAGE_KIND_REVIEW_DECISION, message_id=decision.message_id,
            transfer_id=case.transfer_id, payload=decision, sides=(case.outbound, case.inbound), now=now,
            decide=lambda current, _index: case_rules.review(current, approved=request.approve,
                                                             message_id=decision.message_id),
        )
        if not outcome.replayed:
            self._metrics.reviews.labels("approved" if request.approve else "rejected").inc()
            log.info("reviewed", extra={"fields": {"transfer_id": case.transfer_id, "reviewer": reviewer.id,
                                                   "approved": request.approve, "sequence": outcome.sequence}})
        return envelope_pb2.Receipt.FromString(outcome.receipt)

    async def CloseCase(self, request: admin_pb2.CloseCaseRequest, context: Any) -> envelope_pb2.Receipt:
        """An operator's reasoned closure of a request the outbound side never answered, or of an
        automatic case whose blockers are never cleared."""
        operator = self._callers.operator(context, self._registry.current, "operator")
        reason = request.reason.strip()
        bad = [] if is_uuid(request.transfer_id) else [
            FieldViolation("transfer_id", "must be a canonical lower-case UUID")]
        problem = text_problem(reason) if reason else "is required"
        if problem is not None:
            bad.append(FieldViolation("reason", problem))
        if bad:
            raise InvalidMessage(bad)
        view = await self._store.get_case(request.transfer_id)
        if view is None:
            raise NotFound(f"no case {request.transfer_id}", reason="CASE_NOT_FOUND")
        case = view.case
        closure = admin_pb2.CaseClosed(message_id=str(uuid.uuid4()), transfer_id=case.transfer_id,
                                        operator=operator.id, reason=reason, outbound=case.outbound,
                                        inbound=case.inbound)
        now = self._clock()
        closure.opened_at.FromDatetime(view.opened_at)
        closure.closed_at.FromDatetime(now)
        outcome = await self._author.record(
            kind=envelope_pb2.MESSAGE_KIND_CASE_CLOSED, message_id=closure.message_id, transfer_id=case.transfer_id,
            payload=closure, sides=(case.outbound, case.inbound), now=now,
            decide=lambda current, _index: case_rules.close(current, message_id=closure.message_id),
        )
        if not outcome.replayed:
            self._metrics.closures.inc()
            log.info("closed", extra={"fields": {"transfer_id": case.transfer_id, "operator": operator.id,
                                                 "outbound": case.outbound, "inbound": case.inbound,
                                                 "sequence": outcome.sequence}})
        return envelope_pb2.Receipt.FromString(outcome.receipt)

    async def GetSettlement(
        self, request: admin_pb2.GetSettlementRequest, context: Any
    ) -> admin_pb2.SettlementReport:
        self._callers.operator(context, self._registry.current, "operator")
        d = request.date
        problem = date_problem(d, earliest=EARLIEST_DATE, latest=local_date(self._clock()) + DATE_HORIZON)
        if problem is not None:
            raise InvalidMessage([FieldViolation("date", problem)])
        start = start_of(dt.date(d.year, d.month, d.day))
        report = admin_pb2.SettlementReport(date=request.date)
        for line in await self._store.settlement(start, start + dt.timedelta(days=1)):
            report.lines.add(
                outbound_province=line.outbound_province, inbound_province=line.inbound_province,
                sent_fen=line.sent_fen, credited_fen=line.credited_fen, held_fen=line.held_fen,
                rejected_fen=line.rejected_fen, in_flight_fen=line.in_flight_fen, transfers=line.transfers,
                returned_fen=line.returned_fen, awaiting_return_fen=line.awaiting_return_fen,
            )
        return report

    async def LoadCalendar(self, request: admin_pb2.LoadCalendarRequest,
                           context: Any) -> admin_pb2.LoadCalendarResponse:
        operator = self._callers.operator(context, self._registry.current, "operator")
        notices = _notices(request)
        version, retimed = await self._calendar.load(notices, self._clock())
        log.info("calendar loaded", extra={"fields": {"operator": operator.id, "years": sorted(notices),
                                                      "version": version}})
        return admin_pb2.LoadCalendarResponse(version=version, stages_retimed=retimed.retimed,
                                              stages_rejudged=retimed.rejudged, now_on_time=retimed.now_on_time,
                                              now_late=retimed.now_late)

    async def GetCalendar(self, request: admin_pb2.GetCalendarRequest, context: Any) -> admin_pb2.CalendarCoverage:
        self._callers.operator(context, self._registry.current, "operator")
        calendar = self._calendar.calendar
        this_year = local_date(self._clock()).year
        out = admin_pb2.CalendarCoverage(version=calendar.version)
        for year in sorted({*range(this_year - 1, this_year + 2), *calendar.notices}):
            source = calendar.source(year)
            entry = out.years.add(year=year, source=_SOURCES[source])
            notice = calendar.notices.get(year)
            if notice is not None:
                entry.notice = notice.source
                if notice.loaded_at is not None:
                    entry.loaded_at.FromDatetime(notice.loaded_at)
        return out

    async def ReloadRegistry(
        self, request: admin_pb2.ReloadRegistryRequest, context: Any
    ) -> admin_pb2.ReloadRegistryResponse:
        """Load the given registry document, or re-read the configured file (role operator)."""
        operator = self._callers.operator(context, self._registry.current, "operator")
        try:
            if request.document:
                source = f"Admin.ReloadRegistry by {operator.id}"
                reloaded = await self._reloader.reload(request.document, source=source)
            else:
                reloaded = await self._reloader.reload_file()
        except RegistryError as exc:
            if exc.reason == "REGISTRY_INVALID":
                where = "document" if request.document else "registry file"
                raise InvalidMessage([FieldViolation(where, str(exc)[:300])], reason="REGISTRY_INVALID") from exc
            raise RegistryRefused(str(exc)[:300], reason=exc.reason) from exc
        registry = reloaded.registry
        response = admin_pb2.ReloadRegistryResponse(version=registry.version, sha256=registry.digest,
                                                    changed=reloaded.changed)
        if registry.issued_at is not None:
            response.issued_at.CopyFrom(timestamp_of(registry.issued_at))
        return response

    async def ListDeadLetters(
        self, request: admin_pb2.ListDeadLettersRequest, context: Any
    ) -> admin_pb2.ListDeadLettersResponse:
        registry = self._registry.current
        self._callers.operator(context, registry, "operator")
        bad: list[FieldViolation] = []
        if request.platform and request.platform not in registry.platforms:
            bad.append(FieldViolation("platform", f"{shown(request.platform)} is not a platform of the registry"))
        size, after = _page(request.page_size, request.page_token, _parse_token, bad)
        if bad:
            raise InvalidMessage(bad, reason="QUERY_INVALID")
        letters = await self._store.dead_letters(DeadLetterQuery(
            platform=request.platform or None, after=after, limit=size + 1))  # one more: is there a next page
        page = letters[:size]
        out = admin_pb2.ListDeadLettersResponse(
            dead_letters=[_dead_letter(d) for d in page],
            next_page_token=_token(page[-1]) if len(letters) > size else "")
        return out

    async def RedriveDeadLetters(
        self, request: admin_pb2.RedriveDeadLettersRequest, context: Any
    ) -> admin_pb2.RedriveDeadLettersResponse:
        registry = self._registry.current
        operator = self._callers.operator(context, registry, "operator")
        bad: list[FieldViolation] = []
        if request.platform not in registry.platforms:
            bad.append(FieldViolation("platform", f"{shown(request.platform)} is not a platform of the registry"))
        if request.all == bool(request.message_ids):
            bad.append(FieldViolation("message_ids", "name the dead letters to redrive, or set all (not both)"))
        if len(request.message_ids) > MAX_REDRIVE:
            bad.append(FieldViolation("message_ids", f"at most {MAX_REDRIVE} at once"
                                                     f" ({len(request.message_ids)} given)"))
        elif not all(is_uuid(m) for m in request.message_ids):
            bad.append(FieldViolation("message_ids", "each must be a message id: a canonical lower-case UUID"))
        if bad:
            raise InvalidMessage(bad)
        redriven = await self._store.redrive(request.platform, None if request.all else list(request.message_ids),
                                             self._clock())
        if redriven:
            self._router.notify(request.platform)
        log.info("redriven", extra={"fields": {"operator": operator.id, "platform": request.platform,
                                               "named": len(request.message_ids), "all": request.all,
                                               "redriven": redriven}})
        return admin_pb2.RedriveDeadLettersResponse(redriven=redriven)


def _check_review(request: admin_pb2.ReviewFundTransferRequest) -> None:
    """A decision's fields: the comment goes into a message the gateway signs and delivers to both
    sides, so it is free text like theirs. Raises InvalidMessage."""
    bad = []
    if not is_uuid(request.transfer_id):
        bad.append(FieldViolation("transfer_id", "must be a canonical lower-case UUID"))
    problem = text_problem(request.comment)
    if problem is not None:
        bad.append(FieldViolation("comment", problem))
    elif not request.approve and not request.comment.strip():
        bad.append(FieldViolation("comment", "a rejection needs a comment"))
    if bad:
        raise InvalidMessage(bad)


_SOURCES: Final = {DaySource.NOTICE: admin_pb2.YearCoverage.SOURCE_NOTICE,
                   DaySource.OFFICIAL: admin_pb2.YearCoverage.SOURCE_PACKAGE,
                   DaySource.FALLBACK: admin_pb2.YearCoverage.SOURCE_FALLBACK}


def _notices(request: admin_pb2.LoadCalendarRequest) -> dict[int, YearNotice]:
    """The request's years as checked notices. Raises InvalidMessage naming each bad field."""
    bad: list[FieldViolation] = []
    notices: dict[int, YearNotice] = {}
    if not request.years:
        bad.append(FieldViolation("years", "at least one year is required"))
    for i, y in enumerate(request.years):
        where = f"years[{i}]"
        if y.year in notices:
            bad.append(FieldViolation(f"{where}.year", f"{y.year} is listed twice"))
            continue
        days: dict[str, list[dt.date]] = {"holidays": [], "workdays": []}
        for name, dates in (("holidays", y.holidays), ("workdays", y.workdays)):
            for j, d in enumerate(dates):
                try:
                    days[name].append(dt.date(d.year, d.month, d.day))
                except ValueError:
                    bad.append(FieldViolation(f"{where}.{name}[{j}]", "is not a calendar date"))
        problem = text_problem(y.source)  # shown to operators and in logs: free text like any other
        if problem is not None:
            bad.append(FieldViolation(f"{where}.source", problem))
            continue
        try:
            notices[y.year] = year_notice(y.year, days["holidays"], days["workdays"], y.source)
        except CalendarFileError as exc:
            bad.append(FieldViolation(where, str(exc)[:200]))
    if bad:
        raise InvalidMessage(bad, reason="CALENDAR_INVALID")
    return notices


def _dead_letter(d: DeadLetter) -> admin_pb2.DeadLetter:
    out = admin_pb2.DeadLetter(platform=d.platform, receiver=d.receiver, message_id=d.message_id,
                               transfer_id=d.transfer_id, kind=d.kind, sequence=d.sequence, attempts=d.attempts,
                               reason=d.reason, size_bytes=d.size_bytes)
    if d.dead_at is not None:
        out.dead_since.FromDatetime(d.dead_at)
    return out


def _page(page_size: int, page_token: str, parse: Callable[[str], T | None],
          bad: list[FieldViolation], *, default: int = DEFAULT_PAGE) -> tuple[int, T | None]:
    """A page's size (0 means `default`) and where it starts (None: at the beginning); a bad
    size or a token this service did not issue is added to `bad`."""
    if not 0 <= page_size <= MAX_PAGE:
        bad.append(FieldViolation("page_size", f"must be 0 to {MAX_PAGE}"))
    after = None
    if page_token:
        after = parse(page_token)
        if after is None:
            bad.append(FieldViolation("page_token", "is not a token this service issued"))
    return page_size or default, after


def _held_token(held: HeldTransfer) -> str:
    """The last held transfer of a page: since when (µs since the epoch) and its transfer id."""
    return base64.urlsafe_b64encode(f"{micros(held.held_since)} {held.transfer_id}".encode()).decode()


def _parse_held_token(token: str) -> tuple[dt.datetime, str] | None:
    """What `_held_token` wrote; None for anything else (a transfer id is a case's, a UUID: any other
    text reaches the query, where PostgreSQL refuses some, a NUL, as an error of ours)."""
    try:
        since, _, transfer_id = base64.urlsafe_b64decode(token.encode()).decode().partition(" ")
        at = from_micros(int(since))
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        return None
    return (at, transfer_id) if is_uuid(transfer_id) else None


def _token(letter: DeadLetter) -> str:
    """The last letter of a page: its sequence and receiver."""
    return base64.urlsafe_b64encode(f"{letter.sequence} {letter.receiver}".encode()).decode()


def _parse_token(token: str) -> tuple[int, str] | None:
    """What `_token` wrote; None for anything else (a sequence in 64 bits, a receiver an agency's
    code: anything else reaches the query, which cannot bind it, as an error of ours)."""
    try:
        sequence, _, receiver = base64.urlsafe_b64decode(token.encode()).decode().partition(" ")
        after = int(sequence)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (after, receiver) if 0 <= after < 2**63 and is_region_code(receiver) else None
