"""`transfer-gateway`: serve, check a configuration, migrate, review held transfers, report,
list and redrive dead letters, verify and export the transparency log, make dev certificates, run
the demo, benchmark.

Every command ends the same way on failure: one `error:` line naming the file, setting or
address (and a `hint:` when one helps), and an exit code by kind: 78 for configuration, 69 for
an unreachable dependency, 1 otherwise (`gateway.app.failures`).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.app import logs
from gateway.app.build import BuildInfo
from gateway.app.failures import ConfigError, ExitCode, OperatorError, boundary

if TYPE_CHECKING:
    from gateway.app.config import GatewayConfig


def _store_table(value: str) -> dict[str, str]:
    """`--store`: a postgresql:// URL, or a SQLite file (relative to the current folder)."""
    if value.startswith(("postgresql://", "postgres://")):
        return {"postgresql": value}
    return {"sqlite": str(Path(value).absolute())}


def _gateway_config(args: argparse.Namespace) -> tuple[GatewayConfig, str]:
    """The configuration `serve` and `migrate` use, and where it came from: the file, or the dev
    layout; command-line options replace its settings and are checked the same way.

    Raises ConfigError.
    """
    from gateway.app.config import config_from, dev_settings, load_config
    from gateway.app.devpki import DevPaths

    overrides: dict[str, tuple[str, Any]] = {}
    if getattr(args, "listen", None) is not None:
        overrides["listen"] = ("--listen", args.listen)
    if getattr(args, "metrics_listen", None) is not None:
        overrides["metrics_listen"] = ("--metrics-listen", args.metrics_listen)
    if args.store:
        overrides["store"] = ("--store", _store_table(args.store))
    if getattr(args, "workers", None) is not None:
        overrides["workers"] = ("--workers", args.workers)
    if args.config:
        return load_config(Path(args.config), overrides), args.config
    certs = Path(args.certs)
    if not DevPaths(certs).registry.exists():
        raise ConfigError(f"{certs}: no dev certificates there (no registry.json)",
                          hint="run `transfer-gateway certs dev`, or give --config FILE")
    source = f"dev layout {certs}"
    return config_from(dev_settings(certs), source=source, base=Path.cwd(), overrides=overrides), source


def _serve(args: argparse.Namespace) -> int:
    from gateway.app.assembly import assemble, read_materials
    from gateway.app.server import serve, utc_now

    config, source = _gateway_config(args)
    if config.workers > 1 and args.worker_index is None:
        from gateway.app.workers import supervise

        read_materials(config, now=utc_now())  # every file checked once, before any worker starts
        return supervise(config, _worker_arguments(args))
    if args.worker_index is not None:
        logs.configure(args.effective_log_level, context={"worker": args.worker_index})
    server = assemble(config, source=source, worker=args.worker_index)  # reads every file before anything starts
    parent = socket.socket(fileno=args.parent_fd) if args.parent_fd is not None else None
    asyncio.run(serve(server, parent))
    return ExitCode.OK


def _worker_arguments(args: argparse.Namespace) -> list[str]:
    """The `serve` arguments every worker of this command shares (each gets its addresses and
    index from the parent, `gateway.app.workers`)."""
    shared = ["serve", "--log-level", args.effective_log_level]
    shared += ["--config", args.config] if args.config else ["--certs", args.certs]
    if args.store:
        shared += ["--store", args.store]
    if args.workers is not None:
        shared += ["--workers", str(args.workers)]
    return shared


def _migrate(args: argparse.Namespace) -> int:
    """Create or upgrade the schema and exit (replicas also migrate at start-up, one at a time)."""
    from gateway.app.progress import Progress
    from gateway.app.server import store_description, utc_now
    from gateway.core.sla import Sla
    from gateway.core.workdays import WorkingCalendar
    from gateway.store.engines import make_store
    from gateway.store.migrations import MIGRATIONS

    config, _ = _gateway_config(args)
    kind, where = store_description(config.store)

    async def migrate() -> None:
        # Migrations read no deadlines: the calendar file is not needed to run them.
        store = make_store(config.store, utc_now, Sla(WorkingCalendar(), config.sla.limits))
        with Progress.start(f"migrating the {kind} store {where}"):
            await store.open()
        await store.close()

    asyncio.run(migrate())
    print(f"schema is current (version {len(MIGRATIONS)}) in the {kind} store {where}")
    return ExitCode.OK


