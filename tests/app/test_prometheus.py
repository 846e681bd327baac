"""The operator's view, proven with a real Prometheus (Debian's `prometheus` package).

A gateway runs cases between two reference platforms while Prometheus scrapes it every second
with the alert rules of deploy/prometheus loaded; then every alert expression must parse and be
evaluated without error, and every panel of the Grafana dashboard must return data. The same
again with `serve --workers 2` on PostgreSQL, each worker a target of its own labelled with its
index, as deploy/prometheus/prometheus.yml says to scrape them. promtool checks the configuration,
the /metrics output and the rules' unit tests.

Outside CI (no CI variable) a machine without Prometheus skips these tests, loudly; in CI they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from clients.platform import PlatformClient, PlatformConfig
from clients.reviewer import OperatorConfig, ReviewerClient
from clients.scenario import run_cases
from gateway.app.assembly import assemble
from gateway.app.devpki import DevPaths
from tests.conftest import test_config as gateway_config
from tests.support import drop_schema, free_port, free_ports, postgres_url, start_gateway_process, wait_serving

pytestmark = pytest.mark.slow  # a real Prometheus scraping for seconds

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
DASHBOARD = DEPLOY / "grafana" / "transfer-gateway.json"
# What Grafana would put in for its variables, with windows that fit a 1 s scrape interval.
GRAFANA_VARIABLES = {"__rate_interval": "30s", "__interval": "2s", "__range": "2m", "__range_s": "120"}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (Debian package `prometheus`; bash .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip("SKIPPED, NOT TESTED: " + message)
    return found


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def panel_targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expression) of every target, rows included."""
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner["title"], target["expr"]


def substitute(expr: str) -> str:
    """Grafana's variables: time windows as above, every template variable as "all" (.*)."""
    return re.sub(r"\$\{?(\w+)(?::\w+)?\}?", lambda m: GRAFANA_VARIABLES.get(m.group(1), ".*"), expr)


def rule_expressions() -> Iterator[tuple[str, str]]:
    for path in RULES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                yield rule.get("alert") or rule["record"], rule["expr"]


def test_promtool_checks_the_config_and_runs_every_rule_test() -> None:
    promtool = tool("promtool")
    config = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert config.returncode == 0, config.stdout + config.stderr
    tests = sorted(str(p) for p in (DEPLOY / "prometheus" / "tests").glob("*.yml"))
    assert tests
    run = subprocess.run([promtool, "test", "rules", *tests], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_has_a_runbook_and_a_rule_test() -> None:
    tested = {alert["alertname"]
              for path in (DEPLOY / "prometheus" / "tests").glob("*.yml")
              for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]
              for alert in case.get("alert_rule_test", [])}
    alerts = [rule for path in RULES for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
              for rule in group["rules"] if "alert" in rule]
    assert len(alerts) >= 7
    for rule in alerts:
        assert rule["annotations"].get("runbook"), rule["alert"]
        assert rule["alert"] in tested, f"{rule['alert']} has no promtool test"


@dataclass
class Scraped:
    prometheus: str  # base URL of the API
    metrics_url: str
    workers: int     # gateway processes scraped: 1, or a `serve --workers` host's

    def query(self, expr: str) -> dict[str, Any]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            return dict(http_json(url))
        except urllib.error.HTTPError as err:  # 400: the expression does not parse
            return dict(json.load(err))


@dataclass
class Scrapes:
    """What Prometheus scrapes: the gRPC address platforms call, each process's /metrics port
    with its target labels, and what brings the gauges up to date after a run."""

    address: str
    metrics: list[tuple[int, dict[str, str]]]
    settle: Callable[[], Awaitable[None]]


@asynccontextmanager
async def one_gateway(pki: DevPaths, tmp_path: Path) -> AsyncIterator[Scrapes]:
    server = assemble(gateway_config(pki, tmp_path / "g.db"))
    await server.start()

    async def settle() -> None:
        await server.monitor.refresh_once()
        await server.keeper.keep_once()

    try:
        yield Scrapes(f"127.0.0.1:{server.port}", [(server.metrics_port or 0, {})], settle)
    finally:
        await server.stop(grace=0.5)


@asynccontextmanager
async def two_workers(pki: DevPaths, tmp_path: Path) -> AsyncIterator[Scrapes]:
    """`serve --workers 2` on a PostgreSQL schema of its own; each worker a target labelled with its
    index, as deploy/prometheus/prometheus.yml says."""
    url, schema = postgres_url(), f"prometheus_{uuid.uuid4().hex[:12]}"
    port, metrics = free_port(), free_ports(2)
    process = start_gateway_process(pki, tmp_path / "gateway.toml", port, tmp_path / "workers.log",
                                    f'postgresql = "{url}"\nschema = "{schema}"\npool_max = 4',
                                    extra="monitor_interval_seconds = 0.2",
                                    args=("--workers", "2", "--metrics-listen", f"127.0.0.1:{metrics}"))
    try:
        await wait_serving(pki, port)

        async def settle() -> None:
            await asyncio.sleep(1)  # a few monitor rounds in each worker

        yield Scrapes(f"127.0.0.1:{port}", [(metrics + i, {"worker": str(i)}) for i in range(2)], settle)
    finally:
        process.terminate()
        process.wait(30)
        drop_schema(url, schema)


