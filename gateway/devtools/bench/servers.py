"""The harness's side of a server process: start it, read its CPU time and peak memory from
/proc (Linux), stop it.

Reading /proc from outside costs the server nothing and counts every thread it has (gRPC's
completion-queue threads, the SQLite writer), which in-process accounting would mix up with
the load generator's own work. A PostgreSQL server on the same machine is read the same way:
the CPU of all its processes (backends, WAL writer, checkpointer) is the store's share.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_STARTUP_TIMEOUT = 60.0
_GRPC_CORE_THREADS = ("event_engine", "grpc", "default-executo", "resolver-execu", "timer")  # their OS names


def _command(stat: str) -> str:
    """The command (thread) name in a /proc stat line."""
    return stat.partition("(")[2].rpartition(")")[0]


def _cpu_seconds(stat: str) -> float:
    """User + system CPU time in a /proc stat line."""
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


THREAD_KINDS = ("event_loop", "grpc_core", "other_threads")


@dataclass(frozen=True)
class CpuReading:
    """A process's CPU time so far, in all and by thread (id → (kind, seconds)). The kinds: its
    first thread (the event loop), gRPC core's threads, and all other threads (the SQLite writer and
    reader, grpc.aio's poller, executors)."""

    total: float
    threads: dict[int, tuple[str, float]]

    def since(self, earlier: CpuReading) -> dict[str, float]:
        """The CPU time used from `earlier` to this reading, by kind of thread. Each thread counts by
        its kind now (gRPC names its threads once they run); what threads that ended meanwhile used,
        which no thread reading holds any more, counts among the other threads."""
        parts = dict.fromkeys(THREAD_KINDS, 0.0)
        for tid, (kind, seconds) in self.threads.items():
            before = earlier.threads.get(tid)
            parts[kind] += max(0.0, seconds - (before[1] if before is not None else 0.0))
        parts["other_threads"] += max(0.0, self.total - earlier.total - sum(parts.values()))
        return parts


class ServerProcess:
    """A server's process `pid`, serving gRPC on `port` (and its /metrics on `metrics_port`)."""

    def __init__(self, pid: int, port: int, metrics_port: int | None = None) -> None:
        self.port = port
        self.metrics_port = metrics_port
        self.pid = pid

    def metrics_text(self) -> str:
        """Its /metrics, as text. Raises OSError when it does not answer."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode("utf-8"))

    def log_cpu_seconds(self) -> float:
        """The gateway's own meter of the CPU its transparency log took so far
        (`transfer_gateway_log_cpu_seconds` on its /metrics); NaN for a server without one."""
        if self.metrics_port is None:
            return math.nan
        for line in self.metrics_text().splitlines():
            if line.startswith("transfer_gateway_log_cpu_seconds "):
                return float(line.split()[1])
        return math.nan

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole process so far (all threads)."""
        return _cpu_seconds(Path(f"/proc/{self.pid}/stat").read_text())

    def cpu_reading(self) -> CpuReading:
        """The CPU time so far of the whole process and of each of its threads."""
        threads: dict[int, tuple[str, float]] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue  # ended meanwhile
            kind = "event_loop" if task.name == str(self.pid) else \
                "grpc_core" if _command(stat).startswith(_GRPC_CORE_THREADS) else "other_threads"
            threads[int(task.name)] = (kind, _cpu_seconds(stat))
        return CpuReading(self.cpu_seconds(), threads)

    def peak_rss_bytes(self) -> int:
        """The process's peak resident set size so far (VmHWM)."""
        return self._status_bytes("VmHWM")

    def rss_bytes(self) -> int:
        """The process's resident set size now (VmRSS)."""
        return self._status_bytes("VmRSS")

    def _status_bytes(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc status")


def postgres_cpu_seconds() -> float:
    """User + system CPU time so far of every process named `postgres` on this machine; NaN if none.

    A backend that exits takes its time with it, so only differences over a span in which the
    gateway's pooled connections stay open mean anything.
    """
    total, found = 0.0, False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        if _command(stat) == "postgres":
            total += _cpu_seconds(stat)
            found = True
    return total if found else math.nan


@asynccontextmanager
async def running(spec: dict[str, Any], log: Path) -> AsyncIterator[ServerProcess]:
    """Run `python -m gateway.devtools.bench.child spec` until the block ends; its stderr goes to `log`.

    Raises RuntimeError (with the log's tail) if it does not start serving.
    """
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.devtools.bench.child", json.dumps(spec),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )
    assert process.stdin is not None and process.stdout is not None
    try:
        try:
            line = await asyncio.wait_for(process.stdout.readline(), _STARTUP_TIMEOUT)
            started = json.loads(line)
            port, metrics_port = int(started["port"]), started.get("metrics_port")
        except (TimeoutError, ValueError, KeyError) as exc:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{spec['role']} process did not start: {exc!r}\n{tail}") from exc
        yield ServerProcess(process.pid, port, metrics_port)
    finally:
        if process.returncode is None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                process.stdin.write(b"stop\n")
                await process.stdin.drain()
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 30.0)
            except TimeoutError:
                process.kill()
                await process.wait()


@asynccontextmanager
async def running_workers(config: Path, log: Path) -> AsyncIterator[list[ServerProcess]]:
    """Run `transfer-gateway serve --config FILE` (a file with `workers = N`) until the block ends,
    then SIGTERM it: its parent, then each worker (all on the shared port; each worker with its
    /metrics). The ports and pids come from the parent's `"workers started"` log line.

    Raises RuntimeError (with the log's tail) if it does not start serving.
    """
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=stderr)
    try:
        started = await _workers_started(process, log)
        port = int(started["listen"].rpartition(":")[2])
        yield [ServerProcess(process.pid, port), *(ServerProcess(pid, port, metrics) for pid, metrics in
                                                   zip(started["pids"], started["metrics_ports"], strict=True))]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)  # the parent drains every worker
            try:
                await asyncio.wait_for(process.wait(), 30.0)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _workers_started(process: asyncio.subprocess.Process, log: Path) -> dict[str, Any]:
    """The parent's `"workers started"` line, once it is in the log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _STARTUP_TIMEOUT
    while process.returncode is None and loop.time() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"workers started"' in line:
                started: dict[str, Any] = json.loads(line)
                return started
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 0.1)
    raise RuntimeError(f"serve --workers did not start (exit {process.returncode})\n"
                       f"{log.read_text(errors='replace')[-2000:]}")
