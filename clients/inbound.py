"""`python -m clients.inbound`: receive deliveries as a platform, print one line each and
optionally answer as the inbound side (转入地) of the case.

    python -m clients.inbound --platform zhejiang --auto-answer

Each line shows kind, message id, transfer id and sender → receiver (and an acknowledgement's
status); never the person's name or certificate number. Stops on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from clients._cli import add_connection_options, config_from, description, run, summary
from clients.deliveries import VerifiedDelivery
from clients.messages import kind_name
from clients.platform import PlatformClient
from clients.scenario import ReferencePlatform
from mitransfer.v1 import admin_pb2, automatic_pb2, messages_pb2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clients.inbound", description=description(__doc__))
    add_connection_options(parser)
    parser.add_argument("--agencies", nargs="*", default=[], help="only these agencies (default: all of ours)")
    parser.add_argument("--auto-answer", action="store_true",
                        help="answer tables and fund transfers as the inbound side (accept, credit, complete)")
    parser.add_argument("--max-deliveries", type=_count, default=0, help="stop after this many (0: never)")
    return parser


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0, 1, 2, …)")
    return int(text)


def describe(delivery: VerifiedDelivery) -> str:
    message = delivery.message
    if isinstance(message, automatic_pb2.AutomaticTransferRequest):
        return (f"{kind_name(delivery.kind)} {message.message_id} transfer {message.transfer_id} "
                f"gateway → {message.outbound}/{message.inbound} opened by enrollment {message.enrollment_message_id}")
    if isinstance(message, admin_pb2.ReviewDecision | admin_pb2.CaseExpired | admin_pb2.CaseClosed):
        what = (("approved" if message.approved else "rejected") if isinstance(message, admin_pb2.ReviewDecision)
                else "closed by an operator" if isinstance(message, admin_pb2.CaseClosed) else "expired")
        return (f"{kind_name(delivery.kind)} {message.message_id} transfer {message.transfer_id} "
                f"gateway → {message.outbound}/{message.inbound} {what}")
    extra = ""
    if isinstance(message, messages_pb2.Acknowledgement):
        extra = messages_pb2.Acknowledgement.Status.Name(message.status).removeprefix("STATUS_")
    if delivery.attempt > 1:
        extra += f" (attempt {delivery.attempt})"
    return summary(delivery.kind, message.header, extra.strip())


async def _run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on every platform
            loop.add_signal_handler(sig, stop.set)
    seen = 0
    async with PlatformClient.connect(config_from(args)) as client:
        reference = ReferencePlatform(client, agencies=args.agencies)

        async def handle(delivery: VerifiedDelivery) -> None:
            nonlocal seen
            print(describe(delivery), flush=True)
            if args.auto_answer:
                await reference.handle(delivery)
            seen += 1
            if args.max_deliveries and seen >= args.max_deliveries:
                stop.set()

        await client.subscribe(handle, args.agencies, stop=stop)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(_run(args), gateway=args.gateway)


if __name__ == "__main__":
    sys.exit(main())
