"""Configuration: frozen dataclasses, one per concern, read once at start-up by `load_config`.

Each setting is described once, on its dataclass field (`gateway.core.settings.setting`): its
default, meaning, unit and bounds. The loader walks those descriptions, so it refuses an unknown
key (suggesting the nearest known one), checks every value's type and range naming its key, and
takes every default from the dataclass; `reference()` renders the same descriptions as the
configuration reference of docs/operating.md. Adding a setting is adding one field.

Adding a setting: a field with `setting(default, "what it means", unit=…, minimum=…)` on the
dataclass of its concern (a new concern: a frozen dataclass of such fields, and a field of that
type on GatewayConfig, which makes it a `[table]`). Types read: bool, int, float, str, Path
(relative to the file), timedelta (a number in `unit`), `X | None`, `tuple[X, ...]` (an array),
`Mapping[str, X]` (a table keyed by names: platform ids, regions; X a value or a dataclass, one
`[table.name]` each), a nested dataclass and a union of dataclasses (told apart by their first
required key). Then `python scripts/gen_docs.py` regenerates the reference.

Checking what the files a setting names contain (certificates, keys, registry, calendar) is the
assembly's part (`gateway.app.assembly.read_materials`): this module reads only the TOML file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import ipaddress
import math
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from gateway.app.devpki import GATEWAY_KEY_ID, PERSON_KEY_ID, DevPaths
from gateway.app.failures import ConfigError, bounded
from gateway.app.publisher import LogConfig
from gateway.core.automatic import AutomaticRules
from gateway.core.limits import MessageLimits
from gateway.core.personkeys import is_key_id
from gateway.core.quota import Quota
from gateway.core.settings import Setting, described, setting
from gateway.core.sla import Limits
from gateway.service.routing import DeliveryConfig
from gateway.store.engines import StoreConfig
from gateway.store.sqlite import SQLiteConfig

C = TypeVar("C")
MAX_WORKERS: Final = 64  # gateway processes on one host (`workers`)

__all__ = ["AutomaticConfig", "ConfigError", "ConnectionsConfig", "GatewayConfig", "SigningConfig", "SlaConfig",
           "TLSConfig", "config_from", "load_config", "parse_address", "read_settings", "reference"]


# Settings that were, and where what they said lives now: named in the refusal of an old file.
RETIRED: Final[Mapping[str, str]] = {
    "rules": "the [rules] table is gone: what a region decides is its policy in the registry (policies[])",
    "rules.review_threshold_fen": "which outbound fund transfers wait for a reviewer is each region's own policy "
    "in the registry (policies[].review_above_fen; none by default)",
    "rules.waiting_period_months": "the waiting period is each region's own policy in the registry "
    "(policies[].waiting_period_months, 0 to 6; none by default)",
    "rules.request_expiry_days": "a transfer request is never closed by the clock: unanswered past the outbound "
    "limit it is escalated (overdue, alerted) until its applicant withdraws it or an operator closes it "
    "(transfer-gateway case close)",
    "sweep_interval_seconds": "nothing expires any more; the monitor's reading (monitor_interval_seconds) shows "
    "escalated requests",
}


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets: `[::1]:50051`; port 0 picks a free port).

    Raises ValueError saying what is wrong, e.g. for `localhost` (no port).
    """
    host, colon, port = text.rpartition(":")
    if not colon or not host or "]" in port:
        raise ValueError(f"expected host:port, e.g. 127.0.0.1:50051, got {_shown(text)}")
    if not port.isdigit() or int(port) > 65_535:
        raise ValueError(f"port {_shown(port)} is not a number from 0 to 65535")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"unclosed [ in {_shown(text)}")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_shown(host)} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"put an IPv6 host in brackets, e.g. [::1]:50051, got {_shown(text)}")
    return host, int(port)


