"""`transfer-gateway bench` in a tiny size: it runs every phase and its JSON is complete.

No timing is asserted: figures from a shared machine are reported by the bench, not judged here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from gateway.app.devpki import DevPaths
from gateway.cli import main
from gateway.core.messages import RECEIPT_PAYLOAD_TYPE, payload_type
from gateway.core.signing import LocalSigner, pae
from gateway.devtools.bench import report
from gateway.devtools.bench.child import SUBMIT_METHOD, start_floors
from gateway.devtools.bench.stores import PostgresBenchStore, SQLiteBenchStore
from gateway.devtools.bench.workload import presign_cases, store_routes, store_templates
from mitransfer.v1 import envelope_pb2
from tests.support import postgres_url, secure_channel

WINDOW_FIGURES = ("requests", "seconds", "req_per_s", "p50_ms", "p99_ms", "server_cpu_seconds", "cpu_us_per_request")
SECTIONS = {
    "echo": WINDOW_FIGURES,
    "floor_server": (*WINDOW_FIGURES, "stored"),
    "submit": (*WINDOW_FIGURES, "receipts_checked", "receipt_failures"),
    "replay": (*WINDOW_FIGURES, "fund_transfers", "double_movements", "missing_movements", "receipt_mismatches"),
    "cases": ("cases", "completed", "cases_per_s", "deliveries", "delivery_p50_ms", "delivery_p99_ms"),
    "floors": ("sign_us", "verify_us", "durable_append_us", "durable_append_wall_us", "single_commit_wall_us",
               "echo_cpu_us", "gateway_cpu_us_per_message", "floor_sum_us"),
    "versions": ("python", "grpcio", "protobuf", "cryptography", "sqlite"),
    "machine": ("cpu_count", "platform"),
}
SCALE = ("messages_loaded", "load_seconds", "file_mib")
SCALE_RUN = ("req_per_s", "p50_ms", "p99_ms", "cpu_us_per_request", "peak_rss_mib")
FLOOR_SERVER_RATIOS = ("submit_vs_floor_server", "submit_p99_vs_floor_server", "cpu_vs_floor_server")  # SQLite's
RATIOS = ("replay_vs_echo", "large_store_vs_empty", "rss_large_vs_empty", "log_cpu_share",
          "isolation_victim_p99_vs_alone", "flood_rss_vs_idle")
REFERENCES = ("submit_vs_echo", "submit_p99_vs_echo", "cpu_vs_floor", "isolation_unpaced_p99_vs_alone",
              "floor_server_vs_echo", "floor_server_p99_vs_echo", "floor_server_cpu_vs_floor")
PG_RATIOS = ("pg_submit_vs_sqlite", "pg_cpu_vs_sqlite", "workers_cpu_vs_one")  # judged in a PostgreSQL run only
VICTIM = ("requests", "p50_ms", "p99_ms")
BURST = ("messages", "rounds", "message_bytes", "idle_rss_mib", "peak_rss_mib", "after_rss_mib")


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# (transfers in the fund totals, their amount, the amount of every movement)
FUND_TOTALS_CHECK = ("SELECT (SELECT SUM(transfers) FROM fund_totals), (SELECT SUM(amount_fen) FROM fund_totals),"
                     " (SELECT SUM(amount_fen) FROM fund_movements)")
TINY = ["bench", "--json", "--window", "0.4", "--scale-messages", "600", "--cases", "6"]


@pytest.mark.slow
def test_tiny_bench_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(TINY) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert_complete(result)
    assert result["store"] == "sqlite" and result["submit_two_replicas"] is None and result["submit_sqlite"] is None
    assert result["submit_two_workers"] is None and all(result[name] is None for name in PG_RATIOS)
    assert set(result["targets"]) == {*FLOOR_SERVER_RATIOS, *RATIOS}


@pytest.mark.slow
def test_tiny_bench_on_postgres_reports_two_replicas_and_drops_its_schemas(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    url = postgres_url()
    schemas: list[str] = []
    fresh = PostgresBenchStore.fresh

    def noted(self: PostgresBenchStore, label: str) -> dict[str, str]:
        location = fresh(self, label)
        schemas.append(location["schema"])
        return location

    monkeypatch.setattr(PostgresBenchStore, "fresh", noted)
    assert main([*TINY, "--store", url]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert_complete(result)
    assert result["store"] == "postgresql" and result["versions"]["postgresql"]
    pair = result["submit_two_replicas"]
    for key in (*WINDOW_FIGURES, "engine_cpu_us_per_request", "vs_one_replica"):
        assert finite(pair[key]), key
    assert pair["replicas"] == 2 and pair["requests"] > 0
    assert pair["errors"] == 0 and pair["receipts_checked"] > 0 and pair["receipt_failures"] == 0
    assert finite(result["submit"]["engine_cpu_us_per_request"])
    sqlite = result["submit_sqlite"]  # a SQLite gateway in the same rotation, its CPU its own
    assert sqlite["requests"] > 0 and sqlite["errors"] == 0 and sqlite["receipt_failures"] == 0
    assert sqlite["engine_cpu_us_per_request"] is None
    for name in PG_RATIOS:
        assert finite(result[name]) and result["targets"][name]["pass"] in (True, False), name
    assert set(result["targets"]) == {*RATIOS, *PG_RATIOS}
    workers = result["submit_two_workers"]  # serve --workers 2: both workers answered Submits
    assert workers["workers"] == 2 and workers["requests"] > 0 and finite(workers["vs_one_gateway"])
    assert workers["errors"] == 0 and workers["receipts_checked"] > 0 and workers["receipt_failures"] == 0
    assert len(workers["submits_by_worker"]) == 2 and sum(workers["submits_by_worker"]) > 0
    # large, empty, replay, the replicas' shared one, the workers' shared one, cases, and isolation's three
    assert len(schemas) == 9
    with psycopg.connect(url) as conn:
        left = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (schemas,)).fetchall()
    assert left == []


def assert_complete(result: dict[str, Any]) -> None:
    """Every figure of every store's run is there and finite, and no money moved twice."""
    for section, keys in SECTIONS.items():
        for key in keys:
            value = result[section][key]
            assert finite(value) if section not in ("versions", "machine") else value, (section, key, value)
    for key in SCALE:
        assert finite(result["scale"][key]), key
    for run in ("empty", "large"):
        for key in SCALE_RUN:
            assert finite(result["scale"][run][key]), (run, key)
    for name in RATIOS if result["store"] != "sqlite" else (*FLOOR_SERVER_RATIOS, *RATIOS):
        assert finite(result[name]), name
        assert result["targets"][name]["pass"] in (True, False)
    assert 0 < result["log_cpu_share"] < 1  # the gateway's own meter counted the log's work, a part of the whole
    table = report.table(result)  # the floors server's ratios among the references on PostgreSQL
    for name in (*FLOOR_SERVER_RATIOS, *REFERENCES):
        assert finite(result[name]), name
        assert name in table
    in_situ = result["floor_server"]  # every answered call was appended (warm-up calls too)
    assert in_situ["errors"] == 0 and in_situ["stored"] >= in_situ["requests"] > 0
    assert result["double_movements"] == 0 and result["replay"]["double_movements"] == 0
    assert result["replay"]["missing_movements"] == 0 and result["replay"]["receipt_mismatches"] == 0
    for run in (result["submit"], result["scale"]["large"]):  # the large store takes new messages after the loaded
        assert run["errors"] == 0 and run["receipt_failures"] == 0
    assert result["cases"]["completed"] == 6
    isolation = result["isolation"]  # the victim answered alone and beside both floods; the bursts refused
    for run in (isolation["victim_alone"], isolation["victim_flooded"], isolation["unpaced"]["victim_flooded"]):
        assert all(finite(run[key]) for key in VICTIM) and run["requests"] > 0 and run["errors"] == 0, run
    for flood in (isolation["flood"], isolation["unpaced"]["flood"]):
        assert flood["requests"] > 0 and flood["in_flight"] == 64, flood
    burst = isolation["burst"]
    assert all(finite(burst[key]) for key in BURST), burst
    assert set(burst["answers"]) <= {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}
    assert sum(burst["answers"].values()) == burst["messages"] * burst["rounds"]
    for name in ("isolation_victim_p99_vs_alone", "flood_rss_vs_idle", "isolation_unpaced_p99_vs_alone"):
        assert name in table
    assert "isolation: Zhejiang at 50/s" in table and "bursts: 3 × 250 messages" in table
    for section in ("echo", "floor_server", "submit", "replay"):  # the server's CPU by kind of thread, in parts
        parts = result[section]["cpu_us_per_request_by_thread"]
        assert set(parts) == {"event_loop", "grpc_core", "other_threads"}, section
        assert all(finite(v) and v >= 0 for v in parts.values()), (section, parts)
        assert sum(parts.values()) <= result[section]["cpu_us_per_request"] * 1.05 + 1, (section, parts)


