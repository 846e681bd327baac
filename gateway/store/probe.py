"""The write probe: whether the store can write now, answered by a committed write.

A store that cannot write (a full disk, a file system remounted read-only, a PostgreSQL server
that became a standby) may still answer every read, so readings prove nothing about it. The
probe upserts the replica's row of `write_probes` in a transaction of its own, through the same
path as every accept (SQLite: the writer thread's group commit; PostgreSQL: a pooled connection),
so it fails when they would. One small row per replica: the cost is one tiny commit per monitor
interval.

A disk with room for the probe's row but not for a message is the case it cannot see: accepts
then fail UNAVAILABLE (counted in transfer_gateway_messages_total{reason="STORE_UNAVAILABLE"})
while health stays SERVING.
"""

from __future__ import annotations

from gateway.store.steps import Statement, Steps


def probe(replica: str, now_us: int) -> Steps[None]:
    """Write `replica`'s probe row (inserted the first time, updated after)."""
    yield Statement("INSERT INTO write_probes (replica, probed_at) VALUES (?, ?)"
                    " ON CONFLICT (replica) DO UPDATE SET probed_at = excluded.probed_at", (replica, now_us))
