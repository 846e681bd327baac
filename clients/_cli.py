"""What the two command-line tools share: connection options and the one-line message summary."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from clients.messages import MessageKind, kind_name
from clients.platform import PlatformConfig
from mitransfer.v1 import envelope_pb2, messages_pb2


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", default="127.0.0.1:50051", help="gateway address host:port")
    parser.add_argument("--certs", type=Path, default=Path("certs/dev"),
                        help="directory laid out like certs/dev (ca.pem, platforms/, registry.json)")
    parser.add_argument("--platform", required=True, help="this platform's id in the registry, e.g. jiangsu")
    parser.add_argument("--key-id", help="signing key id (default: <platform>-dev-1)")
    parser.add_argument("--target-name-override", help="TLS server name to expect, if not the address")


def config_from(args: argparse.Namespace) -> PlatformConfig:
    config = PlatformConfig.dev(args.platform, args.gateway, args.certs)
    if args.key_id:
        config = replace(config, key_id=args.key_id)
    if args.target_name_override:
        config = replace(config, target_name_override=args.target_name_override)
    return config


def summary(kind: MessageKind, ids: messages_pb2.Header | envelope_pb2.ReceiptBody, extra: str = "") -> str:
    """One line of kind, ids and agencies: never the person's name or certificate number."""
    line = f"{kind_name(kind)} {ids.message_id} transfer {ids.transfer_id} {ids.sender} → {ids.receiver}"
    return f"{line} {extra}".rstrip()
