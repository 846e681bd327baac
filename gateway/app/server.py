"""The running gateway: gRPC over mTLS, health, reflection, metrics, store, calendar, monitor and
the index's upkeep.

`gateway.app.assembly.assemble` builds a `GatewayServer` from what it has read; `start()` is all
or nothing, in the order that fails cheapest first: bind the metrics port, bind the gRPC port,
open (and migrate) the store, then serve. A failure at any step undoes the steps before it, so a
process that cannot start leaves nothing listening, nothing half-closed and the store untouched
by anything but its own migration.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import gc
import json
import logging
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server

from gateway.app.build import BuildInfo
from gateway.app.config import GatewayConfig, parse_address
from gateway.app.failures import ConfigError, Unavailable, bounded
from gateway.app.indexkeeper import IndexKeeper
from gateway.app.monitor import Monitor
from gateway.app.publisher import CheckpointPublisher
from gateway.app.registry_sync import RegistrySync
from gateway.core.errors import StoreUnavailable
from gateway.core.registry import RegistryError
from gateway.core.sla import Sla
from gateway.core.workdays import YearNotice
from gateway.service.admin import AdminService
from gateway.service.admission import Admission
from gateway.service.calendar import CalendarKeeper
from gateway.service.exchange import ExchangeService
from gateway.service.instrument import InstrumentedServer
from gateway.service.log import LogService
from gateway.service.metrics import Metrics
from gateway.service.routing import Router
from gateway.service.tracking import TrackingService
from gateway.store import Store
from gateway.store.engines import StoreConfig
from gateway.store.migrations import MIGRATIONS
from gateway.store.postgres import PostgresConfig
from mitransfer.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    exchange_pb2,
    exchange_pb2_grpc,
    log_pb2,
    log_pb2_grpc,
    tracking_pb2,
    tracking_pb2_grpc,
)

log = logging.getLogger("gateway.app.server")

SERVICE_NAMES = (
    exchange_pb2.DESCRIPTOR.services_by_name["Exchange"].full_name,
    tracking_pb2.DESCRIPTOR.services_by_name["Tracking"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
    log_pb2.DESCRIPTOR.services_by_name["LogService"].full_name,
)
# Health of the working-day calendar: NOT_SERVING while deadlines within the monitor's horizon
# are counted Monday–Friday for want of an official calendar (the gateway itself keeps serving).
CALENDAR_HEALTH = "transfer-gateway.calendar"
_STORE_HINT = ("check the disk's free space and that its file system is mounted read-write (PostgreSQL: that the "
               "server is a primary, not a standby, and the role may write)")
_GC_YOUNG_THRESHOLD = 20_000  # allocations between young-generation collections (CPython's default: 700)


def tune_collector() -> None:
    """For a process that runs one gateway, once it has started: everything built so far lives
    as long as the process, so keep it out of the collector's full passes, and collect the young
    generation less often (a call allocates hundreds of objects, nearly all freed by reference
    counting anyway). Process-wide, hence called by the process's entry point, not the server."""
    gc.freeze()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class ServerTls:
    """The server's TLS material as read from its files."""

    key: bytes
    chain: bytes
    ca: bytes


@dataclass(frozen=True)
class Services:
    exchange: ExchangeService
    tracking: TrackingService
    admin: AdminService
    log: LogService


