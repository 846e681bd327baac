"""`transfer-gateway serve --workers N`: worker processes behind one port, each a replica on the
PostgreSQL store, under a parent that checks, supervises and forwards signals
(gateway.app.workers). Real processes, real mTLS on loopback, real PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients.scenario import run_cases
from gateway.app.assembly import assemble
from gateway.app.config import GatewayConfig, load_config
from gateway.app.devpki import DevPaths
from gateway.app.failures import ConfigError
from gateway.app.server import serve
from gateway.app.workers import _exit_code
from gateway.store.postgres import PostgresConfig
from mitransfer.v1 import tracking_pb2
from tests.app.test_cli import errors, run, write_config
from tests.app.test_replicas import Cluster, all_acknowledged, check_store, clients_of, schema  # noqa: F401
from tests.conftest import test_config as gateway_config
from tests.support import free_port, free_ports, start_gateway_process, wait_serving

REFUSAL = ("workers = 2 needs a PostgreSQL store: a SQLite file has one writer and is locked by one gateway"
           " process; run one worker on SQLite, or move the store to [store] postgresql (docs/operating.md,"
           " several workers on one host)")


def test_sqlite_with_two_workers_is_refused_by_the_file(pki: DevPaths, tmp_path: Path) -> None:
    path = write_config(tmp_path / "gateway.toml", pki, extra="workers = 2")
    result = run("serve", "--config", str(path))
    assert result.returncode == 78
    assert errors(result)[0] == f"error: {path}: {REFUSAL}"
    assert not (tmp_path / "gateway.db").exists()  # nothing started
    checked = run("check-config", str(path))
    assert checked.returncode == 78 and REFUSAL in checked.stderr


def test_sqlite_with_two_workers_is_refused_on_the_command_line(pki: DevPaths, tmp_path: Path) -> None:
    result = run("serve", "--certs", str(pki.root), "--store", str(tmp_path / "g.db"), "--workers", "2")
    assert result.returncode == 78
    assert errors(result)[0] == f"error: dev layout {pki.root}: {REFUSAL}"


def test_check_config_shows_the_workers_and_their_metrics_ports(pki: DevPaths, tmp_path: Path) -> None:
    path = write_config(tmp_path / "gateway.toml", pki, metrics="127.0.0.1:9300", extra="workers = 3",
                        store='postgresql = "postgresql://gateway@db.invalid/gateway"')
    result = run("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert ("  listen 127.0.0.1:0; metrics 127.0.0.1:9300; 3 worker processes sharing the listen address, their"
            " metrics on ports 9300 to 9302") in result.stdout.splitlines()


def test_workers_are_bounded_and_their_metrics_ports_must_exist(pki: DevPaths, tmp_path: Path) -> None:
    config = GatewayConfig.dev(pki.root, store=PostgresConfig(url="postgresql://db.invalid/g"))
    with pytest.raises(ValueError, match="need the ports 65535 to 65536, beyond 65535"):
        replace(config, workers=2, metrics_listen="127.0.0.1:65535")
    assert replace(config, workers=64, metrics_listen="127.0.0.1:0").workers == 64  # each picks its own port
    for workers, problem in (("0", "must be at least 1, got 0"), ("65", "must be at most 64, got 65")):
        path = write_config(tmp_path / "gateway.toml", pki, extra=f"workers = {workers}",
                            store='postgresql = "postgresql://db.invalid/g"')
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert caught.value.problems == (f"{path}: workers: {problem}",)


def test_workers_that_cannot_start_end_the_start_up_with_their_exit_code(pki: DevPaths, tmp_path: Path) -> None:
    """All or nothing, as one process's start is: a worker that cannot reach its store (69) stops
    the others, and the parent exits with its code; the worker said why on its own `error:` line."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test"  # nothing listens there
    result = run("serve", "--config", str(write_config(tmp_path / "gateway.toml", pki)), "--store", url,
                 "--workers", "2", "--log-level", "INFO")
    assert result.returncode == 69, result.stderr
    lines = errors(result)
    assert lines and all(line.startswith("error: cannot connect to PostgreSQL: ") for line in lines), lines
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "worker could not start: stopping the others" and e["exit_code"] == 69
               for e in events), events
    assert not any(e["event"] == "workers started" for e in events)


