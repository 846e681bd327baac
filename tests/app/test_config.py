"""The configuration loader: strict (unknown keys, types, ranges, addresses, each named), defaults
from the dataclasses alone, and the reference in docs/operating.md generated from the same
descriptions."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.app.config import (
    AutomaticConfig,
    ConnectionsConfig,
    GatewayConfig,
    SigningConfig,
    SlaConfig,
    TLSConfig,
    config_from,
    load_config,
    parse_address,
    read_settings,
    reference,
)
from gateway.app.failures import ConfigError, ExitCode
from gateway.app.publisher import LogConfig
from gateway.core.automatic import AutomaticRules
from gateway.core.limits import MessageLimits
from gateway.core.quota import Quota
from gateway.core.settings import described, setting
from gateway.core.sla import Limits
from gateway.service.routing import DeliveryConfig
from gateway.store.postgres import PostgresConfig
from gateway.store.sqlite import SQLiteConfig

ROOT = Path(__file__).resolve().parent.parent.parent
BASE = Path("/etc/transfer-gateway")


def minimal(**extra: Any) -> dict[str, Any]:
    """The smallest valid configuration, with `extra` top-level entries replacing or adding."""
    data: dict[str, Any] = {
        "registry": "registry.json",
        "tls": {"ca": "ca.pem", "cert": "gateway.pem", "key": "gateway.key"},
        "signing": {"key": "signing.key", "key_id": "gateway-1"},
        "store": {"sqlite": "gateway.db"},
    }
    data.update(extra)
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from(data, source="g.toml", base=BASE)
    assert caught.value.exit_code == ExitCode.CONFIG
    return list(caught.value.problems)


def test_the_smallest_file_takes_every_default_from_the_dataclasses() -> None:
    config = config_from(minimal(), source="g.toml", base=BASE)
    assert config.delivery == DeliveryConfig() and config.sla == SlaConfig()
    defaults = {f.name: f.default for f in dataclasses.fields(GatewayConfig)}
    assert (config.listen, config.metrics_listen, config.shutdown_grace) == (
        defaults["listen"], defaults["metrics_listen"], defaults["shutdown_grace"])
    assert config.registry == BASE / "registry.json" and config.store == SQLiteConfig(path=BASE / "gateway.db")


def test_every_section_and_unit_is_read() -> None:
    config = config_from(minimal(
        listen="[::1]:0", metrics_listen="", shutdown_grace_seconds=2,
        store={"postgresql": "postgresql://db/gw", "pool_max": 4, "timeout_seconds": 1.5},
        delivery={"visibility_timeout_seconds": 3, "max_attempts": 2},
        sla={"outbound_working_days": 8, "calendar_file": "/srv/calendar.toml"},
    ), source="g.toml", base=BASE)
    assert config.listen == "[::1]:0" and config.metrics_listen is None and config.shutdown_grace == 2.0
    assert config.store == PostgresConfig(url="postgresql://db/gw", pool_max=4, timeout=1.5)
    assert config.delivery == DeliveryConfig(visibility_timeout=3.0, max_attempts=2)
    assert config.sla == SlaConfig(limits=Limits(outbound=8), calendar_file=Path("/srv/calendar.toml"))


BAD: dict[str, tuple[dict[str, Any], str]] = {
    "misspelled key": (
        minimal(delivery={"max_atempts": 10}),
        "g.toml: [delivery] max_atempts: unknown setting (did you mean max_attempts?)"),
    "key in the wrong table": (
        minimal(max_attempts=10),
        "g.toml: max_attempts: unknown setting (did you mean [delivery] max_attempts?)"),
    "a request expiry, now an escalation": (
        minimal(rules={"request_expiry_days": 30}),
        "g.toml: [rules] request_expiry_days: no longer a setting: a transfer request is never closed by the clock"),
    "the sweep, gone with the expiry": (
        minimal(sweep_interval_seconds=60), "g.toml: sweep_interval_seconds: no longer a setting: nothing expires"),
    "an empty [rules] table": (
        minimal(rules={}), "g.toml: rules: no longer a setting: the [rules] table is gone"),
    "a review threshold, now each region's policy": (
        minimal(rules={"review_threshold_fen": 1_000_000}),
        "g.toml: [rules] review_threshold_fen: no longer a setting: which outbound fund transfers wait for a "
        "reviewer is each region's own policy in the registry (policies[].review_above_fen"),
    "a waiting period, now each region's policy": (
        minimal(rules={"waiting_period_months": 6}),
        "[rules] waiting_period_months: no longer a setting: the waiting period is each region's own policy"),
    "unknown key with nothing near": (
        minimal(delivery={"colour": 1}), "[delivery] colour: unknown setting (known here: visibility_timeout"),
    "unknown table": (minimal(limits={}), "g.toml: limits: unknown setting"),
    "a word for a number": (
        minimal(delivery={"max_attempts": "ten"}),
        "g.toml: [delivery] max_attempts: expected an integer, got a string 'ten'"),
    "a fraction for an integer": (
        minimal(delivery={"max_attempts": 1.5}), "[delivery] max_attempts: expected an integer"),
    "a boolean for a number": (minimal(shutdown_grace_seconds=True), "shutdown_grace_seconds: expected a number"),
    "below the minimum": (
        minimal(sla={"outbound_working_days": 0}),
        "[sla] outbound_working_days: must be at least 1 working days, got 0"),
    "above the maximum": (
        minimal(sla={"outbound_working_days": 11}),
        "[sla] outbound_working_days: must be at most 10 working days, got 11"),
    "a host without a port": (
        minimal(listen="localhost"), "g.toml: listen: expected host:port, e.g. 127.0.0.1:50051, got 'localhost'"),
    "a port out of range": (minimal(metrics_listen="127.0.0.1:70000"), "metrics_listen: port '70000'"),
    "an IPv6 host without brackets": (minimal(listen="::1:50051"), "listen: put an IPv6 host in brackets"),
    "an empty path": (minimal(registry=""), "g.toml: registry: expected a path"),
    "a missing table": (
        {k: v for k, v in minimal().items() if k != "tls"}, "g.toml: missing table [tls]"),
    "a missing key": (
        minimal(signing={"key": "k.pem"}), "g.toml: [signing] key_id: required setting missing"),
    "a table given as a value": (minimal(delivery=5), "delivery: expected a table"),
    "no store named": (minimal(store={}), "g.toml: [store]: names no store: give exactly one of sqlite"),
    "two stores named": (
        minimal(store={"sqlite": "a.db", "postgresql": "postgresql://x"}), "[store]: holds both sqlite and postgresql"),
    "a PostgreSQL key on a SQLite store": (
        minimal(store={"sqlite": "a.db", "pool_max": 3}), "g.toml: [store] pool_max: not a setting of a sqlite store"),
    "a rule across keys": (
        minimal(store={"postgresql": "postgresql://x", "pool_min": 5, "pool_max": 2}),
        "g.toml: [store]: pool_max must be at least pool_min"),
}


@pytest.mark.parametrize(("data", "expected"), BAD.values(), ids=list(BAD))
def test_a_bad_setting_is_refused_by_name(data: dict[str, Any], expected: str) -> None:
    found = problems(data)
    assert any(expected in problem for problem in found), found


def test_every_problem_is_listed_at_once() -> None:
    found = problems(minimal(listen="localhost", delivery={"max_atempts": 1, "max_attempts": "ten"},
                             tls={"ca": "ca.pem"}))
    assert len(found) == 5, found  # listen, the misspelling, max_attempts, [tls] cert and key


def test_a_value_echoed_in_an_error_is_bounded() -> None:
    [problem] = problems(minimal(listen="x" * 10_000))
    assert len(problem) < 200


def test_command_line_options_are_checked_alike_and_named() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from(minimal(), source="g.toml", base=BASE, overrides={"listen": ("--listen", "localhost")})
    assert caught.value.problems == ("--listen: expected host:port, e.g. 127.0.0.1:50051, got 'localhost'",)


def test_a_file_that_is_missing_or_not_toml_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gone\.toml: no such configuration file"):
        load_config(tmp_path / "gone.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("listen = [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(broken)


def test_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "g.toml"
    path.parent.mkdir()
    path.write_text('registry = "r.json"\n[tls]\nca = "a"\ncert = "/abs/c"\nkey = "k"\n'
                    '[signing]\nkey = "s"\nkey_id = "i"\n[store]\nsqlite = "../var/g.db"\n', encoding="utf-8")
    config = load_config(path)
    assert config.registry == path.parent / "r.json" and config.tls.cert == Path("/abs/c")
    assert isinstance(config.store, SQLiteConfig) and config.store.path == path.parent / "../var/g.db"


@given(st.sampled_from(["127.0.0.1", "0.0.0.0", "localhost", "gw.example.cn", "[::1]", "[::]"]),
       st.integers(0, 65_535))
def test_any_host_and_port_parse_back(host: str, port: int) -> None:
    assert parse_address(f"{host}:{port}") == (host.strip("[]"), port)


@given(st.text(max_size=30))
def test_an_address_either_parses_or_says_why(text: str) -> None:
    try:
        host, port = parse_address(text)
    except ValueError as err:
        assert str(err)
    else:
        assert host and 0 <= port <= 65_535 and text.endswith(f":{text.rpartition(':')[2]}")


TABLES: tuple[tuple[str, type], ...] = (
    ("", GatewayConfig), ("tls", TLSConfig), ("signing", SigningConfig), ("store", SQLiteConfig),
    ("store", PostgresConfig), ("delivery", DeliveryConfig), ("messages", MessageLimits), ("quota", Quota),
    ("connections", ConnectionsConfig), ("sla", SlaConfig), ("sla", Limits), ("log", LogConfig),
    ("automatic", AutomaticConfig), ("automatic", AutomaticRules))
NESTED = {"tls", "signing", "store", "delivery", "messages", "quota", "connections", "rules", "sla", "limits", "log",
          "automatic"}
NAMED = {"person_key_secrets"}  # a table keyed by names: `[automatic.person_key_secrets] <name>`


def test_the_reference_lists_every_setting_described_on_a_dataclass() -> None:
    text = reference()
    rows = 0
    for table, cls in TABLES:
        for field in dataclasses.fields(cls):
            setting = described(field)
            if setting is None or field.name in NESTED:
                continue
            key = setting.key or field.name
            row = f"[{table}.{key}] <name>" if key in NAMED else f"[{table}] {key}" if table else key
            assert f"| `{row}` |" in text, (table, key)
            rows += 1
    assert text.count("\n| `") == rows == 52
    assert "| `[sla] calendar_file` | path | none |" in text
    assert "| `[sla] outbound_working_days` | integer 1–10 (working days) | `10` |" in text
    assert "| `[store] sqlite` | path | this or `postgresql`" in text


def test_the_operators_guide_holds_the_current_reference() -> None:
    """Generated by `python scripts/gen_docs.py`; this fails when a setting changes and the guide
    was not regenerated."""
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    gen_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_docs)
    guide = (ROOT / gen_docs.CONFIG_DOC).read_text(encoding="utf-8")
    assert gen_docs.CONFIG_BEGIN in guide and gen_docs.CONFIG_END in guide
    assert reference() in guide
    assert gen_docs.render_config(guide) == guide


def test_the_example_configuration_in_the_guide_loads(tmp_path: Path) -> None:
    guide = (ROOT / "docs" / "operating.md").read_text(encoding="utf-8")
    example = guide.split("A production configuration:\n\n```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "gateway.toml"
    path.write_text(example, encoding="utf-8")
    config = load_config(path)
    assert config.sla.limits == Limits()


@dataclass(frozen=True)
class _Limit:
    max_in_flight: int = setting(100, "Deliveries in flight at once.", minimum=1)


@dataclass(frozen=True)
class _Future:
    """Kinds of settings the gateway will grow: per-platform tables, name → value tables, lists."""

    limits: Mapping[str, _Limit] = setting(factory=dict, doc="Per platform, by registry id.")
    weights: Mapping[str, float] = setting(factory=dict, doc="A weight per region.", minimum=0)
    regions: tuple[str, ...] = setting(("32", "33"), "Province codes served.", check=lambda v: int(v))
    interval: float = setting(2.0, "Seconds between checkpoints.", key="interval_seconds", unit="seconds")


def test_tables_by_name_and_arrays_are_read_and_checked_like_any_setting() -> None:
    read = read_settings(_Future, {"limits": {"jiangsu": {"max_in_flight": 5}, "anhui": {}},
                                   "weights": {"320100": 0.5}, "regions": ["32"]}, source="f.toml", base=BASE)
    assert read == _Future(limits={"jiangsu": _Limit(5), "anhui": _Limit()}, weights={"320100": 0.5}, regions=("32",))
    assert read_settings(_Future, {}, source="f.toml", base=BASE) == _Future()
    with pytest.raises(ConfigError) as caught:
        read_settings(_Future, {"limits": {"jiangsu": {"max_inflight": 5}, "anhui": {"max_in_flight": 0}},
                                "weights": {"320100": -1}, "regions": ["32", "x"], "interval": 1},
                      source="f.toml", base=BASE)
    assert caught.value.problems == (
        "f.toml: [limits.jiangsu] max_inflight: unknown setting (did you mean max_in_flight?)",
        "f.toml: [limits.anhui] max_in_flight: must be at least 1, got 0",
        "f.toml: [weights] 320100: must be at least 0, got -1",
        "f.toml: regions[1]: invalid literal for int() with base 10: 'x'",
        "f.toml: interval: unknown setting (did you mean interval_seconds?)",
    )
    text = reference(_Future)
    assert "| `[limits.<name>]` | table | none | Per platform, by registry id. |" in text
    assert "| `[limits.<name>] max_in_flight` | integer ≥ 1 | `100` | Deliveries in flight at once. |" in text
    assert "| `[weights] <name>` | number ≥ 0 | none | A weight per region. |" in text
    assert '| `regions` | array of string | `["32", "33"]` | Province codes served. |' in text
