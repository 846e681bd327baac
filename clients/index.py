"""`python -m clients.index`: the gateway's suspended-record index (免申请, automatic transfer) from
the command line, and what each message opened.

    python -m clients.index --platform jiangsu record --at 320100 --seed 7
    python -m clients.index --platform zhejiang enroll --at 330100 --seed 7
    python -m clients.index --platform jiangsu withdraw --at 320100 --id <record id> --reason resumed
    python -m clients.index --platform zhejiang opt-out --at 330100 --enrollment <message id>

`record` registers a suspended record of the synthetic person `--seed` (its id, printed, is the
transfer id of the case it opens); `enroll` reports that person's new enrollment. Each prints the
gateway's receipt and the cases it opened (or until when an enrollment waits). An opened case is
answered like any request: `python -m clients.outbound --transfer-id <id> …` as the outbound side.
Nothing printed names the person.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence

from clients import automatic
from clients._cli import add_connection_options, config_from, description, run, summary
from clients.builders import sample_person, today_in_china
from clients.platform import PlatformClient
from mitransfer.v1 import automatic_pb2, envelope_pb2

_REASONS = {name.removeprefix("REASON_").lower().replace("_", "-"): value
            for name, value in automatic_pb2.SuspendedRecordWithdrawal.Reason.items() if value}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clients.index", description=description(__doc__))
    add_connection_options(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    record = commands.add_parser("record", help="register a suspended record (as the outbound agency)")
    record.add_argument("--at", required=True, help="the outbound agency holding the record")
    record.add_argument("--insurance", type=int, choices=(310, 390), default=310)
    record.add_argument("--suspended", type=dt.date.fromisoformat, help="suspension date (default: today)")
    record.add_argument("--id", help="the record's id (default: a new UUID)")
    record.add_argument("--seed", type=int, default=1, help="which synthetic person (default 1)")
    withdraw = commands.add_parser("withdraw", help="withdraw a record that ended otherwise")
    withdraw.add_argument("--at", required=True, help="the agency that registered it")
    withdraw.add_argument("--id", required=True, help="the record's id")
    withdraw.add_argument("--reason", choices=sorted(_REASONS), required=True)
    enroll = commands.add_parser("enroll", help="report a new enrollment (as the inbound agency)")
    enroll.add_argument("--at", required=True, help="the inbound agency where the person enrolled")
    enroll.add_argument("--insurance", type=int, choices=(310, 390), default=310)
    enroll.add_argument("--enrolled", type=dt.date.fromisoformat, help="enrollment date (default: today)")
    enroll.add_argument("--choose", nargs="*", default=[], help="only the records at these outbound agencies")
    enroll.add_argument("--seed", type=int, default=1, help="which synthetic person (default 1)")
    opt_out = commands.add_parser("opt-out", help="the person declines before a case opens")
    opt_out.add_argument("--at", required=True, help="the agency that reported the enrollment")
    opt_out.add_argument("--enrollment", required=True, help="the enrollment's message id")
    opt_out.add_argument("--text", default="")
    return parser


def message_of(args: argparse.Namespace) -> automatic.IndexMessage:
    """The message the command names. Raises ValueError for one the gateway would refuse."""
    if args.command == "record":
        return automatic.suspended_record(args.at, sample_person(args.seed), args.insurance,
                                          args.suspended or today_in_china(), transfer_id=args.id)
    if args.command == "withdraw":
        return automatic.record_withdrawal(args.at, args.id, _REASONS[args.reason])
    if args.command == "enroll":
        return automatic.enrollment(args.at, sample_person(args.seed), args.insurance,
                                    args.enrolled or today_in_china(), outbound_agencies=args.choose)
    return automatic.opt_out(args.at, args.enrollment, args.text)


def describe(receipt: envelope_pb2.ReceiptBody) -> str:
    """What the receipt says the message did."""
    if receipt.kind not in (envelope_pb2.MESSAGE_KIND_SUSPENDED_RECORD, envelope_pb2.MESSAGE_KIND_ENROLLMENT):
        return "done"
    opened = list(receipt.automatic.opened_transfer_ids)
    said = f"opened {', '.join(opened)}" if opened else "opened nothing yet"
    if receipt.automatic.HasField("waiting_until"):
        said += f"; waits until {receipt.automatic.waiting_until.ToDatetime(dt.UTC).isoformat(timespec='seconds')}"
    return said


async def _send(args: argparse.Namespace, message: automatic.IndexMessage) -> int:
    async with PlatformClient.connect(config_from(args)) as client:
        receipt = await client.submit(message)
        print(summary(receipt.kind, receipt, f"seq {receipt.sequence}: {describe(receipt)}"), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        message = message_of(args)
    except ValueError as err:
        parser.error(str(err))
    return run(_send(args, message), gateway=args.gateway)


if __name__ == "__main__":
    sys.exit(main())
