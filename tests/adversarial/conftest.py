"""The adversarial suite: the gateway tried as a buggy or hostile provincial platform would try it,
over real mTLS on loopback. One module per family of attack; every loop is bounded in count, and
every call carries a deadline.

`roomy_gateway` raises `[messages] max_message_bytes` to the most the configuration allows, so
that oversized fields reach the gateway's own checks instead of gRPC's size cut-off: what the
gateway answers must stay small even then.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.app.assembly import assemble
from gateway.app.devpki import DevPaths
from gateway.app.logs import JsonFormatter
from gateway.core.limits import MAX_MESSAGE_BYTES, MessageLimits
from tests.conftest import test_config
from tests.support import GatewayHandle

DEADLINE = 10.0  # seconds every call of the suite may take before it counts as a hang


@pytest.fixture
async def roomy_gateway(pki: DevPaths, tmp_path: Path) -> AsyncIterator[GatewayHandle]:
    config = replace(test_config(pki, tmp_path / "gateway.db"),
                     messages=MessageLimits(max_message_bytes=MAX_MESSAGE_BYTES))
    server = assemble(config)
    await server.start()
    handle = GatewayHandle(server=server, pki=pki, database=tmp_path / "gateway.db")
    try:
        yield handle
    finally:
        await handle.close_channels()
        await server.stop(grace=0.1)


def everything_said(err: grpc.aio.AioRpcError) -> str:
    """All a refusal tells its caller: the status message, ErrorInfo reason and metadata, and
    every BadRequest violation."""
    parts = [err.details() or ""]
    status = rpc_status.from_call(err)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            parts += [info.reason, *(f"{k}={v}" for k, v in info.metadata.items())]
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            parts += [f"{v.field}: {v.description}" for v in bad.field_violations]
    return "\n".join(parts)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record captured, as the gateway writes it (JSON lines, with any traceback)."""
    return "\n".join(JsonFormatter().format(r) for r in caplog.records)


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Captured records that carry a traceback or are errors: a caller's input must cause none."""
    return [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def rss_mib() -> float:
    """This process's resident memory (the in-process gateway's and the test's), in MiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20
