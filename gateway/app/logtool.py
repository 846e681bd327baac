"""`transfer-gateway log verify` and `log export`: the transparency log checked by anyone.

`verify` reads a store (a SQLite file, read-only, beside a running gateway; or a PostgreSQL URL,
one REPEATABLE READ snapshot) or an exported bundle, and hands it to `gateway.core.audit.LogAudit`:
the tree recomputed from the entries, every checkpoint checked against it and against the
registry's gateway keys, the ledger and the cases' states recomputed from the entries and compared
with the mutable rows. Every finding is one line; any finding makes the command fail.

A bundle (`export`) is JSON Lines, one object a line, written with mode 0600:

    {"format": "transfer-gateway-log-bundle/1", "origin": "…"}
    {"checkpoint": {"tree_size": 120, "root_hash": "<base64>", "note": "<the signed note>"}}
    {"entry": 0, "data": "<base64 of the serialized LogEntry>"}
    …

It holds the log and its checkpoints, nothing else: what an auditor outside the national platform
needs, with the registry, to recompute the tree and the ledger and check every signature.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from gateway.app.failures import ConfigError, Findings, OperatorError, bounded
from gateway.core.audit import LogAudit
from gateway.core.checkpoints import checkpoint_keys
from gateway.core.registry import Registry, RegistryError
from gateway.core.timestamps import from_micros, micros
from gateway.store import CheckpointRecord
from gateway.store.engines import StoreConfig, read_snapshot
from gateway.store.transparency import audit

BUNDLE_FORMAT: Final = "transfer-gateway-log-bundle/1"
RUNBOOK_HINT: Final = "docs/operating.md, \"When log verify fails\", says what each finding means and what to do"


def load_registry(path: Path) -> Registry:
    """Raises ConfigError naming the file."""
    try:
        return Registry.load(path)
    except RegistryError as exc:
        raise ConfigError(str(exc)) from exc


def _auditor(registry: Registry, *, with_rows: bool) -> LogAudit:
    origin, keys = registry.log_origin, registry.gateway_keys
    return LogAudit(origin=origin, keys_at=lambda when: checkpoint_keys(origin, keys, when), with_rows=with_rows)


def _conclude(auditor: LogAudit, out: TextIO, what: str) -> int:
    findings = auditor.finish()
    if findings:
        lines = [f.line() for f in findings]
        hidden = sum(auditor.counts.values()) - len(findings)
        if hidden:
            lines.append(f"… and {hidden} more findings of the same kinds")
        raise Findings(lines, hint=RUNBOOK_HINT)
    ledger = auditor.ledger()
    movements = sum(line.transfers for line in ledger)
    print(f"log verified: {auditor.entries} entries, {auditor.checkpoints_verified} of {auditor.checkpoints}"
          f" checkpoints signed and matching, root {base64.b64encode(auditor.root).decode()}; {what}", file=out)
    print(f"ledger from the log: {movements} fund movements", file=out)
    for line in ledger:
        print(f"  {line.outbound_province}→{line.inbound_province} {line.status:<8} {line.amount_fen:>16,} fen"
              f" {line.transfers:>8} transfers", file=out)
    return 0


def verify_store(config: StoreConfig, registry: Registry, out: TextIO) -> int:
    """Check a store's log, checkpoints and rows. Raises Findings, StoreUnavailable."""
    auditor = _auditor(registry, with_rows=True)
    asyncio.run(read_snapshot(config, lambda: audit(auditor)))
    return _conclude(auditor, out, "the store's cases, messages, fund movements and totals agree with it")


def verify_bundle(path: Path, registry: Registry, out: TextIO) -> int:
    """Check an exported bundle's log against its checkpoints. Raises Findings, OperatorError."""
    auditor = _auditor(registry, with_rows=False)
    for record in _bundle(path):  # the checkpoints first, wherever they are in the file
        if isinstance(record, CheckpointRecord):
            auditor.checkpoint(record)
    entries = 0
    for record in _bundle(path):
        if not isinstance(record, CheckpointRecord):
            auditor.entry(*record)
            entries += 1
    auditor.head(0, entries, 0)
    return _conclude(auditor, out, "read from the bundle (its rows were not exported: the ledger is the log's own)")