@pytest.fixture
def collector_restored() -> Iterator[None]:
    """`serve` tunes the process's garbage collector (`tune_collector`): undo it for the next tests."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


async def test_a_worker_drains_when_its_parent_is_gone(pki: DevPaths, tmp_path: Path, collector_restored: None) -> None:
    """A worker's end of its parent's socket: closed before the worker could say it serves, or
    while it serves, the worker drains and `serve` returns (the store closed, its lock released)."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    ours.close()  # the parent ended while the worker was starting
    await asyncio.wait_for(serve(assemble(gateway_config(pki, tmp_path / "g.db")), theirs), 30)

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    serving = asyncio.create_task(serve(assemble(gateway_config(pki, tmp_path / "g.db")), theirs))
    try:
        ready = json.loads(await asyncio.wait_for(loop.sock_recv(ours, 4096), 30))
        assert ready["port"] > 0 and ready["metrics_port"] > 0
    finally:
        ours.close()  # the parent ended while the worker served
        await asyncio.wait_for(serving, 30)


@pytest.mark.parametrize(("codes", "expected"), [
    ([0, 0], 0),                                  # both drained
    ([0, -signal.SIGTERM, 130], 0),               # stopped before they served
    ([0, 69], 69),                                # one could not reach its store
    ([78, 0], 78),                                # one refused its configuration
    ([0, -signal.SIGKILL], 1),                    # killed
])
def test_the_parents_exit_code(codes: list[int], expected: int) -> None:
    assert _exit_code(codes) == expected


def log_events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.startswith("{")]


