"""One interceptor for the gateway's own services: RPC metrics and the error → status mapping.

Servicers raise `GatewayError`s; here they become statuses with details, so no servicer calls
`context.abort` itself and every code is counted (aio's AbortError is not a grpc.RpcError).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.service.status import grpc_code, to_status

log = logging.getLogger("gateway.rpc")


class GatewayInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, metrics: Metrics, service_prefix: str = "mitransfer.") -> None:
        self._metrics = metrics
        self._prefix = service_prefix

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        method_path: str = details.method
        if handler is None or not method_path.startswith("/" + self._prefix):
            return handler
        service, _, method = method_path[1:].rpartition("/")
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._server_stream(handler.unary_stream, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(self, behavior: Callable[..., Awaitable[Any]], service: str, method: str) -> Callable[..., Any]:
        m = self._metrics
        labels = ("unary", service, method)

        async def wrapped(request: Any, context: Any) -> Any:
            m.rpc_started.labels(*labels).inc()
            m.rpc_msg_received.labels(*labels).inc()
            start = time.perf_counter()
            code = "OK"
            try:
                response = await behavior(request, context)
                m.rpc_msg_sent.labels(*labels).inc()
                return response
            except GatewayError as err:
                code = grpc_code(err).name
                await context.abort_with_status(to_status(err))
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception:
                code = "UNKNOWN"
                log.exception("unhandled error", extra={"fields": {"method": method}})
                raise
            finally:
                m.rpc_handled.labels(*labels, code).inc()
                m.rpc_seconds.labels(*labels).observe(time.perf_counter() - start)

        return wrapped

    def _server_stream(
        self, behavior: Callable[..., AsyncIterator[Any]], service: str, method: str
    ) -> Callable[..., AsyncIterator[Any]]:
        m = self._metrics
        labels = ("server_stream", service, method)

        async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
            m.rpc_started.labels(*labels).inc()
            m.rpc_msg_received.labels(*labels).inc()
            start = time.perf_counter()
            code = "OK"
            try:
                async for response in behavior(request, context):
                    yield response
                    m.rpc_msg_sent.labels(*labels).inc()
            except GatewayError as err:
                code = grpc_code(err).name
                await context.abort_with_status(to_status(err))
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception:
                code = "UNKNOWN"
                log.exception("unhandled error", extra={"fields": {"method": method}})
                raise
            finally:
                m.rpc_handled.labels(*labels, code).inc()
                m.rpc_seconds.labels(*labels).observe(time.perf_counter() - start)

        return wrapped
