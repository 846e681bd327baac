"""`transfer-gateway demo`: a gateway on a free loopback port with a temporary SQLite store and
fresh dev PKI, and the two reference platforms (Jiangsu, Zhejiang) taking N cases through to
completion in both directions."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

from clients.platform import PlatformClient, PlatformConfig
from clients.reviewer import OperatorConfig, ReviewerClient
from clients.scenario import ScenarioResult, run_cases
from gateway.app.assembly import assemble
from gateway.app.config import GatewayConfig
from gateway.app.devpki import DEV_PLATFORMS, write_dev_pki
from gateway.app.progress import Progress


def _agencies(platform: str) -> tuple[str, ...]:
    return next(p.agency_codes for p in DEV_PLATFORMS if p.id == platform)


async def _demo(transfers: int, workdir: Path, progress: Progress) -> tuple[ScenarioResult, dict[str, float]]:
    pki = write_dev_pki(workdir / "pki")
    server = assemble(GatewayConfig.dev(pki.root, workdir / "gateway.db", listen="127.0.0.1:0",
                                             metrics_listen=None))
    await server.start()
    try:
        address = f"127.0.0.1:{server.port}"
        async with (
            PlatformClient.connect(PlatformConfig.dev("jiangsu", address, pki.root)) as jiangsu,
            PlatformClient.connect(PlatformConfig.dev("zhejiang", address, pki.root)) as zhejiang,
            ReviewerClient.connect(OperatorConfig.dev("reviewer", address, pki.root)) as reviewer,
        ):
            result = await run_cases(
                jiangsu, zhejiang, transfers=transfers,
                a_agencies=_agencies("jiangsu"), b_agencies=_agencies("zhejiang"),
                on_progress=progress.update, timeout=max(60.0, transfers * 2.0), reviewer=reviewer,
            )
        metric = server.prometheus.get_sample_value
        counts = {
            "messages_accepted": sum(
                metric("transfer_gateway_messages_total", {"kind": k, "result": "accepted", "reason": ""}) or 0
                for k in ("transfer_request", "outbound_notice", "information_table", "fund_transfer",
                          "acknowledgement", "withdrawal")
            ),
            "reviewed": sum(metric("transfer_gateway_reviews_total", {"decision": d}) or 0
                            for d in ("approved", "rejected")),
        }
        return result, counts
    finally:
        await server.stop(grace=1.0)


def run_demo(*, transfers: int, as_json: bool) -> int:
    """Run the demo; 0 only if every case completed."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="transfer-gateway-demo-") as tmp, \
            Progress.start("cases completed", total=transfers) as progress:
        result, counts = asyncio.run(_demo(transfers, Path(tmp), progress))
    elapsed = time.perf_counter() - started
    summary = {
        "transfers": result.transfers,
        "completed": result.completed,
        "failed": result.failed,
        "seconds": round(elapsed, 3),
        "cases_per_second": round(result.completed / elapsed, 2) if elapsed else 0.0,
        "messages_accepted": int(counts["messages_accepted"]),
        "reviewed": int(counts["reviewed"]),
        "errors": result.errors[:10],
    }
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(f"transfer-gateway demo: {result.completed}/{result.transfers} cases completed "
              f"(Jiangsu ⇄ Zhejiang), {summary['messages_accepted']} messages accepted, "
              f"{summary['reviewed']} large transfers reviewed, "
              f"{elapsed:.1f} s")
        for error in result.errors[:10]:
            print(f"  error: {error}")
    return 0 if result.completed == result.transfers and result.failed == 0 else 1