class GatewayHealth:
    """The gRPC health service and what sets it: the store's reachability and the calendar."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()

    async def store(self, available: bool) -> None:
        """Without its store the gateway can receipt nothing: load balancers should look elsewhere."""
        status = health_pb2.HealthCheckResponse.SERVING if available else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.servicer.set(name, status)

    async def calendar(self, unknown_years: list[int]) -> None:
        await self.servicer.set(CALENDAR_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING if unknown_years
                                else health_pb2.HealthCheckResponse.SERVING)


def _refuse_address(setting: str, address: str, exc: OSError) -> Exception:
    """The error for an address that cannot be listened on, by whose fault it is."""
    if exc.errno == errno.EADDRINUSE:
        port = address.rpartition(":")[2]
        return Unavailable(f"{setting} {address}: address already in use",
                           hint=f"another process listens there (`ss -ltnp 'sport = :{port}'` shows which)")
    if exc.errno == errno.EACCES:
        return ConfigError(f"{setting} {address}: permission denied (ports below 1024 need privileges)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"{setting} {address}: not an address of this machine")
    if isinstance(exc, socket.gaierror):
        return ConfigError(f"{setting} {address}: cannot resolve the host ({exc.strerror})")
    return Unavailable(f"{setting} {address}: cannot listen: {exc.strerror or exc}")


def probe_address(setting: str, address: str) -> None:
    """Refuse an address no socket can be bound to, with the reason (gRPC only says "Failed to
    bind"). Any address already taken fails; otherwise at least one of the host's addresses must
    be bindable, as gRPC needs."""
    host, port = parse_address(address)
    if port == 0:
        return
    try:
        candidates = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise _refuse_address(setting, address, exc) from exc
    failures: list[OSError] = []
    for family, kind, proto, _, where in candidates:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC and http.server do
            try:
                probe.bind(where)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise _refuse_address(setting, address, exc) from exc
                failures.append(exc)
    if failures and len(failures) == len(candidates):
        raise _refuse_address(setting, address, failures[0]) from failures[0]


def store_description(store: StoreConfig) -> tuple[str, str]:
    """(kind, where) of a store's configuration, for logs; never a password."""
    if isinstance(store, PostgresConfig):
        from psycopg.conninfo import conninfo_to_dict

        try:
            info = conninfo_to_dict(store.url)
        except Exception:  # a URL psycopg cannot parse: say nothing of it rather than echo it
            return "postgresql", f"schema {store.schema}"
        where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        return "postgresql", f"{where} schema {store.schema}"
    return "sqlite", str(store.path)


class GatewayServer:
    """One gateway process. `start()`, then `stop()`; `port` and `metrics_port` are known after start."""

    def __init__(
        self, *, config: GatewayConfig, tls: ServerTls, store: Store, router: Router, services: Services,
        admission: Admission, health: GatewayHealth, monitor: Monitor, calendar: CalendarKeeper,
        publisher: CheckpointPublisher, keeper: IndexKeeper, metrics: Metrics, prometheus: CollectorRegistry,
        sla: Sla, build: BuildInfo, clock: Callable[[], dt.datetime] = utc_now,
        calendar_seed: Mapping[int, YearNotice] | None = None, source: str = "", dev_only: bool = False,
        warnings: tuple[str, ...] = (), registry_sync: RegistrySync | None = None, worker: int | None = None,
    ) -> None:
        """`worker` is this process's index among `config.workers` worker processes (`serve --workers`)."""
        self._config = config
        self._worker = worker
        self.registry_sync = registry_sync
        self._tls = tls
        self._store = store
        self._router = router
        self._services = services
        self.admission = admission
        self._health = health
        self.monitor = monitor
        self.calendar = calendar
        self._calendar_seed = dict(calendar_seed or {})  # [sla] calendar_file: years the store lacks
        self._clock = clock
        self.publisher = publisher
        self.keeper = keeper
        self.metrics = metrics
        self.prometheus = prometheus
        self.sla = sla
        self._build = build
        self._source = source
        self._dev_only = dev_only
        self._warnings = warnings
        self.port = 0
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._store_open = False
        self._started = False
        self._http: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Bind both ports, open the store, serve. All or nothing: on any failure what was started is
        stopped again before the error propagates.

        Raises:
            Unavailable: a port is taken (or cannot be bound for another passing reason); or the
                store opened but cannot write (a write probe failed).
            ConfigError: an address that cannot be this machine's, or a privileged port; or a
                registry file whose version the store holds with other contents.
            StoreUnavailable: the store cannot be opened (in use, unreachable, unwritable).
        """
        cfg = self._config
        for warning in self._warnings:
            log.warning(warning)
        if self._dev_only:
            log.warning("running with a DEV ONLY registry and certificates")
        try:
            if cfg.metrics_listen:
                self._serve_metrics(cfg.metrics_listen)
            self._server = self._grpc_server()
            self.port = self._bind(self._server)
            await self._store.open()
            self._store_open = True
            await self._probe_store()
            await self._key_unkeyed_cases()
            if self.registry_sync is not None:
                try:
                    await self.registry_sync.start()  # the file's version against the store's
                except RegistryError as exc:
                    raise ConfigError(f"registry: {exc}") from exc
            if self._calendar_seed:
                await self.calendar.seed(self._calendar_seed, self._clock())
            await self.calendar.sync()  # the store's calendar, and stages counted again, before any message
            self._store.on_wake(self._router.on_store_wake)  # other replicas' commits wake our subscribers
            self._router.start()
            self._started = True
            await self._server.start()
            await self._health.store(True)
            self.metrics.store_available.set(1)
            await self.monitor.refresh_once()  # gauges and calendar health are right from the first scrape
            self._tasks = [asyncio.create_task(self.monitor.run(cfg.monitor_interval)),
                           asyncio.create_task(self.publisher.run(cfg.log.checkpoint_interval)),
                           asyncio.create_task(self.keeper.run(cfg.automatic.upkeep_interval))]
        except BaseException:
            await self._release(grace=0)
            raise
        kind, where = store_description(cfg.store)
        host = parse_address(cfg.listen)[0]
        log.info("started", extra={"fields": {
            "version": self._build.version, "config": self._source or "(built in code)", "store": kind,
            "store_location": where, "schema_version": len(MIGRATIONS), "listen": f"{host}:{self.port}",
            "metrics_listen": (f"{parse_address(cfg.metrics_listen)[0]}:{self.metrics_port}" if cfg.metrics_listen
                               else "off"),
            **({"workers": cfg.workers} if self._worker is not None else {}),
        }})

    async def _key_unkeyed_cases(self) -> None:
        """Key the open cases from before cases were keyed (their key a plain digest) before serving:
        until then a new case of the same person would not meet them."""
        keyed = await self.keeper.key_unkeyed_cases()
        if keyed:
            log.info("open cases keyed", extra={"fields": {"cases": keyed}})

    async def _probe_store(self) -> None:
        """Refuse a store that opened but cannot write (a read-only file system or standby, a full
        disk): it would answer reads and health, and receipt nothing.

        Raises Unavailable (exit 69: it may come back) with what the database said.
        """
        try:
            await self.monitor.probe_store()
        except StoreUnavailable as err:
            kind, where = store_description(self._config.store)
            raise Unavailable(f"the {kind} store {where} opened but cannot be written: {bounded(err.message)}",
                              hint=_STORE_HINT) from err

    def _grpc_server(self) -> grpc.aio.Server:
        limits = self._config.messages
        server = grpc.aio.server(options=[
            # Never share a port silently with another process: only a configuration's own workers
            # share theirs (their parent refused a port already taken before starting them).
            ("grpc.so_reuseport", 1 if self._config.workers > 1 else 0),
            # Requests are read only up to twice the largest message Submit takes (room to refuse
            # one a little too large by name); responses never exceed what platforms are told to
            # accept (gateway.core.limits).
            ("grpc.max_receive_message_length", limits.grpc_receive_bytes),
            ("grpc.max_send_message_length", limits.grpc_send_bytes),
            *self._config.connections.grpc_options(),
        ])
        services = InstrumentedServer(server, self.metrics, self.admission)  # metrics, admission, error mapping
        exchange_pb2_grpc.add_ExchangeServicer_to_server(self._services.exchange, services)
        tracking_pb2_grpc.add_TrackingServicer_to_server(self._services.tracking, services)
        admin_pb2_grpc.add_AdminServicer_to_server(self._services.admin, services)
        log_pb2_grpc.add_LogServiceServicer_to_server(self._services.log, services)
        # Health and reflection: decoded and counted like ours, not admitted (a health check is
        # answered whatever the caller's share, and a Watch is no subscription).
        standard = InstrumentedServer(server, self.metrics, None)
        health_pb2_grpc.add_HealthServicer_to_server(self._health.servicer, standard)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)),
            standard)
        return server

    def _bind(self, server: grpc.aio.Server) -> int:
        listen = self._config.listen
        if self._config.workers == 1:
            probe_address("listen", listen)  # several workers share it: their parent probed it before them
        credentials = grpc.ssl_server_credentials(
            [(self._tls.key, self._tls.chain)], root_certificates=self._tls.ca, require_client_auth=True)
        try:
            port: int = server.add_secure_port(listen, credentials)
        except RuntimeError as exc:  # taken between the probe and now, or refused for a reason it missed
            raise Unavailable(f"listen {listen}: cannot listen there",
                              hint="GRPC_VERBOSITY=debug shows gRPC's reason") from exc
        return port

    def _serve_metrics(self, address: str) -> None:
        host, port = parse_address(address)
        try:
            http, _thread = start_http_server(port, addr=host, registry=self.prometheus)
        except OSError as exc:
            raise _refuse_address("metrics_listen", address, exc) from exc
        self._http = http
        self.metrics_port = http.server_port

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, stop accepting, finish in-flight calls, flush the store."""
        if self._server is None:
            return
        log.info("draining")
        await self._health.servicer.enter_graceful_shutdown()
        await self._release(self._config.shutdown_grace if grace is None else grace)
        log.info("stopped")

    async def _release(self, grace: float) -> None:
        """Undo `start` from wherever it got to, last step first."""
        self._router.close()
        if self._server is not None:
            server, self._server = self._server, None
            if not self._started:
                # grpc.aio lets go of a bound port only by stopping a started server: start it
                # NOT_SERVING for the instant it takes to stop it.
                await self._health.store(False)
                await server.start()
            await server.stop(grace)
        self._started = False
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        # Nothing that uses the store may outlive it: a publication under way (shielded from the
        # round just cancelled, and from callers gone with the server) ends first, and so do the
        # leases being returned.
        await self.publisher.close()
        await self._router.wait_closed()  # the leases the streams held are back in the store
        if self._store_open:
            self._store_open = False
            await self._store.close()
        if self._http is not None:
            http, self._http = self._http, None
            http.shutdown()
            http.server_close()


    async def reload_registry(self) -> None:
        """Re-read the registry file (SIGHUP): a newer version is loaded and shared with the other
        replicas; anything else is logged and counted, and the registry in force stays."""
        if self.registry_sync is None:
            return
        try:
            await self.registry_sync.reload_file()
        except RegistryError:
            pass  # RegistrySync logged and counted it
        except StoreUnavailable as exc:
            log.error("registry reload failed: the store is unavailable", extra={"fields": {"reason": exc.reason}})


async def serve(server: GatewayServer, parent: socket.socket | None = None) -> None:
    """Start `server` and run it until SIGTERM or SIGINT, then drain gracefully. SIGHUP reloads
    the registry file (it used to end the process, undrained).

    `parent`: a worker's end of its parent's socket (`gateway.app.workers`): once serving, the
    worker says so there, with its ports; and it drains when the socket closes, which is how a
    worker learns that its parent is gone, whatever killed it.
    """
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_hangup() -> None:
        task = loop.create_task(server.reload_registry())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    await server.start()
    tune_collector()
    if parent is not None:
        parent.setblocking(False)
        try:
            await loop.sock_sendall(parent, json.dumps({"port": server.port, "metrics_port": server.metrics_port}
                                                       ).encode() + b"\n")
        except OSError:  # the parent ended while this worker was starting
            log.warning("the parent process is gone: draining")
            stopping.set()
        else:
            loop.add_reader(parent.fileno(), _watch_parent, parent, stopping)
    await stopping.wait()
    if parent is not None:
        loop.remove_reader(parent.fileno())
    if reloads:  # a reload under way writes to the store: it ends before the store closes
        await asyncio.gather(*reloads, return_exceptions=True)
    await server.stop()


def _watch_parent(parent: socket.socket, stopping: asyncio.Event) -> None:
    """The parent's socket is readable: it closed (the parent ended), so drain as on SIGTERM."""
    try:
        data = parent.recv(64)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:
        asyncio.get_running_loop().remove_reader(parent.fileno())
        log.warning("the parent process is gone: draining")
        stopping.set()
