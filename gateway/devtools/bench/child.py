"""A server in a process of its own, so that its CPU time and memory are its alone.

One of three:
- the gateway, assembled as `transfer-gateway serve` assembles it;
- a bare grpc.aio echo server with the same mutual TLS (the stack's limit);
- the floors in situ: a Submit that does only what the floors measure, in the gateway's way
  (who is calling, parse, verify, sign, one durable group-committed append) and nothing else, no
  validation, case, routing or metrics. What it costs beyond the floors measured alone is what
  any server on this stack pays for them.

The gateway's store is a SQLite file
(`"database"` in the spec) or a PostgreSQL schema (`"store"`: the URL, `"schema"`). The harness runs
`python -m gateway.devtools.bench.child '<json spec>'`; the child prints
`{"port": N, "metrics_port": M}` on stdout once it serves (M: the gateway's /metrics, else null),
and stops gracefully when its stdin yields a line or closes (so it also ends with the harness).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from gateway.app.devpki import GATEWAY_KEY_ID, DevPaths
from gateway.core.quota import Quota
from gateway.devtools.bench.floors import LOG_TABLE
from mitransfer.v1 import exchange_pb2

if TYPE_CHECKING:
    from gateway.store.engines import StoreConfig

ECHO_METHOD = "/bench.Echo/Echo"
COMMIT_DELAY = 0.002  # seconds the floors server's writer waits for more appends (see _GroupCommitLog)
SUBMIT_METHOD = f"/{exchange_pb2.DESCRIPTOR.services_by_name['Exchange'].full_name}/Submit"


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def start_echo(pki: DevPaths) -> tuple[int, Callable[[], Awaitable[None]]]:
    """A unary bytes-in, bytes-out server: no interceptor, no parsing, the gateway's mTLS setup."""
    return await _start_bare(pki, ECHO_METHOD, _echo)


