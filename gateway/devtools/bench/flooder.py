"""A platform flooding the gateway, in a process of its own, so that the victim's latencies measured
in the harness's process are the gateway's doing, not the load generator's.

`python -m gateway.devtools.bench.flooder '<json spec>'` (pki, port, platform, count, first_seed)
signs `count` notices, prints `{"ready": count}`, starts at a first line on stdin and stops at a
second (or when stdin closes), then prints its figures as one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.app.devpki import DevPaths
from gateway.devtools.bench.child import SUBMIT_METHOD
from gateway.devtools.bench.targets import channel

_CHANNELS = 4
_STARTUP_TIMEOUT = 120.0


class RunningFlood:
    """The harness's side: `await flood.start()`, then `await flood.stop()` gives its figures."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    async def start(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(b"go\n")
        await self._process.stdin.drain()

    async def stop(self) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(b"stop\n")
        await self._process.stdin.drain()
        line = await asyncio.wait_for(self._process.stdout.readline(), 60)
        figures: dict[str, Any] = json.loads(line)
        return figures


@asynccontextmanager
async def flooding(spec: dict[str, Any], log: Path) -> AsyncIterator[RunningFlood]:
    """A flooder process, signed and ready, for the block's length.

    Raises RuntimeError (with its log's tail) if it does not get ready.
    """
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.devtools.bench.flooder", json.dumps(spec),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr)
    assert process.stdout is not None and process.stdin is not None
    try:
        try:
            json.loads(await asyncio.wait_for(process.stdout.readline(), _STARTUP_TIMEOUT))["ready"]
        except (TimeoutError, ValueError, KeyError) as exc:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"flooder did not get ready: {exc!r}\n{tail}") from exc
        yield RunningFlood(process)
    finally:
        if process.returncode is None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _flood(spec: dict[str, Any]) -> None:
    from gateway.devtools.bench.isolation import Flood, notices

    pki = DevPaths(Path(spec["pki"]))
    pool = notices(pki, spec["platform"], int(spec["count"]), first_seed=int(spec["first_seed"]))
    channels = [channel(pki, spec["platform"], int(spec["port"])) for _ in range(_CHANNELS)]
    print(json.dumps({"ready": len(pool)}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    stubs: Sequence[Any] = [c.unary_unary(SUBMIT_METHOD) for c in channels]
    flood = Flood(stubs, pool)
    await loop.run_in_executor(None, sys.stdin.readline)
    await flood.stop()
    for c in channels:
        await c.close()
    print(json.dumps({**flood.calls.figures(flood.seconds), "cut_short": flood.ran_dry}), flush=True)


def main() -> int:
    asyncio.run(_flood(json.loads(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
