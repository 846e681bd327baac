"""`transfer-gateway log verify` against a database insider: each tampering of the store is found
and named (the entry, the case, the fund movement), an untouched store verifies, an exported
bundle verifies and a tampered one does not. Then a property: over random sequences of accepted
messages and decisions every inclusion and consistency proof checks, the audit agrees with the
store, and any single change to a stored entry is caught."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import sqlite3
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import main
from gateway.core.audit import LogAudit
from gateway.core.case import Case, CaseIndex, Decision, FundStatus
from gateway.core.checkpoints import checkpoint_keys, checkpoint_signer
from gateway.core.errors import RuleViolation
from gateway.core.registry import Registry
from gateway.core.signing import LocalSigner
from gateway.store import IncomingMessage
from gateway.store.base import SQLStore
from gateway.store.engines import read_snapshot
from gateway.store.sqlite import SQLiteConfig, SQLiteStore
from gateway.store.transparency import audit
from mitransfer.protocol import tlog
from mitransfer.v1 import envelope_pb2, tracking_pb2
from tests.store.support import SLA, Clock, incoming, opened, receipt_for

ORIGIN = "test.transfer-gateway.example/log"
S = tracking_pb2
K = envelope_pb2


@dataclasses.dataclass
class Logged:
    """A store whose log holds whole cases, and the registry that checks its checkpoints."""

    db: Path
    registry: Path
    completed: list[str]         # transfer ids of completed cases (their funds credited)
    last_messages: list[str]     # message ids, in log order

    def run(self, *args: str) -> int:
        return main(["log", *args, "--store", str(self.db), "--registry", str(self.registry)])

    def tamper(self, *statements: str, params: tuple[object, ...] = ()) -> None:
        with sqlite3.connect(self.db) as conn:
            for statement in statements:
                conn.execute(statement, params if "?" in statement else ())


def _keys(tmp: Path) -> tuple[LocalSigner, Path]:
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    signer = LocalSigner.from_pem("gateway-test-1", pem)
    registry = {
        "gateway": {"keys": [{"key_id": "gateway-test-1", "algorithm": "ed25519",
                              "public_key": signer.verifying_key().public_pem().decode()}],
                    "log_origin": ORIGIN},
        "platforms": [], "agencies": [],
    }
    path = tmp / "registry.json"
    path.write_text(json.dumps(registry), encoding="utf-8")
    return signer, path


def _to(state: int, fund: FundStatus | None = None) -> Callable[[Case | None, CaseIndex], Decision]:
    def decide(case: Case | None, _index: CaseIndex) -> Decision:
        assert case is not None
        return Decision(dataclasses.replace(case, state=state), fund_status=fund)
    return decide


async def _accept(store: SQLStore, m: IncomingMessage, decide: Callable[[Case | None, CaseIndex], Decision],
                  order: list[str]) -> None:
    await store.accept(m, decide, receipt_for(m))
    order.append(m.message_id)


async def _case(store: SQLStore, order: list[str], *, amount: int, complete: bool) -> str:
    """A case through table, fund transfer, credit and (if `complete`) completion."""
    m = incoming(str(uuid.uuid4()), body=uuid.uuid4().bytes)
    await _accept(store, m, lambda case, _i: Decision(case or opened(m)), order)
    t = m.transfer_id
    steps = [(K.MESSAGE_KIND_INFORMATION_TABLE, "320100", S.CASE_STATE_TABLE_SENT, None),
             (K.MESSAGE_KIND_FUND_TRANSFER, "320100", S.CASE_STATE_FUNDS_SENT, FundStatus.SENT),
             (K.MESSAGE_KIND_ACKNOWLEDGEMENT, "330100", S.CASE_STATE_FUNDS_CREDITED, FundStatus.CREDITED)]
    if complete:
        steps.append((K.MESSAGE_KIND_ACKNOWLEDGEMENT, "330100", S.CASE_STATE_COMPLETED, None))
    for kind, sender, state, fund in steps:
        receiver = "330100" if sender == "320100" else "320100"
        message = incoming(t, kind=kind, body=uuid.uuid4().bytes, sender=sender, receiver=receiver, amount=amount)
        await _accept(store, message, _to(state, fund), order)
    return t


@pytest.fixture
def logged(tmp_path: Path) -> Logged:
    signer, registry = _keys(tmp_path)
    db = tmp_path / "store.db"

    async def build() -> Logged:
        store = SQLiteStore(SQLiteConfig(path=db), Clock(), SLA)
        await store.open()
        sign = checkpoint_signer(ORIGIN, lambda: signer, {signer.key_id: signer.verifying_key()})
        order: list[str] = []
        try:
            completed = [await _case(store, order, amount=120_000 + i, complete=True) for i in range(3)]
            await store.publish_checkpoint(sign)
            await _case(store, order, amount=50_000, complete=False)
            for _ in range(3):  # three more cases opened: the last three messages
                m = incoming(str(uuid.uuid4()), body=uuid.uuid4().bytes)
                await _accept(store, m, lambda case, _i, m=m: Decision(case or opened(m)), order)
            await store.publish_checkpoint(sign)
        finally:
            await store.close()
        return Logged(db, registry, completed, order)

    return asyncio.run(build())


def _errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]


def test_an_untouched_store_verifies(logged: Logged, capsys: pytest.CaptureFixture[str]) -> None:
    assert logged.run("verify") == 0
    out = capsys.readouterr().out
    # 22 messages; 4 fund movements created, each then credited
    assert "log verified: 30 entries, 2 of 2 checkpoints" in out
    assert "ledger from the log: 4 fund movements" in out and "32→33 credited          410,003 fen" in out


def test_a_raised_fund_amount_is_named(logged: Logged, capsys: pytest.CaptureFixture[str]) -> None:
    case = logged.completed[1]
    logged.tamper("UPDATE fund_movements SET amount_fen = amount_fen + 1000000 WHERE transfer_id = ?", params=(case,))
    assert logged.run("verify") == 1
    errors = _errors(capsys)
    assert any(f"fund movement of case {case}: amount 1120001 fen in the store, 120001 fen in the log (+1,000,000 fen;"
               in e for e in errors), errors


def test_credited_turned_rejected_is_named(logged: Logged, capsys: pytest.CaptureFixture[str]) -> None:
    case = logged.completed[0]
    logged.tamper("UPDATE fund_movements SET status = 'rejected' WHERE transfer_id = ?", params=(case,))
    assert logged.run("verify") == 1
    errors = _errors(capsys)
    assert any(f"fund movement of case {case}: status rejected in the store, credited in the log (entry " in e
               for e in errors), errors


def test_the_last_three_messages_cut_off_are_found(logged: Logged, capsys: pytest.CaptureFixture[str]) -> None:
    gone = logged.last_messages[-3:]
    marks = ", ".join("?" * 3)
    with sqlite3.connect(logged.db) as conn:
        conn.execute(f"DELETE FROM deliveries WHERE sequence IN (SELECT sequence FROM messages"
                     f" WHERE message_id IN ({marks}))", gone)
        conn.execute(f"DELETE FROM messages WHERE message_id IN ({marks})", gone)
        conn.execute("DELETE FROM log_entries WHERE leaf_index >= 27")
        conn.execute("DELETE FROM log_hashes WHERE hash_index >= ?", (tlog.stored_hash_count(27),))
        conn.execute("UPDATE log_head SET sequence = sequence - 3, leaves = leaves - 3")
        conn.execute("UPDATE log_tree SET size = 27")
    assert logged.run("verify") == 1
    errors = _errors(capsys)
    assert any("checkpoint of tree size 30: the log has only 27 entries: entries 27 to 29 are missing" in e
               for e in errors), errors


def test_a_reopened_completed_case_is_named(logged: Logged, capsys: pytest.CaptureFixture[str]) -> None:
    case = logged.completed[2]
    logged.tamper(f"UPDATE cases SET state = {S.CASE_STATE_FUNDS_CREDITED}, closed = 0 WHERE transfer_id = ?",
                  params=(case,))
    assert logged.run("verify") == 1
    errors = _errors(capsys)
    assert any(f"case {case}: the store says FUNDS_CREDITED, the log says COMPLETED (entry " in e
               for e in errors), errors


def test_a_deleted_entry_is_named(logged: Logged, capsys: pytest.CaptureFixture[str]) -> None:
    logged.tamper("DELETE FROM log_entries WHERE leaf_index = 7")
    assert logged.run("verify") == 1
    errors = _errors(capsys)
    assert any("entry 7: missing from the log" in e for e in errors), errors
    assert any("checkpoint of tree size 21: the log's entries do not give the signed root" in e for e in errors)


def test_a_reordered_pair_is_named(logged: Logged, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(logged.db) as conn:
        a, b = (bytes(conn.execute("SELECT entry FROM log_entries WHERE leaf_index = ?", (i,)).fetchone()[0])
                for i in (0, 1))
        conn.execute("UPDATE log_entries SET entry = ? WHERE leaf_index = 0", (b,))
        conn.execute("UPDATE log_entries SET entry = ? WHERE leaf_index = 1", (a,))
    assert logged.run("verify") == 1
    errors = _errors(capsys)
    first, second = logged.last_messages[:2]
    assert any(f"entry 0 (message {second}): its receipt names leaf 1: entries were moved" in e for e in errors), errors
    assert any(f"entry 1 (message {first}): its receipt names leaf 0" in e for e in errors), errors
    assert any("stored hash 0: differs from the hash of entry 0 recomputed from the log" in e for e in errors), errors


def test_a_truncated_log_is_found(logged: Logged, capsys: pytest.CaptureFixture[str]) -> None:
    logged.tamper("DELETE FROM log_entries WHERE leaf_index >= 10")
    assert logged.run("verify") == 1
    errors = _errors(capsys)
    assert any("checkpoint of tree size 21: the log has only 10 entries: entries 10 to 20 are missing" in e
               for e in errors), errors
    assert any("the log's head: says 30 entries, the log has 10" in e for e in errors), errors


def test_a_checkpoint_signed_by_another_key_is_refused(logged: Logged, capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    _, other = _keys(tmp_path / "other")
    assert main(["log", "verify", "--store", str(logged.db), "--registry", str(other)]) == 1
    assert any("checkpoint of tree size 21: its note does not verify" in e for e in _errors(capsys))


def test_an_exported_bundle_verifies_and_a_tampered_one_does_not(logged: Logged, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "log.jsonl"
    assert logged.run("export", "--out", str(bundle)) == 0
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert logged.run("export", "--out", str(bundle)) == 1  # kept unless --force
    assert main(["log", "verify", "--bundle", str(bundle), "--registry", str(logged.registry)]) == 0
    assert "log verified: 30 entries, 2 of 2 checkpoints" in capsys.readouterr().out
    lines = bundle.read_text(encoding="utf-8").splitlines()
    entry = json.loads(lines[5])
    data = bytearray(base64.b64decode(entry["data"]))
    data[-1] ^= 1
    entry["data"] = base64.b64encode(bytes(data)).decode()
    lines[5] = json.dumps(entry)
    bundle.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["log", "verify", "--bundle", str(bundle), "--registry", str(logged.registry)]) == 1
    assert any("checkpoint of tree size 21: the log's entries do not give the signed root" in e
               for e in _errors(capsys))


# --- the property ---------------------------------------------------------------------------------

OPS = st.lists(st.sampled_from(["open", "table", "fund_held", "fund_sent", "review_ok", "review_no", "credit",
                                "complete", "publish"]), min_size=1, max_size=25)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS.map(lambda ops: ["open", *ops]), data=st.data())
def test_proofs_check_and_any_change_to_an_entry_is_caught(tmp_path_factory: pytest.TempPathFactory, ops: list[str],
                                                           data: st.DataObject) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    signer, registry_path = _keys(tmp)
    registry = Registry.load(registry_path)
    db = tmp / "store.db"

    def auditor() -> LogAudit:
        return LogAudit(origin=ORIGIN, keys_at=lambda when: checkpoint_keys(ORIGIN, registry.gateway_keys, when))

    async def play() -> None:
        store = SQLiteStore(SQLiteConfig(path=db), Clock(), SLA)
        await store.open()
        sign = checkpoint_signer(ORIGIN, lambda: signer, {signer.key_id: signer.verifying_key()})
        cases: list[str] = []
        messages: list[str] = []
        try:
            for op in ops:
                if op == "publish":
                    await store.publish_checkpoint(sign)
                    continue
                if op == "open":
                    m = incoming(str(uuid.uuid4()), body=uuid.uuid4().bytes)
                    await _accept(store, m, lambda case, _i, m=m: Decision(case or opened(m)), messages)
                    cases.append(m.transfer_id)
                    continue
                t = data.draw(st.sampled_from(cases), label="case")
                kind, fund, state = {
                    "table": (K.MESSAGE_KIND_INFORMATION_TABLE, None, S.CASE_STATE_TABLE_SENT),
                    "fund_held": (K.MESSAGE_KIND_FUND_TRANSFER, FundStatus.HELD, S.CASE_STATE_HELD_FOR_REVIEW),
                    "fund_sent": (K.MESSAGE_KIND_FUND_TRANSFER, FundStatus.SENT, S.CASE_STATE_FUNDS_SENT),
                    "review_ok": (K.MESSAGE_KIND_REVIEW_DECISION, FundStatus.SENT, S.CASE_STATE_FUNDS_SENT),
                    "review_no": (K.MESSAGE_KIND_REVIEW_DECISION, FundStatus.REJECTED, S.CASE_STATE_REVIEW_REJECTED),
                    "credit": (K.MESSAGE_KIND_ACKNOWLEDGEMENT, FundStatus.CREDITED, S.CASE_STATE_FUNDS_CREDITED),
                    "complete": (K.MESSAGE_KIND_ACKNOWLEDGEMENT, None, S.CASE_STATE_COMPLETED),
                }[op]
                m = incoming(t, kind=kind, body=uuid.uuid4().bytes, amount=1_000 + len(messages))
                with contextlib.suppress(RuleViolation):  # a case's second fund transfer: the schema refuses it
                    await _accept(store, m, _to(state, fund), messages)
            last = await store.publish_checkpoint(sign) or await store.latest_checkpoint()
            assert last is not None
            for message_id in messages:
                proof = await store.inclusion_proof(message_id, 0)
                tlog.check_inclusion(proof.hashes, last.tree_size, last.root_hash, proof.leaf_index,
                                     tlog.leaf_hash(proof.entry))
            rebuilt = _tree(db)  # from the entries alone, not the store's hashes
            assert rebuilt.root(last.tree_size) == last.root_hash
            for first in (1, last.tree_size // 2 or 1, last.tree_size):
                consistency = await store.consistency_proof(first, 0)
                tlog.check_consistency(consistency.hashes, last.tree_size, last.root_hash, first, rebuilt.root(first))
        finally:
            await store.close()

    asyncio.run(play())
    clean = auditor()
    asyncio.run(read_snapshot(SQLiteConfig(path=db), lambda: audit(clean)))
    assert clean.finish() == []
    with sqlite3.connect(db) as conn:
        count = conn.execute("SELECT COUNT(*) FROM log_entries").fetchone()[0]
        leaf = data.draw(st.integers(0, count - 1), label="leaf")
        entry = bytearray(conn.execute("SELECT entry FROM log_entries WHERE leaf_index = ?", (leaf,)).fetchone()[0])
        at = data.draw(st.integers(0, len(entry) * 8 - 1), label="bit")
        entry[at // 8] ^= 1 << (at % 8)
        conn.execute("UPDATE log_entries SET entry = ? WHERE leaf_index = ?", (bytes(entry), leaf))
    changed = auditor()
    asyncio.run(read_snapshot(SQLiteConfig(path=db), lambda: audit(changed)))
    findings = changed.finish()
    assert any(f.subject == f"stored hash {tlog.stored_hash_index(0, leaf)}" for f in findings), findings
    assert any(f.kind == "checkpoint" for f in findings), findings  # the last checkpoint covers every entry


def _tree(db: Path) -> tlog.Tree:
    tree = tlog.Tree()
    with sqlite3.connect(db) as conn:
        for (entry,) in conn.execute("SELECT entry FROM log_entries ORDER BY leaf_index"):
            tree.append(bytes(entry))
    return tree


def test_a_postgresql_store_verifies_and_its_tampering_is_named(tmp_path: Path) -> None:
    """The same audit on PostgreSQL: one REPEATABLE READ snapshot, read-only, beside the gateway."""
    import io

    import psycopg

    from gateway.app import logtool
    from gateway.app.failures import Findings
    from gateway.store.postgres import PostgresConfig, PostgresStore
    from tests.support import drop_schema, postgres_url

    signer, registry_path = _keys(tmp_path)
    registry = Registry.load(registry_path)
    config = PostgresConfig(url=postgres_url(), schema=f"logverify_{uuid.uuid4().hex[:12]}")
    try:
        store = PostgresStore(config, Clock(), SLA)

        async def build() -> str:
            await store.open()
            order: list[str] = []
            try:
                t = await _case(store, order, amount=77_000, complete=True)
                await store.publish_checkpoint(checkpoint_signer(ORIGIN, lambda: signer,
                                                                 {signer.key_id: signer.verifying_key()}))
            finally:
                await store.close()
            return t

        case = asyncio.run(build())
        out = io.StringIO()
        assert logtool.verify_store(config, registry, out) == 0
        assert "log verified: 7 entries, 1 of 1 checkpoints" in out.getvalue()
        with psycopg.connect(config.url, options=f"-c search_path={config.schema}", autocommit=True) as conn:
            conn.execute("UPDATE fund_movements SET status = 'rejected' WHERE transfer_id = %s", (case,))
        with pytest.raises(Findings) as found:
            logtool.verify_store(config, registry, io.StringIO())
        assert any(f"fund movement of case {case}: status rejected in the store, credited in the log" in p
                   for p in found.value.problems)
    finally:
        drop_schema(config.url, config.schema)
