"""The frontend's one connection to Triton: a tritonclient gRPC aio client (one channel, HTTP/2
streams multiplexed on it), and bidirectional ModelStreamInfer streams carrying one generation at
a time. A stream whose generation ended with its final response goes back to a pool and carries
the next one: setting up a gRPC aio call was ~25 % of the frontend's CPU and ~6 ms of TTFT p50 at
c=8 (py-spy; perf/bench_openai.py). A generation that ends any other way (the client went away, a
stop string, an error) cancels its stream, which Triton 2.51 turns into a cancel of the request
in the engine: that is why a stream never carries two generations at once.

An idle stream keeps its last model loaded in tritonserver 2.51 (a SIGTERM'd server waited its
whole exit timeout on one, "Found 1 live models"), so a stream unused for a second is ended,
and so are all idle ones when a model fails or `serve` stops the server.

Under `tritonize serve --openai` it talks to tritonserver's private gRPC port (not through serve's
relay, a second hop in the same process) and so reads serve's Availability itself, as the relay
does: a model being reloaded, a restarting or stopping server is refused (503), and the streams
of a model whose python stub died end with 503 when the supervisor says so (tritonserver 2.51
never ends them itself)."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..optional import optional
from ..resources import back_channel
from ..triton.server.availability import FrontCall, end_calls_of
from .models import LlmModel

if TYPE_CHECKING:
    from ..triton.server.availability import Availability

grpc_aio = optional("tritonclient.grpc.aio", purpose="the OpenAI frontend's Triton client", package="tritonclient")

# Triton error texts that mean "come back later" (queue full, model not ready), answered 503.
BUSY_MARKERS = ("exceeds maximum queue size", "unavailable", "is not ready")


class BackendError(Exception):
    def __init__(self, message: str, busy: bool = False):
        super().__init__(message)
        self.busy = busy


class TritonBackend:
    def __init__(self, grpc_url: str, availability: Availability | None = None, idle_stream_s: float = 1.0):
        self.grpc_url = grpc_url
        self.idle_stream_s = idle_stream_s  # under load a stream is reused within milliseconds
        self._client = None
        self.availability = availability
        self._running: set[FrontCall] = set()
        self._idle: list[RequestStream] = []  # streams whose last generation ended with its final response
        self.streams_opened = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        if availability is not None:
            availability.on_fail(self._fail_soon)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def idle_streams(self) -> int:
        """Pooled streams waiting for their next generation."""
        return len(self._idle)

    def _fail_soon(self, models: list[str]) -> None:
        """From the supervisor's thread: end the generations of these models on the frontend's loop."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the frontend's loop has closed: nothing runs
                self._loop.call_soon_threadsafe(self._fail, set(models))

    def _fail(self, models: set[str]) -> None:
        assert self.availability is not None
        end_calls_of(self._running, models, self.availability)
        self._end_idle()  # they may hold the failed model, which serve unloads now

    def release_idle_streams(self) -> None:
        """From another thread (serve, before it stops the server): end the idle streams."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._end_idle)

    def _end_idle(self) -> list[RequestStream]:
        ended, self._idle = self._idle, []
        for stream in ended:
            stream.end()
        return ended

    @property
    def client(self):
        if self._client is None:  # created on the event loop that uses it
            self._client = grpc_aio.InferenceServerClient(self.grpc_url)
        return self._client

    async def close(self) -> None:
        idle = self._end_idle()
        with contextlib.suppress(asyncio.TimeoutError):  # Triton ends them at once; the loop closes next
            await asyncio.wait_for(asyncio.gather(*(stream.ended() for stream in idle)), 2)
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _inputs(self, model: LlmModel, prompt: str, max_tokens: int, extra: dict[str, np.ndarray]) -> list:
        arrays: dict[str, np.ndarray] = {
            "text_input": np.array([[prompt.encode()]], dtype=np.object_),
            "max_tokens": np.array([[max_tokens]], dtype=np.int32),
            **extra,
        }
        if model.llmapi:  # its own input names, shaped [n] (max_batch_size 0)
            arrays = {("text_input" if name == "text_input" else model.input_name(name) or name): array.reshape(-1)
                      for name, array in arrays.items()}
            if model.decoupled:
                arrays["streaming"] = np.array([True], dtype=np.bool_)
            if "return_finish_reason" in model.inputs:
                arrays["return_finish_reason"] = np.array([True], dtype=np.bool_)
        else:
            if model.decoupled:
                arrays["stream"] = np.array([[True]], dtype=np.bool_)
            if "return_num_output_tokens" in model.inputs:  # usage from the engine's count
                arrays["return_num_output_tokens"] = np.array([[True]], dtype=np.bool_)
        inputs = []
        for name, array in arrays.items():
            datatype = "BYTES" if array.dtype == np.object_ else {
                np.dtype(np.int32): "INT32", np.dtype(np.uint64): "UINT64", np.dtype(np.float32): "FP32",
                np.dtype(np.bool_): "BOOL"}[array.dtype]
            tensor = grpc_aio.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    async def generate(self, model: LlmModel, prompt: str, max_tokens: int, extra: dict[str, np.ndarray],
                       report: dict[str, Any] | None = None) -> AsyncGenerator[str, None]:
        """The text of the model's responses in order (the new tokens, detokenized by the
        ensemble). Closing the iterator early (a client that went away,
        a stop string) cancels the gRPC call, and Triton cancels the request in the engine.
        `report` gets what the model says of the generation: an LLM API model its responses
        (one per decoding step) and its finish_reason."""
        if self.availability is not None and (refusal := self.availability.refusal(model.name)) is not None:
            raise BackendError(refusal, busy=True)
        self._loop = asyncio.get_running_loop()
        generation = FrontCall()
        generation.models.add(model.name)
        inputs = self._inputs(model, prompt, max_tokens, extra)
        request: dict[str, Any] = {"model_name": model.name, "inputs": inputs, "parameters": _parameters(model),
                                   "outputs": [grpc_aio.InferRequestedOutput(name) for name in _outputs(model)]}

        pieces = _Pieces(model, {} if report is None else report)
        self._running.add(generation)  # no await since the check: a failure notice cannot pass between
        stream: RequestStream | None = None
        try:
            stream, (result, error) = await self._start(generation, request, model.name)
            while True:
                if error is not None:
                    message = str(error)
                    raise BackendError(message, busy=any(m in message.lower() for m in BUSY_MARKERS))
                response = result.get_response()
                text = pieces.new_text(response)
                final = response.parameters.get("triton_final_response")
                if not model.decoupled or (final is not None and final.bool_param):
                    generation.upstream = None  # a failure notice from now on is not this stream's
                    self._release(stream)
                    stream = None
                    if text:
                        yield text
                    return
                if text:
                    yield text
                result, error = await stream.receive(model.name)
        except asyncio.CancelledError as exc:
            if generation.failure is not None:
                raise BackendError(generation.failure, busy=True) from None
            if _cancelled_under_us(exc):  # grpc cancelled the call itself (a write that failed)
                raise BackendError("Triton gRPC: the stream was cancelled", busy=True) from None
            raise  # the client went away
        except Exception as exc:
            if isinstance(exc, BackendError):
                raise
            if generation.failure is not None:
                raise BackendError(generation.failure, busy=True) from None
            if _is_rpc_error(exc):
                raise BackendError(f"Triton gRPC: {exc}", busy="UNAVAILABLE" in str(exc)) from exc
            raise
        finally:
            self._running.discard(generation)
            if stream is not None:  # not ended by its final response: cancelling it cancels the request
                stream.cancel()

    async def _start(self, generation: FrontCall, request: dict[str, Any], model: str) -> tuple[RequestStream, Any]:
        """The request sent on a pooled stream (or a new one), and the stream with its first response."""
        for attempt in (1, 2):  # a pooled stream that ended while idle (a server restart): once more, on a new one
            reused = attempt == 1 and bool(self._idle)
            stream = generation.upstream = self._idle.pop() if reused else self._open()
            stream.send(request)  # and a pooled stream's idle timer is off
            try:
                return stream, await stream.receive(model)
            except BaseException as exc:  # a cancel too: the caller has no stream to close yet
                stream.cancel()
                if not (reused and generation.failure is None and (_is_rpc_error(exc) or _cancelled_under_us(exc))):
                    raise
        raise AssertionError("a new stream's attempt returns or raises")

    def _open(self) -> RequestStream:
        self.streams_opened += 1
        return RequestStream(self.client)

    def _release(self, stream: RequestStream) -> None:
        draining = self.availability is not None and self.availability.draining
        if len(self._idle) >= MAX_IDLE_STREAMS or draining:
            stream.end()
            return
        self._idle.append(stream)
        stream.idle_timer = asyncio.get_running_loop().call_later(self.idle_stream_s, self._end_unused, stream)

    def _end_unused(self, stream: RequestStream) -> None:
        if stream in self._idle:
            self._idle.remove(stream)
            stream.end()


MAX_IDLE_STREAMS = 64  # the frontend's default max_in_flight: one stream each


class RequestStream:
    """One ModelStreamInfer call, fed from a queue so that it can carry request after request (also
    the LLM benchmarks' client, perf/_bench.py GrpcStream)."""

    def __init__(self, client: Any):
        self._requests: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._call = client.stream_infer(self._feed())
        self._responses = aiter(self._call)
        self.idle_timer: asyncio.TimerHandle | None = None

    async def _feed(self) -> AsyncGenerator[dict[str, Any], None]:
        while (request := await self._requests.get()) is not None:
            yield request

    def send(self, request: dict[str, Any]) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self._requests.put_nowait(request)

    def end(self) -> None:
        """An idle stream: its requests end (the client's half-close), and Triton ends the call."""
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self._requests.put_nowait(None)

    async def receive(self, model: str) -> tuple[Any, Any]:
        """The next response, as tritonclient's stream_infer yields it: (result, error)."""
        try:
            return await anext(self._responses)
        except StopAsyncIteration:
            raise _StreamEnded(f"Triton ended the gRPC stream of model '{model}' before its final response") from None

    async def ended(self) -> None:
        """Once Triton has ended an ended stream's call."""
        with contextlib.suppress(Exception):
            async for _ in self._responses:
                pass

    def cancel(self) -> None:
        """Cancel the call (Triton cancels its request); the read in receive() raises CancelledError."""
        self._call.cancel()


class _StreamEnded(Exception):
    """The stream ended without an error (a server that closed it): retried once, like an RPC error."""


def _cancelled_under_us(exc: BaseException) -> bool:
    """A CancelledError that no one cancelled this task for: grpc aio cancels a call whose request
    write failed, and its read raises CancelledError."""
    cancelling = getattr(asyncio.current_task(), "cancelling", None)  # Python >= 3.11; 3.10 cannot tell
    return isinstance(exc, asyncio.CancelledError) and cancelling is not None and cancelling() == 0


def _is_rpc_error(exc: BaseException) -> bool:
    return isinstance(exc, _StreamEnded) or type(exc).__name__ == "AioRpcError" or "grpc" in type(exc).__module__


def _parameters(model: LlmModel) -> dict[str, Any]:
    if not model.decoupled:
        return {}
    parameters: dict[str, Any] = {"triton_enable_empty_final_response": True}
    if not model.llmapi:  # usage counts the engine's tokens, not responses: take paced streams
        parameters[back_channel().MULTI_TOKEN_PARAMETER] = True
    return parameters


def _outputs(model: LlmModel) -> list[str]:
    """The outputs asked for: the text, and what the model says of the generation."""
    outputs = ["text_output"] + (["finish_reason"] if "return_finish_reason" in model.inputs else [])
    if not model.llmapi and "return_num_output_tokens" in model.inputs:
        outputs.append("num_output_tokens")  # the tokens so far, for usage
    return outputs


class _Pieces:
    """The new text of each response: an ensemble's text as it is; an LLM API model answers the
    text so far (CompletionOutput.text), so its piece is what extends the previous one (and its
    responses and finish_reason go to `report`)."""

    def __init__(self, model: LlmModel, report: dict[str, Any]):
        self.model, self.report, self.so_far = model, report, ""

    def new_text(self, response: Any) -> str:
        text = _first_text(response)
        if not self.model.llmapi:
            tokens = _first_int32(response, "num_output_tokens")
            if tokens is not None:  # the tokens generated so far
                self.report["tokens"] = tokens
            return text
        self.report["responses"] = self.report.get("responses", 0) + 1
        self.report["finish_reason"] = _first_text(response, "finish_reason") or self.report.get("finish_reason")
        if not text:
            return text
        if not text.startswith(self.so_far):
            raise BackendError(f"model '{self.model.name}' answered a text that does not extend the one "
                               f"before it ({self.so_far!r} -> {text!r})")
        piece, self.so_far = text[len(self.so_far):], text
        return piece


def _first_int32(response: Any, name: str) -> int | None:
    """name[0] (an INT32 output) of a ModelInferResponse, or None when it has none."""
    for index, output in enumerate(response.outputs):
        if output.name == name:
            if index < len(response.raw_output_contents):
                raw = response.raw_output_contents[index]
                return int.from_bytes(raw[:4], "little", signed=True) if len(raw) >= 4 else None
            contents = output.contents.int_contents
            return int(contents[0]) if contents else None
    return None


def _first_text(response: Any, name: str = "text_output") -> str:
    """name[0] (a BYTES output) of a ModelInferResponse, read from its raw bytes: a BYTES tensor is each
    element as a 4-byte little-endian length and the bytes (the KServe gRPC protocol's
    raw_output_contents, as tritonclient.utils.deserialize_bytes_tensor reads it), and the
    ensemble answers one text per response. This skips building tritonclient's numpy object
    array for every token."""
    for index, output in enumerate(response.outputs):
        if output.name == name:
            if index < len(response.raw_output_contents):
                raw = response.raw_output_contents[index]
                if len(raw) < 4:
                    return ""
                length = int.from_bytes(raw[:4], "little")
                return raw[4:4 + length].decode("utf-8", "replace")
            contents = output.contents.bytes_contents  # a server that answers without raw contents
            return contents[0].decode("utf-8", "replace") if contents else ""
    return ""