@dataclass(frozen=True)
class TLSConfig:
    """Mutual TLS is always on: platforms and operators present certificates of this CA."""

    ca: Path = setting(doc="CA bundle that platform and operator client certificates must chain to.",
                       example='"pki/platform-ca.pem"')
    cert: Path = setting(doc="The gateway's server certificate (PEM; its chain after it).",
                         example='"pki/gateway.pem"')
    key: Path = setting(doc="The server certificate's private key (PEM, unencrypted; mode 0600).",
                        example='"pki/gateway.key"')


@dataclass(frozen=True)
class SigningConfig:
    """The key the gateway signs its receipts and its own messages with."""

    key: Path = setting(doc="The receipt-signing private key (PKCS#8 PEM: Ed25519, ECDSA P-256, or SM2 with the"
                        " sm extra; mode 0600).",
                        example='"pki/gateway-signing.key"')
    key_id: str = setting(doc="Its id, listed with the same public key under \"gateway\" in the registry.",
                          example='"gateway-2026-1"')
    rotation_keys: tuple[Path, ...] = setting(
        (), "More signing keys, for a rotation (PKCS#8 PEM files, mode 0600): each must be a registry gateway key"
        " (found by its public key). Of all the keys valid at a moment by their registry windows, the one whose"
        " window began last signs (see the rotation runbook).")


@dataclass(frozen=True)
class SlaConfig:
    """The legal time limits and the working-day calendar they are counted in."""

    limits: Limits = setting(factory=Limits, doc="Working days per stage.", inline=True)
    calendar_file: Path | None = setting(
        None, "The State Council's yearly holiday notices as data (deploy/calendar/example.toml shows the format),"
        " loaded into the store at start-up for the years it does not hold yet; load later changes with"
        " `transfer-gateway calendar load`.")


@dataclass(frozen=True)
class ConnectionsConfig:
    """HTTP/2 and connection limits of the gRPC server, all callers together. gRPC knows a caller's
    platform only after the TLS handshake and the gateway sees calls, not connections: limits per
    platform are `[quota]`'s, per source address a firewall's or load balancer's."""

    max_connections: int = setting(
        1000, "TCP connections held at once, all callers together (grpc.max_allowed_incoming_connections);"
        " more are closed as they arrive.", minimum=1)
    handshake_timeout: float = setting(
        10.0, "Time a new connection has to finish its TLS handshake before it is closed"
        " (grpc.server_handshake_timeout_ms; gRPC's own default is 120 s).", key="handshake_timeout_seconds",
        unit="seconds", minimum=0.1)
    max_concurrent_streams: int = setting(
        100, "Calls (HTTP/2 streams) one connection may have open at once (grpc.max_concurrent_streams);"
        " a client queues the rest itself.", minimum=1)
    max_connection_idle: float = setting(
        300.0, "A connection without a call for this long is closed (GOAWAY; grpc.max_connection_idle_ms).",
        key="max_connection_idle_seconds", unit="seconds", minimum=0.1)
    max_connection_age: float = setting(
        1800.0, "A connection is asked to close after this long (GOAWAY; grpc.max_connection_age_ms), so"
        " clients spread over replicas again; gRPC adds ±10 % jitter.", key="max_connection_age_seconds",
        unit="seconds", minimum=1)
    max_connection_age_grace: float = setting(
        30.0, "Time the calls of such a connection get to finish before it is cut (a subscription is"
        " cut and reopened by its client; grpc.max_connection_age_grace_ms).",
        key="max_connection_age_grace_seconds", unit="seconds", minimum=0)
    keepalive_time: float = setting(
        60.0, "The gateway pings a connection that has been quiet for this long (grpc.keepalive_time_ms)…",
        key="keepalive_time_seconds", unit="seconds", minimum=1)
    keepalive_timeout: float = setting(
        20.0, "…and closes it if the ping is not answered within this (grpc.keepalive_timeout_ms): a"
        " subscriber whose host vanished does not hold its stream for hours.",
        key="keepalive_timeout_seconds", unit="seconds", minimum=0.1)

    def grpc_options(self) -> list[tuple[str, int]]:
        """These limits as grpc.aio server options."""
        def ms(seconds: float) -> int:
            return max(1, round(seconds * 1000))

        return [
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.server_handshake_timeout_ms", ms(self.handshake_timeout)),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.max_connection_idle_ms", ms(self.max_connection_idle)),
            ("grpc.max_connection_age_ms", ms(self.max_connection_age)),
            ("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace)),
            ("grpc.keepalive_time_ms", ms(self.keepalive_time)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout)),
        ]


