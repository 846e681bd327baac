"""`transfer-gateway`: serve, make dev certificates, run the demo."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from gateway import logs


def _serve(args: argparse.Namespace) -> int:
    from gateway.config import GatewayConfig, load_config
    from gateway.pki import DevPaths
    from gateway.server import serve
    from gateway.store.sqlite import SQLiteConfig

    if args.config:
        config = load_config(Path(args.config))
    else:
        certs = Path(args.certs)
        if not DevPaths(certs).registry.exists():
            print(f"no dev certificates in {certs}: run `transfer-gateway certs dev` first", file=sys.stderr)
            return 2
        config = GatewayConfig.dev(certs)
    if args.listen:
        config = replace(config, listen=args.listen)
    if args.metrics_listen is not None:
        config = replace(config, metrics_listen=args.metrics_listen or None)
    if args.store:
        config = replace(config, store=SQLiteConfig(path=Path(args.store)))
    logs.configure(args.log_level)
    asyncio.run(serve(config))
    return 0


def _certs_dev(args: argparse.Namespace) -> int:
    from gateway.pki import write_dev_pki

    paths = write_dev_pki(Path(args.out))
    print(f"wrote DEV ONLY PKI and registry to {paths.root}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    logs.configure(args.log_level)
    return run_demo(transfers=args.transfers, as_json=args.json)


def _report_settlement(args: argparse.Namespace) -> int:
    import datetime as dt

    from gateway.report import run_settlement_report

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
    serve.add_argument("--store", help="SQLite database file (default var/gateway.db)")
    serve.set_defaults(run=_serve, log_level="INFO")

    certs = commands.add_parser("certs", help="certificates and keys")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True)
    dev = certs_commands.add_parser("dev", help="write a DEV ONLY CA, certificates, keys and registry")
    dev.add_argument("--out", default="certs/dev", help="folder to write (default certs/dev)")
    dev.set_defaults(run=_certs_dev)

    demo = commands.add_parser("demo", help="run a gateway and both reference platforms through N cases")
    demo.add_argument("--transfers", type=int, default=20, help="number of cases (default 20)")
    demo.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    demo.set_defaults(run=_demo)

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
