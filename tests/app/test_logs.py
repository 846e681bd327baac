"""Log lines: JSON with an RFC 3339 timestamp carrying its offset, at a level chosen from four;
the build's identity as a line and as a metric; where the store is, without its password."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.app import logs
from gateway.app.build import BuildInfo
from gateway.app.server import store_description
from gateway.store.postgres import PostgresConfig
from gateway.store.sqlite import SQLiteConfig


def test_timestamps_are_rfc3339_with_the_offset() -> None:
    created = dt.datetime(2026, 11, 22, 2, 0, 0, 123_000, tzinfo=dt.UTC).timestamp()
    text = logs.rfc3339(created)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.123[+-]\d\d:\d\d", text)
    assert dt.datetime.fromisoformat(text) == dt.datetime(2026, 11, 22, 2, 0, 0, 123_000, tzinfo=dt.UTC)


def test_a_line_is_one_json_object_with_its_fields() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("info", stream)
    try:
        logging.getLogger("gateway.test").info("rejected", extra={"fields": {"reason": "SIGNATURE_INVALID"}})
        logging.getLogger("gateway.test").debug("not shown at INFO")
    finally:
        root.handlers[:], root.level = handlers, level
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["event"] == "rejected" and entry["reason"] == "SIGNATURE_INVALID" and entry["level"] == "info"
    assert dt.datetime.fromisoformat(entry["ts"]).utcoffset() is not None


def test_a_level_outside_the_choices_is_refused() -> None:
    assert logs.level_of("debug") == "DEBUG"
    with pytest.raises(ValueError, match="choose from DEBUG, INFO, WARNING, ERROR"):
        logs.level_of("LOUD")


def test_the_build_info_metric_and_line_say_the_same() -> None:
    build = BuildInfo.current()
    registry = CollectorRegistry()
    build.register(registry)
    labels = {"version": build.version, "python": build.python, "grpcio": build.grpcio, "protobuf": build.protobuf,
              "cryptography": build.cryptography, "psycopg": build.psycopg, "sqlite": build.sqlite}
    assert registry.get_sample_value("transfer_gateway_build_info", labels) == 1
    assert build.line().startswith(f"transfer-gateway {build.version} (python {build.python}, grpcio {build.grpcio}")


def test_where_the_store_is_never_shows_a_password() -> None:
    url = "postgresql://gateway:s3cret@db.internal:6432/exchange?sslmode=verify-full"
    where = store_description(PostgresConfig(url=url, schema="tg"))
    assert where == ("postgresql", "db.internal:6432/exchange schema tg")
    assert store_description(PostgresConfig(url="not a url=")) == ("postgresql", "schema transfer_gateway")
    assert store_description(SQLiteConfig(path=Path("/var/lib/g.db"))) == ("sqlite", "/var/lib/g.db")
