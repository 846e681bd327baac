"""Assembly: read what the configuration points to, then build the gateway from it.

`read_materials` reads and checks every file a configuration names (TLS certificates and key,
signing key, registry, calendar) and reports every problem at once, each naming its setting and
file: it is both the first step of start-up and the whole of `transfer-gateway check-config`.
`assemble` makes the objects (store, router, services, calendar keeper, monitor) and hands each what it
uses; no constructor reads a file or opens anything, and `GatewayServer.start` binds and opens.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes, PrivateKeyTypes, PublicKeyTypes
from prometheus_client import CollectorRegistry

from gateway.app.build import BuildInfo
from gateway.app.config import GatewayConfig, parse_address
from gateway.app.expiry import ExpiryGauges
from gateway.app.failures import ConfigError, bounded
from gateway.app.indexkeeper import IndexKeeper
from gateway.app.monitor import Monitor
from gateway.app.publisher import CheckpointPublisher
from gateway.app.registry_sync import RegistrySync
from gateway.app.server import GatewayHealth, GatewayServer, ServerTls, Services, utc_now
from gateway.core.checkpoints import rotating_checkpoint_signer
from gateway.core.keys import GatewaySigner
from gateway.core.personkeys import PersonKeys, parse_secret
from gateway.core.registry import LiveRegistry, Registry
from gateway.core.signing import LocalSigner
from gateway.core.sla import Sla
from gateway.core.workdays import WorkingCalendar
from gateway.service.admin import AdminService
from gateway.service.admission import Admission
from gateway.service.auth import Callers
from gateway.service.authored import GatewayAuthor
from gateway.service.automatic import AutomaticTransfer
from gateway.service.calendar import CalendarKeeper
from gateway.service.exchange import ExchangeService
from gateway.service.log import LogService
from gateway.service.metrics import Metrics
from gateway.service.routing import Router
from gateway.service.tracking import TrackingService
from gateway.store.engines import make_store
from gateway.store.sqlite import SQLiteConfig
from mitransfer.protocol.registry import unknown_limits

EXPIRY_WARNING: Final = dt.timedelta(days=30)  # a certificate closer than this to its end is reported


@dataclass(frozen=True)
class Materials:
    """What the configured files hold, read and checked; `warnings` are worth a look, not fatal."""

    registry: Registry
    signer: LocalSigner  # `[signing] key`
    tls: ServerTls
    calendar: WorkingCalendar
    certificate_expires: dt.datetime
    person_keys: PersonKeys  # `[automatic.person_key_secrets]`: every case's person, and the index's, keyed under them
    warnings: tuple[str, ...] = field(default=())
    rotation: tuple[LocalSigner, ...] = field(default=())  # `[signing] rotation_keys`, each with its registry id

    @property
    def signers(self) -> tuple[LocalSigner, ...]:
        """Every signing key the gateway holds: the configured key, then the rotation keys."""
        return (self.signer, *self.rotation)


class _Files:
    """Reads the configured files, recording each problem under the setting that names the file."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def read(self, setting: str, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            self.problems.append(f"{setting}: {path}: no such file")
        except IsADirectoryError:
            self.problems.append(f"{setting}: {path}: is a folder, not a file")
        except PermissionError:
            self.problems.append(f"{setting}: {path}: permission denied (the gateway's user must be able to read it)")
        except OSError as exc:
            self.problems.append(f"{setting}: {path}: {bounded(exc.strerror or exc)}")
        return None

    def private(self, setting: str, path: Path, *, dev_only: bool) -> None:
        """A private key others can read is worth a warning (not for throwaway dev keys)."""
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            return
        if mode & 0o077 and not dev_only:
            self.warnings.append(f"{setting}: {path}: private key readable by others (mode {mode:04o}); "
                                 f"chmod 600 it")


