"""`transfer-gateway bench`: every figure of docs/performance.md, in one run.

On loopback with a fresh dev PKI:

1. pre-sign the workload (whole valid cases) and measure the floors (sign, verify, append);
2. bulk-load the large store;
3. start five servers, each in a process of its own: the bare echo server, the floors in situ (a
   Submit doing only what the floors measure), a gateway on an empty store, a gateway on the
   large store, and a gateway primed with accepted fund transfers for the replay storm; then load
   them in turns, a slice of each per round, so that whatever slows the machine down meanwhile
   slows all five alike. The idle ones keep running, as a gateway
   does between bursts: their periodic readings (the monitor) come at their natural rate;
   On a store that replicas can share (PostgreSQL), three more turns: two gateway processes on one
   schema, the submit load split evenly between them; a gateway on an empty SQLite file, the
   same load, so that PostgreSQL's cost is measured against SQLite's in the same run and windows;
   and `serve --workers 2`, two worker processes behind one port (the kernel spreading the
   connections), against one gateway's CPU per message;
4. audit the replay gateway's store for double fund movements;
5. play whole cases end to end between the two reference platforms on a fresh gateway;
6. isolation (`gateway.devtools.bench.isolation`): a platform's steady calls alone and beside
   another's flood, and bursts of the largest messages against the process's memory.

Each gateway process gets a store of its own (a SQLite file, or a PostgreSQL schema dropped at the
end of the run, however it ends).

The load generator is this process; the server under load is another. They share the machine's
two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cryptography
import grpc
from google import protobuf

from clients.deliveries import VerifiedDelivery
from clients.platform import Handler, PlatformClient, PlatformConfig
from clients.reviewer import OperatorConfig, ReviewerClient
from clients.scenario import run_cases
from clients.signing import KeyRing
from gateway.app.devpki import DEV_PLATFORMS, DevPaths, write_dev_pki
from gateway.app.progress import Progress
from gateway.core.messages import payload_type
from gateway.core.signing import LocalSigner
from gateway.devtools.bench import report, servers
from gateway.devtools.bench.child import workers_config
from gateway.devtools.bench.floors import Floors, measure_floors
from gateway.devtools.bench.isolation import measure_isolation
from gateway.devtools.bench.load import Meter, Window, measure, percentile
from gateway.devtools.bench.stores import BenchStore, FundAudit, LoadReport, open_store, redact
from gateway.devtools.bench.targets import (
    EchoTarget,
    ReplayTarget,
    ReplicaTargets,
    SubmitTarget,
    Target,
    WorkersTarget,
)
from gateway.devtools.bench.workload import PLATFORMS, SignedCase, presign_cases, store_routes, store_templates
from mitransfer.v1 import envelope_pb2

_PER_CASE = 6      # messages in each pre-signed case
_REPLAY_SET = 128  # distinct fund transfers the storm repeats: few, so that clients collide on them
_SETTLE = 0.5      # seconds of load before each later slice of a server (its connections are warm)
_REPLICAS = 2      # gateway processes sharing one store, where the store allows it
_WORKERS = 2       # worker processes of `serve --workers`, where the store allows it


@dataclass(frozen=True)
class BenchConfig:
    mode: str                   # "full", "quick", or "custom" once a size was overridden
    window: float               # measured seconds per server, split over the rounds
    warmup: float               # seconds of load before a server's first slice
    rounds: int                 # turns taken through the servers
    scale_messages: int         # messages in the large store
    cases: int                  # cases played end to end
    concurrency: int = 64       # calls in flight, in every phase
    channels: int = 4           # mTLS channels they are spread over (half per platform when both send)
    store: str = "sqlite"       # "sqlite" or a postgresql:// URL (a schema per gateway process)
    floor_iterations: int = 2000
    max_rate: float = 5000.0    # messages pre-signed for this rate; a faster gateway ends its window early
    log_level: str = "INFO"     # the gateway's, as `serve` runs it

    @classmethod
    def full(cls) -> BenchConfig:
        return cls(mode="full", window=20.0, warmup=3.0, rounds=5, scale_messages=1_000_000, cases=1000)

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(mode="quick", window=8.0, warmup=2.0, rounds=4, scale_messages=100_000, cases=200)

    @classmethod
    def from_options(cls, *, quick: bool, store: str = "sqlite", window: float | None = None,
                     scale_messages: int | None = None, cases: int | None = None) -> BenchConfig:
        """The full or quick configuration, with any size given overriding its own."""
        config = replace(cls.quick() if quick else cls.full(), store=store)
        if window is not None:
            config = replace(config, mode="custom", window=window, warmup=min(config.warmup, max(0.2, window / 2)),
                             rounds=max(1, min(config.rounds, round(window / 2))),
                             floor_iterations=min(config.floor_iterations, max(50, int(window * 400))))
        if scale_messages is not None:
            config = replace(config, mode="custom", scale_messages=scale_messages)
        if cases is not None:
            config = replace(config, mode="custom", cases=cases)
        return config

    @property
    def settle(self) -> float:
        return min(_SETTLE, self.warmup)


def run_bench(config: BenchConfig, *, as_json: bool) -> int:
    """Run every phase, print the table (and the JSON line); 0 unless the harness itself failed."""
    with tempfile.TemporaryDirectory(prefix="transfer-gateway-bench-") as tmp:
        result = asyncio.run(_bench(config, Path(tmp)))
    print(report.table(result), flush=True)
    if as_json:
        print(json.dumps(_finite(result), ensure_ascii=False), flush=True)
    return 0


def _finite(value: Any) -> Any:
    """NaN is not JSON: a figure that could not be measured is null."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Rounds:
    echo: EchoTarget
    floors: SubmitTarget
    floors_stored: int  # rows the floors server appended, counted after it stopped
    submit: SubmitTarget
    large: SubmitTarget
    replay: ReplayTarget
    empty_rss: int
    large_rss: int
    audit: FundAudit
    replicas: ReplicaTargets | None  # two gateways on one shared store, if the store allows it
    sqlite: SubmitTarget | None      # a gateway on SQLite beside them, if the store is not SQLite
    workers: WorkersTarget | None    # `serve --workers 2`, if the store allows it
    submits_by_worker: list[int]     # Submit calls each of its workers answered