async def _start_bare(pki: DevPaths, method: str, handler: Callable[[bytes, Any], Awaitable[bytes]]
                      ) -> tuple[int, Callable[[], Awaitable[None]]]:
    """A grpc.aio server of one unary bytes method (no interceptor, no (de)serializers) with the
    gateway's mTLS setup."""
    _, service, name = method.split("/")
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        service, {name: grpc.unary_unary_rpc_method_handler(handler)}),))
    credentials = grpc.ssl_server_credentials(
        [(pki.gateway_key.read_bytes(), pki.gateway_cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(), require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()

    async def stop() -> None:
        await server.stop(1.0)

    return port, stop


class _GroupCommitLog:
    """Durable appends as the SQLite store makes them: one writer thread takes every append queued
    at that moment, inserts them and commits once (WAL, synchronous=FULL); each caller hears after
    the commit that holds its row.

    One difference: the writer waits COMMIT_DELAY after a batch's first append before it takes the
    rest. With nothing else to do, it would otherwise commit almost every append alone (~1.2 rows a
    commit under the bench's load), each paying a whole fsync'd commit, where the floor counts a
    row of a 64-row commit; 2 ms gathers ~6 rows (PostgreSQL's `commit_delay` is the same idea).
    The gateway's writer needs no wait: its queue fills while it runs a batch (~25 a commit)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._appends: queue.SimpleQueue[tuple[bytes, bytes, asyncio.Future[None]] | None] = queue.SimpleQueue()
        self._loop = asyncio.get_running_loop()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(LOG_TABLE)
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
        self._thread.start()

    async def append(self, key: bytes, data: bytes) -> None:
        done = self._loop.create_future()
        self._appends.put((key, data, done))
        await done

    def _run(self) -> None:
        while (first := self._appends.get()) is not None:
            batch = [first]
            time.sleep(COMMIT_DELAY)
            while True:
                try:
                    item = self._appends.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._appends.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT INTO log (message_id, signed_message) VALUES (?, ?)",
                                   [(key, data) for key, data, _ in batch])
            self._conn.execute("COMMIT")
            self._loop.call_soon_threadsafe(_resolve, [done for _, _, done in batch])

    async def close(self) -> None:
        self._appends.put(None)
        await asyncio.to_thread(self._thread.join)
        self._conn.close()


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


async def start_floors(pki: DevPaths, database: Path) -> tuple[int, Callable[[], Awaitable[None]]]:
    """The floors in situ on `Exchange.Submit`: the caller's platform from its certificate, the
    SignedMessage parsed, its signature verified with that platform's registered key, a receipt
    signed by the gateway's key, the message appended durably; the answer, after the commit, is
    the receipt's signature. A wrong signature is refused, so the check cannot be skipped."""
    from gateway.app.server import tune_collector, utc_now
    from gateway.core import messages
    from gateway.core.registry import Registry
    from gateway.core.signing import LocalSigner, pae
    from gateway.service.auth import Callers
    from mitransfer.v1 import envelope_pb2

    registry = Registry.load(pki.registry)
    callers = Callers(pki.ca.read_bytes(), utc_now)
    signer = LocalSigner.from_pem(GATEWAY_KEY_ID, pki.gateway_signing_key.read_bytes())
    log = _GroupCommitLog(database)

    async def submit(request: bytes, context: Any) -> bytes:
        platform = callers.platform(context, registry)
        signed = envelope_pb2.SignedMessage.FromString(request)
        key = registry.signing_key(platform, signed.key_id)
        signed_bytes = pae(messages.payload_type(signed.kind), signed.payload)
        if key is None or not key.verify(signed.signature, signed_bytes):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "signature does not verify")
        fingerprint = hashlib.sha256(signed_bytes).digest()
        receipt = signer.sign(pae(messages.RECEIPT_PAYLOAD_TYPE, fingerprint))
        await log.append(fingerprint, request)
        return receipt

    port, stop_server = await _start_bare(pki, SUBMIT_METHOD, submit)
    tune_collector()  # as the gateway's child does

    async def stop() -> None:
        await stop_server()
        await log.close()

    return port, stop


def store_of(spec: dict[str, Any]) -> StoreConfig:
    """The store a gateway spec names."""
    from gateway.store.postgres import PostgresConfig
    from gateway.store.sqlite import SQLiteConfig

    if "store" in spec:
        return PostgresConfig(url=spec["store"], schema=spec["schema"])
    return SQLiteConfig(path=Path(spec["database"]))


# The throughput phases measure what a gateway can do, not a platform's allowance: no rate limit
# binds (the turns the gateway takes between callers, `active_calls`, stay as `serve` has them).
# The isolation phase keeps every limit as deployed (`deployed_limits`).
BENCH_QUOTA = Quota(requests_per_second=1_000_000.0, burst=1_000_000)


def workers_config(pki: DevPaths, spec: dict[str, Any], workers: int) -> str:
    """The gateway `start_gateway` runs on the PostgreSQL schema of `spec` ("store", "schema"), as
    the configuration file of `serve` with `workers` worker processes behind one free port."""
    from gateway.app.config import dev_settings

    settings: dict[str, Any] = {
        **dev_settings(pki.root), "listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "workers": workers,
        "store": {"postgresql": spec["store"], "schema": spec["schema"]},
        "quota": {"requests_per_second": BENCH_QUOTA.requests_per_second, "burst": BENCH_QUOTA.burst},
    }
    return _toml(settings)


def _toml(settings: dict[str, Any], table: str = "") -> str:
    """`settings` (strings, numbers and tables of them) as a TOML document."""
    lines = [f"{json.dumps(key)} = {json.dumps(value)}" for key, value in settings.items()
             if not isinstance(value, dict)]
    text = (f"[{table}]\n" if table and lines else "") + "".join(f"{line}\n" for line in lines)
    for key, value in settings.items():
        if isinstance(value, dict):
            text += _toml(value, f"{table}.{json.dumps(key)}" if table else json.dumps(key))
    return text


async def start_gateway(pki: DevPaths, store: StoreConfig, log_level: str, *, deployed_limits: bool = False
                        ) -> tuple[int, Callable[[], Awaitable[None]], int | None]:
    """The real gateway on a free loopback port, logging as `serve` does (JSON lines on stderr),
    with its /metrics on another (the bench reads the log's CPU meter there)."""
    from gateway.app import logs
    from gateway.app.assembly import assemble
    from gateway.app.config import GatewayConfig
    from gateway.app.server import tune_collector

    logs.configure(log_level)
    config = replace(GatewayConfig.dev(pki.root, listen="127.0.0.1:0", metrics_listen="127.0.0.1:0"), store=store)
    if not deployed_limits:
        config = replace(config, quota=BENCH_QUOTA)
    server = assemble(config)
    await server.start()
    tune_collector()  # as `serve` does

    async def stop() -> None:
        await server.stop(grace=1.0)

    return server.port, stop, server.metrics_port


async def _serve(spec: dict[str, Any]) -> None:
    pki = DevPaths(Path(spec["pki"]))
    metrics_port = None
    if spec["role"] == "echo":
        port, stop = await start_echo(pki)
    elif spec["role"] == "floors":
        port, stop = await start_floors(pki, Path(spec["database"]))
    elif spec["role"] == "gateway":
        port, stop, metrics_port = await start_gateway(pki, store_of(spec), spec.get("log_level", "INFO"),
                                                       deployed_limits=spec.get("limits") == "deployed")
    else:
        raise SystemExit(f"unknown role {spec['role']!r}")
    print(json.dumps({"port": port, "metrics_port": metrics_port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    asyncio.run(_serve(json.loads(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
