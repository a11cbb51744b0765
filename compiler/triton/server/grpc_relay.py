"""A relay in front of tritonserver's gRPC port (what `tritonize serve` publishes as gRPC).

tritonserver 2.51 never ends the gRPC streams (ModelStreamInfer) of a dead decoupled python stub
behind an ensemble: the client waits forever (facts section 8). The HTTP guard ends HTTP streams
itself; this relay does the same for gRPC: every call is relayed byte for byte (no protobuf
decoding beyond the model name) to Triton's gRPC endpoint on a private loopback port, and the
calls of a model the supervisor is recovering end at once with UNAVAILABLE (new ones are refused
the same way; ServerReady says not ready meanwhile). It also swaps the operator's key for the
server's own (access.KeyExchange) and applies serve's request-size limit to gRPC messages.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

# serve starts (and restarts) tritonserver while the relay's threads run in grpc: grpc's fork
# handlers then only log "Other threads are currently calling into gRPC, skipping fork() handlers"
# on every start; the child execs at once, so they have nothing to do.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402
from grpc import aio  # noqa: E402

from .access import KeyExchange
from .availability import Availability, FrontCall, end_calls_of
from .loop_thread import LoopThread

SERVICE = "/inference.GRPCInferenceService/"
STREAM = SERVICE + "ModelStreamInfer"  # the one streaming method; every other one is unary
MODEL_CALLS = {SERVICE + "ModelInfer", STREAM}  # requests whose field 1 is model_name
SERVER_READY = SERVICE + "ServerReady"
# Metadata the relay must not forward: HTTP/2 and gRPC transport headers the channel sets itself.
_TRANSPORT_NAMES = {"user-agent", "content-type", "te"}
_TRANSPORT_PREFIXES = ("grpc-", ":")


class GrpcRelay(LoopThread):
    """Listens on (host, port) and relays every gRPC call to 127.0.0.1:upstream_port, in a thread
    and event loop of its own."""

    thread_name = "tritonize-grpc-relay"

    def __init__(self, host: str, port: int, upstream_port: int, *, availability: Availability,
                 keys: KeyExchange | None, max_message_bytes: int):
        super().__init__()
        self.host, self.port, self.upstream_port = host, port, upstream_port
        self.availability, self.keys, self.max_message_bytes = availability, keys, max_message_bytes
        self.in_flight = 0  # calls being relayed (read by serve at a stop)
        self._calls: set[FrontCall] = set()
        availability.on_fail(self._fail_soon)

    # -- lifecycle: LoopThread.start/stop (called from the supervisor's thread) --------------------
    def _fail_soon(self, models: list[str]) -> None:
        self.call_soon(self._fail, set(models))

    def _fail(self, models: set[str]) -> None:
        end_calls_of(self._calls, models, self.availability)

    async def _bind(self) -> aio.Server:
        options = [("grpc.max_receive_message_length", self.max_message_bytes), ("grpc.max_send_message_length", -1),
                   ("grpc.so_reuseport", 0)]
        server = aio.server(options=options)
        server.add_generic_rpc_handlers([_Handler(self)])
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        if server.add_insecure_port(address) == 0:
            raise OSError(98, f"cannot listen on {address}")  # grpc reports a taken port as port 0
        self._channel = aio.insecure_channel(f"127.0.0.1:{self.upstream_port}", options=[
            ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
        await server.start()
        return server

    async def _close(self, server: aio.Server) -> None:
        with contextlib.suppress(Exception):
            await server.stop(grace=None)  # called after the server stopped: no call is left to finish
        with contextlib.suppress(Exception):
            await self._channel.close()

    # -- one call ----------------------------------------------------------------------------------
    async def relay_unary(self, method: str, request: bytes, context: aio.ServicerContext) -> bytes:
        await self._refuse_while_unavailable(context)
        if method == SERVER_READY and self.availability.recovering:
            return b""  # ServerReadyResponse{ready: false}: every field at its default
        call = self._begin()
        try:
            model = model_name(request) if method in MODEL_CALLS else None
            if model is not None:
                call.models.add(model)
                if (refusal := self.availability.refusal(model)) is not None:
                    call.end(refusal)
            if call.failure is None:
                call.upstream = self._channel.unary_unary(method)(
                    request, metadata=self._metadata(context.invocation_metadata() or ()),
                    timeout=context.time_remaining())
                response = await call.upstream
                _pass_trailing(context, await call.upstream.trailing_metadata())
                return response
        except aio.AioRpcError as error:
            if call.failure is None:
                await context.abort(error.code(), error.details() or "", error.trailing_metadata() or ())
        except asyncio.CancelledError:
            if call.failure is None:
                raise  # the client went away
        finally:
            self._end(call)
        await context.abort(grpc.StatusCode.UNAVAILABLE, call.failure or "")
        return b""  # not reached: abort raises

    async def relay_stream(self, method: str, requests: AsyncIterator[bytes], context: aio.ServicerContext) -> None:
        await self._refuse_while_unavailable(context)
        call = self._begin()
        try:
            call.upstream = self._channel.stream_stream(method)(
                self._requests(requests, call), metadata=self._metadata(context.invocation_metadata() or ()),
                timeout=context.time_remaining())
            initial = await call.upstream.initial_metadata()
            if initial:
                await context.send_initial_metadata(initial)
            async for response in call.upstream:
                await context.write(response)
            _pass_trailing(context, await call.upstream.trailing_metadata())
        except aio.AioRpcError as error:
            if call.failure is None:
                await context.abort(error.code(), error.details() or "", error.trailing_metadata() or ())
        except asyncio.CancelledError:
            if call.failure is None:
                raise  # the client went away
            # else: the upstream call was cancelled by call.end(): answered below
        finally:
            self._end(call)
        if call.failure is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, call.failure)

    async def _refuse_while_unavailable(self, context: aio.ServicerContext) -> None:
        state = self.availability
        if state.draining or state.restarting is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "tritonserver is stopping" if state.draining
                                else state.restarting or "")

    def _begin(self) -> FrontCall:
        call = FrontCall()
        self._calls.add(call)
        self.in_flight += 1
        return call

    def _end(self, call: FrontCall) -> None:
        self.in_flight -= 1
        self._calls.discard(call)
        if call.upstream is not None:
            call.upstream.cancel()

    async def _requests(self, requests: AsyncIterator[bytes], call: FrontCall) -> AsyncIterator[bytes]:
        """The client's requests, each noting its model; one for a model being recovered ends the call."""
        async for request in requests:
            model = model_name(request)
            if model is not None:
                refusal = self.availability.refusal(model)
                if refusal is not None:
                    call.end(refusal)
                    return
                call.models.add(model)
            yield request

    def _metadata(self, received: Any) -> list[tuple[str, str | bytes]]:
        forwarded: list[tuple[str, str | bytes]] = []
        unlocked = False
        for key, value in received:
            if key in _TRANSPORT_NAMES or key.startswith(_TRANSPORT_PREFIXES):
                continue
            if self.keys is not None and key == self.keys.grpc_header:
                unlocked = unlocked or self.keys.matches(value)
                continue  # never forwarded: Triton only knows the server's own key
            forwarded.append((key, value))
        if unlocked and self.keys is not None:
            forwarded.append((self.keys.grpc_header, self.keys.server.key))
        return forwarded