@pytest.fixture(params=["one process", "two workers"])
async def scraped(request: pytest.FixtureRequest, pki: DevPaths, tmp_path: Path) -> AsyncIterator[Scraped]:
    prometheus_bin = tool("prometheus")
    gateway = one_gateway if request.param == "one process" else two_workers
    async with gateway(pki, tmp_path) as scrapes:
        web = f"127.0.0.1:{free_port()}"
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in RULES],
            "scrape_configs": [{"job_name": "transfer-gateway", "static_configs": [
                {"targets": [f"127.0.0.1:{port}"], **({"labels": labels} if labels else {})}
                for port, labels in scrapes.metrics]}],
        }), encoding="utf-8")
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address={web}"], stdout=log, stderr=subprocess.STDOUT)
        base = f"http://{web}"
        try:
            async with AsyncExitStack() as stack:
                js, zj = [await stack.enter_async_context(PlatformClient.connect(
                    PlatformConfig.dev(p, scrapes.address, pki.root))) for p in ("jiangsu", "zhejiang")]
                reviewer = await stack.enter_async_context(
                    ReviewerClient.connect(OperatorConfig.dev("reviewer", scrapes.address, pki.root)))
                await _until(lambda: _up(base, len(scrapes.metrics)), "Prometheus scraping the gateway", proc,
                             tmp_path)
                result = await run_cases(js, zj, transfers=30, a_agencies=("320100", "320500"),
                                         b_agencies=("330100", "330200"), reviewer=reviewer, timeout=60, automatic=10)
                assert result.completed == 30 and result.automatic_completed == 10, result.errors
            await scrapes.settle()
            await asyncio.sleep(4)  # a few more scrapes, so rates over the run have two points each side
            yield Scraped(base, f"http://127.0.0.1:{scrapes.metrics[0][0]}/metrics", len(scrapes.metrics))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def _up(base: str, targets: int) -> bool:
    try:
        reply = http_json(f"{base}/api/v1/query?query=" + urllib.parse.quote('up{job="transfer-gateway"}'))
    except OSError:
        return False
    return sum(r["value"][1] == "1" for r in reply["data"]["result"]) == targets


async def _until(check: Any, what: str, proc: subprocess.Popen[bytes], tmp_path: Path, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(check):
        if proc.poll() is not None or loop.time() > deadline:
            pytest.fail(f"waiting for {what}: {(tmp_path / 'prometheus.log').read_text(errors='replace')[-3000:]}")
        await asyncio.sleep(0.25)


async def test_prometheus_evaluates_every_rule_and_every_panel_returns_data(scraped: Scraped) -> None:
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(scraped.metrics_url, timeout=10).read())
    check = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert b"transfer_gateway_stages_finished{" in text and b"transfer_gateway_requests_escalated" in text

    unparsed = []
    for name, expr in rule_expressions():
        reply = await asyncio.to_thread(scraped.query, expr)
        if reply["status"] != "success":
            unparsed.append(f"{name}: {reply.get('error')}")
    assert not unparsed, unparsed
    groups = (await asyncio.to_thread(http_json, f"{scraped.prometheus}/api/v1/rules"))["data"]["groups"]
    evaluated = {rule["name"]: rule["health"] for g in groups for rule in g["rules"]}
    assert evaluated and all(health == "ok" for health in evaluated.values()), evaluated

    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    targets = list(panel_targets(dashboard))
    assert len(targets) >= 10
    empty = []
    for title, expr in targets:
        reply = await asyncio.to_thread(scraped.query, substitute(expr))
        if reply["status"] != "success":
            empty.append(f"{title}: does not parse: {reply.get('error')}")
        elif not reply["data"]["result"]:
            empty.append(f"{title}: no data for {substitute(expr)}")
    assert not empty, "\n".join(empty)


@pytest.mark.parametrize("scraped", ["two workers"], indirect=True)
async def test_each_worker_is_a_target_and_the_stores_gauges_read_alike(scraped: Scraped) -> None:
    """With `serve --workers 2`, Prometheus sees two targets, each answering calls (counters added
    with sum()), and the gauges read from the store the same on both (taken with max(), never
    added up, by the rules and the dashboard)."""
    up = (await asyncio.to_thread(scraped.query, 'up{job="transfer-gateway"}'))["data"]["result"]
    assert sorted(r["metric"]["worker"] for r in up if r["value"][1] == "1") == ["0", "1"]
    calls = (await asyncio.to_thread(scraped.query, "sum by (worker) (grpc_server_handled_total)"))["data"]["result"]
    assert sorted(r["metric"]["worker"] for r in calls if float(r["value"][1]) > 0) == ["0", "1"]
    for gauge in ('transfer_gateway_funds_fen{status="sent"}', 'transfer_gateway_cases_open{stage="total"}',
                  "transfer_gateway_calendar_version"):
        spread = (await asyncio.to_thread(scraped.query, f"count by (worker) ({gauge})"))["data"]["result"]
        assert len(spread) == 2, gauge
        series = "without (worker, instance)"  # each series of the gauge, across the workers
        same = (await asyncio.to_thread(scraped.query, f"max {series} ({gauge}) - min {series} ({gauge})")
                )["data"]["result"]
        assert same and all(float(r["value"][1]) == 0 for r in same), (gauge, same)
