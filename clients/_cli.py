"""What the command-line tools share: connection options, the one-line message summary, and the
error boundary every tool runs in.

A tool's failure is one `error:` line (a refusal's field violations follow, one line each, each
said once), a `hint:` where one helps, and an exit code by kind: 78 for our own configuration (a
missing certificate, an unknown platform, a malformed address), 69 when the gateway cannot be
reached before `--timeout`, 1 for anything else (the gateway refused, a receipt did not verify).
Each retry is a line on stderr as it happens, so a dead gateway is never a silent wait.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from clients.channel import channel_target
from clients.errors import ClientError, GatewayRejected, GatewayUnavailable, RegistryError, VerificationError
from clients.messages import MessageKind, kind_name
from clients.platform import PlatformConfig
from clients.retry import RetryPolicy
from clients.signing import KeyRing
from mitransfer.v1 import envelope_pb2, messages_pb2

EX_FAILURE: Final = 1
EX_UNAVAILABLE: Final = 69  # sysexits EX_UNAVAILABLE: the gateway did not answer in time
EX_CONFIG: Final = 78       # sysexits EX_CONFIG: our own files or options are wrong
EX_INTERRUPTED: Final = 130


class CliError(Exception):
    """A failure the user can act on: the message names the file, option or address."""

    def __init__(self, message: str, *, hint: str = "", exit_code: int = EX_CONFIG) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


def description(doc: str | None) -> str:
    """A module docstring's first paragraph as one line (its first line alone stops mid-sentence)."""
    return " ".join((doc or "").split("\n\n")[0].split())


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", default="127.0.0.1:50051",
                        help="gateway address host:port, or several replicas' ip:port,ip:port")
    parser.add_argument("--certs", type=Path, default=Path("certs/dev"),
                        help="directory laid out like certs/dev (ca.pem, platforms/, registry.json)")
    parser.add_argument("--platform", required=True, help="this platform's id in the registry, e.g. jiangsu")
    parser.add_argument("--key-id", help="signing key id (default: <platform>-dev-1)")
    parser.add_argument("--target-name-override", help="TLS server name to expect, if not the address")
    deadline = RetryPolicy().deadline  # the library's default, said once
    parser.add_argument("--timeout", type=_positive, default=deadline,
                        help=f"seconds to keep trying a call the gateway does not answer (default {deadline:g})")


def _known_platforms(registry: Path) -> list[str]:
    try:
        keyring = KeyRing.load(registry)
    except RegistryError:
        return []
    return sorted({key.owner for key in keyring.platform_keys.values()})


def config_from(args: argparse.Namespace) -> PlatformConfig:
    """The platform's configuration from the options, its files checked before any connection.

    Raises CliError naming the option or file: a malformed --gateway, a missing registry, a
    platform the registry does not list, a credential file that is not there.
    """
    try:
        channel_target(args.gateway)
    except ValueError as err:
        raise CliError(f"--gateway: {err}") from None
    config = PlatformConfig.dev(args.platform, args.gateway, args.certs)
    config = replace(config, retry=RetryPolicy(deadline=args.timeout, attempt_timeout=min(10.0, args.timeout)))
    if args.key_id:
        config = replace(config, key_id=args.key_id)
    if args.target_name_override:
        config = replace(config, target_name_override=args.target_name_override)
    if not config.registry.is_file():
        raise CliError(f"{config.registry}: no such file", hint="--certs names a folder laid out like certs/dev")
    known = _known_platforms(config.registry)
    if known and args.platform not in known:
        raise CliError(f"unknown platform {args.platform!r}: the registry {config.registry} lists "
                       f"{', '.join(known)}", hint="--platform takes a platform id of the registry")
    for what, path in (("CA certificate", config.ca), ("TLS certificate", config.cert), ("TLS key", config.key),
                       ("signing key", config.signing_key)):
        if not path.is_file():
            raise CliError(f"{path}: no such file (the {what} of platform {args.platform})")
    return config


def summary(kind: MessageKind, ids: messages_pb2.Header | envelope_pb2.ReceiptBody, extra: str = "") -> str:
    """One line of kind, ids and agencies: never the person's name or certificate number."""
    line = f"{kind_name(kind)} {ids.message_id} transfer {ids.transfer_id} {ids.sender} → {ids.receiver}"
    return f"{line} {extra}".rstrip()


class _Lines(logging.Formatter):
    """Retries (INFO) as they are; warnings and errors with their level."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def configure_logging() -> None:
    """Warnings on stderr, and one line per retry of a call to the gateway."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Lines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("clients.platform").setLevel(logging.INFO)


def _explain(error: BaseException, gateway: str) -> tuple[list[str], str, int]:
    """(error lines, hint, exit code) for what a tool raised."""
    if isinstance(error, CliError):
        return [error.message], error.hint, error.exit_code
    if isinstance(error, GatewayUnavailable):
        detail = " ".join(error.message.split())[:200]
        return ([f"gateway {gateway} did not answer: {error.code.name} after {error.attempts} attempt(s)"
                 + (f": {detail}" if detail else "")],
                "is it running and reachable from here? --gateway names it; --timeout sets how long to keep trying",
                EX_UNAVAILABLE)
    if isinstance(error, GatewayRejected):
        head = f"the gateway refused it: {error.code.name} {error.reason or '-'}"
        if error.field_violations:
            return [head, *(f"  {path}: {text}" for path, text in error.field_violations)], "", EX_FAILURE
        return [f"{head}: {error.message}"], "", EX_FAILURE
    if isinstance(error, RegistryError):
        return [str(error)], "", EX_CONFIG
    if isinstance(error, VerificationError):
        return [f"{error} ({error.reason}); not acted on"], "", EX_FAILURE
    if isinstance(error, ClientError):
        return [str(error)], "", EX_FAILURE
    if isinstance(error, OSError) and error.filename is not None:
        return [f"{error.filename}: {error.strerror}"], "", EX_CONFIG
    return [f"unexpected {type(error).__name__}: {error}"], "", EX_FAILURE


def run(command: Coroutine[Any, Any, int], *, gateway: str) -> int:
    """Run a tool's coroutine inside the error boundary; returns the exit code."""
    configure_logging()
    try:
        return asyncio.run(command)
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except Exception as error:
        lines, hint, code = _explain(error, gateway)
        print(f"error: {lines[0]}", file=sys.stderr)
        for line in lines[1:]:
            print(line, file=sys.stderr)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return code


class Progress:
    """A count redrawn in place on stderr while a long listing runs; only on a terminal."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._enabled = sys.stderr.isatty()

    def update(self, done: int) -> None:
        if self._enabled:
            sys.stderr.write(f"\r\x1b[K  {self._label} {done:,}")
            sys.stderr.flush()

    def close(self) -> None:
        if self._enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