@dataclass(frozen=True)
class AutomaticConfig:
    """Automatic transfer (免申请): the suspended-record index, and the person-key secrets it and every
    case keep persons under."""

    rules: AutomaticRules = setting(factory=AutomaticRules, doc="How long the index keeps what waits.", inline=True)
    person_key_secrets: Mapping[str, Path] = setting(
        factory=dict, doc="The person-key secrets by id (1 to 32 letters, digits, . _ -): files of at least 64 hex"
        " digits (`openssl rand -hex 32`), readable by the gateway's user only. Open cases and the index keep an"
        " HMAC of each person's certificate under them, never the number. At least one is required: the gateway"
        " does not start without it. Every replica has the same set, but for the steps of a rotation"
        " (docs/operating.md).")
    current_person_key: str | None = setting(
        None, "The id of the secret new cases and entries are keyed under (required with any secret). The others"
        " still match, and the upkeep keys their cases and entries again under this one.")
    upkeep_interval: float = setting(60.0, "Time between rounds of the index's upkeep: enrollments past their"
                                     " retention period lapse, entries under an old secret are keyed again.",
                                     key="upkeep_interval_seconds", unit="seconds", minimum=0.05)
    upkeep_batch: int = setting(500, "Most entries one round of upkeep lapses or keys again.", minimum=1)

    def __post_init__(self) -> None:
        bad = [key_id for key_id in self.person_key_secrets if not is_key_id(key_id)]
        if bad:
            raise ValueError(f"person-key secret id {bad[0][:40]!r} is not 1 to 32 letters, digits, . _ or -")
        if self.person_key_secrets and self.current_person_key is None:
            raise ValueError("current_person_key is required with person_key_secrets: the id new entries use")
        if self.current_person_key is not None and self.current_person_key not in self.person_key_secrets:
            raise ValueError(f"current_person_key {self.current_person_key[:40]!r} is not one of"
                             f" person_key_secrets ({', '.join(sorted(self.person_key_secrets)) or 'none'})")