async def _bench(config: BenchConfig, workdir: Path) -> dict[str, Any]:
    store = open_store(config.store, workdir)
    try:
        return await _bench_on(config, workdir, store)
    finally:
        store.cleanup()  # after every gateway process has stopped


async def _bench_on(config: BenchConfig, workdir: Path, store: BenchStore) -> dict[str, Any]:
    started = time.perf_counter()
    pki = write_dev_pki(workdir / "pki")
    submit_seconds = config.warmup + (config.rounds - 1) * config.settle + config.window
    pool = max(_REPLAY_SET * 2, math.ceil(config.max_rate * submit_seconds / _PER_CASE))
    _progress(f"signing {pool * _PER_CASE:,} messages")
    with Progress.start("signing"):
        cases = presign_cases(pki, pool)
    sizes = [len(s.data) for case in cases for s in case]
    payload_bytes = round(statistics.fmean(sizes))

    _progress("floors: sign, verify, durable append")
    typical = min(cases[0], key=lambda s: abs(len(s.data) - payload_bytes))
    signed = envelope_pb2.SignedMessage.FromString(typical.data)
    key = LocalSigner.from_pem(signed.key_id, pki.platform_signing_key(typical.platform).read_bytes())
    with Progress.start("measuring the floors"):
        floors = measure_floors(key, payload_type(signed.kind), signed.payload, workdir,
                                iterations=config.floor_iterations, batch=config.concurrency)

    _progress(f"loading {config.scale_messages:,} messages into the large store")
    large = store.fresh("large")
    load = await store.populate(large, config.scale_messages, store_templates(pki, cases[0]), store_routes())

    _progress(f"echo, submit (empty and large store), replay storm: {config.rounds} rounds")
    rounds = await _measure_rounds(config, pki, workdir, store, large, cases, bytes(payload_bytes))

    _progress(f"{config.cases} cases end to end")
    e2e = await _cases(config, pki, workdir, store.fresh("cases"))

    _progress("isolation: a platform's calls beside another's flood; bursts of the largest messages")
    isolated = await measure_isolation(pki, workdir, store, _gateway_spec(pki, {}, config),
                                       warmup=config.warmup, window=config.window)

    result = _result(config, store, rounds, load, floors, e2e, pki)
    _add_isolation(result, isolated)
    result["config"].update(payload_bytes=payload_bytes, presigned_messages=len(sizes))
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _result(config: BenchConfig, store: BenchStore, rounds: _Rounds, load: LoadReport, floors: Floors,
            e2e: dict[str, Any], pki: DevPaths) -> dict[str, Any]:
    echo, in_situ, submit, large, replay = (t.measured() for t in (rounds.echo, rounds.floors, rounds.submit,
                                                                    rounds.large, rounds.replay))
    keyring = KeyRing.load(pki.registry)
    floor_sum = echo.cpu_us_per_call + floors.sign_us + floors.verify_us + floors.append_cpu_us
    audit = rounds.audit
    versions = {"python": platform.python_version(), "grpcio": grpc.__version__, "protobuf": protobuf.__version__,
                "cryptography": cryptography.__version__, "sqlite": sqlite3.sqlite_version}
    if store.name != "sqlite":
        versions[store.name] = store.version()
    submit_figures = submit.figures()
    result: dict[str, Any] = {
        "bench": "transfer-gateway",
        "store": store.name,
        "config": {**asdict(config), "store": redact(config.store), "window_seconds": config.window,
                   "warmup_seconds": config.warmup},
        "versions": versions,
        "machine": {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
                    "platform": platform.platform(), "machine": platform.machine()},
        "echo": echo.figures(),
        "floor_server": {**in_situ.figures(), "stored": rounds.floors_stored},
        "submit": {**submit_figures, "accepted_by_kind": rounds.submit.accepted_by_kind,
                   "receipts_checked": len(rounds.submit.sampled),
                   "receipt_failures": rounds.submit.receipt_failures(keyring)},
        "replay": {**replay.figures(), "fund_transfers": audit.cases_checked,
                   "double_movements": audit.double_movements, "missing_movements": audit.missing_movements,
                   "receipt_mismatches": rounds.replay.mismatches},
        "submit_two_replicas": _replica_figures(rounds.replicas, submit.per_second, keyring),
        "submit_sqlite": _sqlite_figures(rounds.sqlite, keyring),
        "submit_two_workers": _workers_figures(rounds, submit, keyring),
        "cases": e2e,
        "scale": {
            "messages_loaded": load.messages, "cases_loaded": load.cases, "load_seconds": round(load.seconds, 2),
            "file_mib": round(load.file_bytes / 2**20, 1),
            "empty": {**{k: submit_figures[k] for k in ("requests", "req_per_s", "p50_ms", "p99_ms",
                                                          "cpu_us_per_request")},
                      "peak_rss_mib": round(rounds.empty_rss / 2**20, 1)},
            "large": {**large.figures(), "receipts_checked": len(rounds.large.sampled),
                      "receipt_failures": rounds.large.receipt_failures(keyring),
                      "peak_rss_mib": round(rounds.large_rss / 2**20, 1)},
        },
        "floors": {**floors.figures(), "echo_cpu_us": round(echo.cpu_us_per_call, 1),
                   "gateway_cpu_us_per_message": round(submit.cpu_us_per_call, 1), "floor_sum_us": round(floor_sum, 1)},
        "double_movements": audit.double_movements,
        "submit_vs_echo": report.ratio(submit.per_second, echo.per_second),
        "submit_p99_vs_echo": report.ratio(submit.p99_ms, echo.p99_ms),
        "replay_vs_echo": report.ratio(replay.per_second, echo.per_second),
        "large_store_vs_empty": report.ratio(large.per_second, submit.per_second),
        "rss_large_vs_empty": report.ratio(rounds.large_rss, rounds.empty_rss),
        "cpu_vs_floor": report.ratio(submit.cpu_us_per_call, floor_sum),
        "log_cpu_share": report.ratio(submit.log_cpu_seconds, submit.server_cpu_seconds),
        "floor_server_vs_echo": report.ratio(in_situ.per_second, echo.per_second),
        "floor_server_p99_vs_echo": report.ratio(in_situ.p99_ms, echo.p99_ms),
        "floor_server_cpu_vs_floor": report.ratio(in_situ.cpu_us_per_call, floor_sum),
        "submit_vs_floor_server": report.ratio(submit.per_second, in_situ.per_second),
        "cpu_vs_floor_server": report.ratio(submit.cpu_us_per_call, in_situ.cpu_us_per_call),
        "submit_p99_vs_floor_server": report.ratio(submit.p99_ms, in_situ.p99_ms),
        **_against_sqlite(rounds.submit, rounds.sqlite),
        "workers_cpu_vs_one": (report.ratio(rounds.workers.measured().cpu_us_per_call, submit.cpu_us_per_call)
                               if rounds.workers else math.nan),
    }
    return result