def _check_config(args: argparse.Namespace) -> int:
    from gateway.app.checks import check_config

    return check_config(Path(args.file), out=sys.stdout)


def _certs_dev(args: argparse.Namespace) -> int:
    from gateway.app.devpki import PkiExists, write_dev_pki
    from mitransfer.protocol.errors import UnusableKey

    try:
        paths = write_dev_pki(Path(args.out), force=args.force, signing_algorithm=args.algorithm)
    except PkiExists as err:
        raise OperatorError(str(err), hint="--force replaces it; every platform then needs its new files and the"
                                           " new registry") from err
    except UnusableKey as err:
        raise OperatorError(f"cannot make {args.algorithm} keys: {err}") from err
    except OSError as err:
        raise OperatorError(f"{args.out}: cannot write there: {err.strerror or err}") from err
    print(f"wrote DEV ONLY PKI and registry to {paths.root} (private keys mode 0600)")
    return ExitCode.OK


def _demo(args: argparse.Namespace) -> int:
    from gateway.devtools.demo import run_demo

    return run_demo(transfers=args.transfers, as_json=args.json)


def _bench(args: argparse.Namespace) -> int:
    from gateway.devtools.bench.harness import BenchConfig, run_bench

    config = BenchConfig.from_options(quick=args.quick, store=args.store, window=args.window,
                                      scale_messages=args.scale_messages, cases=args.cases)
    return run_bench(config, as_json=args.json)


def _log_sources(args: argparse.Namespace) -> tuple[Any, Path]:
    """(store configuration, registry file) of `log verify` and `log export`: the options, else
    the configuration file's, else the dev layout's. Raises ConfigError."""
    from gateway.app.config import load_config
    from gateway.app.devpki import DevPaths
    from gateway.store.engines import store_config

    config = load_config(Path(args.config)) if args.config else None
    store = store_config(args.store) if args.store else (config.store if config else store_config("var/gateway.db"))
    registry = Path(args.registry) if args.registry else (config.registry if config else DevPaths(
        Path(args.certs)).registry)
    return store, registry


def _log_verify(args: argparse.Namespace) -> int:
    from gateway.app import logtool

    store, registry_path = _log_sources(args)
    registry = logtool.load_registry(registry_path)
    if args.bundle:
        return logtool.verify_bundle(Path(args.bundle), registry, sys.stdout)
    return logtool.verify_store(store, registry, sys.stdout)


def _log_export(args: argparse.Namespace) -> int:
    from gateway.app import logtool

    store, registry_path = _log_sources(args)
    registry = logtool.load_registry(registry_path)
    return logtool.export(store, registry.log_origin, Path(args.out), sys.stdout, force=args.force)


