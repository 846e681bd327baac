"""What the load generator drives: one server process and the calls its workers make.

- `EchoTarget`: the bare echo server, sent payloads of the typical signed message's size;
- `SubmitTarget`: a gateway, sent pre-signed cases in order (each message needs the one before
  it); it keeps the fund transfers it got accepted, and a sample of receipts to check later;
- `ReplayTarget`: a gateway, sent the same already-accepted fund transfers again and again; it
  counts answers that are not byte for byte the original receipt;
- `ReplicaTargets`: gateway replicas on one shared store, sent one stream of cases, each case
  whole to one replica, the workers split evenly between them (as a load balancer would);
- `WorkersTarget`: `serve --workers N`, sent cases as a `SubmitTarget` is, on its one port: the
  kernel hands each of its channels' connections to one worker.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from clients.errors import VerificationError
from clients.signing import KeyRing
from gateway.app.devpki import DevPaths
from gateway.devtools.bench.child import ECHO_METHOD, SUBMIT_METHOD
from gateway.devtools.bench.load import Meter, Window, timed_call
from gateway.devtools.bench.servers import CpuReading, ServerProcess
from gateway.devtools.bench.workload import FUND_TRANSFER, PLATFORMS, SignedCase, Submission
from mitransfer.v1 import envelope_pb2

_RECEIPTS_SAMPLED = 200


def channel(pki: DevPaths, platform: str, port: int) -> Any:
    """An mTLS channel as `platform`, with a connection of its own (no subchannel sharing)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(), private_key=pki.platform_key(platform).read_bytes(),
        certificate_chain=pki.platform_cert(platform).read_bytes())
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=[("grpc.use_local_subchannel_pool", 1)])


@dataclass(frozen=True)
class CpuReadings:
    """The CPU readings of the processes a target loads, taken at one moment."""

    readings: tuple[CpuReading, ...]

    def since(self, earlier: CpuReadings) -> dict[str, float]:
        """Their CPU time from `earlier` to now, by kind of thread, added up over the processes."""
        parts: dict[str, float] = {}
        for now, then in zip(self.readings, earlier.readings, strict=True):
            for kind, seconds in now.since(then).items():
                parts[kind] = parts.get(kind, 0.0) + seconds
        return parts


class Target(ABC):
    """A server under load; its measured windows accumulate in `windows`."""

    def __init__(self, name: str, server: ServerProcess, channels: list[Any]) -> None:
        self.name = name
        self.server = server
        self.windows: list[Window] = []
        self._channels = channels

    @abstractmethod
    async def worker(self, index: int, meter: Meter) -> None:
        """Make calls, one at a time, while `meter.running`; worker `index` of the concurrency."""

    def measured(self) -> Window:
        return Window.combine(self.windows)

    def cpu_reading(self) -> CpuReadings:
        """The CPU time so far of the process(es) this target loads (see ServerProcess.cpu_reading)."""
        return CpuReadings((self.server.cpu_reading(),))

    def log_cpu_seconds(self) -> float:
        """The gateway's meter of its transparency log's CPU so far (NaN for other servers)."""
        return self.server.log_cpu_seconds()

    async def close(self) -> None:
        for c in self._channels:
            await c.close()


class EchoTarget(Target):
    def __init__(self, server: ServerProcess, pki: DevPaths, channels: int, payload: bytes) -> None:
        opened = [channel(pki, PLATFORMS[0], server.port) for _ in range(channels)]
        super().__init__("echo", server, opened)
        self._calls = [c.unary_unary(ECHO_METHOD) for c in opened]
        self._payload = payload

    async def worker(self, index: int, meter: Meter) -> None:
        call = self._calls[index % len(self._calls)]
        while meter.running:
            await timed_call(meter, call, self._payload)