async def until(what: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not what():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


def counted(metrics_port: int, name: str, **labels: str) -> float:
    """A counter's samples with these labels, added up, from one worker's own /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode("utf-8")
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def submits_served(metrics_port: int) -> float:
    """Submit calls a worker answered."""
    return counted(metrics_port, "grpc_server_handled_total", grpc_method="Submit")


def start_workers(pki: DevPaths, tmp_path: Path, store: tuple[str, str], port: int, metrics: int,
                  log: Path) -> subprocess.Popen[bytes]:
    """`serve --workers 2` on one port; connections are asked to close every second or so (clients
    reconnect, and the kernel hands each new connection to either worker)."""
    url, name = store
    return start_gateway_process(
        pki, tmp_path / "gateway.toml", port, log, f'postgresql = "{url}"\nschema = "{name}"\npool_max = 4',
        extra="monitor_interval_seconds = 0.2\n[connections]\nmax_connection_age_seconds = 1\n"
              "max_connection_age_grace_seconds = 1",
        args=("--workers", "2", "--metrics-listen", f"127.0.0.1:{metrics}"))


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie no longer does)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def started(log: Path) -> dict[str, Any] | None:
    return next((e for e in log_events(log) if e["event"] == "workers started"), None)


@pytest.mark.slow
async def test_two_workers_behind_one_port_complete_every_case_and_drain_on_sigterm_and_reload_on_sighup(
    pki: DevPaths, tmp_path: Path, schema: tuple[str, str], processes: list[subprocess.Popen[bytes]],  # noqa: F811
    clients_of: Any,  # noqa: F811
) -> None:
    port, metrics, log = free_port(), free_ports(2), tmp_path / "workers.log"
    parent = start_workers(pki, tmp_path, schema, port, metrics, log)
    processes.append(parent)
    await until(lambda: started(log) is not None)
    await wait_serving(pki, port)
    js, zj, reviewer = await clients_of(f"127.0.0.1:{port}")
    # Runs of 40 cases until both workers took Submits: each counts those it answered on its own
    # /metrics (port + i). The kernel hands each new connection to either worker, and connections
    # are recycled every second, but a run can be over before the first recycling: both platforms'
    # connections on one worker is one run in four then.
    runs, served = 0, [0.0, 0.0]
    while not all(served) and runs < 8:
        result = await run_cases(js, zj, transfers=40, a_agencies=("320100", "320500"),
                                 b_agencies=("330100", "330200"), reviewer=reviewer, timeout=120, automatic=10,
                                 seed=runs)
        assert (result.completed, result.failed) == (40, 0), result.errors
        runs += 1
        served = [submits_served(metrics + i) for i in range(2)]
    assert all(served), served
    cluster = Cluster(pki, *schema, [port], [parent])
    await all_acknowledged(cluster, [js, zj])
    check_store(cluster)
    completed = tracking_pb2.CASE_STATE_COMPLETED
    assert cluster.sql(f"SELECT COUNT(*) FROM cases WHERE state = {completed}") == [(40 * runs,)]

    # Each worker is a replica of its own in the store: its write-probe row.
    probes = sorted(str(r[0]).rpartition(" ")[2] for r in cluster.sql("SELECT replica FROM write_probes"))
    assert probes == ["0", "1"]

    # SIGHUP reaches every worker: each re-reads the registry file (the same version: unchanged).
    parent.send_signal(signal.SIGHUP)
    await until(lambda: all(counted(metrics + i, "transfer_gateway_registry_reloads_total", result="unchanged") == 1
                            for i in range(2)))

    pids = started(log)["pids"]  # type: ignore[index]
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == 0
    events = log_events(log)
    assert sorted(e["worker"] for e in events if e["event"] == "stopped") == [0, 1]  # each drained to its end
    assert [e["exit_code"] for e in events if e["event"] == "workers stopped"] == [0]
    drain = events[next(i for i, e in enumerate(events) if e["event"] == "stopping the workers"):]
    assert not any(e["level"] == "error" for e in drain), [e for e in drain if e["level"] == "error"]
    assert not any(alive(pid) for pid in pids)


@pytest.mark.slow
async def test_a_dead_worker_is_started_again_and_the_port_is_shared_with_no_other_gateway(
    pki: DevPaths, tmp_path: Path, schema: tuple[str, str], processes: list[subprocess.Popen[bytes]],  # noqa: F811
) -> None:
    port, metrics, log = free_port(), free_ports(2), tmp_path / "workers.log"
    parent = start_workers(pki, tmp_path, schema, port, metrics, log)
    processes.append(parent)
    await until(lambda: started(log) is not None)
    first, second = started(log)["pids"]  # type: ignore[index]

    os.kill(first, signal.SIGKILL)
    await until(lambda: any(e["event"] == "worker restarted" for e in log_events(log)))
    [exited] = [e for e in log_events(log) if e["event"] == "worker exited"]
    assert (exited["worker"], exited["pid"], exited["signal"]) == (0, first, "SIGKILL")
    await wait_serving(pki, port)
    assert submits_served(metrics) == 0  # worker 0 again, a new process with its metrics port

    # Another gateway on the port is refused, with one worker or several (SO_REUSEPORT is only
    # ever on between one parent's workers, and the parent probes the port first).
    url = schema[0]
    for workers in ("1", "2"):
        other = run("serve", "--certs", str(pki.root), "--listen", f"127.0.0.1:{port}", "--metrics-listen", "",
                    "--store", url, "--workers", workers)
        assert other.returncode == 69, other.stderr
        assert errors(other)[0] == f"error: listen 127.0.0.1:{port}: address already in use"

    # The parent killed outright: its workers see its socket close and drain by themselves.
    restarted = next(e["pid"] for e in log_events(log) if e["event"] == "worker restarted")
    parent.kill()
    parent.wait(10)
    await until(lambda: not alive(restarted) and not alive(second))
    gone = [e for e in log_events(log) if e["event"] == "the parent process is gone: draining"]
    assert sorted(e["worker"] for e in gone) == [0, 1]
    assert sorted(e["worker"] for e in log_events(log) if e["event"] == "stopped") == [0, 1]
