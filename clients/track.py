"""`python -m clients.track`: show a case as a timeline, or list cases, as a platform sees them.

    python -m clients.track --platform jiangsu 4480c4db-84eb-4f3f-93c9-b73205fc6890
    python -m clients.track --platform jiangsu --list --overdue
    python -m clients.track --platform jiangsu --list --overdue --owner outbound --state opened

The timeline shows each stage with whose clock it is, its deadline and how it stands (a
provisional deadline counts a year whose holidays are not known yet), then every message with the
times it was accepted, delivered and acknowledged (Beijing time), the way provincial apps show
each step of a transfer. It never prints a person's name or certificate number: the gateway's
tracking view does not carry them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from typing import Final
from zoneinfo import ZoneInfo

from google.protobuf.timestamp_pb2 import Timestamp

from clients._cli import Progress, add_connection_options, config_from, description, run
from clients.messages import kind_name
from clients.platform import PlatformClient
from mitransfer.v1 import messages_pb2, tracking_pb2

BEIJING: Final = ZoneInfo("Asia/Shanghai")
STATE_LABELS: Final = {
    tracking_pb2.CASE_STATE_OPENED: "已申请", tracking_pb2.CASE_STATE_OUTBOUND_ACCEPTED: "已转出",
    tracking_pb2.CASE_STATE_TABLE_SENT: "信息表已发送", tracking_pb2.CASE_STATE_FUNDS_SENT: "资金已划出",
    tracking_pb2.CASE_STATE_HELD_FOR_REVIEW: "待复核", tracking_pb2.CASE_STATE_INBOUND_ACCEPTED: "转入地已受理",
    tracking_pb2.CASE_STATE_FUNDS_CREDITED: "资金已入账", tracking_pb2.CASE_STATE_COMPLETED: "转入完成",
    tracking_pb2.CASE_STATE_REFUSED: "不予转出", tracking_pb2.CASE_STATE_INBOUND_REJECTED: "转入地退回",
    tracking_pb2.CASE_STATE_WITHDRAWN: "已撤回", tracking_pb2.CASE_STATE_REVIEW_REJECTED: "复核未通过",
    tracking_pb2.CASE_STATE_EXPIRED: "已过期", tracking_pb2.CASE_STATE_AWAITING_FUND_RETURN: "待退回",
    tracking_pb2.CASE_STATE_FUNDS_RETURNED: "资金已退回", tracking_pb2.CASE_STATE_CLOSED_BY_OPERATOR: "人工关闭",
    tracking_pb2.CASE_STATE_AWAITING_RESOLUTION: "待解除阻断",
}
STAGE_LABELS: Final = {tracking_pb2.STAGE_OUTBOUND: "转出 outbound", tracking_pb2.STAGE_REVIEW: "复核 review",
                       tracking_pb2.STAGE_INBOUND: "转入 inbound", tracking_pb2.STAGE_TOTAL: "全程 total",
                       tracking_pb2.STAGE_RETURN: "退回 return", tracking_pb2.STAGE_RETURN_RECEIPT: "退回确认 receipt",
                       tracking_pb2.STAGE_RESOLUTION: "解除阻断 resolution"}
OWNER_LABELS: Final = {tracking_pb2.STAGE_OWNER_OUTBOUND: "转出地", tracking_pb2.STAGE_OWNER_INBOUND: "转入地",
                       tracking_pb2.STAGE_OWNER_REVIEWER: "复核", tracking_pb2.STAGE_OWNER_BOTH: "双方",
                       tracking_pb2.STAGE_OWNER_PERSON: "参保人"}
OWNERS: Final = {"outbound": tracking_pb2.STAGE_OWNER_OUTBOUND, "inbound": tracking_pb2.STAGE_OWNER_INBOUND,
                 "reviewer": tracking_pb2.STAGE_OWNER_REVIEWER, "both": tracking_pb2.STAGE_OWNER_BOTH,
                 "person": tracking_pb2.STAGE_OWNER_PERSON}
TIMELINESS_LABELS: Final = {
    tracking_pb2.TIMELINESS_ON_TIME: "正常 on time", tracking_pb2.TIMELINESS_DUE_SOON: "即将到期 due soon",
    tracking_pb2.TIMELINESS_OVERDUE: "已超期 OVERDUE", tracking_pb2.TIMELINESS_LATE: "超期办结 late",
}
DELIVERY_LABELS: Final = {
    tracking_pb2.DELIVERY_STATE_PENDING: "待投递", tracking_pb2.DELIVERY_STATE_IN_FLIGHT: "投递中",
    tracking_pb2.DELIVERY_STATE_ACKNOWLEDGED: "已确认", tracking_pb2.DELIVERY_STATE_DEAD_LETTER: "死信",
    tracking_pb2.DELIVERY_STATE_HELD: "待复核", tracking_pb2.DELIVERY_STATE_CANCELLED: "已取消",
}


def _when(ts: Timestamp, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return ts.ToDatetime(dt.UTC).astimezone(BEIJING).strftime(fmt) if ts.seconds or ts.nanos else "—"


def _state(state: tracking_pb2.CaseState.ValueType) -> str:
    return f"{STATE_LABELS.get(state, '?')} ({tracking_pb2.CaseState.Name(state).removeprefix('CASE_STATE_')})"


_CHANNELS = {
    messages_pb2.TransferRequest.CHANNEL_ONLINE: "网上申请 online application",
    messages_pb2.TransferRequest.CHANNEL_COUNTER: "窗口申请 counter application",
    messages_pb2.TransferRequest.CHANNEL_EMPLOYER: "单位代办 the employer's application",
    messages_pb2.TransferRequest.CHANNEL_AUTOMATIC: "免申请 the gateway, from a new enrollment",
}


def _channel(channel: messages_pb2.TransferRequest.Channel.ValueType) -> str:
    """How a case opened (unset: the outbound notice opened it, the application lodged there)."""
    return _CHANNELS.get(channel, "转出地申请 an application at the outbound side")


def render_case(case: tracking_pb2.Case) -> str:
    """A case as a readable timeline (times in Beijing time)."""
    lines = [
        f"转移业务 transfer {case.transfer_id}",
        f"  {case.outbound} → {case.inbound}   状态 state: {_state(case.state)}",
        f"  开始 opened {_when(case.opened_at)}   最近更新 updated {_when(case.updated_at)}",
        f"  申请渠道 opened by {_channel(case.channel)}",
    ]
    if case.account_balance_fen:
        lines.append(f"  个人账户转出 balance {case.account_balance_fen / 100:,.2f} 元")
    if case.account_balance_retained_fen:
        lines.append(f"  个人账户留存 retained at the outbound side {case.account_balance_retained_fen / 100:,.2f} 元")
    if case.HasField("continuity"):
        c = case.continuity
        lines.append(f"  待遇衔接 continuity: gap {c.gap_months} month(s), "
                     + ("continuous" if c.continuous else f"waiting period {c.waiting_period_months} month(s)")
                     + f", benefits from {c.benefits_from.year:04d}-{c.benefits_from.month:02d}-"
                       f"{c.benefits_from.day:02d}"
                     + (f" ({c.rule}, insured {c.insured_months} month(s) before)" if c.rule else ""))
    if case.stages:
        lines.append("时限 stages (working days):")
        for s in case.stages:
            last = f"{s.last_day.year:04d}-{s.last_day.month:02d}-{s.last_day.day:02d}"
            done = f"done {_when(s.finished_at, '%m-%d %H:%M')}" if s.HasField("finished_at") else "running"
            owner = f"{OWNER_LABELS.get(s.owner, '?')} {s.owner_agency}".strip()
            lines.append(f"  {STAGE_LABELS.get(s.stage, '?'):<14} {owner:<13} limit {s.working_days_limit:>2}  "
                         f"last day {last}{'*' if s.provisional else ' '}  used {s.working_days_used:>2}  "
                         f"took {s.working_days_elapsed:5.2f}  {TIMELINESS_LABELS.get(s.timeliness, '?'):<16} {done}")
        if any(s.provisional for s in case.stages):
            lines.append("  * provisional: counts days of a year whose official holidays are not loaded yet")
    if case.messages:
        lines.append("节点 messages (accepted → delivered → acknowledged):")
        for m in case.messages:
            extra = ""
            if m.ack_status:  # an acknowledgement: show its status
                extra = " " + messages_pb2.Acknowledgement.Status.Name(m.ack_status).removeprefix("STATUS_")
            lines.append(
                f"  #{m.sequence:<6} {kind_name(m.kind):<18} {m.sender:>7} → {m.receiver:<7} "
                f"{_when(m.accepted_at)} → {_when(m.delivered_at, '%H:%M:%S')} → "
                f"{_when(m.acknowledged_at, '%H:%M:%S')}  {DELIVERY_LABELS.get(m.delivery_state, '?')}{extra}")
    return "\n".join(lines)


def render_list(cases: Sequence[tracking_pb2.Case]) -> str:
    """One line a case: id, agencies, state and the worst stage timeliness."""
    lines = []
    for c in cases:
        # Running stages only: on time < due soon < overdue.
        worst = max((s.timeliness for s in c.stages if not s.HasField("finished_at")),
                    default=tracking_pb2.TIMELINESS_UNSPECIFIED)
        lines.append(f"{c.transfer_id}  {c.outbound} → {c.inbound}  {_when(c.opened_at, '%Y-%m-%d')}  "
                     f"{_state(c.state):<28} {TIMELINESS_LABELS.get(worst, '')}")
    return "\n".join(lines) if lines else "(no cases)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clients.track", description=description(__doc__))
    add_connection_options(parser)
    parser.add_argument("transfer_id", nargs="?", help="the case to show")
    parser.add_argument("--list", action="store_true", help="list cases instead of showing one")
    parser.add_argument("--overdue", action="store_true", help="with --list: only cases with an overdue stage")
    parser.add_argument("--due-soon", action="store_true", help="with --list: only cases with a stage due soon")
    parser.add_argument("--state", action="append", default=[], choices=[
        v.name.removeprefix("CASE_STATE_").lower() for v in tracking_pb2.CaseState.DESCRIPTOR.values if v.number],
        help="with --list: only cases in this state (repeatable)")
    parser.add_argument("--owner", choices=sorted(OWNERS),
                        help="with --overdue or --due-soon: only stages on this side's clock")
    parser.add_argument("--limit", type=int, default=100, help="with --list: at most this many cases")
    return parser


async def _run(args: argparse.Namespace) -> int:
    async with PlatformClient.connect(config_from(args)) as client:
        if not args.list:
            print(render_case(await client.get_case(args.transfer_id)))
            return 0
        request = tracking_pb2.ListCasesRequest(
            overdue=args.overdue, due_soon=args.due_soon, page_size=min(args.limit, 500),
            owner=OWNERS[args.owner] if args.owner else tracking_pb2.STAGE_OWNER_UNSPECIFIED,
            states=[tracking_pb2.CaseState.Value("CASE_STATE_" + s.upper()) for s in args.state])
        cases: list[tracking_pb2.Case] = []
        progress = Progress("cases listed")
        try:
            while len(cases) < args.limit:
                page = await client.list_cases(request)
                cases += page.cases
                progress.update(len(cases))
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
        finally:
            progress.close()
        print(render_list(cases[:args.limit]))
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.list and not args.transfer_id:
        parser.error("give a transfer id, or --list")
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.owner and not (args.overdue or args.due_soon):
        parser.error("--owner goes with --overdue or --due-soon")
    return run(_run(args), gateway=args.gateway)


if __name__ == "__main__":
    sys.exit(main())
