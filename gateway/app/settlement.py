"""The settlement ledger of one day as operators read it (`transfer-gateway report settlement
--date D`, which calls Admin.GetSettlement with role `operator`: `gateway.app.operator`)."""

from __future__ import annotations

import json

from mitransfer.v1 import admin_pb2


def _yuan(fen: int) -> str:
    return f"{fen / 100:,.2f}"


def render(report: admin_pb2.SettlementReport) -> str:
    d = report.date
    lines = [f"settlement {d.year:04d}-{d.month:02d}-{d.day:02d} (fund transfers sent that day, yuan)",
             f"{'out':>3} {'in':>3} {'count':>6} {'sent':>16} {'credited':>16} {'held':>14} {'rejected':>14} "
             f"{'in flight':>16}"]
    for x in report.lines:
        lines.append(f"{x.outbound_province:>3} {x.inbound_province:>3} {x.transfers:>6} {_yuan(x.sent_fen):>16} "
                     f"{_yuan(x.credited_fen):>16} {_yuan(x.held_fen):>14} {_yuan(x.rejected_fen):>14} "
                     f"{_yuan(x.in_flight_fen):>16}")
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
        } for x in report.lines],
    })