def _workers_figures(rounds: _Rounds, one: Window, keyring: KeyRing) -> dict[str, Any] | None:
    """`serve --workers 2`'s figures (CPU: the parent and both workers), beside one gateway's."""
    if rounds.workers is None:
        return None
    window = rounds.workers.measured()
    return {**window.figures(), "workers": _WORKERS, "vs_one_gateway": report.ratio(window.per_second, one.per_second),
            "submits_by_worker": rounds.submits_by_worker, "accepted_by_kind": rounds.workers.accepted_by_kind,
            "receipts_checked": len(rounds.workers.sampled),
            "receipt_failures": rounds.workers.receipt_failures(keyring)}


def _against_sqlite(submit: SubmitTarget, sqlite: SubmitTarget | None) -> dict[str, float]:
    """The store's submit against SQLite's in the same run: req/s, and the CPU per accepted message
    of the gateway and its engine's processes together against the SQLite gateway's (NaN on SQLite).

    The engine's share comes from the windows that could read it: any `postgres` process on the
    machine that exits during a window (another client's connection, a restart) voids that
    window's reading, and on a shared server that happens often enough to void a whole run's.
    """
    if sqlite is None:
        return {"pg_submit_vs_sqlite": math.nan, "pg_cpu_vs_sqlite": math.nan}
    measured, alone = submit.measured(), sqlite.measured()
    read = [w for w in submit.windows if math.isfinite(w.engine_cpu_seconds)]
    calls = sum(w.completed for w in read)
    engine_us = sum(w.engine_cpu_seconds for w in read) / calls * 1e6 if calls else math.nan
    return {"pg_submit_vs_sqlite": report.ratio(measured.per_second, alone.per_second),
            "pg_cpu_vs_sqlite": report.ratio(measured.cpu_us_per_call + engine_us, alone.cpu_us_per_call)}


