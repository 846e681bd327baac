"""Closed-loop load: N workers, each with one call in flight, and measured windows.

Workers start together and run through a warm-up (connections, TLS handshakes, caches) before
the window opens; only calls that complete inside the window count, and the server's CPU time
(and a separate store engine's, PostgreSQL's) is read at both edges of the same window. The
window closes early, and says so, if the workload runs out before its time. Windows of one server
taken at different moments add up (`combine`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

CALL_TIMEOUT = 30.0


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Meter:
    """What the workers report to: each call's start and end, and whether the workload ran out."""

    def __init__(self) -> None:
        self.running = True
        self.opened_at: float | None = None
        self.closed_at: float | None = None
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.examples: list[str] = []
        self.exhausted = asyncio.Event()

    def record(self, started: float, error: str | None = None, detail: str = "") -> None:
        ended = time.perf_counter()
        if self.opened_at is None or ended < self.opened_at or (self.closed_at is not None and ended > self.closed_at):
            return
        if error is None:
            self.latencies.append(ended - started)
        else:
            self.errors[error] += 1
            if len(self.examples) < 3:
                self.examples.append(f"{error}: {detail}"[:300])

    def record_rpc_error(self, started: float, err: grpc.aio.AioRpcError) -> None:
        self.record(started, err.code().name, err.details() or "")

    def run_out(self) -> None:
        """The workload has nothing more to send: close the window now."""
        if not self.exhausted.is_set():
            self.exhausted.set()


@dataclass(frozen=True)
class Window:
    """Measured calls: how many completed in how long, their latencies, and the server's CPU time."""

    latencies: list[float]  # seconds, ascending
    seconds: float
    thread_cpu_seconds: dict[str, float]  # the server's CPU time in the window, by kind of thread
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    cut_short: bool = False  # the workload ran out before the window's time
    engine_cpu_seconds: float = math.nan  # a store engine in processes of its own (PostgreSQL), else NaN
    log_cpu_seconds: float = math.nan  # the gateway's own meter of its transparency log's CPU, else NaN

    @classmethod
    def combine(cls, windows: list[Window]) -> Window:
        """The windows as one: calls and seconds add up, latencies pool."""
        errors: Counter[str] = Counter()
        for w in windows:
            errors.update(w.errors)
        return cls(
            latencies=sorted(x for w in windows for x in w.latencies), seconds=sum(w.seconds for w in windows),
            errors=dict(errors),
            error_examples=[e for w in windows for e in w.error_examples][:3],
            cut_short=any(w.cut_short for w in windows),
            engine_cpu_seconds=sum(w.engine_cpu_seconds for w in windows) if windows else math.nan,
            log_cpu_seconds=sum(w.log_cpu_seconds for w in windows) if windows else math.nan,
            thread_cpu_seconds={kind: sum(w.thread_cpu_seconds.get(kind, 0.0) for w in windows)
                                for kind in dict.fromkeys(k for w in windows for k in w.thread_cpu_seconds)},
        )

    @property
    def server_cpu_seconds(self) -> float:
        return sum(self.thread_cpu_seconds.values())

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1e3

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1e3

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else math.nan

    @property
    def cpu_us_per_call(self) -> float:
        return self.server_cpu_seconds / self.completed * 1e6 if self.completed else math.nan

    def figures(self) -> dict[str, Any]:
        return {
            "requests": self.completed, "seconds": round(self.seconds, 3), "req_per_s": round(self.per_second, 1),
            "p50_ms": round(self.p50_ms, 3), "p99_ms": round(self.p99_ms, 3),
            "server_cpu_seconds": round(self.server_cpu_seconds, 3),
            "cpu_us_per_request": round(self.cpu_us_per_call, 1),
            "errors": sum(self.errors.values()), "error_codes": self.errors, "error_examples": self.error_examples,
            "cut_short": self.cut_short,
            "engine_cpu_us_per_request": round(self.engine_cpu_seconds / self.completed * 1e6, 1)
            if self.completed else math.nan,
            "log_cpu_us_per_request": round(self.log_cpu_seconds / self.completed * 1e6, 1)
            if self.completed else math.nan,
            "cpu_us_per_request_by_thread": {
                kind: round(seconds / self.completed * 1e6, 1) if self.completed else math.nan
                for kind, seconds in self.thread_cpu_seconds.items()},
        }


Worker = Callable[[int, Meter], Coroutine[Any, Any, None]]


class Reading(Protocol):
    """The server's CPU time so far, by which a later reading tells what a window used."""

    def since(self, earlier: Any) -> dict[str, float]:
        """The CPU seconds used from `earlier` to this reading, by kind of thread."""


async def measure(workers: int, worker: Worker, *, warmup: float, window: float,
                  server_cpu: Callable[[], Reading], engine_cpu: Callable[[], float] | None = None,
                  log_cpu: Callable[[], float] | None = None) -> Window:
    """Run `workers` copies of `worker` (each told its index), measure one window after `warmup`.

    `server_cpu` reads the server's CPU time so far; the window's, by kind of thread, is the
    difference of its readings at its edges.
    `log_cpu`, the part of it the gateway's transparency log took by its own meter."""
    def engine() -> float:
        return engine_cpu() if engine_cpu is not None else math.nan

    meter = Meter()
    tasks = [asyncio.create_task(worker(i, meter)) for i in range(workers)]
    exhausted = asyncio.create_task(meter.exhausted.wait())
    try:
        await asyncio.wait({exhausted}, timeout=warmup)
        log_start = log_cpu() if log_cpu is not None else math.nan
        threads_start, engine_start = server_cpu(), engine()
        meter.opened_at = time.perf_counter()
        if not exhausted.done():
            await asyncio.wait({exhausted}, timeout=window)
        meter.closed_at = time.perf_counter()
        threads_end, engine_used = server_cpu(), engine() - engine_start
        log_used = log_cpu() - log_start if log_cpu is not None else math.nan
        threads_used = threads_end.since(threads_start)
        if engine_used < 0:
            engine_used = math.nan  # a backend exited meanwhile (the engine restarted): not measurable
    finally:
        meter.running = False
        exhausted.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return Window(
        latencies=sorted(meter.latencies), seconds=meter.closed_at - meter.opened_at,
        thread_cpu_seconds=threads_used,
        errors=dict(meter.errors), error_examples=meter.examples, cut_short=meter.exhausted.is_set(),
        engine_cpu_seconds=engine_used, log_cpu_seconds=log_used,
    )


async def timed_call(meter: Meter, call: Any, request: bytes) -> bytes | None:
    """One call with its latency recorded; None (and the error counted) if it failed."""
    started = time.perf_counter()
    try:
        response: bytes = await call(request, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as err:
        meter.record_rpc_error(started, err)
        return None
    meter.record(started)
    return response
