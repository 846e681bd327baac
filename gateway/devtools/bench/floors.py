"""The cost floors of one message, measured in the same run as everything else: one Ed25519
signature and one verification with the gateway's own signing code, and one durable append to
SQLite in WAL mode with synchronous=FULL.

Each figure is the median over several rounds, so that a round slowed by a neighbour does not
set it. Signing and verifying are pure CPU; for the append, CPU time and wall time differ (the
wall time waits for fsync), and both are reported.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.core.signing import LocalSigner, pae

_ROUNDS = 5
LOG_TABLE = ("CREATE TABLE IF NOT EXISTS log (sequence INTEGER PRIMARY KEY, message_id BLOB NOT NULL UNIQUE,"
             " signed_message BLOB NOT NULL)")  # the durable append's table, here and in the floors server


@dataclass(frozen=True)
class Floors:
    sign_us: float              # one Ed25519 signature over PAE of a typical payload
    verify_us: float            # one verification of it
    append_cpu_us: float        # CPU per row: inserts committed `append_batch` rows at a time, fsync'd
    append_wall_us: float       # wall time per row, same batches
    append_batch: int
    commit_wall_us: float       # wall time of one single-row fsync'd commit

    def figures(self) -> dict[str, float | int]:
        return {"sign_us": round(self.sign_us, 2), "verify_us": round(self.verify_us, 2),
                "durable_append_us": round(self.append_cpu_us, 2),
                "durable_append_wall_us": round(self.append_wall_us, 2), "durable_append_batch": self.append_batch,
                "single_commit_wall_us": round(self.commit_wall_us, 1)}


def _per_op(fn: Callable[[], object], iterations: int, clock: Callable[[], float]) -> float:
    rounds = []
    for _ in range(_ROUNDS):
        started = clock()
        for _ in range(iterations):
            fn()
        rounds.append((clock() - started) / iterations * 1e6)
    return statistics.median(rounds)


def measure_floors(signer: LocalSigner, payload_type: str, payload: bytes, workdir: Path, *,
                   iterations: int, batch: int) -> Floors:
    """Sign, verify and append `iterations` times per round (appends: `iterations` rows)."""
    data = pae(payload_type, payload)
    signature = signer.sign(data)
    key = signer.verifying_key()
    sign_us = _per_op(lambda: signer.sign(data), iterations, time.process_time)
    verify_us = _per_op(lambda: key.verify(signature, data), iterations, time.process_time)

    path = workdir / "floor-append.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(LOG_TABLE)
        batches = max(1, iterations // batch)

        def appends() -> None:
            for _ in range(batches):
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT INTO log (message_id, signed_message) VALUES (?, ?)",
                                 [(str(uuid.uuid4()), payload) for _ in range(batch)])
                conn.execute("COMMIT")

        rows = batches * batch
        cpu, wall = [], []
        for _ in range(_ROUNDS):
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            appends()
            cpu.append((time.process_time() - cpu_start) / rows * 1e6)
            wall.append((time.perf_counter() - wall_start) / rows * 1e6)

        def commit_one() -> None:
            conn.execute("INSERT INTO log (message_id, signed_message) VALUES (?, ?)", (str(uuid.uuid4()), payload))

        commit_wall = _per_op(commit_one, max(20, iterations // 20), time.perf_counter)
    finally:
        conn.close()
    return Floors(sign_us=sign_us, verify_us=verify_us, append_cpu_us=statistics.median(cpu),
                  append_wall_us=statistics.median(wall), append_batch=batch, commit_wall_us=commit_wall)
