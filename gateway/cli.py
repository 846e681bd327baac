"""`transfer-gateway`: serve, make dev certificates, run the demo, benchmark."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.app import logs

if TYPE_CHECKING:
    from gateway.app.config import GatewayConfig


def _config(args: argparse.Namespace) -> GatewayConfig | None:
    """The configuration `serve` and `migrate` use: the file, or the dev layout; then options."""
    from gateway.app.config import GatewayConfig, load_config
    from gateway.app.devpki import DevPaths
    from gateway.store.engines import store_config

    if args.config:
        config = load_config(Path(args.config))
    else:
        certs = Path(args.certs)
        if not DevPaths(certs).registry.exists():
            print(f"no dev certificates in {certs}: run `transfer-gateway certs dev` first", file=sys.stderr)
            return None
        config = GatewayConfig.dev(certs)
    if getattr(args, "listen", None):
        config = replace(config, listen=args.listen)
    if getattr(args, "metrics_listen", None) is not None:
        config = replace(config, metrics_listen=args.metrics_listen or None)
    if args.store:
        config = replace(config, store=store_config(args.store))
    return config


def _serve(args: argparse.Namespace) -> int:
    from gateway.app.server import serve

    config = _config(args)
    if config is None:
        return 2
    logs.configure(args.log_level)
    asyncio.run(serve(config))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    """Create or upgrade the schema and exit (replicas also migrate at start-up, one at a time)."""
    from gateway.app.server import utc_now
    from gateway.core.sla import Sla
    from gateway.core.workdays import WorkingCalendar
    from gateway.store.engines import make_store

    config = _config(args)
    if config is None:
        return 2
    logs.configure(args.log_level)

    async def migrate() -> None:
        store = make_store(config.store, utc_now, Sla(WorkingCalendar()))
        await store.open()
        await store.close()

    asyncio.run(migrate())
    print("schema is current")
    return 0


def _certs_dev(args: argparse.Namespace) -> int:
    from gateway.app.devpki import write_dev_pki

    paths = write_dev_pki(Path(args.out))
    print(f"wrote DEV ONLY PKI and registry to {paths.root}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gateway.devtools.demo import run_demo

    logs.configure(args.log_level)
    return run_demo(transfers=args.transfers, as_json=args.json)


def _bench(args: argparse.Namespace) -> int:
    from gateway.devtools.bench.harness import BenchConfig, run_bench

    logs.configure(args.log_level)
    config = BenchConfig.from_options(quick=args.quick, store=args.store, window=args.window,
                                      scale_messages=args.scale_messages, cases=args.cases)
    return run_bench(config, as_json=args.json)


def _report_settlement(args: argparse.Namespace) -> int:
    import datetime as dt

    from gateway.app.settlement import run_settlement_report

    return run_settlement_report(address=args.gateway, day=dt.date.fromisoformat(args.date), certs=Path(args.certs),
                                 operator=args.operator, json_output=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="transfer-gateway", description=__doc__)
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default) or ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="TOML configuration file (default: dev certificates, SQLite)")
    serve.add_argument("--certs", default="certs/dev", help="dev PKI folder when no --config is given")
    serve.add_argument("--listen", help="gRPC address, e.g. 127.0.0.1:50051")
    serve.add_argument("--metrics-listen", help="Prometheus address, e.g. 127.0.0.1:9095 ('' turns it off)")
    serve.add_argument("--store", help="postgresql://… URL or SQLite database file (default var/gateway.db)")
    serve.set_defaults(run=_serve, log_level="INFO")

    migrate = commands.add_parser("migrate", help="create or upgrade the store's schema, then exit")
    migrate.add_argument("--config", help="TOML configuration file (default: dev layout, SQLite)")
    migrate.add_argument("--certs", default="certs/dev", help="dev PKI folder when no --config is given")
    migrate.add_argument("--store", help="postgresql://… URL or SQLite database file")
    migrate.set_defaults(run=_migrate, log_level="INFO")

    certs = commands.add_parser("certs", help="certificates and keys")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True)
    dev = certs_commands.add_parser("dev", help="write a DEV ONLY CA, certificates, keys and registry")
    dev.add_argument("--out", default="certs/dev", help="folder to write (default certs/dev)")
    dev.set_defaults(run=_certs_dev)

    demo = commands.add_parser("demo", help="run a gateway and both reference platforms through N cases")
    demo.add_argument("--transfers", type=int, default=20, help="number of cases (default 20)")
    demo.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    demo.set_defaults(run=_demo)

    bench = commands.add_parser("bench", help="measure the gateway against a bare gRPC echo server (loopback)")
    bench.add_argument("--quick", action="store_true", help="shorter windows, 100,000 stored messages (< 3 min)")
    bench.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    bench.add_argument("--store", default="sqlite",
                       help="sqlite (default) or a postgresql:// URL: a schema per gateway process, dropped"
                       " afterwards, and two replicas sharing one")
    bench.add_argument("--window", type=float, help="seconds of each measured window (default 20, quick 8)")
    bench.add_argument("--scale-messages", type=int, help="messages in the large store (default 1,000,000)")
    bench.add_argument("--cases", type=int, help="cases played end to end (default 1000, quick 200)")
    bench.set_defaults(run=_bench)

    report = commands.add_parser("report", help="operator reports")
    report_commands = report.add_subparsers(dest="report_command", required=True)
    settlement = report_commands.add_parser("settlement", help="funds in transit per province pair for one day")
    settlement.add_argument("--date", required=True, help="the day (Asia/Shanghai), e.g. 2026-11-22")
    settlement.add_argument("--gateway", default="127.0.0.1:50051", help="gateway address")
    settlement.add_argument("--certs", default="certs/dev", help="folder with ca.pem and operators/<id>.pem|key")
    settlement.add_argument("--operator", default="operator", help="operator certificate to use")
    settlement.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    settlement.set_defaults(run=_report_settlement)

    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