class _Handler(grpc.GenericRpcHandler):
    """Every method bytes in, bytes out: ModelStreamInfer as a stream, the others as unary calls
    (triton-inference-server/common r24.10 protobuf/grpc_service.proto)."""

    def __init__(self, relay: GrpcRelay):
        self._relay = relay

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method  # type: ignore[attr-defined]
        if method != STREAM:
            async def unary(request: bytes, context: aio.ServicerContext) -> bytes:
                return await self._relay.relay_unary(method, request, context)

            return grpc.unary_unary_rpc_method_handler(unary)

        async def stream(requests: AsyncIterator[bytes], context: aio.ServicerContext) -> None:
            await self._relay.relay_stream(method, requests, context)

        return grpc.stream_stream_rpc_method_handler(stream)


def _pass_trailing(context: aio.ServicerContext, trailing: Any) -> None:
    if trailing:
        context.set_trailing_metadata(trailing)


def model_name(request: bytes) -> str | None:
    """Field 1 (`model_name`, a string) of a ModelInferRequest in protobuf wire format, read
    without decoding the tensors (triton-inference-server/common r24.10 protobuf/grpc_service.proto)."""
    position, end = 0, len(request)
    while position < end:
        key, position = _varint(request, position)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, position = _varint(request, position)
        elif wire_type == 1:
            position += 8
        elif wire_type == 2:
            length, position = _varint(request, position)
            if field == 1:
                return request[position:position + length].decode(errors="replace")
            position += length
        elif wire_type == 5:
            position += 4
        else:
            return None  # groups (3, 4) are not in this message: not a ModelInferRequest
    return None


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while position < len(data):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise ValueError("truncated varint")