def _certificates(files: _Files, setting: str, pem: bytes, path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        files.problems.append(f"{setting}: {path}: not a PEM certificate")
        return []


def _private_key(files: _Files, setting: str, pem: bytes, path: Path) -> PrivateKeyTypes | None:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        files.problems.append(f"{setting}: {path}: the key is encrypted; the gateway needs it unencrypted "
                              f"(and readable only by its user)")
    except (ValueError, UnsupportedAlgorithm):
        files.problems.append(f"{setting}: {path}: not a PEM private key")
    return None


def _public(key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def read_materials(config: GatewayConfig, *, now: dt.datetime) -> Materials:
    """Read and check every file `config` names.

    Raises ConfigError listing every problem (a missing or unreadable file, a certificate that
    is not one or has expired, a key that does not match its certificate, a registry that does not
    list the signing key, a calendar that does not parse), each with its setting and path.
    """
    files = _Files()
    registry = _registry(files, config.registry)
    dev_only = registry.dev_only if registry is not None else False
    tls, expires = _tls(files, config, now, dev_only=dev_only)
    signer = _signer(files, config, registry, dev_only=dev_only)
    rotation = tuple(found for path in config.signing.rotation_keys
                     if (found := _rotation_key(files, path, registry, dev_only=dev_only)) is not None)
    calendar = _calendar(files, config.sla.calendar_file)
    person_keys = _person_keys(files, config, dev_only=dev_only)
    if isinstance(config.store, SQLiteConfig):
        _sqlite_location(files, config.store.path)
    if config.metrics_listen and not _loopback(parse_address(config.metrics_listen)[0]):
        files.warnings.append(f"metrics_listen {config.metrics_listen}: not a loopback address; /metrics (fund "
                              f"totals per province pair) is plain HTTP: keep it on 127.0.0.1 and scrape it locally")
    if (files.problems or registry is None or tls is None or signer is None or calendar is None or expires is None
            or person_keys is None):
        raise ConfigError(files.problems or ["the configured files cannot be used"])
    return Materials(registry=registry, signer=signer, tls=tls, calendar=calendar, certificate_expires=expires,
                     person_keys=person_keys, warnings=tuple(files.warnings), rotation=rotation)


def _person_keys(files: _Files, config: GatewayConfig, *, dev_only: bool) -> PersonKeys | None:
    """The person-key secrets, each file checked (never echoing what it holds). At least one is
    needed: cases keep their person's key under it, as the suspended-record index does."""
    automatic = config.automatic
    if not automatic.person_key_secrets:
        files.problems.append("[automatic.person_key_secrets]: none configured; the gateway keeps each case's person"
                              " (and the suspended-record index's) only as an HMAC under a secret of its own: create"
                              " one with `openssl rand -hex 32` and name it with [automatic] current_person_key"
                              " (docs/operating.md, \"The person-key secret\")")
        return None
    secrets: dict[str, bytes] = {}
    for key_id, path in automatic.person_key_secrets.items():
        setting = f"[automatic.person_key_secrets] {key_id}"
        data = files.read(setting, path)
        if data is None:
            continue
        files.private(setting, path, dev_only=dev_only)
        try:
            secrets[key_id] = parse_secret(data)
        except ValueError as exc:
            files.problems.append(f"{setting}: {path}: {exc}")
    if len(secrets) != len(automatic.person_key_secrets) or automatic.current_person_key is None:
        return None
    return PersonKeys(secrets, automatic.current_person_key)


def _registry(files: _Files, path: Path) -> Registry | None:
    data = files.read("registry", path)
    if data is None:
        return None
    try:
        registry = Registry.from_json(data)
    except ValueError as exc:  # JSON that does not parse, or a RegistryError
        files.problems.append(f"registry: {path}: {bounded(exc)}")
        return None
    except (TypeError, AttributeError) as exc:  # JSON of the wrong shape at the top
        files.problems.append(f"registry: {path}: not a registry ({bounded(exc)})")
        return None
    for where in unknown_limits(json.loads(data)):
        files.warnings.append(f"registry: {path}: {where} is not a limit the gateway knows (ignored; known: "
                              "calls_in_flight, requests_per_second, burst, subscriptions)")
    return registry


def _tls(
    files: _Files, config: GatewayConfig, now: dt.datetime, *, dev_only: bool
) -> tuple[ServerTls | None, dt.datetime | None]:
    ca_pem = files.read("[tls] ca", config.tls.ca)
    cert_pem = files.read("[tls] cert", config.tls.cert)
    key_pem = files.read("[tls] key", config.tls.key)
    if ca_pem is not None:
        _certificates(files, "[tls] ca", ca_pem, config.tls.ca)
    chain = _certificates(files, "[tls] cert", cert_pem, config.tls.cert) if cert_pem is not None else []
    key = _private_key(files, "[tls] key", key_pem, config.tls.key) if key_pem is not None else None
    files.private("[tls] key", config.tls.key, dev_only=dev_only)
    if not chain:
        return None, None
    leaf = chain[0]
    if now > leaf.not_valid_after_utc:
        files.problems.append(f"[tls] cert: {config.tls.cert}: expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    elif now < leaf.not_valid_before_utc:
        files.problems.append(f"[tls] cert: {config.tls.cert}: not valid before {leaf.not_valid_before_utc:%Y-%m-%d}")
    elif now + EXPIRY_WARNING > leaf.not_valid_after_utc:
        files.warnings.append(f"[tls] cert: {config.tls.cert}: expires on {leaf.not_valid_after_utc:%Y-%m-%d}")
    if key is not None and _public(key.public_key()) != _public(leaf.public_key()):
        files.problems.append(f"[tls] key: {config.tls.key}: does not match the certificate {config.tls.cert}")
    if ca_pem is None or cert_pem is None or key_pem is None:
        return None, None
    return ServerTls(key=key_pem, chain=cert_pem, ca=ca_pem), leaf.not_valid_after_utc


def _signer(files: _Files, config: GatewayConfig, registry: Registry | None, *, dev_only: bool) -> LocalSigner | None:
    key_id, path = config.signing.key_id, config.signing.key
    pem = files.read("[signing] key", path)
    if pem is None:
        return None
    files.private("[signing] key", path, dev_only=dev_only)
    try:
        signer = LocalSigner.from_pem(key_id, pem)
    except TypeError:
        files.problems.append(f"[signing] key: {path}: the key is encrypted; the gateway needs it unencrypted")
        return None
    except (ValueError, UnsupportedAlgorithm) as exc:
        files.problems.append(f"[signing] key: {path}: not a usable signing key ({bounded(exc)})")
        return None
    if registry is not None:
        registered = registry.gateway_keys.get(key_id)
        if registered is None:
            known = ", ".join(sorted(registry.gateway_keys)) or "none"
            files.problems.append(f"[signing] key_id: {key_id!r} is not a gateway key of the registry "
                                  f"{config.registry} (it lists: {known})")
        elif registered.public_pem() != signer.verifying_key().public_pem():
            files.problems.append(f"[signing] key: {path}: is not the key the registry lists as {key_id}")
    return signer


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _rotation_key(files: _Files, path: Path, registry: Registry | None, *, dev_only: bool) -> LocalSigner | None:
    """A `[signing] rotation_keys` file, named by the registry gateway key with its public key."""
    pem = files.read("[signing] rotation_keys", path)
    if pem is None:
        return None
    files.private("[signing] rotation_keys", path, dev_only=dev_only)
    try:
        unnamed = LocalSigner.from_pem("rotation", pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        files.problems.append(f"[signing] rotation_keys: {path}: not a usable signing key ({bounded(exc)})")
        return None
    if registry is None:
        return None
    public = unnamed.verifying_key().public_pem()
    for key_id, key in registry.gateway_keys.items():
        if key.public_pem() == public:
            return LocalSigner(replace(unnamed.key, key_id=key_id))
    files.problems.append(f"[signing] rotation_keys: {path}: its public key is not a gateway key of the registry "
                          f"{_known_keys(registry)}")
    return None


def _known_keys(registry: Registry) -> str:
    """The registry's gateway key ids, for a message that found none matching."""
    return f"(it lists: {', '.join(sorted(registry.gateway_keys)) or 'none'})"


def _sqlite_location(files: _Files, path: Path) -> None:
    """The database file, its WAL and lock files need a folder this user may write in."""
    if path.exists():
        if not path.is_file():
            files.problems.append(f"[store] sqlite: {path}: is not a file")
        elif not os.access(path, os.R_OK | os.W_OK):
            files.problems.append(f"[store] sqlite: {path}: not writable by this user")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folder is created: the first one that exists must be writable
    if not folder.is_dir():
        files.problems.append(f"[store] sqlite: {path}: {folder} is not a folder")
    elif not os.access(folder, os.W_OK | os.X_OK):
        files.problems.append(f"[store] sqlite: {path}: the folder {folder} is not writable by this user")


def _calendar(files: _Files, path: Path | None) -> WorkingCalendar | None:
    if path is None:
        return WorkingCalendar()
    if files.read("[sla] calendar_file", path) is None:
        return None
    try:
        return WorkingCalendar.load(path)
    except ValueError as exc:  # CalendarFileError: its message names the file
        files.problems.append(f"[sla] calendar_file: {bounded(exc)}")
        return None


def assemble(
    config: GatewayConfig, *, clock: Callable[[], dt.datetime] = utc_now, prometheus: CollectorRegistry | None = None,
    materials: Materials | None = None, source: str = "", build: BuildInfo | None = None, worker: int | None = None,
) -> GatewayServer:
    """The gateway of `config`, built and not started (`await server.start()` binds and opens).

    `source` names the configuration (its file) in the start-up line; `worker` is this process's
    index among the configuration's workers (`serve --workers`). Raises ConfigError (see
    `read_materials`) when `materials` are not given and a file cannot be used.
    """
    materials = materials or read_materials(config, now=utc_now())  # TLS checks certificates by the wall clock
    prometheus = prometheus or CollectorRegistry()
    build = build or BuildInfo.current()
    build.register(prometheus)
    metrics = Metrics(prometheus)
    sla = Sla(WorkingCalendar(), config.sla.limits)  # the store's calendar, read at start (CalendarKeeper)
    store = make_store(config.store, clock, sla)
    metrics.watch_log_cpu(store.log_cpu_seconds)
    router = Router(store, config.delivery, clock, metrics, max_delivery_bytes=config.messages.grpc_send_bytes)
    registry = LiveRegistry(materials.registry)
    signer = GatewaySigner(materials.signers, registry)
    calendar = CalendarKeeper(store=store, sla=sla, metrics=metrics)
    author = GatewayAuthor(registry=registry, store=store, router=router, signer=signer, metrics=metrics, sla=sla)
    publisher = CheckpointPublisher(store=store, sign=rotating_checkpoint_signer(signer, registry, clock),
                                    metrics=metrics, clock=clock)
    automatic = AutomaticTransfer(registry=registry, store=store, router=router, author=author, signer=signer,
                                  metrics=metrics, keys=materials.person_keys, rules=config.automatic.rules,
                                  clock=clock)
    sync = RegistrySync(live=registry, store=store, path=config.registry, signers=materials.signers, metrics=metrics)
    callers = Callers(materials.tls.ca, clock)
    services = Services(
        exchange=ExchangeService(registry=registry, store=store, router=router, signer=signer, metrics=metrics,
                                 sla=sla, clock=clock, automatic=automatic, limits=config.messages, callers=callers,
                                 keys=materials.person_keys),
        tracking=TrackingService(registry=registry, store=store, sla=sla, clock=clock, callers=callers),
        admin=AdminService(registry=registry, store=store, author=author, router=router, metrics=metrics,
                           calendar=calendar, clock=clock, reloader=sync, callers=callers),
        log=LogService(registry=registry, store=store, publish_now=publisher.publish_now, callers=callers),
    )
    health = GatewayHealth()
    expiry = ExpiryGauges(metrics=metrics, registry=registry,
                          server=x509.load_pem_x509_certificates(materials.tls.chain),
                          ca=x509.load_pem_x509_certificates(materials.tls.ca), clients=callers.seen)

    async def poll_registry(_: dt.datetime) -> None:
        await sync.poll()

    monitor = Monitor(store=store, metrics=metrics, sla=sla, calendar=calendar,
                      platforms=lambda: list(registry.current.platforms), clock=clock, on_calendar=health.calendar,
                      on_store=health.store, also=(poll_registry, expiry),
                      replica=f"{socket.gethostname()} {config.listen}" + (f" worker {worker}" if worker is not None
                                                                            else ""))
    keeper = IndexKeeper(store=store, keys=materials.person_keys, metrics=metrics, clock=clock,
                         batch=config.automatic.upkeep_batch)
    return GatewayServer(
        config=config, tls=materials.tls, store=store, router=router, services=services,
        admission=Admission(registry, config.quota, metrics), health=health, monitor=monitor, calendar=calendar,
        calendar_seed=materials.calendar.notices, publisher=publisher, keeper=keeper, metrics=metrics,
        prometheus=prometheus, sla=sla, build=build, clock=clock, source=source, dev_only=registry.current.dev_only,
        warnings=materials.warnings, registry_sync=sync, worker=worker,
    )
