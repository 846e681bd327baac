"""Configuration: frozen dataclasses, one per concern, read once at start-up by `load_config`."""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.app.devpki import GATEWAY_KEY_ID, DevPaths
from gateway.core.case import CaseRules
from gateway.core.sla import Limits
from gateway.service.routing import DeliveryConfig
from gateway.store.engines import StoreConfig
from gateway.store.postgres import PostgresConfig
from gateway.store.sqlite import SQLiteConfig


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting."""


@dataclass(frozen=True)
class TLSConfig:
    ca: Path    # CA bundle that client (platform) certificates must chain to
    cert: Path  # the gateway's server certificate
    key: Path   # its private key


@dataclass(frozen=True)
class SigningConfig:
    key: Path     # the gateway's receipt signing key (PKCS8 PEM)
    key_id: str   # its id in the registry's "gateway" keys


@dataclass(frozen=True)
class SlaConfig:
    limits: Limits = field(default_factory=Limits)  # working days per stage
    calendar_file: Path | None = None  # the State Council's notices as data, for years chinese-calendar lacks


@dataclass(frozen=True)
class GatewayConfig:
    tls: TLSConfig
    signing: SigningConfig
    registry: Path                     # agency registry JSON
    store: StoreConfig                 # SQLite (one process) or PostgreSQL (several replicas)
    listen: str = "127.0.0.1:50051"    # gRPC address (host:port; port 0 picks a free one)
    metrics_listen: str | None = "127.0.0.1:9095"  # Prometheus /metrics; None turns it off
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    rules: CaseRules = field(default_factory=CaseRules)
    sla: SlaConfig = field(default_factory=SlaConfig)
    shutdown_grace: float = 10.0       # seconds in-flight RPCs get after SIGTERM
    monitor_interval: float = 5.0      # seconds between readings of backlog, stages and funds into gauges
    sweep_interval: float = 60.0       # seconds between sweeps for expired cases

    @classmethod
    def dev(
        cls, certs: Path = Path("certs/dev"), database: Path = Path("var/gateway.db"), **overrides: Any
    ) -> GatewayConfig:
        """The embedded default: dev certificates, SQLite at `database` (or `store=`), loopback."""
        paths = DevPaths(certs)
        overrides.setdefault("store", SQLiteConfig(path=database))
        return cls(
            tls=TLSConfig(ca=paths.ca, cert=paths.gateway_cert, key=paths.gateway_key),
            signing=SigningConfig(key=paths.gateway_signing_key, key_id=GATEWAY_KEY_ID),
            registry=paths.registry,
            **overrides,
        )


def _store(table: dict[str, Any], p: Callable[[Any, str], Path]) -> StoreConfig:
    if "postgresql" in table:
        return PostgresConfig(
            url=str(table["postgresql"]), schema=str(table.get("schema", "transfer_gateway")),
            pool_min=int(table.get("pool_min", 2)), pool_max=int(table.get("pool_max", 16)),
            timeout=float(table.get("timeout_seconds", 5.0)),
        )
    if "sqlite" in table:
        return SQLiteConfig(path=p(table["sqlite"], "store.sqlite"))
    raise ConfigError("[store] needs sqlite = \"path\" or postgresql = \"postgresql://…\"")


def load_config(path: Path) -> GatewayConfig:
    """Read a TOML configuration file; relative paths are relative to the file's folder.

    Raises ConfigError naming the missing or malformed setting.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    base = path.parent

    def p(value: Any, name: str) -> Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name} must be a path")
        candidate = Path(value)
        return candidate if candidate.is_absolute() else base / candidate

    try:
        tls, signing, store = data["tls"], data["signing"], data["store"]
        delivery = data.get("delivery", {})
        rules = data.get("rules", {})
        sla = data.get("sla", {})
        return GatewayConfig(
            tls=TLSConfig(ca=p(tls["ca"], "tls.ca"), cert=p(tls["cert"], "tls.cert"), key=p(tls["key"], "tls.key")),
            signing=SigningConfig(key=p(signing["key"], "signing.key"), key_id=str(signing["key_id"])),
            registry=p(data["registry"], "registry"),
            store=_store(store, p),
            listen=str(data.get("listen", "127.0.0.1:50051")),
            metrics_listen=data.get("metrics_listen", "127.0.0.1:9095") or None,
            delivery=DeliveryConfig(
                visibility_timeout=float(delivery.get("visibility_timeout_seconds", 30.0)),
                max_attempts=int(delivery.get("max_attempts", 10)),
            ),
            rules=CaseRules(
                review_threshold_fen=int(rules.get("review_threshold_fen", 1_000_000)),
                waiting_period_months=int(rules.get("waiting_period_months", 6)),
                request_expiry=dt.timedelta(days=float(rules.get("request_expiry_days", 30))),
            ),
            sla=SlaConfig(
                limits=Limits(
                    outbound=int(sla.get("outbound_working_days", 10)), inbound=int(sla.get("inbound_working_days", 5)),
                    total=int(sla.get("total_working_days", 15)), review=int(sla.get("review_working_days", 1)),
                ),
                calendar_file=p(sla["calendar_file"], "sla.calendar_file") if sla.get("calendar_file") else None,
            ),
            shutdown_grace=float(data.get("shutdown_grace_seconds", 10.0)),
            monitor_interval=float(data.get("monitor_interval_seconds", 5.0)),
            sweep_interval=float(data.get("sweep_interval_seconds", 60.0)),
        )
    except KeyError as exc:
        raise ConfigError(f"{path}: missing setting {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