def _add_isolation(result: dict[str, Any], isolated: dict[str, Any]) -> None:
    """The isolation phase's figures and its two ratios; then every target judged."""
    burst = isolated["burst"]
    idle, peak = burst.pop("_idle"), burst.pop("_peak")
    result["isolation"] = isolated
    result["isolation_victim_p99_vs_alone"] = report.ratio(isolated["victim_flooded"]["p99_ms"],
                                                           isolated["victim_alone"]["p99_ms"])
    result["flood_rss_vs_idle"] = report.ratio(peak, idle)
    result["isolation_unpaced_p99_vs_alone"] = report.ratio(isolated["unpaced"]["victim_flooded"]["p99_ms"],
                                                            isolated["victim_alone"]["p99_ms"])
    result["targets"] = report.verdicts(result)


def _replica_figures(replicas: ReplicaTargets | None, one_replica: float, keyring: KeyRing) -> dict[str, Any] | None:
    """Two replicas' combined figures (CPU: both gateway processes), beside one replica's req/s."""
    if replicas is None:
        return None
    window = replicas.measured()
    return {**window.figures(), "replicas": len(replicas.replicas),
            "vs_one_replica": report.ratio(window.per_second, one_replica),
            "accepted_by_kind": replicas.accepted_by_kind, "receipts_checked": len(replicas.sampled),
            "receipt_failures": replicas.receipt_failures(keyring)}


