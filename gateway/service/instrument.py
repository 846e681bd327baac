"""RPC metrics, admission and the error → status mapping for the gateway's own services, wrapped
around each method handler once, when it is registered.

Each call is counted, then admitted (`gateway.service.admission`: the caller's rate, its calls in
flight or subscriptions, and its turn among all callers' calls), then run; a refusal on the way
in is mapped like any other error.

Servicers raise `GatewayError`s; here they become statuses with details, so no servicer calls
`context.abort` itself and every code is counted (aio's AbortError is not a grpc.RpcError).
This is not a `grpc.aio.ServerInterceptor`: with any interceptor installed, grpc.aio looks every
call's handler up through an extra coroutine and builds a fresh handler per call, which costs a
busy gateway more than the metrics do. Wrapping at registration keeps grpc's own lookup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from gateway.core.errors import GatewayError
from gateway.service.admission import Admission
from gateway.service.metrics import Metrics
from gateway.service.status import grpc_code, to_status

log = logging.getLogger("gateway.rpc")
F = TypeVar("F", bound=Callable[..., Any])


def raw_bytes(method: F) -> F:
    """Mark a unary servicer method that takes its request's bytes and returns its response's
    bytes: grpc neither parses nor serializes for it (the method parses what it needs)."""
    method.raw_bytes = True  # type: ignore[attr-defined]
    return method


class InstrumentedServer:
    """Stands in for the grpc.aio server while the generated `add_*Servicer_to_server` functions
    register the gateway's own services: each method gets metrics and error mapping. Health and
    reflection register on the server itself."""

    def __init__(self, server: grpc.aio.Server, metrics: Metrics, admission: Admission) -> None:
        self._server = server
        self._metrics = metrics
        self._admission = admission

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GenericHandler(h, self) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(
            service, {name: self.wrap(service, name, handler) for name, handler in handlers.items()})

    def wrap(self, service: str, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler with metrics, admission and error mapping."""
        if handler.unary_unary is not None:
            raw = getattr(handler.unary_unary, "raw_bytes", False)
            return grpc.unary_unary_rpc_method_handler(
                _unary(self._metrics, self._admission, handler.unary_unary, service, method),
                request_deserializer=None if raw else handler.request_deserializer,
                response_serializer=None if raw else handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _server_stream(self._metrics, self._admission, handler.unary_stream, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class _GenericHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler's answers, each wrapped once and remembered by method path."""

    def __init__(self, inner: grpc.GenericRpcHandler, server: InstrumentedServer) -> None:
        self._inner = inner
        self._server = server
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        path: str = handler_call_details.method
        wrapped = self._wrapped.get(path)
        if wrapped is not None:
            return wrapped
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None  # not remembered: a caller could otherwise grow the map with made-up paths
        service, _, method = path[1:].rpartition("/")
        wrapped = self._wrapped[path] = self._server.wrap(service, method, handler)
        return wrapped


class _Method:
    """One method's RPC metric children, made once, shared by all its calls."""

    def __init__(self, metrics: Metrics, grpc_type: str, service: str, method: str) -> None:
        labels = (grpc_type, service, method)
        self.name = method
        self.started, self.received = metrics.rpc_started.labels(*labels), metrics.rpc_msg_received.labels(*labels)
        self.sent, self._seconds = metrics.rpc_msg_sent.labels(*labels), metrics.rpc_seconds.labels(*labels)
        self._handled, self._labels = metrics.rpc_handled, labels
        self._codes: dict[str, Any] = {}

    def finished(self, code: str, seconds: float) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._handled.labels(*self._labels, code)
        child.inc()
        self._seconds.observe(seconds)


class _Call:
    """One call of a method: counted on entry, its outcome on exit, where a GatewayError becomes
    the status with details (aborting the call)."""

    __slots__ = ("_context", "_method", "_start")

    def __init__(self, method: _Method, context: Any) -> None:
        self._method = method
        self._context = context
        self._start = 0.0

    async def __aenter__(self) -> None:
        self._method.started.inc()
        self._method.received.inc()
        self._start = time.perf_counter()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        code = "OK"
        try:
            if isinstance(exc, GatewayError):
                code = grpc_code(exc).name
                await self._context.abort_with_status(to_status(exc))
            elif isinstance(exc, asyncio.CancelledError):
                code = "CANCELLED"
            elif isinstance(exc, Exception):
                code = "UNKNOWN"
                log.error("unhandled error", exc_info=exc, extra={"fields": {"method": self._method.name}})
        finally:
            self._method.finished(code, time.perf_counter() - self._start)


def _unary(m: Metrics, admission: Admission, behavior: Callable[..., Awaitable[Any]], service: str,
           method: str) -> Callable[..., Any]:
    calls = _Method(m, "unary", service, method)

    async def wrapped(request: Any, context: Any) -> Any:
        async with _Call(calls, context):
            async with admission.call(context):
                response = await behavior(request, context)
            calls.sent.inc()
            return response

    return wrapped


def _server_stream(
    m: Metrics, admission: Admission, behavior: Callable[..., AsyncIterator[Any]], service: str, method: str
) -> Callable[..., AsyncIterator[Any]]:
    calls = _Method(m, "server_stream", service, method)

    async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
        async with _Call(calls, context):
            with admission.subscription(context):
                async for response in behavior(request, context):
                    yield response
                    calls.sent.inc()

    return wrapped