def _bundle(path: Path) -> Iterator[CheckpointRecord | tuple[int, bytes]]:
    """The checkpoints, then the entries, of a bundle. Raises OperatorError naming the line."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise OperatorError(f"{path}: cannot read the bundle: {bounded(exc)}") from exc
    with handle:
        header = _line(path, 1, handle.readline())
        if header.get("format") != BUNDLE_FORMAT:
            raise OperatorError(f"{path}: not a log bundle (its first line must name {BUNDLE_FORMAT})")
        for number, text in enumerate(handle, start=2):
            if text.strip():
                yield _record(path, number, _line(path, number, text))


def _line(path: Path, number: int, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise OperatorError(f"{path}:{number}: not a JSON object")
    return value


def _record(path: Path, number: int, value: dict[str, Any]) -> CheckpointRecord | tuple[int, bytes]:
    try:
        if "checkpoint" in value:
            c = value["checkpoint"]
            return CheckpointRecord(int(c["tree_size"]), base64.b64decode(c["root_hash"], validate=True),
                                    str(c["note"]).encode("utf-8"), from_micros(int(c.get("published_at", 0))))
        return int(value["entry"]), base64.b64decode(value["data"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise OperatorError(f"{path}:{number}: not a checkpoint or an entry ({bounded(exc, 80)})") from exc


@dataclass
class _BundleWriter:
    """Writes what the store's audit hands it, the log only, as bundle lines."""

    out: TextIO
    entries: int = 0
    checkpoints: int = 0

    def head(self, sequence: int, leaves: int, tree_size: int) -> None:
        del sequence, leaves, tree_size

    def checkpoint(self, record: CheckpointRecord) -> None:
        self.checkpoints += 1
        self._write({"checkpoint": {"tree_size": record.tree_size,
                                    "root_hash": base64.b64encode(record.root_hash).decode("ascii"),
                                    "note": record.note.decode("utf-8"), "published_at": micros(record.published_at)}})

    def entry(self, leaf_index: int, entry: bytes) -> None:
        self.entries += 1
        self._write({"entry": leaf_index, "data": base64.b64encode(entry).decode("ascii")})

    def _write(self, value: dict[str, Any]) -> None:
        self.out.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")

    # the rows: not exported
    def stored_hash(self, index: int, value: bytes) -> None: ...

    def message(self, sequence: int, message_id: str, fingerprint: bytes, receipt: bytes,
                leaf_index: int | None) -> None: ...

    def case(self, transfer_id: str, state: int, closed: bool) -> None: ...

    def fund(self, transfer_id: str, message_id: str, amount_fen: int, status: str) -> None: ...

    def total(self, outbound_province: str, inbound_province: str, status: str, amount_fen: int,
              transfers: int) -> None: ...


def export(config: StoreConfig, origin: str, path: Path, out: TextIO, *, force: bool = False) -> int:
    """Write a store's log and checkpoints to a bundle at `path` (mode 0600; an existing file is
    kept unless `force`). Raises OperatorError, StoreUnavailable."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise OperatorError(f"{path}: already exists", hint="give another --out, or --force to replace it") from None
    except OSError as exc:
        raise OperatorError(f"{path}: cannot write the bundle: {bounded(exc)}") from exc
    os.fchmod(fd, 0o600)  # also when --force replaced a file of another mode
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"format": BUNDLE_FORMAT, "origin": origin}) + "\n")
        writer = _BundleWriter(handle)
        asyncio.run(read_snapshot(config, lambda: audit(writer, rows=False)))
    print(f"exported {writer.entries} entries and {writer.checkpoints} checkpoints to {path}", file=out)
    return 0
