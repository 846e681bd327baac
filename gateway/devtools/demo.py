"""`transfer-gateway demo`: a gateway on a free loopback port with a temporary SQLite store and
fresh dev PKI, and the two reference platforms (Jiangsu, Zhejiang) taking N cases through to
completion in both directions, opened both ways: half by an application (the outbound notice),
half by the gateway itself from a suspended record and a new enrollment (免申请)."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

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
                automatic=transfers // 2,
            )
        counts = _counts(server.prometheus)
        return result, counts
    finally:
        await server.stop(grace=1.0)


def _counts(prometheus: CollectorRegistry) -> dict[str, float]:
    """What the gateway's own metrics say of the run."""
    samples: dict[str, float] = {}
    for metric in prometheus.collect():
        for sample in metric.samples:
            labels = sample.labels
            if sample.name == "transfer_gateway_messages_total" and labels.get("result") == "accepted":
                samples["messages_accepted"] = samples.get("messages_accepted", 0) + sample.value
            elif sample.name == "transfer_gateway_reviews_total":
                samples["reviewed"] = samples.get("reviewed", 0) + sample.value
            elif sample.name == "transfer_gateway_cases_opened_total":
                key = "opened_automatically" if labels.get("channel") == "automatic" else "opened_by_application"
                samples[key] = samples.get(key, 0) + sample.value
            elif sample.name in ("transfer_gateway_automatic_completion_workdays_sum",
                                 "transfer_gateway_automatic_completion_workdays_count"):
                key = sample.name.rsplit("_", 1)[1]
                samples[f"completion_{key}"] = samples.get(f"completion_{key}", 0) + sample.value
    return samples


def run_demo(*, transfers: int, as_json: bool) -> int:
    """Run the demo; 0 only if every case completed."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="transfer-gateway-demo-") as tmp, \
            Progress.start("cases completed", total=transfers) as progress:
        result, counts = asyncio.run(_demo(transfers, Path(tmp), progress))
    elapsed = time.perf_counter() - started
    finished = counts.get("completion_count", 0)
    summary = {
        "transfers": result.transfers,
        "completed": result.completed,
        "failed": result.failed,
        "seconds": round(elapsed, 3),
        "cases_per_second": round(result.completed / elapsed, 2) if elapsed else 0.0,
        "messages_accepted": int(counts.get("messages_accepted", 0)),
        "reviewed": int(counts.get("reviewed", 0)),
        "by_opening": {
            "application": {
                "transfers": result.transfers - result.automatic,
                "completed": result.completed - result.automatic_completed,
                "opened": int(counts.get("opened_by_application", 0)),
            },
            "automatic": {
                "transfers": result.automatic,
                "completed": result.automatic_completed,
                "opened": int(counts.get("opened_automatically", 0)),
                # Working days from the enrollment's acceptance to completion (Zhejiang's
                # cross-province average to beat: 0.47).
                "enrollment_to_completion_workdays_mean": round(counts.get("completion_sum", 0) / finished, 6)
                if finished else None,
            },
        },
        "errors": result.errors[:10],
    }
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(f"transfer-gateway demo: {result.completed}/{result.transfers} cases completed "
              f"(Jiangsu ⇄ Zhejiang; {result.automatic_completed}/{result.automatic} opened automatically from an "
              f"enrollment), {summary['messages_accepted']} messages accepted, "
              f"{summary['reviewed']} large transfers reviewed, "
              f"{elapsed:.1f} s")
        for error in result.errors[:10]:
            print(f"  error: {error}")
    return 0 if result.completed == result.transfers and result.failed == 0 else 1