async def test_floors_server_verifies_signs_and_appends_durably(pki: DevPaths, tmp_path: Path) -> None:
    first = presign_cases(pki, 1)[0][0]
    signed = envelope_pb2.SignedMessage.FromString(first.data)
    port, stop = await start_floors(pki, tmp_path / "floors.db")
    channel = secure_channel(pki, first.platform, port)
    try:
        submit = channel.unary_unary(SUBMIT_METHOD)
        signature = await submit(signed.SerializeToString())
        forged = envelope_pb2.SignedMessage()
        forged.CopyFrom(signed)
        forged.signature = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await submit(forged.SerializeToString())
    finally:
        await channel.close()
        await stop()

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    fingerprint = hashlib.sha256(pae(payload_type(signed.kind), signed.payload)).digest()
    gateway_key = LocalSigner.from_pem("gw", pki.gateway_signing_key.read_bytes()).verifying_key()
    assert gateway_key.verify(signature, pae(RECEIPT_PAYLOAD_TYPE, fingerprint))
    with sqlite3.connect(tmp_path / "floors.db") as conn:  # committed before the answer: the signed bytes
        assert conn.execute("SELECT message_id, signed_message FROM log").fetchall() == [
            (fingerprint, signed.SerializeToString())]


def test_bulk_loader_writes_closed_cases_into_the_stores_schema(pki: DevPaths, tmp_path: Path) -> None:
    store = SQLiteBenchStore(tmp_path)
    location = store.fresh("large")
    case = presign_cases(pki, 1)[0]
    loaded = asyncio.run(store.populate(location, 100, store_templates(pki, case), store_routes()))

    assert loaded.messages == 102 and loaded.cases == 17
    with sqlite3.connect(location["database"]) as conn:
        counts = [conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("cases", "messages", "deliveries", "fund_movements")]
        open_deliveries = conn.execute("SELECT COUNT(*) FROM deliveries WHERE acknowledged_at IS NULL").fetchone()[0]
        totals = conn.execute(FUND_TOTALS_CHECK).fetchone()
    assert counts == [17, 102, 102, 17] and open_deliveries == 0
    assert totals[0] == 17 and totals[1] == totals[2] > 0  # the fund totals add up the loaded movements
    assert store.audit_funds(location, []).double_movements == 0


def test_postgres_loader_copies_the_same_rows_and_moves_the_log_head(pki: DevPaths) -> None:
    url = postgres_url()
    store = PostgresBenchStore(url)
    try:
        location = store.fresh("loader")
        case = presign_cases(pki, 1)[0]
        loaded = asyncio.run(store.populate(location, 100, store_templates(pki, case), store_routes()))

        assert loaded.messages == 102 and loaded.cases == 17 and loaded.file_bytes > 0
        with psycopg.connect(url, options=f"-c search_path={location['schema']}") as conn:
            counts = [conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                      for t in ("cases", "messages", "deliveries", "fund_movements")]
            head = conn.execute("SELECT sequence FROM log_head").fetchone()
            totals = conn.execute(FUND_TOTALS_CHECK).fetchone()
        assert counts == [17, 102, 102, 17] and head == (102,)
        assert totals is not None and totals[0] == 17 and totals[1] == totals[2] > 0
        audit = store.audit_funds(location, [])
        assert audit.double_movements == 0 and audit.missing_movements == 0
    finally:
        store.cleanup()