class _Version(argparse.Action):
    """`--version`: one line, unwrapped (argparse's own action wraps it at the terminal width)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(BuildInfo.current().line())
        parser.exit()


def _common() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", type=str.upper, choices=logs.LEVELS, default=argparse.SUPPRESS,
                        help="DEBUG, INFO, WARNING or ERROR (default: INFO for serve and migrate, else WARNING)")
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="transfer-gateway", description=__doc__.split("\n\n")[0],
                                     parents=[common])
    parser.add_argument("--version", action=_Version, help="print the version and the libraries' versions, then exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: Any, name: str, run: Callable[[argparse.Namespace], int], help_text: str,
                level: str = "WARNING") -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text,
                                                         parents=[common])
        sub.set_defaults(run=run, default_log_level=level)
        return sub

    serve = command(commands, "serve", _serve, "run the gateway", level="INFO")
    serve.add_argument("--config", help="TOML configuration file (default: the dev layout of --certs, SQLite)")
    serve.add_argument("--certs", default="certs/dev", help="dev PKI folder when no --config is given")
    serve.add_argument("--listen", help="gRPC address host:port, e.g. 127.0.0.1:50051 (replaces listen)")
    serve.add_argument("--metrics-listen", help="Prometheus address host:port ('' turns it off)")
    serve.add_argument("--store", help="postgresql://… URL or SQLite database file (replaces [store])")
    serve.add_argument("--workers", type=int, help="gateway processes sharing the listen address, each a replica"
                       " on the PostgreSQL store (replaces workers; default 1)")
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the workers' parent
    serve.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)     # the parent's socket, inherited

    check = command(commands, "check-config", _check_config,
                    "check a configuration file and every file it names, without starting")
    check.add_argument("file", help="the TOML configuration file")

    migrate = command(commands, "migrate", _migrate, "create or upgrade the store's schema, then exit",
                      level="INFO")
    migrate.add_argument("--config", help="TOML configuration file (default: the dev layout, SQLite)")
    migrate.add_argument("--certs", default="certs/dev", help="dev PKI folder when no --config is given")
    migrate.add_argument("--store", help="postgresql://… URL or SQLite database file (replaces [store])")

    report = commands.add_parser("report", help="operator reports", parents=[common])
    report_commands = report.add_subparsers(dest="report_command", required=True, metavar="REPORT")
    from gateway.app.operator import add_operator_commands

    add_operator_commands(commands, report_commands,
                          lambda parent, name, run, help_text: command(parent, name, run, help_text), common)

    log_parser = commands.add_parser("log", help="the transparency log: verify it, export it", parents=[common])
    log_commands = log_parser.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    verify = command(log_commands, "verify", _log_verify,
                     "recompute the log's tree and ledger, check every checkpoint and compare the store's rows")
    export = command(log_commands, "export", _log_export,
                     "write the log's entries and checkpoints to a bundle (mode 0600) anyone can verify")
    for sub in (verify, export):
        sub.add_argument("--config", help="TOML configuration file: its store and registry")
        sub.add_argument("--store", help="postgresql://… URL or SQLite database file (default: the configuration's,"
                         " else var/gateway.db)")
        sub.add_argument("--registry", help="registry.json with the gateway's public keys (default: the"
                         " configuration's, else the dev layout's)")
        sub.add_argument("--certs", default="certs/dev", help="dev PKI folder when neither is given")
    verify.add_argument("--bundle", help="verify an exported bundle instead of a store")
    export.add_argument("--out", required=True, help="the bundle file to write (JSON Lines, mode 0600)")
    export.add_argument("--force", action="store_true", help="replace the file if it exists")

    certs = commands.add_parser("certs", help="certificates and keys", parents=[common])
    certs_commands = certs.add_subparsers(dest="certs_command", required=True, metavar="KIND")
    dev = command(certs_commands, "dev", _certs_dev, "write a DEV ONLY CA, certificates, keys and registry")
    dev.add_argument("--out", default="certs/dev", help="folder to write (default certs/dev)")
    dev.add_argument("--force", action="store_true", help="replace a PKI already in the folder")
    dev.add_argument("--algorithm", default="ed25519", help="message and receipt signing keys: ed25519 (default),"
                     " ecdsa-p256-sha256 or sm2-sm3 (needs the sm extra)")

    demo = command(commands, "demo", _demo, "run a gateway and both reference platforms through N cases")
    demo.add_argument("--transfers", type=int, default=20, help="number of cases (default 20)")
    demo.add_argument("--json", action="store_true", help="print one JSON object on the last line")

    bench = command(commands, "bench", _bench, "measure the gateway against a bare gRPC echo server (loopback)")
    bench.add_argument("--quick", action="store_true", help="shorter windows, 100,000 stored messages (< 3 min)")
    bench.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    bench.add_argument("--store", default="sqlite",
                       help="sqlite (default) or a postgresql:// URL: a schema per gateway process, dropped"
                       " afterwards, and two replicas sharing one")
    bench.add_argument("--window", type=float, help="seconds of each measured window (default 20, quick 8)")
    bench.add_argument("--scale-messages", type=int, help="messages in the large store (default 1,000,000)")
    bench.add_argument("--cases", type=int, help="cases played end to end (default 1000, quick 200)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.effective_log_level = getattr(args, "log_level", None) or args.default_log_level
    logs.configure(args.effective_log_level)
    return boundary(lambda: int(args.run(args)))


if __name__ == "__main__":
    sys.exit(main())