@dataclass(frozen=True)
class GatewayConfig:
    """One gateway process."""

    tls: TLSConfig = setting(doc="Mutual TLS.")
    signing: SigningConfig = setting(doc="The gateway's signing key.")
    registry: Path = setting(doc="The agency registry (JSON): platforms, agencies, operators and public keys.",
                             example='"registry.json"')
    store: StoreConfig = setting(doc="Where cases, messages and deliveries are kept: `sqlite` (one process) or"
                                 " `postgresql` (any number of replicas).")
    listen: str = setting("127.0.0.1:50051", "The gRPC address, host:port (port 0 picks a free port).",
                          check=parse_address)
    metrics_listen: str | None = setting(
        "127.0.0.1:9095", "Prometheus /metrics address, host:port; \"\" turns it off.", check=parse_address,
        empty_is_none=True)
    delivery: DeliveryConfig = setting(factory=DeliveryConfig, doc="Store-and-forward delivery to platforms.")
    messages: MessageLimits = setting(factory=MessageLimits, doc="What Submit takes: a message's size and age.")
    quota: Quota = setting(factory=Quota, doc="Each platform's share of the gateway (a platform's registry entry"
                           " may set its own limits).")
    connections: ConnectionsConfig = setting(factory=ConnectionsConfig, doc="HTTP/2 and connection limits.")
    sla: SlaConfig = setting(factory=SlaConfig, doc="Deadlines, in working days.")
    log: LogConfig = setting(factory=LogConfig, doc="The transparency log's signed checkpoints.")
    automatic: AutomaticConfig = setting(factory=AutomaticConfig, doc="Automatic transfer (免申请): the"
                                         " suspended-record index.")
    shutdown_grace: float = setting(10.0, "Time in-flight calls get to finish after SIGTERM.",
                                    key="shutdown_grace_seconds", unit="seconds", minimum=0)
    monitor_interval: float = setting(5.0, "Time between readings of backlog, stages and funds into the gauges.",
                                      key="monitor_interval_seconds", unit="seconds", minimum=0.05)
    workers: int = setting(
        1, "Gateway processes serving this configuration on this host (`serve --workers`), sharing the listen"
        " address (SO_REUSEPORT), each a replica of its own on the store: more than 1 needs `postgresql`. Worker i"
        " serves /metrics on metrics_listen's port + i.", minimum=1, maximum=MAX_WORKERS)

    def __post_init__(self) -> None:
        if self.workers == 1:
            return
        if isinstance(self.store, SQLiteConfig):
            raise ValueError(
                f"workers = {self.workers} needs a PostgreSQL store: a SQLite file has one writer and is locked by"
                " one gateway process; run one worker on SQLite, or move the store to [store] postgresql"
                " (docs/operating.md, several workers on one host)")
        if self.metrics_listen:
            port = parse_address(self.metrics_listen)[1]
            if port and port + self.workers - 1 > 65_535:
                raise ValueError(f"metrics_listen {self.metrics_listen}: workers = {self.workers} need the ports"
                                 f" {port} to {port + self.workers - 1}, beyond 65535")

    @classmethod
    def dev(
        cls, certs: Path = Path("certs/dev"), database: Path = Path("var/gateway.db"), **overrides: Any
    ) -> GatewayConfig:
        """The embedded default: dev certificates, SQLite at `database` (or `store=`), loopback."""
        paths = DevPaths(certs)
        overrides.setdefault("store", SQLiteConfig(path=database))
        overrides.setdefault("automatic", AutomaticConfig(person_key_secrets={PERSON_KEY_ID: paths.person_key_secret},
                                                          current_person_key=PERSON_KEY_ID))
        return cls(
            tls=TLSConfig(ca=paths.ca, cert=paths.gateway_cert, key=paths.gateway_key),
            signing=SigningConfig(key=paths.gateway_signing_key, key_id=GATEWAY_KEY_ID),
            registry=paths.registry,
            **overrides,
        )


def dev_settings(certs: Path, database: Path = Path("var/gateway.db")) -> dict[str, Any]:
    """`GatewayConfig.dev` as the settings of a file, so command-line options are checked alike."""
    paths = DevPaths(certs)
    return {"registry": str(paths.registry), "store": {"sqlite": str(database)},
            "tls": {"ca": str(paths.ca), "cert": str(paths.gateway_cert), "key": str(paths.gateway_key)},
            "signing": {"key": str(paths.gateway_signing_key), "key_id": GATEWAY_KEY_ID},
            "automatic": {"person_key_secrets": {PERSON_KEY_ID: str(paths.person_key_secret)},
                          "current_person_key": PERSON_KEY_ID}}


def load_config(path: Path, overrides: Mapping[str, tuple[str, Any]] | None = None) -> GatewayConfig:
    """Read a TOML configuration file; relative paths are relative to the file's folder.

    `overrides` maps top-level keys to (command-line option, value): they replace the file's
    value and are checked the same way, with problems named by the option.

    Raises ConfigError listing every unknown key, missing setting and bad value, each named.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {bounded(exc)}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return config_from(data, source=str(path), base=path.parent, overrides=overrides)


def config_from(data: Mapping[str, Any], *, source: str, base: Path,
                overrides: Mapping[str, tuple[str, Any]] | None = None) -> GatewayConfig:
    """Check settings already parsed (a TOML document's tables). Raises ConfigError (see load_config)."""
    return read_settings(GatewayConfig, data, source=source, base=base, overrides=overrides)


def read_settings(cls: type[C], data: Mapping[str, Any], *, source: str, base: Path,
                  overrides: Mapping[str, tuple[str, Any]] | None = None) -> C:
    """An instance of the settings dataclass `cls` from parsed tables, every key checked against
    the descriptions on its fields. Raises ConfigError listing every problem."""
    merged = dict(data)
    options = {}
    for key, (option, value) in (overrides or {}).items():
        merged[key] = value
        options[key] = option
    reader = _Reader(cls, source, base, options)
    config = reader.table(cls, merged, ())
    if reader.problems or not isinstance(config, cls):
        raise ConfigError(reader.problems or [f"{source}: cannot be used"],
                          hint="`transfer-gateway check-config FILE` lists every problem; "
                               "docs/operating.md describes each setting")
    return config


# -- reading -----------------------------------------------------------------------------------

_INVALID: Final = object()  # a value that could not be read (its problem is already recorded)


def _shown(value: object) -> str:
    """A value as the error shows it: quoted, on one line, bounded (it came from the file)."""
    return bounded(repr(value), 60)


def _kind(value: object) -> str:
    for python, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                         (list, "an array"), (dict, "a table"), (dt.date, "a date")):
        if isinstance(value, python):
            return name
    return type(value).__name__


