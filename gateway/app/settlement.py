"""The settlement ledger of one day as operators read it (`transfer-gateway report settlement
--date D`, which calls Admin.GetSettlement with role `operator`: `gateway.app.operator`).

Each line balances: sent = credited + returned + held + in flight. Rejected and awaiting return
say more about money already counted there (rejected: stopped in review or rejected by the inbound
side, wherever it is now; awaiting return: rejected after it arrived, not yet confirmed back).
"""

from __future__ import annotations

import json

from mitransfer.v1 import admin_pb2


def _yuan(fen: int) -> str:
    return f"{fen / 100:,.2f}"


def render(report: admin_pb2.SettlementReport) -> str:
    d = report.date
    lines = [f"settlement {d.year:04d}-{d.month:02d}-{d.day:02d} (fund transfers sent that day, yuan;"
             " sent = credited + returned + held + in flight)",
             f"{'out':>3} {'in':>3} {'count':>6} {'sent':>16} {'credited':>16} {'returned':>14} {'held':>14} "
             f"{'in flight':>16} {'rejected':>14} {'to return':>14}"]
    for x in report.lines:
        lines.append(f"{x.outbound_province:>3} {x.inbound_province:>3} {x.transfers:>6} {_yuan(x.sent_fen):>16} "
                     f"{_yuan(x.credited_fen):>16} {_yuan(x.returned_fen):>14} {_yuan(x.held_fen):>14} "
                     f"{_yuan(x.in_flight_fen):>16} {_yuan(x.rejected_fen):>14} {_yuan(x.awaiting_return_fen):>14}")
    if not report.lines:
        lines.append("(no fund transfers)")
    return "\n".join(lines)


def as_json(report: admin_pb2.SettlementReport) -> str:
    d = report.date
    return json.dumps({
        "date": f"{d.year:04d}-{d.month:02d}-{d.day:02d}",
        "lines": [{
            "outbound_province": x.outbound_province, "inbound_province": x.inbound_province,
            "transfers": x.transfers, "sent_fen": x.sent_fen, "credited_fen": x.credited_fen,
            "held_fen": x.held_fen, "rejected_fen": x.rejected_fen, "in_flight_fen": x.in_flight_fen,
            "returned_fen": x.returned_fen, "awaiting_return_fen": x.awaiting_return_fen,
        } for x in report.lines],
    })
