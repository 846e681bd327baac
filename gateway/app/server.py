"""Assembles and runs the gateway: gRPC over mTLS, health, reflection, metrics, store, router."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import signal
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from gateway.app.config import GatewayConfig
from gateway.app.monitor import Monitor
from gateway.app.sweeper import CaseSweeper
from gateway.core.registry import Registry
from gateway.core.signing import LocalSigner
from gateway.core.sla import Sla
from gateway.core.workdays import WorkingCalendar
from gateway.service.admin import AdminService
from gateway.service.authored import GatewayAuthor
from gateway.service.exchange import ExchangeService
from gateway.service.instrument import InstrumentedServer
from gateway.service.metrics import Metrics
from gateway.service.routing import Router
from gateway.service.tracking import TrackingService
from gateway.store.engines import make_store
from mitransfer.v1 import admin_pb2, admin_pb2_grpc, exchange_pb2, exchange_pb2_grpc, tracking_pb2, tracking_pb2_grpc

log = logging.getLogger("gateway.app.server")

SERVICE_NAMES = (
    exchange_pb2.DESCRIPTOR.services_by_name["Exchange"].full_name,
    tracking_pb2.DESCRIPTOR.services_by_name["Tracking"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)
# Health of the working-day calendar: NOT_SERVING while deadlines within the monitor's horizon
# are counted Monday–Friday for want of an official calendar (the gateway itself keeps serving).
CALENDAR_HEALTH = "transfer-gateway.calendar"
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


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class GatewayServer:
    """One gateway process. `start()`, then `stop()`; ports are known after start."""

    def __init__(
        self, config: GatewayConfig, *, registry: CollectorRegistry | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._config = config
        self._clock = clock
        self.prometheus = registry or CollectorRegistry()
        self.metrics = Metrics(self.prometheus)
        self.port = 0
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self.sla = Sla(WorkingCalendar.load(config.sla.calendar_file), config.sla.limits)
        self._store = make_store(config.store, clock, self.sla)
        self._router = Router(self._store, config.delivery, clock)
        self._http: object | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        cfg = self._config
        registry = Registry.load(cfg.registry)
        signer = LocalSigner.from_pem(cfg.signing.key_id, cfg.signing.key.read_bytes())
        registered = registry.gateway_keys.get(signer.key_id)
        if registered is None or registered.public_pem() != signer.verifying_key().public_pem():
            raise ValueError(f"signing key {signer.key_id} is not the registry's gateway key of that id")
        if registry.dev_only:
            log.warning("running with a DEV ONLY registry and certificates")
        await self._store.open()
        self._store.on_wake(self._router.notify)  # other replicas' commits wake our subscribers

        server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0)],  # never share a port silently with another process
        )
        services = InstrumentedServer(server, self.metrics)  # registers with metrics and error mapping
        exchange_pb2_grpc.add_ExchangeServicer_to_server(
            ExchangeService(registry=registry, store=self._store, router=self._router, signer=signer,
                            metrics=self.metrics, rules=cfg.rules, sla=self.sla, clock=self._clock),
            services,
        )
        tracking_pb2_grpc.add_TrackingServicer_to_server(
            TrackingService(registry=registry, store=self._store, rules=cfg.rules, sla=self.sla, clock=self._clock),
            services)
        author = GatewayAuthor(registry=registry, store=self._store, router=self._router, signer=signer,
                               metrics=self.metrics, sla=self.sla)
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminService(registry=registry, store=self._store, author=author, rules=cfg.rules, metrics=self.metrics,
                         clock=self._clock),
            services,
        )
        self.sweeper = CaseSweeper(store=self._store, author=author, rules=cfg.rules, metrics=self.metrics,
                                   clock=self._clock)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        credentials = grpc.ssl_server_credentials(
            [(cfg.tls.key.read_bytes(), cfg.tls.cert.read_bytes())],
            root_certificates=cfg.tls.ca.read_bytes(),
            require_client_auth=True,
        )
        self.port = server.add_secure_port(cfg.listen, credentials)
        await server.start()
        self._server = server
        await self._store_health(True)
        if cfg.metrics_listen:
            host, port = _split_address(cfg.metrics_listen)
            http, _thread = start_http_server(port, addr=host, registry=self.prometheus)
            self._http = http
            self.metrics_port = http.server_port
        self.monitor = Monitor(store=self._store, metrics=self.metrics, sla=self.sla,
                               platforms=list(registry.platforms), clock=self._clock, on_calendar=self._calendar_health,
                               on_store=self._store_health)
        await self.monitor.refresh_once()  # gauges and calendar health are right from the first scrape
        self._tasks = [asyncio.create_task(self.monitor.run(cfg.monitor_interval)),
                       asyncio.create_task(self.sweeper.run(cfg.sweep_interval))]
        log.info("serving", extra={"fields": {"port": self.port, "metrics_port": self.metrics_port}})

    async def _store_health(self, available: bool) -> None:
        """Without its store the gateway can receipt nothing: load balancers should look elsewhere."""
        status = health_pb2.HealthCheckResponse.SERVING if available else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, status)

    async def _calendar_health(self, unknown_years: list[int]) -> None:
        await self._health.set(CALENDAR_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING if unknown_years
                               else health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, stop accepting, finish in-flight calls, flush the store."""
        if self._server is None:
            return
        log.info("draining")
        await self._health.enter_graceful_shutdown()
        self._router.close()
        await self._server.stop(self._config.shutdown_grace if grace is None else grace)
        self._server = None
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._store.close()
        if self._http is not None:
            self._http.shutdown()  # type: ignore[attr-defined]
            self._http.server_close()  # type: ignore[attr-defined]
        log.info("stopped")


async def serve(config: GatewayConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain gracefully."""
    server = GatewayServer(config)
    await server.start()
    tune_collector()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print(f"transfer-gateway listening on {config.listen.rpartition(':')[0]}:{server.port}"
          + (f", metrics on :{server.metrics_port}/metrics" if server.metrics_port else ""), flush=True)
    await stopping.wait()
    await server.stop()
