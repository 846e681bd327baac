"""RPC metrics, admission, request decoding and the error → status mapping for every service the
gateway serves, wrapped around each method handler once, when it is registered.

Each call of the gateway's own services is counted, then admitted (`gateway.service.admission`:
the caller's rate, its calls in flight or subscriptions, and its turn among all callers' calls),
then its request is decoded, then it is run; a refusal on the way in is mapped like any other
error. Health and reflection are counted and decoded, not admitted.

Requests are decoded here, not by grpc: grpc's own decoding fails before any handler runs,
answering UNKNOWN with the decoder's words and logging a traceback, for as little as malformed
UTF-8 in a string field. Decoded here, such a request is INVALID_ARGUMENT, PAYLOAD_UNDECODABLE,
naming the field (gateway.core.wire).

Servicers raise `GatewayError`s; here they become statuses with details, so no servicer calls
`context.abort` itself and every code is counted (aio's AbortError is not a grpc.RpcError).
This is not a `grpc.aio.ServerInterceptor`: with any interceptor installed, grpc.aio looks every
call's handler up through an extra coroutine and builds a fresh handler per call, which costs a
busy gateway more than the metrics do. Wrapping at registration keeps grpc's own lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from gateway.core.errors import FieldViolation, GatewayError, InvalidMessage
from gateway.core.wire import undecodable
from gateway.service.admission import Admission
from gateway.service.metrics import Metrics
from gateway.service.status import grpc_code, to_status

log = logging.getLogger("gateway.rpc")
F = TypeVar("F", bound=Callable[..., Any])
Decode = Callable[[bytes], Any]


def raw_bytes(method: F) -> F:
    """Mark a unary servicer method that takes its request's bytes and returns its response's
    bytes: grpc neither parses nor serializes for it (the method parses what it needs)."""
    method.raw_bytes = True  # type: ignore[attr-defined]
    return method


class InstrumentedServer:
    """Stands in for the grpc.aio server while the generated `add_*Servicer_to_server` functions
    register services: each method gets metrics, decoding and error mapping, and admission when
    one is given (the gateway's own services; not health and reflection)."""

    def __init__(self, server: grpc.aio.Server, metrics: Metrics, admission: Admission | None) -> None:
        self._server = server
        self._metrics = metrics
        self._admission = admission

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GenericHandler(h, self) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(
            service, {name: self.wrap(service, name, handler) for name, handler in handlers.items()})

    def wrap(self, service: str, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler with metrics, admission, decoding and error mapping; grpc passes it the
        request's bytes."""
        m, admission = self._metrics, self._admission
        if handler.unary_unary is not None:
            raw = getattr(handler.unary_unary, "raw_bytes", False)
            decode = _decoder(None if raw else handler.request_deserializer)
            return grpc.unary_unary_rpc_method_handler(
                _unary(m, admission, handler.unary_unary, decode, service, method),
                response_serializer=None if raw else handler.response_serializer)
        decode = _decoder(handler.request_deserializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _server_stream(m, admission, handler.unary_stream, decode, service, method),
                response_serializer=handler.response_serializer)
        if admission is not None:  # the gateway's own services have no client-streaming method to admit
            raise TypeError(f"{service}/{method}: no admission for client-streaming calls")
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _client_stream(m, handler.stream_unary, decode, service, method),
                response_serializer=handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            _bidi_stream(m, handler.stream_stream, decode, service, method),
            response_serializer=handler.response_serializer)


def _decoder(deserializer: Callable[[bytes], Any] | None) -> Decode:
    """How a handler's requests are decoded: with its protobuf class's decoder, a refusal being
    INVALID_ARGUMENT naming the field at fault. None: the method takes the bytes as they came."""
    if deserializer is None:
        return _as_received
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            if descriptor is None:
                raise InvalidMessage([FieldViolation("request", "cannot be decoded")],
                                     reason="PAYLOAD_UNDECODABLE") from exc
            raise undecodable(descriptor, data) from exc

    return decode


def _as_received(data: bytes) -> bytes:
    return data


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

    __slots__ = ("_context", "_method", "_start", "_streamed")

    def __init__(self, method: _Method, context: Any, *, streamed: bool = False) -> None:
        self._method = method
        self._context = context
        self._start = 0.0
        self._streamed = streamed  # requests are counted as they arrive

    async def __aenter__(self) -> None:
        self._method.started.inc()
        if not self._streamed:
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
            elif isinstance(exc, grpc.aio.AbortError):  # a servicer that is not ours aborted (health)
                status = self._context.code()
                code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
            elif isinstance(exc, Exception):
                code = "UNKNOWN"
                log.error("unhandled error", exc_info=exc, extra={"fields": {"method": self._method.name}})
        finally:
            self._method.finished(code, time.perf_counter() - self._start)


def _unary(m: Metrics, admission: Admission | None, behavior: Callable[..., Awaitable[Any]], decode: Decode,
           service: str, method: str) -> Callable[..., Any]:
    calls = _Method(m, "unary", service, method)

    async def wrapped(request: bytes, context: Any) -> Any:
        async with _Call(calls, context):
            if admission is None:
                response = await behavior(decode(request), context)
            else:
                async with admission.call(context) as turn:  # the call's work, up to its first wait, in turn
                    response = await turn.first_step(behavior(decode(request), context))
            calls.sent.inc()
            return response

    return wrapped


def _server_stream(
    m: Metrics, admission: Admission | None, behavior: Callable[..., AsyncIterator[Any] | Awaitable[None]],
    decode: Decode, service: str, method: str,
) -> Callable[..., AsyncIterator[Any]]:
    calls = _Method(m, "server_stream", service, method)

    async def wrapped(request: bytes, context: Any) -> AsyncIterator[Any]:
        async with _Call(calls, context):
            with admission.subscription(context) if admission is not None else contextlib.nullcontext():
                responses = behavior(decode(request), context)
                if not isinstance(responses, AsyncIterator):  # a coroutine answering with context.write (health)
                    await responses
                    return
                async for response in responses:
                    yield response
                    calls.sent.inc()

    return wrapped


async def _decoded(requests: AsyncIterator[bytes], decode: Decode, calls: _Method) -> AsyncIterator[Any]:
    """A stream of requests, each counted and decoded as it arrives."""
    async for data in requests:
        calls.received.inc()
        yield decode(data)


def _client_stream(
    m: Metrics, behavior: Callable[..., Awaitable[Any]], decode: Decode, service: str, method: str
) -> Callable[..., Any]:
    calls = _Method(m, "client_stream", service, method)

    async def wrapped(requests: AsyncIterator[bytes], context: Any) -> Any:
        async with _Call(calls, context, streamed=True):
            response = await behavior(_decoded(requests, decode, calls), context)
            calls.sent.inc()
            return response

    return wrapped


def _bidi_stream(
    m: Metrics, behavior: Callable[..., AsyncIterator[Any] | Awaitable[None]], decode: Decode, service: str,
    method: str,
) -> Callable[..., AsyncIterator[Any]]:
    calls = _Method(m, "bidi_stream", service, method)

    async def wrapped(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
        async with _Call(calls, context, streamed=True):
            responses = behavior(_decoded(requests, decode, calls), context)
            if not isinstance(responses, AsyncIterator):  # a coroutine answering with context.write
                await responses
                return
            async for response in responses:
                yield response
                calls.sent.inc()

    return wrapped