def _sqlite_figures(sqlite: SubmitTarget | None, keyring: KeyRing) -> dict[str, Any] | None:
    """The SQLite gateway's figures in a run on another store."""
    if sqlite is None:
        return None
    return {**sqlite.measured().figures(), "accepted_by_kind": sqlite.accepted_by_kind,
            "receipts_checked": len(sqlite.sampled), "receipt_failures": sqlite.receipt_failures(keyring)}


def _gateway_spec(pki: DevPaths, location: dict[str, str], config: BenchConfig) -> dict[str, Any]:
    return {"role": "gateway", "pki": str(pki.root), "log_level": config.log_level, **location}


async def _measure_rounds(config: BenchConfig, pki: DevPaths, workdir: Path, store: BenchStore,
                          large_store: dict[str, str], cases: Sequence[SignedCase], payload: bytes) -> _Rounds:
    replay_store = store.fresh("replay")
    floors_log = workdir / "floors.db"  # SQLite whatever the store: the append floor is SQLite's
    targets: list[Target] = []
    async with contextlib.AsyncExitStack() as stack:
        async def start(name: str, spec: dict[str, Any]) -> servers.ServerProcess:
            return await stack.enter_async_context(servers.running(spec, workdir / f"{name}.log"))

        echo = EchoTarget(await start("echo", {"role": "echo", "pki": str(pki.root)}), pki, config.channels, payload)
        targets.append(echo)
        floors_spec = {"role": "floors", "pki": str(pki.root), "database": str(floors_log)}
        floors = SubmitTarget("floors", await start("floors", floors_spec), pki, config.channels, cases)
        targets.append(floors)
        empty_server = await start("gateway-empty", _gateway_spec(pki, store.fresh("empty"), config))
        submit = SubmitTarget("submit", empty_server, pki, config.channels, cases)
        targets.append(submit)
        large_server = await start("gateway-large", _gateway_spec(pki, large_store, config))
        large = SubmitTarget("large", large_server, pki, config.channels, cases)
        targets.append(large)
        pair: ReplicaTargets | None = None
        if store.replicas:
            shared = store.fresh("replicas")
            pair = ReplicaTargets("replicas", [await start(f"gateway-replica-{i}", _gateway_spec(pki, shared, config))
                                               for i in range(_REPLICAS)], pki, config.channels, cases)
            targets.append(pair)
        sqlite: SubmitTarget | None = None
        if store.name != "sqlite":  # its file in the run's folder, whatever the store under test
            sqlite_server = await start("gateway-sqlite", _gateway_spec(pki, {"database": str(workdir / "sqlite.db")},
                                                                          config))
            sqlite = SubmitTarget("sqlite", sqlite_server, pki, config.channels, cases)
            targets.append(sqlite)
        workers: WorkersTarget | None = None
        if store.replicas:
            # Twice the channels: the kernel hands each connection to a worker at random, and with
            # four, all on one worker would happen one run in eight.
            workers_file = workdir / "workers.toml"
            workers_file.write_text(workers_config(pki, store.fresh("workers"), _WORKERS), encoding="utf-8")
            workers = WorkersTarget("workers", await stack.enter_async_context(servers.running_workers(
                workers_file, workdir / "gateway-workers.log")), pki, config.channels * 2, cases)
            targets.append(workers)
        replay_server = await start("gateway-replay", _gateway_spec(pki, replay_store, config))
        primer = SubmitTarget("primer", replay_server, pki, config.channels, cases[:_REPLAY_SET + _REPLAY_SET // 4])
        targets.append(primer)
        try:
            await _drain(primer, config.concurrency)  # the fund transfers the storm repeats are accepted first
            replay = ReplayTarget("replay", replay_server, pki, config.channels, primer.funds[:_REPLAY_SET])
            targets.append(replay)
            turns: list[Target] = [echo, floors, submit, large, replay, *([pair] if pair else []),
                                   *([sqlite] if sqlite else []), *([workers] if workers else [])]
            with Progress.start("windows measured", total=config.rounds * len(turns)) as progress:
                for r in range(config.rounds):
                    for t in turns[r % len(turns):] + turns[:r % len(turns)]:  # who goes first rotates
                        progress.label(f"round {r + 1}/{config.rounds}, {t.name}: windows measured")
                        t.windows.append(await measure(
                            config.concurrency, t.worker, warmup=config.warmup if r == 0 else config.settle,
                            window=config.window / config.rounds, server_cpu=t.cpu_reading,
                            engine_cpu=None if t in (echo, sqlite) else store.engine_cpu_seconds,
                            log_cpu=t.log_cpu_seconds))
                        progress.advance()
            empty_rss, large_rss = empty_server.peak_rss_bytes(), large_server.peak_rss_bytes()
            by_worker = workers.submits_by_worker() if workers else []
        finally:
            for t in targets:
                await t.close()
    audit = store.audit_funds(replay_store, [s.transfer_id for s, _ in replay.storm])
    with contextlib.closing(sqlite3.connect(floors_log)) as conn:
        (stored,) = conn.execute("SELECT COUNT(*) FROM log").fetchone()
    return _Rounds(echo, floors, stored, submit, large, replay, empty_rss, large_rss, audit, pair, sqlite, workers,
                   by_worker)


async def _drain(target: Target, workers: int) -> None:
    """Run `target`'s workers, unmeasured, until its workload runs out."""
    meter = Meter()
    await asyncio.gather(*(target.worker(i, meter) for i in range(workers)))


class _TimedPlatformClient(PlatformClient):
    """The reference client, noting how long after acceptance its handler first sees a delivery."""

    delivery_seconds: list[float]

    async def subscribe(self, handler: Handler, agencies: Sequence[str] = (), *, stop: asyncio.Event | None = None,
                        concurrency: int = 1) -> None:
        seen = self.delivery_seconds

        async def timed(delivery: VerifiedDelivery) -> None:
            if delivery.attempt == 1:
                accepted = delivery.receipt.accepted_at
                seen.append(time.time() - (accepted.seconds + accepted.nanos / 1e9))
            await handler(delivery)

        await super().subscribe(timed, agencies, stop=stop, concurrency=concurrency)


async def _cases(config: BenchConfig, pki: DevPaths, workdir: Path, location: dict[str, str]) -> dict[str, Any]:
    agencies = {p.id: p.agency_codes for p in DEV_PLATFORMS}
    seen: list[float] = []
    async with servers.running(_gateway_spec(pki, location, config), workdir / "gateway-cases.log") as server:
        address = f"127.0.0.1:{server.port}"
        async with (
            _TimedPlatformClient.connect(PlatformConfig.dev(PLATFORMS[0], address, pki.root)) as a,
            _TimedPlatformClient.connect(PlatformConfig.dev(PLATFORMS[1], address, pki.root)) as b,
            ReviewerClient.connect(OperatorConfig.dev("reviewer", address, pki.root)) as reviewer,
        ):
            assert isinstance(a, _TimedPlatformClient) and isinstance(b, _TimedPlatformClient)
            a.delivery_seconds = b.delivery_seconds = seen
            with Progress.start("cases completed", total=config.cases) as progress:
                result = await run_cases(a, b, transfers=config.cases, a_agencies=agencies[PLATFORMS[0]],
                                         b_agencies=agencies[PLATFORMS[1]], timeout=max(60.0, config.cases * 2.0),
                                         concurrency=config.concurrency, reviewer=reviewer,
                                         on_progress=progress.update)
    latencies = sorted(seen)
    return {
        "cases": result.transfers, "completed": result.completed, "failed": result.failed,
        "seconds": round(result.seconds, 3), "cases_per_s": round(result.completed / result.seconds, 2),
        "deliveries": len(latencies), "delivery_p50_ms": round(percentile(latencies, 50) * 1e3, 3),
        "delivery_p99_ms": round(percentile(latencies, 99) * 1e3, 3), "errors": result.errors[:10],
    }
