"""`transfer-gateway check-config FILE`: the configuration and every file it names, checked the way
start-up checks them, without binding a port or opening the store (as `promtool check config`).

Success prints what was found, so the operator sees what the gateway will use; failure is the
ConfigError of the loader or of `read_materials`, every problem on its own `error:` line, exit 78.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from gateway.app.assembly import Materials, read_materials
from gateway.app.config import GatewayConfig, load_config, parse_address
from gateway.app.server import store_description, utc_now
from gateway.core.registry import Registry
from gateway.store.sqlite import SQLiteConfig


def summary(path: Path, config: GatewayConfig, materials: Materials) -> list[str]:
    registry = materials.registry
    kind, where = store_description(config.store)
    contacted = "" if isinstance(config.store, SQLiteConfig) else " (not contacted)"
    calendar = materials.calendar
    years = ", ".join(str(y) for y in sorted(calendar.notices)) if calendar.notices else ""
    return [
        f"{path}: the configuration is valid",
        f"  listen {config.listen}; metrics {config.metrics_listen or 'off'}" + _workers(config),
        f"  store: {kind} {where}{contacted}",
        f"  registry: {config.registry}: version {registry.version}, {len(registry.platforms)} platforms,"
        f" {len(registry.agencies)} agencies, {len(registry.operators)} operators"
        + (" (DEV ONLY)" if registry.dev_only else ""),
        *(f"  signing: key {signer.key_id} ({signer.algorithm}) matches the registry" + _window(registry, signer.key_id)
          for signer in materials.signers),
        f"  tls: {config.tls.cert} valid until {materials.certificate_expires:%Y-%m-%d}; its key matches",
        f"  calendar: {config.sla.calendar_file}: notices for {years}" if config.sla.calendar_file
        else "  calendar: chinese-calendar only (no calendar_file)",
    ]


def _workers(config: GatewayConfig) -> str:
    """Several workers: how many, and where each serves its metrics."""
    if config.workers == 1:
        return ""
    ports = ""
    if config.metrics_listen and (port := parse_address(config.metrics_listen)[1]):
        ports = f", their metrics on ports {port} to {port + config.workers - 1}"
    return f"; {config.workers} worker processes sharing the listen address{ports}"


def _window(registry: Registry, key_id: str) -> str:
    window = registry.gateway_keys[key_id].window
    bounds = [f"{name} {when:%Y-%m-%d %H:%M} UTC" for name, when in (("from", window.not_before),
              ("until", window.ends())) if when is not None]
    return f", signs {' '.join(bounds)}" if bounds else ""


def check_config(path: Path, *, out: TextIO) -> int:
    """Check `path`; print the summary and any warnings. Raises ConfigError listing every problem."""
    config = load_config(path)
    materials = read_materials(config, now=utc_now())
    for line in summary(path, config, materials):
        print(line, file=out)
    for warning in materials.warnings:
        print(f"warning: {warning}", file=out)
    return 0
