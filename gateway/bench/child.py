"""A server in a process of its own, so that its CPU time and memory are its alone.

Either the gateway, assembled as `transfer-gateway serve` assembles it, or a bare grpc.aio echo
server with the same mutual TLS (the stack's limit). The gateway's store is a SQLite file
(`"database"` in the spec) or a PostgreSQL schema (`"store"`: the URL, `"schema"`). The harness runs
`python -m gateway.bench.child '<json spec>'`; the child prints `{"port": N}` on stdout once it
serves, and stops gracefully when its stdin yields a line or closes (so it also ends with the
harness).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from gateway.pki import DevPaths

if TYPE_CHECKING:
    from gateway.store.engines import StoreConfig

ECHO_METHOD = "/bench.Echo/Echo"


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def start_echo(pki: DevPaths) -> tuple[int, Callable[[], Awaitable[None]]]:
    """A unary bytes-in, bytes-out server: no interceptor, no parsing, the gateway's mTLS setup."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handler = grpc.method_handlers_generic_handler(
        ECHO_METHOD.split("/")[1], {"Echo": grpc.unary_unary_rpc_method_handler(_echo)})
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(pki.gateway_key.read_bytes(), pki.gateway_cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(), require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()

    async def stop() -> None:
        await server.stop(1.0)

    return port, stop


def store_of(spec: dict[str, Any]) -> StoreConfig:
    """The store a gateway spec names."""
    from gateway.store.postgres import PostgresConfig
    from gateway.store.sqlite import SQLiteConfig

    if "store" in spec:
        return PostgresConfig(url=spec["store"], schema=spec["schema"])
    return SQLiteConfig(path=Path(spec["database"]))


async def start_gateway(pki: DevPaths, store: StoreConfig, log_level: str) -> tuple[int, Callable[[], Awaitable[None]]]:
    """The real gateway on a free loopback port, logging as `serve` does (JSON lines on stderr)."""
    from gateway import logs
    from gateway.config import GatewayConfig
    from gateway.server import GatewayServer, tune_collector

    logs.configure(log_level)
    config = replace(GatewayConfig.dev(pki.root, listen="127.0.0.1:0", metrics_listen=None), store=store)
    server = GatewayServer(config)
    await server.start()
    tune_collector()  # as `serve` does

    async def stop() -> None:
        await server.stop(grace=1.0)

    return server.port, stop


async def _serve(spec: dict[str, Any]) -> None:
    pki = DevPaths(Path(spec["pki"]))
    if spec["role"] == "echo":
        port, stop = await start_echo(pki)
    elif spec["role"] == "gateway":
        port, stop = await start_gateway(pki, store_of(spec), spec.get("log_level", "INFO"))
    else:
        raise SystemExit(f"unknown role {spec['role']!r}")
    print(json.dumps({"port": port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    asyncio.run(_serve(json.loads(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
