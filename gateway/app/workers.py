"""Several gateway processes on one host: `transfer-gateway serve --workers N` (`workers = N`).

A gateway process uses one core whatever the host has: grpc.aio runs one event loop per process.
N worker processes, each a `serve` as ever, share the listen address through SO_REUSEPORT (the
kernel hands each new connection to one of them: it spreads connections, not calls), and each is
a replica of its own on the PostgreSQL store (its own pool, writers, LISTEN connection, monitor,
checkpoint publisher, index upkeep and write-probe row). So whatever replicas coordinate through
the store (case locks, the log's head, delivery leases, wake-ups, checkpoints, the calendar, the
registry, the index's upkeep) holds between workers as it does between hosts, and nothing is
shared between them in memory. SQLite is refused (`GatewayConfig`: one writer per file).

This module is the parent. It serves nothing: it checks the configuration (every file, before any
worker reads it), refuses a port already taken (its workers may share theirs with each other, not
with another gateway), starts the workers, supervises them and forwards signals.

- **Start**: all or nothing, as one process's start is: a worker that fails while starting stops
  the others, and the parent exits with that worker's code (78 configuration, 69 unavailable).
- **A worker that dies after it served** is logged (`"worker exited"`, error) and started again,
  after a pause that doubles while it keeps dying (1 s up to 30 s). Restarting every worker would
  cut every platform's calls and streams on the host for one worker's crash; the others serve on,
  and what the dead one held comes back through the store as a dead replica's does (its leases
  end, its clients reconnect to the port and land on a live worker). A restart refused for its
  configuration (78: the file changed meanwhile) stops them all: no restart can help.
- **Signals**: SIGTERM and SIGINT are forwarded to every worker, which drains (health NOT_SERVING,
  in-flight calls finish within `shutdown_grace_seconds`, the store flushed and closed); the
  parent exits once all have, 0 if every one drained. SIGHUP is forwarded: each worker re-reads
  the registry file. A worker whose parent vanished (SIGKILL) drains by itself: it watches its
  end of a socket pair the parent holds, which closes with the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from gateway.app.config import GatewayConfig, parse_address
from gateway.app.failures import ExitCode
from gateway.app.server import probe_address

log = logging.getLogger("gateway.app.workers")

FIRST_PAUSE: Final = 1.0    # seconds before a worker that died is started again…
LAST_PAUSE: Final = 30.0    # …doubling while it keeps dying, up to this
HEALTHY_AFTER: Final = 60.0  # seconds a worker must serve for its next death to count as a first
# How a worker asked to stop may end: drained (0), or stopped by the signal before it could serve.
_STOPPED: Final = frozenset({ExitCode.OK, ExitCode.INTERRUPTED, -signal.SIGTERM, -signal.SIGINT})


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class WorkerPlan:
    """How to start worker i: the `serve` arguments every worker shares, the listen address they
    share (its port chosen) and the metrics address of worker 0 (worker i's port is its port + i;
    port 0: each picks its own; None: off)."""

    count: int
    listen: str
    metrics_listen: str | None
    serve_args: tuple[str, ...]

    @classmethod
    def of(cls, config: GatewayConfig, serve_args: Sequence[str]) -> WorkerPlan:
        """The plan for `config`, its ports checked. Raises Unavailable (a port is taken) or
        ConfigError (an address this machine cannot listen on)."""
        probe_address("listen", config.listen)  # with SO_REUSEPORT off: any process there fails it
        host, port = parse_address(config.listen)
        if port == 0:  # every worker must bind the same port: choose it here
            family, kind, proto, _, where = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM,
                                                               flags=socket.AI_PASSIVE)[0]
            with socket.socket(family, kind, proto) as chooser:
                chooser.bind(where)
                port = chooser.getsockname()[1]
        plan = cls(config.workers, _address(host, port), config.metrics_listen, tuple(serve_args))
        for index in range(plan.count):
            metrics = plan.metrics_of(index)
            if metrics:
                probe_address("metrics_listen", metrics)
        return plan

    def metrics_of(self, index: int) -> str:
        """Worker `index`'s metrics address ("" when metrics are off)."""
        if self.metrics_listen is None:
            return ""
        host, port = parse_address(self.metrics_listen)
        return _address(host, port + index if port else 0)

    def command(self, index: int, parent_fd: int) -> list[str]:
        return [sys.executable, "-m", "gateway.cli", *self.serve_args, "--listen", self.listen,
                "--metrics-listen", self.metrics_of(index), "--worker-index", str(index),
                "--parent-fd", str(parent_fd)]


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    parent_end: socket.socket | None = None
    ports: dict[str, int | None] = field(default_factory=dict)

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def release(self) -> None:
        if self.parent_end is not None:
            self.parent_end.close()
            self.parent_end = None


