"""The isolation phase: what one platform's flood costs another, and what a burst of the largest
messages costs in memory. Each on a gateway process of its own, with a fresh store and every limit
as deployed (`"limits": "deployed"`: the throughput phases lift the request rate).

1. **A victim beside a flood.** Zhejiang submits valid notices at a steady, modest rate (open
   loop: one every 1/rate s, whether or not the one before has been answered), first alone, then
   while Jiangsu, from a process of its own (so that the victim's latencies are the gateway's
   doing, not the load generator's), keeps 64 valid submissions in flight, its limit of calls in
   flight. `isolation_victim_p99_vs_alone` is Zhejiang's p99 under the flood ÷ its p99 alone.
   The gateway paces the flood to Jiangsu's rate and serves both in turns. For reference, the
   same flood against a gateway whose rate limit is lifted (`unpaced`): served in turns, but as
   fast as the one event loop goes, which then queues every other call's network steps too.
2. **A burst of the largest messages.** Jiangsu sends 250 SignedMessages of the largest size
   Submit takes (`[messages] max_message_bytes`), with bad signatures, all at once over four
   channels, three times. `flood_rss_vs_idle` is the process's peak RSS (VmHWM) ÷ its RSS when
   idle after a few ordinary calls. What exceeds its calls in flight is refused at once
   (RESOURCE_EXHAUSTED); the rest is refused for its signature (UNAUTHENTICATED).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from clients.builders import EMPLOYEE
from clients.scenario import CasePlan, outbound_messages
from clients.signing import Signer
from gateway.app.devpki import DEV_PLATFORMS, DevPaths
from gateway.app.progress import Progress
from gateway.core.limits import MessageLimits
from gateway.devtools.bench import servers
from gateway.devtools.bench.child import SUBMIT_METHOD
from gateway.devtools.bench.flooder import flooding
from gateway.devtools.bench.load import CALL_TIMEOUT, percentile
from gateway.devtools.bench.stores import BenchStore
from gateway.devtools.bench.targets import channel
from mitransfer.v1 import envelope_pb2

FLOODER, VICTIM = "jiangsu", "zhejiang"
VICTIM_RATE = 50.0    # the victim's calls per second: modest beside the ~800/s a gateway takes
FLOOD_IN_FLIGHT = 64  # the flood's calls in flight: a platform's limit, so all are admitted
FLOOD_RATE = 2500.0   # notices pre-signed for this rate; a faster gateway runs the flood dry (reported)
BURST = 250           # messages of the largest size sent at once
BURST_ROUNDS = 3
BURST_CHANNELS = 4


@dataclass
class Calls:
    """Latencies (seconds) and refusals of a series of calls."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    async def call(self, stub: Any, request: bytes) -> None:
        started = time.perf_counter()
        try:
            await stub(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            self.errors[err.code().name] += 1
            return
        self.latencies.append(time.perf_counter() - started)

    def figures(self, seconds: float) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {"requests": len(ordered), "seconds": round(seconds, 3),
                "req_per_s": round(len(ordered) / seconds, 1) if seconds > 0 else math.nan,
                "p50_ms": round(percentile(ordered, 50) * 1e3, 3), "p99_ms": round(percentile(ordered, 99) * 1e3, 3),
                "errors": sum(self.errors.values()), "error_codes": dict(self.errors)}


def notices(pki: DevPaths, platform: str, count: int, first_seed: int) -> list[bytes]:
    """`count` valid outbound notices of `platform`, each opening a case of its own (a person each),
    over the platform's agencies towards the other platform's."""
    mine = next(p for p in DEV_PLATFORMS if p.id == platform)
    other = next(p for p in DEV_PLATFORMS if p.id in (FLOODER, VICTIM) and p.id != platform)
    signer = Signer.from_pem(mine.key_id, pki.platform_signing_key(platform).read_bytes())
    signed = []
    for i in range(count):
        plan = CasePlan.synthetic(mine.agency_codes[i % len(mine.agency_codes)],
                                  other.agency_codes[i % len(other.agency_codes)], insurance_type=EMPLOYEE,
                                  balance_fen=100, seed=first_seed + i)
        notice = outbound_messages(plan)[0]
        signed.append(signer.sign(envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE, notice).SerializeToString())
    return signed


async def steady(stub: Any, requests: Iterator[bytes], rate: float, seconds: float) -> Calls:
    """Calls at `rate` per second for `seconds`, each sent on time whatever the ones before it."""
    calls = Calls()
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent: list[asyncio.Task[None]] = []
    for i in range(max(1, int(rate * seconds))):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        request = next(requests, None)
        if request is None:
            break
        sent.append(asyncio.create_task(calls.call(stub, request)))
    await asyncio.gather(*sent)
    return calls


class Flood:
    """`FLOOD_IN_FLIGHT` workers, each with one call in flight, through a shared pool of requests,
    until stopped or the pool runs dry (`gateway.devtools.bench.flooder` runs one)."""

    def __init__(self, stubs: Sequence[Any], requests: Sequence[bytes]) -> None:
        self.calls = Calls()
        self.ran_dry = False
        self._stubs = stubs
        self._pending = iter(requests)
        self._running = True
        self._workers = [asyncio.create_task(self._work(i)) for i in range(FLOOD_IN_FLIGHT)]
        self._started = time.perf_counter()
        self.seconds = 0.0

    async def _work(self, index: int) -> None:
        stub = self._stubs[index % len(self._stubs)]
        while self._running:
            request = next(self._pending, None)
            if request is None:
                self.ran_dry = True
                return
            await self.calls.call(stub, request)

    async def stop(self) -> None:
        self._running = False
        self.seconds = time.perf_counter() - self._started
        await asyncio.gather(*self._workers)


async def _flooded(pki: DevPaths, workdir: Path, spec: dict[str, Any], name: str, *, warmup: float, window: float,
                   victim: Iterator[bytes], first_seed: int, alone: bool) -> dict[str, Any]:
    """On a fresh gateway of `spec`: the victim alone (if `alone`), then beside the flood."""
    figures: dict[str, Any] = {}
    async with servers.running(spec, workdir / f"gateway-{name}.log") as server:
        flooder = {"pki": str(pki.root), "port": server.port, "platform": FLOODER, "first_seed": first_seed,
                   "count": math.ceil(FLOOD_RATE * (warmup + window))}
        async with flooding(flooder, workdir / f"flooder-{name}.log") as flood:
            victim_channel = channel(pki, VICTIM, server.port)
            try:
                stub = victim_channel.unary_unary(SUBMIT_METHOD)
                await steady(stub, victim, VICTIM_RATE, warmup)  # connection and caches warm
                if alone:
                    figures["victim_alone"] = (await steady(stub, victim, VICTIM_RATE, window)).figures(window)
                await flood.start()
                await asyncio.sleep(warmup)
                figures["victim_flooded"] = (await steady(stub, victim, VICTIM_RATE, window)).figures(window)
                figures["flood"] = {**await flood.stop(), "in_flight": FLOOD_IN_FLIGHT}
            finally:
                await victim_channel.close()
    return figures


async def victim_and_flood(pki: DevPaths, workdir: Path, store: BenchStore, spec: dict[str, Any], *,
                           warmup: float, window: float) -> dict[str, Any]:
    """Part 1 (see the module docstring): paced as deployed, and unpaced for reference."""
    victim = iter(notices(pki, VICTIM, math.ceil(VICTIM_RATE * (3 * window + 2 * warmup)) + 10,
                          first_seed=4_000_000))
    deployed = {**spec, **store.fresh("isolation"), "limits": "deployed"}
    paced = await _flooded(pki, workdir, deployed, "isolation", warmup=warmup, window=window, victim=victim,
                           first_seed=3_000_000, alone=True)
    unpaced_spec = {**spec, **store.fresh("isolation-unpaced")}
    unpaced = await _flooded(pki, workdir, unpaced_spec, "isolation-unpaced", warmup=warmup, window=window,
                             victim=victim, first_seed=6_000_000, alone=False)
    return {"victim_rate_per_s": VICTIM_RATE, **paced,
            "unpaced": {"victim_flooded": unpaced["victim_flooded"], "flood": unpaced["flood"]}}


def bad_signatures(pki: DevPaths, size: int) -> bytes:
    """A SignedMessage of `size` bytes from the flooder whose signature does not verify."""
    key_id = next(p.key_id for p in DEV_PLATFORMS if p.id == FLOODER)
    empty = envelope_pb2.SignedMessage(kind=envelope_pb2.MESSAGE_KIND_OUTBOUND_NOTICE, key_id=key_id,
                                       signature=b"\x00" * 64, payload=b"")
    room = size - len(empty.SerializeToString()) - 4  # the payload's tag and length take a few bytes
    signed = envelope_pb2.SignedMessage(kind=empty.kind, key_id=key_id, signature=empty.signature,
                                        payload=b"\x0a" * room)
    return signed.SerializeToString()


async def burst(pki: DevPaths, workdir: Path, store: BenchStore, spec: dict[str, Any]) -> dict[str, Any]:
    """Part 2 (see the module docstring)."""
    size = MessageLimits().max_message_bytes
    largest = bad_signatures(pki, size)
    warm = iter(notices(pki, VICTIM, 20, first_seed=5_000_000))
    deployed = {**spec, **store.fresh("burst"), "limits": "deployed"}
    async with servers.running(deployed, workdir / "gateway-burst.log") as server:
        channels = [channel(pki, FLOODER, server.port) for _ in range(BURST_CHANNELS)]
        victim_channel = channel(pki, VICTIM, server.port)
        answers: Counter[str] = Counter()
        try:
            await steady(victim_channel.unary_unary(SUBMIT_METHOD), warm, 20.0, 1.0)
            stubs = [c.unary_unary(SUBMIT_METHOD) for c in channels]
            await asyncio.gather(*(stub(b"", timeout=CALL_TIMEOUT) for stub in stubs), return_exceptions=True)
            await asyncio.sleep(0.5)
            idle = server.rss_bytes()
            for _ in range(BURST_ROUNDS):
                calls = Calls()
                await asyncio.gather(*(calls.call(stubs[i % len(stubs)], largest) for i in range(BURST)))
                answers.update(calls.errors)
                answers.update({"OK": len(calls.latencies)} if calls.latencies else {})  # none should be
            peak = server.peak_rss_bytes()
            after = server.rss_bytes()
        finally:
            for c in (*channels, victim_channel):
                await c.close()
    return {"messages": BURST, "rounds": BURST_ROUNDS, "message_bytes": len(largest), "channels": BURST_CHANNELS,
            "idle_rss_mib": round(idle / 2**20, 1), "peak_rss_mib": round(peak / 2**20, 1),
            "after_rss_mib": round(after / 2**20, 1), "answers": dict(answers), "_idle": idle, "_peak": peak}


async def measure_isolation(pki: DevPaths, workdir: Path, store: BenchStore, spec: dict[str, Any], *,
                            warmup: float, window: float) -> dict[str, Any]:
    """Both parts; the figures of `result["isolation"]`."""
    with Progress.start("isolation: a victim beside a flood"):
        victim = await victim_and_flood(pki, workdir, store, spec, warmup=warmup, window=window)
    with Progress.start("isolation: bursts of the largest messages"):
        memory = await burst(pki, workdir, store, spec)
    return {**victim, "burst": memory}