class _GatewayTarget(Target):
    """Channels to a gateway: half of them as each platform, since each signs its own messages."""

    def __init__(self, name: str, server: ServerProcess, pki: DevPaths, channels: int) -> None:
        per_platform = max(1, channels // len(PLATFORMS))
        opened = {p: [channel(pki, p, server.port) for _ in range(per_platform)] for p in PLATFORMS}
        super().__init__(name, server, [c for cs in opened.values() for c in cs])
        self._calls = {p: [c.unary_unary(SUBMIT_METHOD) for c in cs] for p, cs in opened.items()}

    def call_for(self, submission: Submission, index: int) -> Any:
        calls = self._calls[submission.platform]
        return calls[index % len(calls)]


class SubmitTarget(_GatewayTarget):
    def __init__(self, name: str, server: ServerProcess, pki: DevPaths, channels: int,
                 cases: Iterable[SignedCase]) -> None:
        super().__init__(name, server, pki, channels)
        self._pending: Iterator[SignedCase] = iter(cases)  # an iterator passed in is shared, not copied
        self.funds: list[tuple[Submission, bytes]] = []    # accepted fund transfers and their receipts
        self.sampled: list[tuple[Submission, bytes]] = []  # receipts to verify once the clock stopped
        self.accepted_by_kind: dict[str, int] = {}         # over the whole run, warm-ups included

    async def worker(self, index: int, meter: Meter) -> None:
        while meter.running:
            case = next(self._pending, None)
            if case is None:
                meter.run_out()
                return
            for s in case:  # in order: each message needs the one before it
                if not meter.running:
                    return  # the rest of this case is never sent; its person has no other case
                receipt = await timed_call(meter, self.call_for(s, index), s.data)
                if receipt is None:
                    break
                kind = envelope_pb2.MessageKind.Name(s.kind).removeprefix("MESSAGE_KIND_").lower()
                self.accepted_by_kind[kind] = self.accepted_by_kind.get(kind, 0) + 1
                if s.kind == FUND_TRANSFER:
                    self.funds.append((s, receipt))
                if index % 8 == 0 and len(self.sampled) < _RECEIPTS_SAMPLED:
                    self.sampled.append((s, receipt))

    def receipt_failures(self, keyring: KeyRing) -> int:
        """How many sampled receipts are not the gateway's valid signed word on that very message."""
        failures = 0
        for s, raw in self.sampled:
            try:
                body = keyring.verify_receipt(envelope_pb2.Receipt.FromString(raw))
            except VerificationError:
                failures += 1
                continue
            payload = envelope_pb2.SignedMessage.FromString(s.data).payload
            if body.transfer_id != s.transfer_id or body.payload_sha256 != hashlib.sha256(payload).digest():
                failures += 1
        return failures


class ReplayTarget(_GatewayTarget):
    def __init__(self, name: str, server: ServerProcess, pki: DevPaths, channels: int,
                 storm: Sequence[tuple[Submission, bytes]]) -> None:
        super().__init__(name, server, pki, channels)
        self.storm = list(storm)
        self.mismatches = 0  # replays answered with anything but the original receipt

    async def worker(self, index: int, meter: Meter) -> None:
        if not self.storm:
            meter.run_out()
            return
        turn = index
        while meter.running:
            s, original = self.storm[turn % len(self.storm)]
            turn += 1
            receipt = await timed_call(meter, self.call_for(s, index), s.data)
            if receipt is not None and receipt != original:
                self.mismatches += 1


class ReplicaTargets(Target):
    """Submit load spread over replicas: worker i drives replica i mod n over that replica's share
    of the channels; the cases come from one stream, so no case is sent twice."""

    def __init__(self, name: str, replicas: Sequence[ServerProcess], pki: DevPaths, channels: int,
                 cases: Sequence[SignedCase]) -> None:
        stream = iter(cases)
        share = max(len(PLATFORMS), channels // len(replicas))
        self.replicas = [SubmitTarget(f"{name}-{i}", server, pki, share, stream) for i, server in enumerate(replicas)]
        super().__init__(name, replicas[0], [])

    async def worker(self, index: int, meter: Meter) -> None:
        n = len(self.replicas)
        await self.replicas[index % n].worker(index // n, meter)

    def cpu_reading(self) -> CpuReadings:
        return CpuReadings(tuple(r.server.cpu_reading() for r in self.replicas))

    async def close(self) -> None:
        for r in self.replicas:
            await r.close()

    @property
    def accepted_by_kind(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for r in self.replicas:
            for kind, n in r.accepted_by_kind.items():
                total[kind] = total.get(kind, 0) + n
        return total

    @property
    def sampled(self) -> list[tuple[Submission, bytes]]:
        return [s for r in self.replicas for s in r.sampled]

    def receipt_failures(self, keyring: KeyRing) -> int:
        return sum(r.receipt_failures(keyring) for r in self.replicas)


class WorkersTarget(SubmitTarget):
    """Submit load on `serve --workers N` (`processes`: its parent, then each worker) over its one
    port; its CPU is the parent's and every worker's."""

    def __init__(self, name: str, processes: Sequence[ServerProcess], pki: DevPaths, channels: int,
                 cases: Iterable[SignedCase]) -> None:
        super().__init__(name, processes[0], pki, channels, cases)
        self.processes = list(processes)

    def cpu_reading(self) -> CpuReadings:
        return CpuReadings(tuple(p.cpu_reading() for p in self.processes))

    def log_cpu_seconds(self) -> float:
        return sum(p.log_cpu_seconds() for p in self.processes[1:])

    def submits_by_worker(self) -> list[int]:
        """The Submit calls each worker answered, from its own /metrics (how the kernel spread the
        connections)."""
        return [round(sum(float(line.rpartition(" ")[2]) for line in p.metrics_text().splitlines()
                          if line.startswith("grpc_server_handled_total{") and 'grpc_method="Submit"' in line))
                for p in self.processes[1:]]