class Supervisor:
    """The parent of a plan's workers; see the module docstring. `run()` returns the exit code."""

    def __init__(self, plan: WorkerPlan, *, first_pause: float = FIRST_PAUSE) -> None:
        self._plan = plan
        self._first_pause = first_pause
        self._workers = [_Worker(i) for i in range(plan.count)]
        self._stopping = asyncio.Event()
        self._failure: int | None = None  # a restart refused for its configuration

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        try:
            failures = [code for code in await asyncio.gather(*(self._first_start(w) for w in self._workers))
                        if code is not None]
            if failures or self._stopping.is_set():
                self.stop(signal.SIGTERM)
                codes = await asyncio.gather(*(self._ended(w) for w in self._workers))
                return _exit_code([*failures, *codes])
            log.info("workers started", extra={"fields": {
                "workers": self._plan.count, "listen": self._plan.listen,
                "pids": [_pid(w) for w in self._workers],
                "metrics_ports": [w.ports.get("metrics_port") for w in self._workers]}})
            codes = await asyncio.gather(*(self._keep(w) for w in self._workers))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for worker in self._workers:
                worker.release()
        if self._failure is not None:
            return self._failure
        code = _exit_code(codes)
        log.info("workers stopped", extra={"fields": {"exit_code": code}})
        return code

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Drain every worker (`sig` forwarded) and end `run`."""
        if not self._stopping.is_set():
            log.info("stopping the workers", extra={"fields": {"signal": signal.Signals(sig).name}})
        self._stopping.set()
        self._forward(sig)

    def _forward(self, sig: int) -> None:
        for worker in self._workers:
            worker.signal(sig)

    async def _first_start(self, worker: _Worker) -> int | None:
        """`_start`; a worker that cannot start stops the others at once (all or nothing)."""
        code = await self._start(worker)
        if code is not None and not self._stopping.is_set():
            log.error("worker could not start: stopping the others", extra={"fields": {
                "worker": worker.index, **_how(code)}})
            self.stop(signal.SIGTERM)
        return code

    async def _start(self, worker: _Worker) -> int | None:
        """Start `worker` and wait until it serves (None) or ends (its exit code)."""
        parent_end, child_end = socket.socketpair()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *self._plan.command(worker.index, child_end.fileno()), pass_fds=(child_end.fileno(),))
        except OSError:
            parent_end.close()
            raise
        finally:
            child_end.close()
        worker.parent_end = parent_end
        if self._stopping.is_set():
            worker.signal(signal.SIGTERM)  # asked to stop while it was being started
        line = await _read_line(parent_end)
        if line:
            worker.ports = json.loads(line)
            return None
        return await self._ended(worker)

    async def _ended(self, worker: _Worker) -> int:
        """Wait for `worker` to end; its exit code (0 for one never started)."""
        code = await worker.process.wait() if worker.process is not None else 0
        worker.release()
        return code

    async def _keep(self, worker: _Worker) -> int:
        """Restart `worker` whenever it dies, until the workers are asked to stop; the exit code of
        its last process."""
        loop = asyncio.get_running_loop()
        pause = self._first_pause
        while True:
            started = loop.time()
            code = await self._ended(worker)
            if self._stopping.is_set():
                return code
            log.error("worker exited", extra={"fields": {"worker": worker.index, "pid": _pid(worker), **_how(code),
                                                         "restart_in_seconds": pause}})
            if loop.time() - started >= HEALTHY_AFTER:
                pause = self._first_pause
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
                if self._stopping.is_set():
                    return code
                pause = min(pause * 2, LAST_PAUSE)
                failed = await self._start(worker)
                if failed is None:
                    log.info("worker restarted", extra={"fields": {"worker": worker.index, "pid": _pid(worker)}})
                    break
                if failed == ExitCode.CONFIG:
                    log.error("worker refused its configuration: stopping every worker",
                              extra={"fields": {"worker": worker.index}})
                    self._failure = ExitCode.CONFIG
                    self.stop(signal.SIGTERM)
                    return failed
                if self._stopping.is_set():
                    return failed
                log.error("worker could not start again", extra={"fields": {
                    "worker": worker.index, **_how(failed), "restart_in_seconds": pause}})


async def _read_line(sock: socket.socket) -> bytes:
    """The first line a worker writes on its socket; b"" if it closed first (the worker ended)."""
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    data = b""
    while b"\n" not in data:
        try:
            chunk = await loop.sock_recv(sock, 4096)
        except OSError:
            return b""
        if not chunk:
            return b""
        data += chunk
    return data.split(b"\n", 1)[0]


def _pid(worker: _Worker) -> int | None:
    return worker.process.pid if worker.process is not None else None


def _how(code: int) -> dict[str, object]:
    """How a process ended, for a log line: its exit code, or the signal that killed it."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return {"signal": signal.Signals(-code).name}
    return {"exit_code": code}


def _exit_code(codes: Sequence[int]) -> int:
    """The parent's exit code: 0 if every worker stopped as asked, else the first other code
    (a worker killed by a signal: 1)."""
    for code in codes:
        if code not in _STOPPED:
            return code if code > 0 else ExitCode.FAILURE
    return ExitCode.OK


def supervise(config: GatewayConfig, serve_args: Sequence[str]) -> int:
    """Run `config.workers` workers of `serve_args` (the `serve` arguments they share) until
    SIGTERM or SIGINT; the exit code. Raises Unavailable or ConfigError (see `WorkerPlan.of`)."""
    plan = WorkerPlan.of(config, serve_args)
    return asyncio.run(Supervisor(plan).run())
