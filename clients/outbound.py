"""`python -m clients.outbound`: send one case as the outbound agency (转出地) and print the
gateway's receipts: notice, information table, and the fund transfer when there is a balance.

    python -m clients.outbound --platform jiangsu --from 320100 --to 330100 --balance-fen 123456
    python -m clients.outbound --platform jiangsu --case case.json
    python -m clients.outbound --platform jiangsu --from 320100 --to 330100 --transfer-id <id> --seed 7

--transfer-id answers a case opened at the inbound side: a transfer request, or the gateway's
automatic request for a suspended record registered with `python -m clients.index record` (the
record's id; --seed the same person).

The case is synthetic unless --case names a JSON file; any key it leaves out is synthetic too:
    {"from": "320100", "to": "330100", "insurance": 310, "inbound_insurance": 310, "balance_fen": 123456,
     "person": {"certificate_number": "...", "name": "...", "psn_no": "..."}, "suspension_date": "2026-05-06",
     "periods": [{"pooling_region": "320100", "first_month": "2019-01", "last_month": "2026-05",
                  "months_paid": 89, "months_deemed": 0, "insurance_type": 310}],
     "cumulative_months": 89}
"inbound_insurance" is the scheme at the inbound side (default: the same); from 310 to 390 the
balance is reported as retained at the outbound side and nothing moves. "cumulative_months" is
needed only when periods overlap.
Options given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from clients._cli import EX_FAILURE, CliError, add_connection_options, config_from, description, run, summary
from clients.builders import Route, contribution_period, sample_periods
from clients.platform import PlatformClient
from clients.scenario import CasePlan, OutboundMessage, outbound_messages
from mitransfer.v1 import messages_pb2, types_pb2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clients.outbound", description=description(__doc__))
    add_connection_options(parser)
    parser.add_argument("--from", dest="outbound", help="outbound agency code (one of this platform's)")
    parser.add_argument("--to", dest="inbound", help="inbound agency code")
    parser.add_argument("--insurance", type=int, choices=(310, 390), help="310 employee or 390 resident")
    parser.add_argument("--inbound-insurance", type=int, choices=(310, 390),
                        help="the scheme at the inbound side (default: the same as --insurance)")
    parser.add_argument("--balance-fen", type=int, help="personal-account balance in fen (310 only)")
    parser.add_argument("--case", type=Path, help="JSON file describing the case")
    parser.add_argument("--seed", type=int, default=1, help="which synthetic person (default 1)")
    parser.add_argument("--transfer-id", help="answer this open case (default: open a new one)")
    return parser


def plan_from(args: argparse.Namespace, described: Mapping[str, Any]) -> CasePlan:
    """The case to send: command-line options, then the JSON description, then synthetic values.

    Raises ValueError (or KeyError) for an incomplete or malformed description.
    """
    outbound = args.outbound or described.get("from")
    inbound = args.inbound or described.get("to")
    if not outbound or not inbound:
        raise ValueError("give the agencies with --from and --to (or in --case)")
    insurance = args.insurance or int(described.get("insurance", 310))
    inbound_insurance = args.inbound_insurance or int(described.get("inbound_insurance", insurance))
    balance = args.balance_fen if args.balance_fen is not None else int(described.get("balance_fen", 0))
    plan = CasePlan.synthetic(outbound, inbound, insurance_type=types_pb2.InsuranceType.ValueType(insurance),
                              balance_fen=balance, seed=args.seed,
                              inbound_insurance_type=types_pb2.InsuranceType.ValueType(inbound_insurance))
    if "suspension_date" in described:
        plan = replace(plan, suspension_date=dt.date.fromisoformat(described["suspension_date"]))
    if "person" in described:
        p = described["person"]
        plan = replace(plan, person=types_pb2.Person(
            certificate_type=types_pb2.CertificateType.ValueType(
                int(p.get("certificate_type", types_pb2.CERTIFICATE_TYPE_RESIDENT_ID_CARD))),
            certificate_number=str(p["certificate_number"]), name=str(p["name"]), psn_no=str(p.get("psn_no", ""))))
    if "periods" in described:
        plan = replace(plan, periods=tuple(_period(p) for p in described["periods"]))
    if "cumulative_months" in described:
        plan = replace(plan, cumulative_months=int(described["cumulative_months"]))
    elif "suspension_date" in described:  # keep the synthetic periods within the suspension month
        plan = replace(plan, periods=tuple(sample_periods(outbound, plan.suspension_date, args.seed)))
    transfer_id = args.transfer_id or described.get("transfer_id")
    if transfer_id:
        plan = replace(plan, route=Route(str(transfer_id), plan.route.outbound, plan.route.inbound))
    return plan


def _period(p: Mapping[str, Any]) -> messages_pb2.ContributionPeriod:
    def ym(text: str) -> tuple[int, int]:
        year, month = text.split("-")
        return int(year), int(month)

    return contribution_period(str(p["pooling_region"]), ym(p["first_month"]), ym(p["last_month"]),
                               int(p["months_paid"]), months_deemed=int(p.get("months_deemed", 0)),
                               insurance_type=types_pb2.InsuranceType.ValueType(int(p.get("insurance_type", 0))))


async def _send(args: argparse.Namespace, plan: CasePlan, messages: list[OutboundMessage]) -> int:
    async with PlatformClient.connect(config_from(args)) as client:
        if plan.route.outbound not in client.agencies:
            raise CliError(f"--from {plan.route.outbound} is not an agency of platform {client.platform} "
                           f"(it speaks for {', '.join(client.agencies)})")
        print(f"transfer {plan.route.transfer_id}: {plan.route.outbound} → {plan.route.inbound}", flush=True)
        for message in messages:  # in order: each needs the one before
            receipt = await client.submit(message)
            accepted = receipt.accepted_at.ToDatetime(dt.UTC).isoformat(timespec="milliseconds")
            print(summary(receipt.kind, receipt,
                          f"seq {receipt.sequence} accepted {accepted} sha256 {receipt.payload_sha256.hex()[:16]}"),
                  flush=True)
    return 0


def _case(args: argparse.Namespace) -> tuple[CasePlan, list[OutboundMessage]]:
    """The case to send and its messages, checked before connecting. Raises CliError naming the
    file or option that does not describe a valid case."""
    where = str(args.case) if args.case else "the options"
    try:
        described = json.loads(args.case.read_text(encoding="utf-8")) if args.case else {}
    except OSError as err:
        raise CliError(f"--case {args.case}: {err.strerror}") from None
    except ValueError as err:
        raise CliError(f"--case {args.case}: not JSON: {err}") from None
    if not isinstance(described, dict):
        raise CliError(f"--case {args.case}: expected a JSON object")
    try:
        plan = plan_from(args, described)
        return plan, outbound_messages(plan)  # refuses an invalid case before connecting
    except KeyError as err:
        raise CliError(f"{where}: the case lacks {err}", exit_code=EX_FAILURE) from None
    except (ValueError, TypeError, AttributeError) as err:
        raise CliError(f"{where}: not a valid case: {err}", exit_code=EX_FAILURE) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not (args.outbound and args.inbound) and not args.case:
        parser.error("give the agencies with --from and --to, or a case with --case")

    async def send() -> int:
        plan, messages = _case(args)
        return await _send(args, plan, messages)

    return run(send(), gateway=args.gateway)


if __name__ == "__main__":
    sys.exit(main())