def _settings(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Setting, Any]]:
    """The fields of `cls` that are settings, with their resolved types."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        described_as = described(field)
        if described_as is not None:
            yield field, described_as, hints[field.name]


def _required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _optional(tp: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, whether None is allowed)."""
    args = typing.get_args(tp)
    if _is_union(tp) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else typing.Union[rest]), True  # noqa: UP007
    return tp, False


def _is_union(tp: Any) -> bool:
    return isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union


def _variants(tp: Any) -> tuple[type, ...]:
    """The dataclasses of a union of dataclasses (the store), else ()."""
    args = typing.get_args(tp) if _is_union(tp) else ()
    return tuple(args) if args and all(dataclasses.is_dataclass(a) for a in args) else ()


def _tag(variant: type) -> str:
    """The key that names a variant of a union table: its first required setting."""
    return next((s.key or f.name) for f, s, _ in _settings(variant) if _required(f))


def _keys(cls: type) -> list[str]:
    """The keys a table of `cls` may hold (inline sections' keys included)."""
    keys = []
    for field, described_as, tp in _settings(cls):
        keys += _keys(tp) if described_as.inline else [described_as.key or field.name]
    return keys


def _all_keys(cls: type, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(table, key) of every setting below `cls`, for suggestions across tables."""
    for field, described_as, tp in _settings(cls):
        key = described_as.key or field.name
        if described_as.inline:
            yield from _all_keys(tp, prefix)
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from _all_keys(tp, f"{prefix}.{key}" if prefix else key)
        elif _variants(tp):
            for variant in _variants(tp):
                yield from _all_keys(variant, f"{prefix}.{key}" if prefix else key)
        else:
            yield prefix, key


class _Reader:
    """One reading of a document: every problem is recorded, so one run lists them all."""

    def __init__(self, root: type, source: str, base: Path, options: Mapping[str, str]) -> None:
        self.root = root
        self.source = source
        self.base = base
        self.options = options
        self.problems: list[str] = []

    def where(self, table: tuple[str, ...], key: str | None = None) -> str:
        """How a problem names its place: the command-line option, or file, [table] and key."""
        top = table[0] if table else key
        if top is not None and top in self.options:
            return self.options[top]
        section = f"[{'.'.join(table)}]" if table else ""
        place = " ".join(part for part in (section, key) if part)
        return f"{self.source}: {place}" if place else self.source

    def problem(self, table: tuple[str, ...], key: str | None, text: str) -> object:
        self.problems.append(f"{self.where(table, key)}: {text}")
        return _INVALID

    def table(self, cls: type, data: Any, path: tuple[str, ...]) -> Any:
        """An instance of dataclass `cls` from a table, every key known and checked."""
        if not isinstance(data, dict):
            return self.problem(path[:-1], path[-1] if path else None,
                                f"expected a table ([{'.'.join(path)}]), got {_kind(data)}")
        kwargs, ok = self.fields(cls, data, path)
        self.unknown(cls, data, path)
        if not ok:
            return _INVALID
        try:
            return cls(**kwargs)
        except ValueError as exc:  # the dataclass's own rule across its fields
            return self.problem(path, None, str(exc))

    def fields(self, cls: type, data: dict[str, Any], path: tuple[str, ...]) -> tuple[dict[str, Any], bool]:
        kwargs: dict[str, Any] = {}
        ok = True
        for field, described_as, tp in _settings(cls):
            if described_as.inline:
                inner, inner_ok = self.fields(tp, data, path)
                if inner_ok:
                    try:
                        kwargs[field.name] = tp(**inner)
                    except ValueError as exc:  # the section's own rule across its fields
                        self.problem(path, None, str(exc))
                        inner_ok = False
                ok = ok and inner_ok
                continue
            key = described_as.key or field.name
            if key not in data:
                if _required(field):
                    ok = False
                    self.missing(path, key, described_as, tp)
                continue
            value = self.value(tp, described_as, data[key], path, key)
            if value is _INVALID:
                ok = False
            else:
                kwargs[field.name] = value
        return kwargs, ok

    def missing(self, path: tuple[str, ...], key: str, described_as: Setting, tp: Any) -> None:
        if dataclasses.is_dataclass(tp) or _variants(tp):
            self.problem((), None, f"missing table [{'.'.join((*path, key))}] ({described_as.doc.rstrip('.')})")
        else:
            example = f", e.g. {key} = {described_as.example}" if described_as.example else ""
            self.problem(path, key, f"required setting missing ({described_as.doc.rstrip('.')}){example}")

    def unknown(self, cls: type, data: dict[str, Any], path: tuple[str, ...]) -> None:
        known = _keys(cls)
        for key in data:
            if key in known:
                continue
            dotted = ".".join((*path, key))
            retired = RETIRED.get(dotted)
            if retired is not None:
                if isinstance(data[key], dict) and data[key]:  # a retired table: each key with its own word
                    for inner in data[key]:
                        self.problem((*path, key), inner,
                                     f"no longer a setting: {RETIRED.get(f'{dotted}.{inner}', retired)}")
                else:
                    self.problem(path, key, f"no longer a setting: {retired}")
                continue
            # A near spelling, or the key without its unit (`shutdown_grace` for shutdown_grace_seconds).
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.7) or [k for k in known
                                                                              if k.startswith(f"{key}_")][:1]
            if near:
                hint = f"did you mean {near[0]}?"
            else:
                elsewhere = [f"[{t}] {k}" if t else k for t, k in _all_keys(self.root) if k == key]
                hint = f"did you mean {elsewhere[0]}?" if elsewhere else f"known here: {', '.join(known)}"
            self.problem(path, key, f"unknown setting ({hint})")

    def value(self, tp: Any, described_as: Setting, value: Any, path: tuple[str, ...], key: str) -> Any:
        inner, nullable = _optional(tp)
        if nullable and described_as.empty_is_none and value == "":
            return None
        if dataclasses.is_dataclass(inner):
            return self.table(inner, value, (*path, key))  # type: ignore[arg-type]
        variants = _variants(inner)
        if variants:
            return self.variant(variants, value, (*path, key))
        origin = typing.get_origin(inner)
        if origin is tuple:
            return self.array(inner, described_as, value, path, key)
        if origin in (dict, Mapping):
            return self.mapping(inner, described_as, value, path, key)
        return self.checked(inner, described_as, value, path, key)

    def checked(self, tp: Any, described_as: Setting, value: Any, path: tuple[str, ...], key: str) -> Any:
        converted = self.scalar(tp, described_as, value, path, key)
        if converted is _INVALID:
            return converted
        if described_as.check is not None:
            try:
                described_as.check(converted)
            except ValueError as exc:
                return self.problem(path, key, str(exc))
        return converted

    def array(self, tp: Any, described_as: Setting, value: Any, path: tuple[str, ...], key: str) -> Any:
        """`tuple[X, ...]` from a TOML array, each item read and checked as an X."""
        item_type, rest = typing.get_args(tp)
        if rest is not Ellipsis:
            raise TypeError(f"settings arrays are tuple[X, ...], not {tp!r} ({key})")
        if not isinstance(value, list):
            return self.problem(path, key, f"expected an array, got {_kind(value)} {_shown(value)}")
        items = [self.checked(item_type, described_as, item, path, f"{key}[{i}]") for i, item in enumerate(value)]
        return _INVALID if any(item is _INVALID for item in items) else tuple(items)

    def mapping(self, tp: Any, described_as: Setting, value: Any, path: tuple[str, ...], key: str) -> Any:
        """`Mapping[str, X]` from a table whose keys are names (platform ids, regions): X a settings
        dataclass (a table per name, `[key.name]`) or a value (`name = …` in `[key]`)."""
        _, item_type = typing.get_args(tp)
        if not isinstance(value, dict):
            return self.problem(path[:-1] if path else (), key, f"expected a table, got {_kind(value)}")
        items: dict[str, Any] = {}
        for name, item in value.items():
            if isinstance(item_type, type) and dataclasses.is_dataclass(item_type):
                items[name] = self.table(item_type, item, (*path, key, name))
            else:
                items[name] = self.checked(item_type, described_as, item, (*path, key), name)
        return _INVALID if any(item is _INVALID for item in items.values()) else items

    def variant(self, variants: tuple[type, ...], data: Any, path: tuple[str, ...]) -> Any:
        """The one variant whose required key the table holds (the store: sqlite or postgresql)."""
        if not isinstance(data, dict):
            return self.problem(path[:-1], path[-1], f"expected a table, got {_kind(data)}")
        tags = {_tag(v): v for v in variants}
        present = [tag for tag in tags if tag in data]
        if len(present) != 1:
            choices = " or ".join(f"{tag} = …" for tag in tags)
            text = f"holds both {' and '.join(present)}" if present else "names no store"
            return self.problem(path, None, f"{text}: give exactly one of {choices}")
        chosen = tags[present[0]]
        others = {key for variant in variants if variant is not chosen for key in _keys(variant)}
        for key in sorted(others.difference(_keys(chosen)).intersection(data)):
            self.problem(path, key, f"not a setting of a {present[0]} store")
        return self.table(chosen, {k: v for k, v in data.items() if k not in others or k in _keys(chosen)}, path)

    def scalar(self, tp: Any, described_as: Setting, value: Any, path: tuple[str, ...], key: str) -> Any:
        def wrong(expected: str) -> object:
            return self.problem(path, key, f"expected {expected}, got {_kind(value)} {_shown(value)}")

        if tp is bool:
            return value if isinstance(value, bool) else wrong("true or false")
        if tp is str:
            if not isinstance(value, str):
                return wrong("a string")
            if not value:
                return self.problem(path, key, "must not be empty")
            return value
        if tp is Path:
            if not isinstance(value, str) or not value:
                return wrong("a path (a non-empty string)")
            candidate = Path(value).expanduser()
            return candidate if candidate.is_absolute() else self.base / candidate
        if tp in (int, float, dt.timedelta):
            number_ok = isinstance(value, int) or (tp is not int and isinstance(value, float))
            if isinstance(value, bool) or not number_ok or (isinstance(value, float) and not math.isfinite(value)):
                return wrong("an integer" if tp is int else "a number")
            unit = f" {described_as.unit}" if described_as.unit else ""
            if described_as.minimum is not None and value < described_as.minimum:
                return self.problem(path, key, f"must be at least {_number(described_as.minimum)}{unit}, got {value}")
            if described_as.maximum is not None and value > described_as.maximum:
                return self.problem(path, key, f"must be at most {_number(described_as.maximum)}{unit}, got {value}")
            if tp is dt.timedelta:
                return dt.timedelta(seconds=value * _UNIT_SECONDS[described_as.unit or "seconds"])
            return tp(value)
        raise TypeError(f"no reader for settings of type {tp!r} ({key})")  # a programming error, not the file's


_UNIT_SECONDS: Final = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86_400}


# -- the reference -------------------------------------------------------------------------------


def reference(cls: type = GatewayConfig) -> str:
    """The configuration reference (a Markdown table) generated from the settings' descriptions:
    every key, as `[table] key`, with its type, default and meaning."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    _reference_rows(cls, (), None, rows)
    return "\n".join(rows) + "\n"


def _reference_rows(cls: type, path: tuple[str, ...], variant: tuple[str, str] | None, rows: list[str]) -> None:
    """Rows for the settings of `cls` in table `path`; `variant` is (its tag, the other tags) when
    `cls` is one kind of a union table (the store)."""
    tables: list[tuple[Any, tuple[str, ...]]] = []
    for field, described_as, tp in _settings(cls):
        key = described_as.key or field.name
        item = _mapped(tp)
        if described_as.inline:
            _reference_rows(tp, path, variant, rows)
        elif dataclasses.is_dataclass(tp) or _variants(tp):
            tables.append((tp, (*path, key)))
        elif item is not None and dataclasses.is_dataclass(item):
            name = ".".join((*path, key, "<name>"))
            rows.append(f"| `[{name}]` | table | none | {described_as.doc} |")
            tables.append((item, (*path, key, "<name>")))
        elif item is not None:
            rows.append(f"| `[{'.'.join((*path, key))}] <name>` | {_type_name(item, described_as)} | none "
                        f"| {described_as.doc} |")
        else:
            name = f"[{'.'.join(path)}] {key}" if path else key
            default, doc = _default(field, described_as), described_as.doc
            if variant is not None and key == variant[0]:
                default = f"this or {variant[1]}, e.g. `{described_as.example}`"
            elif variant is not None:
                doc = f"With `{variant[0]}` only. {doc}"
            rows.append(f"| `{name}` | {_type_name(tp, described_as)} | {default} | {doc} |")
    for tp, table_path in tables:  # a table's keys after the keys above it, as in a TOML file
        variants = _variants(tp)
        if not variants:
            _reference_rows(tp, table_path, None, rows)
            continue
        tags = [_tag(v) for v in variants]
        for kind, tag in zip(variants, tags, strict=True):
            _reference_rows(kind, table_path, (tag, " or ".join(f"`{t}`" for t in tags if t != tag)), rows)


def _mapped(tp: Any) -> Any:
    """The item type of a `Mapping[str, X]` setting, else None."""
    inner, _ = _optional(tp)
    return typing.get_args(inner)[1] if typing.get_origin(inner) in (dict, Mapping) else None


def _number(value: float) -> str:
    """A bound as the reference and the errors show it: whole numbers whole (4190208, not 4.19021e+06)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _type_name(tp: Any, described_as: Setting) -> str:
    """`integer 0–6 (months)`, `number ≥ 0.05 (seconds)`, `host:port`, `path`, `array of string`, …"""
    inner, _ = _optional(tp)
    if typing.get_origin(inner) is tuple:
        return f"array of {_type_name(typing.get_args(inner)[0], described_as)}"
    if described_as.check is parse_address:
        return "host:port"
    name = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path",
            dt.timedelta: "number"}.get(inner, str(inner))
    low, high = described_as.minimum, described_as.maximum
    if low is not None and high is not None:
        name += f" {_number(low)}–{_number(high)}"
    elif low is not None:
        name += f" ≥ {_number(low)}"
    elif high is not None:
        name += f" ≤ {_number(high)}"
    return f"{name} ({described_as.unit})" if described_as.unit else name


def _default(field: dataclasses.Field[Any], described_as: Setting) -> str:
    if _required(field):
        return f"required, e.g. `{described_as.example}`" if described_as.example else "required"
    value = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
    if isinstance(value, tuple | list | dict) and not value:
        return "none"
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]`"
    if value is None:
        return "off" if described_as.empty_is_none else "none"
    if isinstance(value, dt.timedelta):
        value = value.total_seconds() / _UNIT_SECONDS[described_as.unit or "seconds"]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str | Path):
        return f'`"{value}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


