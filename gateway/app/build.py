"""What this process is built of: its version and the versions of the libraries that decide its
behaviour, for `--version`, the start-up log line and the `transfer_gateway_build_info` metric."""

from __future__ import annotations

import platform
import sqlite3
from dataclasses import asdict, dataclass
from importlib import metadata

from prometheus_client import CollectorRegistry, Gauge

_DISTRIBUTIONS = {"grpcio": "grpcio", "protobuf": "protobuf", "cryptography": "cryptography", "psycopg": "psycopg"}


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


@dataclass(frozen=True)
class BuildInfo:
    version: str
    python: str
    grpcio: str
    protobuf: str
    cryptography: str
    psycopg: str
    sqlite: str

    @classmethod
    def current(cls) -> BuildInfo:
        return cls(version=_version("transfer-gateway"), python=platform.python_version(),
                   sqlite=sqlite3.sqlite_version, **{k: _version(d) for k, d in _DISTRIBUTIONS.items()})

    def line(self) -> str:
        """`transfer-gateway 0.1.0 (python 3.11.7, grpcio 1.85.1, …)`, as `--version` prints it."""
        libraries = ", ".join(f"{name} {value}" for name, value in asdict(self).items() if name != "version")
        return f"transfer-gateway {self.version} ({libraries})"

    def register(self, registry: CollectorRegistry) -> None:
        """`transfer_gateway_build_info{version=…, python=…, grpcio=…, …} 1`: join on it in queries to
        see which replica runs what (the labels are bounded: one series per process)."""
        labels = asdict(self)
        gauge = Gauge("transfer_gateway_build_info", "The gateway's version and its libraries' (value 1).",
                      list(labels), registry=registry)
        gauge.labels(**labels).set(1)
