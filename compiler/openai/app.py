"""The HTTP side of the OpenAI frontend (aiohttp): routes, SSE, API keys, metrics.

    app = create_app(models, TritonBackend("localhost:8001"))     # aiohttp.web.Application
    with Frontend(repository, grpc_url, port=9000):                # the same, served in a thread
        ...
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TritonizeError
from ..optional import optional
from .backend import BackendError, TritonBackend
from .metrics import FrontendMetrics
from .models import ChatTemplateMissing, LlmModel, discover_models
from .protocol import (
    ApiError,
    Generation,
    StopScanner,
    check_prompt_size,
    messages_of_chat,
    parse_generation,
    prompt_of_completion,
    shown,
)

if TYPE_CHECKING:
    from ..triton.server.availability import Availability

web = optional("aiohttp.web", purpose="the OpenAI-compatible frontend", extra="openai", package="aiohttp")

DEFAULT_MAX_IN_FLIGHT = 64  # requests the frontend runs at once before answering 503
# How long a request's body may take to arrive (408 after): a client that sends its headers and then
# stalls would otherwise hold one of the max_in_flight slots for good.
BODY_TIMEOUT_S = 30.0
# Prompts longer than this (characters) are tokenized off the event loop, so that a long one does
# not hold up the other requests' streams (tokenizing ~1 MB takes ~1 s here).
TOKENIZE_INLINE_CHARS = 16384


# A line of the deploy gateway's key file (tritonize.deploy.gateway.api_keys_map): "Bearer KEY" client;
GATEWAY_KEY_LINE = re.compile(r'^"Bearer\s+(?P<key>[^"\s]+)"\s+\S+\s*;$')


def read_api_keys(path: str | Path) -> frozenset[str]:
    """The gateway's api-keys.map (`"Bearer KEY" client;` lines) or one bare key per line;
    blank lines and '#' comments ignored."""
    path = Path(path)
    if not path.is_file():
        raise TritonizeError("API key file not found", file=path, fix="write one key per line, or drop --openai-api-keys")
    lines = [line.strip() for line in path.read_text().splitlines()]
    keys = frozenset(match["key"] if (match := GATEWAY_KEY_LINE.match(line)) else line
                     for line in lines if line and not line.startswith("#"))
    if not keys:
        raise TritonizeError("API key file holds no key", file=path, fix="write one key per line")
    return keys


class _Handlers:
    def __init__(self, models: dict[str, LlmModel], backend: TritonBackend, metrics: FrontendMetrics,
                 api_keys: frozenset[str] | None, max_in_flight: int):
        self.models, self.backend, self.metrics = models, backend, metrics
        self.api_keys, self.max_in_flight = api_keys, max_in_flight
        self.in_flight = 0
        self.created = int(time.time())

    # -- plumbing ---------------------------------------------------------------------------
    def authorize(self, request: Any) -> None:
        if self.api_keys is None:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not any(secrets.compare_digest(key.strip(), k) for k in self.api_keys):
            raise ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)", code="invalid_api_key")

    def model(self, body: dict[str, Any]) -> LlmModel:
        name = body.get("model")
        if name is None:
            raise ApiError(400, "model is required", param="model", code="missing_required_parameter")
        if not isinstance(name, str):
            raise ApiError(400, f"model must be a string, got {shown(name)}", param="model", code="invalid_value")
        if name not in self.models:
            raise ApiError(404, f"The model '{name}' does not exist; served: {', '.join(sorted(self.models)) or 'none'}",
                           param="model", code="model_not_found")
        return self.models[name]

    @staticmethod
    async def body(request: Any) -> dict[str, Any]:
        try:
            raw = await asyncio.wait_for(request.read(), BODY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT_S:g} s",
                           code="request_timeout") from None
        except web.HTTPRequestEntityTooLarge as exc:
            raise ApiError(413, f"the request body is larger than {request.client_max_size} bytes",
                           code="request_too_large") from exc
        try:
            text = raw.decode(request.charset or "utf-8")
            body = json.loads(text)
            # json.loads takes lone UTF-16 surrogates ("\ud800"), which no tokenizer or encoder takes.
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except (LookupError, ValueError, RecursionError) as exc:  # a bad charset, UTF-8, JSON, surrogate
            raise ApiError(400, f"the request body is not valid JSON text: {shown(str(exc), 120)}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    # -- routes -----------------------------------------------------------------------------
    async def list_models(self, request: Any) -> Any:
        self.authorize(request)
        return web.json_response({"object": "list", "data": [m.card(self.created) for m in self.models.values()]})

    async def get_model(self, request: Any) -> Any:
        self.authorize(request)
        model = self.model({"model": request.match_info["model"]})
        return web.json_response(model.card(self.created))

    async def completions(self, request: Any) -> Any:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: Any) -> Any:
        return await self._generate(request, chat=True)

    async def health(self, request: Any) -> Any:
        return web.Response(text="ok")

    async def metrics_text(self, request: Any) -> Any:
        body, content_type = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _generate(self, request: Any, *, chat: bool) -> Any:
        endpoint = "chat" if chat else "completions"
        try:
            self.authorize(request)
            # A request holds its slot from the moment it is accepted (body still arriving included).
            if self.in_flight >= self.max_in_flight:
                raise ApiError(503, f"server busy: {self.in_flight} requests in flight (limit {self.max_in_flight}); "
                                    "retry later", code="server_busy")
        except ApiError as error:
            self.metrics.request("-", endpoint, error.status)
            return web.json_response(error.body(), status=error.status)
        self.in_flight += 1
        try:
            return await self._accepted(request, endpoint, chat)
        finally:
            self.in_flight -= 1

    async def _accepted(self, request: Any, endpoint: str, chat: bool) -> Any:
        model_name = "-"
        try:
            body = await self.body(request)
            model = self.model(body)
            model_name = model.name
            if chat:
                try:
                    prompt = model.render_chat(messages_of_chat(body))
                except ChatTemplateMissing as exc:
                    raise ApiError(400, str(exc), param="messages", code="chat_template_missing") from exc
            else:
                prompt = prompt_of_completion(body)
            param = "messages" if chat else "prompt"
            check_prompt_size(model, prompt, param)
            tokens = model.count_prompt_tokens(prompt) if len(prompt) <= TOKENIZE_INLINE_CHARS else \
                await asyncio.to_thread(model.count_prompt_tokens, prompt, in_thread=True)
            generation = parse_generation(body, model, prompt, param, tokens)
        except ApiError as error:
            self.metrics.request(model_name, endpoint, error.status)
            return web.json_response(error.body(), status=error.status)
        self.metrics.in_flight.labels(model.name).inc()
        status = 200
        try:
            if generation.stream:
                return await self._stream(request, model, generation, chat)
            return await self._complete(model, generation, chat)
        except ApiError as error:
            status = error.status
            return web.json_response(error.body(), status=error.status)
        except (asyncio.CancelledError, ConnectionResetError):
            status = 499  # the client went away; the generation was cancelled with the stream
            raise
        except _StreamFailed as failed:  # a bug after the 200: the stream carries the error
            status = 500
            return failed.response
        except Exception:
            status = 500  # a bug: openai_errors answers it in OpenAI's shape
            raise
        finally:
            self.metrics.in_flight.labels(model.name).dec()
            self.metrics.request(model.name, endpoint, status)

    async def _pieces(self, model: LlmModel, generation: Generation, state: dict[str, Any]) -> AsyncGenerator[str, None]:
        """The completion text as it is generated, cut at stop strings; fills state with the
        token count and the finish reason."""
        scanner = StopScanner(generation.stop)
        metrics = self.metrics.of_model(model.name)
        start = first = last = time.perf_counter()
        pieces = 0
        emitted: list[str] = []
        report: dict[str, Any] = {}
        stream = self.backend.generate(model, generation.prompt, generation.max_tokens, generation.inputs, report)
        try:
            async with contextlib.aclosing(stream):
                async for piece in stream:
                    now = time.perf_counter()
                    if pieces == 0:
                        first = now
                        metrics.ttft.observe(now - start)
                    last = now
                    pieces += 1
                    text = scanner.feed(piece)
                    emitted.append(text)
                    if text:
                        yield text
                    if scanner.stopped:
                        break
        except BackendError as exc:
            raise ApiError(503 if exc.busy else 500, f"the model server failed: {exc}",
                           code="server_busy" if exc.busy else "backend_error") from exc
        finally:  # a cancelled stream's rate counts too
            tokens = self._generated_tokens(model, report, emitted + [scanner.hit])
            if pieces > 1 and last > start:
                metrics.tokens_per_second.observe(tokens / (last - start))
            if tokens > 1 and last > first:  # a response may carry several tokens: the request's mean
                metrics.inter_token.observe((last - first) / (tokens - 1))
        if not scanner.stopped:
            tail = scanner.flush()
            emitted.append(tail)
            if tail:
                yield tail
            tokens = self._generated_tokens(model, report, emitted)
        state["completion_tokens"] = tokens
        state["finish_reason"] = "length" if not scanner.stopped and tokens >= generation.max_tokens else "stop"
        if not scanner.stopped and report.get("finish_reason") in ("stop", "length"):
            state["finish_reason"] = report["finish_reason"]  # the model's own word

    @staticmethod
    def _generated_tokens(model: LlmModel, report: dict[str, Any], emitted: list[str]) -> int:
        """The completion's tokens. Not the number of streamed responses: the CPU engine sends a
        paced stream several tokens a response (python_backends/llm_cpu_engine/back_channel.py),
        as TensorRT-LLM does with speculative decoding. Counted from the text (emitted: the pieces
        returned and a stop string found, which OpenAI counts as generated) when the model does
        not say."""
        if "tokens" in report:  # the engine's own count (return_num_output_tokens)
            return int(report["tokens"])
        if "responses" in report:  # an LLM API model: one response a decoding step, empty ones too
            return int(report["responses"])
        return model.count_tokens("".join(emitted))  # the text's tokens, with the model's tokenizer

    def _usage(self, model: LlmModel, generation: Generation, state: dict[str, Any]) -> dict[str, int]:
        prompt = generation.prompt_tokens
        return {"prompt_tokens": prompt, "completion_tokens": state["completion_tokens"],
                "total_tokens": prompt + state["completion_tokens"]}

    async def _complete(self, model: LlmModel, generation: Generation, chat: bool) -> Any:
        state: dict[str, Any] = {}
        parts = []
        async for text in self._pieces(model, generation, state):
            parts.append(text)
        text = "".join(parts)
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": state["finish_reason"]}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return web.json_response({
            "id": _id(chat), "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model.name, "choices": [choice], "usage": self._usage(model, generation, state)})

    async def _stream(self, request: Any, model: LlmModel, generation: Generation, chat: bool) -> Any:
        state: dict[str, Any] = {}
        pieces = self._pieces(model, generation, state)
        head = {"id": _id(chat), "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": model.name}
        chunks = SseChunks(head, chat, generation.include_usage)

        # Fetch the first piece before answering 200, so an error before any token is a real status.
        async with contextlib.aclosing(pieces):
            first = await anext(pieces, None)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            try:
                # The role chunk (chat) and the first text go out in one write.
                opening = (chunks.role() if chat else b"") + (chunks.text(first) if first else b"")
                if opening:
                    await response.write(opening)
                async for text in pieces:
                    await response.write(chunks.text(text))
            except ApiError as error:  # after the 200: the error goes in the stream, as OpenAI does
                await response.write(_event(error.body()) + DONE)
                return response
            except (asyncio.CancelledError, ConnectionResetError):
                raise
            except Exception:  # a bug after the 200: in the stream too (a second response would garble it)
                logging.getLogger("tritonize.openai").exception("internal error in a stream of %s", model.name)
                await response.write(_event(ApiError(500, "internal error in the frontend (logged)").body()) + DONE)
                raise _StreamFailed(response) from None
        end = chunks.finish(state["finish_reason"])
        if generation.include_usage:
            end += _event({**head, "choices": [], "usage": self._usage(model, generation, state)})
        await response.write(end + DONE)
        await response.write_eof()
        return response


DONE = b"data: [DONE]\n\n"


class _StreamFailed(Exception):
    """A stream that failed after its 200, its error written into it (the response to return)."""

    def __init__(self, response: Any):
        super().__init__("the stream failed")
        self.response = response


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class SseChunks:
    """The SSE chunks of one stream. Everything but the text is the same in every chunk, so it is
    encoded once: a token costs one json.dumps of its text (the frontend's per-token work is what
    the benchmark perf/bench_openai.py measures against direct gRPC)."""

    def __init__(self, head: dict[str, Any], chat: bool, include_usage: bool):
        self.head, self.chat, self.include_usage = head, chat, include_usage
        # {"id":...,"model":...,"choices":[{"index":0,"delta":{"content":TEXT},"logprobs":null,"finish_reason":null}]}
        marker = "\u0000TEXT\u0000"
        template = json.dumps(self._payload(marker)).encode()
        quoted = json.dumps(marker).encode()
        before, after = template.split(quoted)
        self._before, self._after = b"data: " + before, after + b"\n\n"

    def _payload(self, delta: str | None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
        if self.chat:
            content: dict[str, Any] = {"role": "assistant", "content": ""} if role else \
                ({} if delta is None else {"content": delta})
            choice = {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
        payload: dict[str, Any] = {**self.head, "choices": [choice]}
        if self.include_usage:
            payload["usage"] = None
        return payload

    def text(self, text: str) -> bytes:
        return self._before + json.dumps(text).encode() + self._after

    def role(self) -> bytes:
        return _event(self._payload(None, role=True))

    def finish(self, reason: str) -> bytes:
        return _event(self._payload(None, reason))


def _id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def _openai_errors() -> Any:
    """Middleware: every error answered in OpenAI's shape, aiohttp's own included (unknown path 404,
    wrong method 405) and bugs (500, logged with their traceback)."""
    @web.middleware
    async def openai_errors(request: Any, handler: Any) -> Any:
        try:
            return await handler(request)
        except ApiError as error:
            return web.json_response(error.body(), status=error.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = {404: f"Invalid URL ({request.method} {request.path})",
                       405: f"method {request.method} is not allowed on {request.path}"}.get(exc.status, exc.reason)
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return web.json_response(ApiError(exc.status, message).body(), status=exc.status, headers=headers)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            logging.getLogger("tritonize.openai").exception("internal error on %s %s", request.method, request.path)
            return web.json_response(ApiError(500, "internal error in the frontend (logged)").body(), status=500)

    return openai_errors


def create_app(models: dict[str, LlmModel], backend: TritonBackend, *, api_keys: frozenset[str] | None = None,
               max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, metrics: FrontendMetrics | None = None) -> Any:
    handlers = _Handlers(models, backend, metrics or FrontendMetrics(), api_keys, max_in_flight)
    app = web.Application(client_max_size=8 * 1024 * 1024, middlewares=[_openai_errors()])
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/v1/models/{model}", handlers.get_model)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_get("/metrics", handlers.metrics_text)
    app.router.add_get("/health", handlers.health)

    async def close_backend(app: Any) -> None:
        await backend.close()

    app.on_cleanup.append(close_backend)
    return app


class Frontend:
    """The frontend served on its own thread and event loop (next to tritonserver in `serve`)."""

    def __init__(self, repository: str | Path, grpc_url: str, *, host: str = "0.0.0.0", port: int = 9000,
                 api_keys_file: str | Path | None = None, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 availability: Availability | None = None):
        self.models = discover_models(repository)
        if not self.models:
            raise TritonizeError("the repository has no LLM (ensemble or LLM API model) to serve over the OpenAI API",
                                 file=repository, fix="build a model with an `llm` block, or drop --openai")
        self.api_keys = read_api_keys(api_keys_file) if api_keys_file else None
        for model in self.models.values():  # load each tokenizer now, not on the event loop of a first request
            model.max_token_chars  # noqa: B018  (loads the tokenizer, reads its vocabulary)
        self.grpc_url, self.host, self.port, self.max_in_flight = grpc_url, host, port, max_in_flight
        self.metrics = FrontendMetrics()
        self.backend = TritonBackend(grpc_url, availability)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}/v1"

    def __enter__(self) -> Frontend:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="openai-frontend", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            app = create_app(self.models, self.backend, api_keys=self.api_keys,
                             max_in_flight=self.max_in_flight, metrics=self.metrics)
            # handler_cancellation: a client that disconnects cancels its handler, and with it the
            # gRPC stream (aiohttp >= 3.9 leaves handlers running by default).
            self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, self.host, self.port).start())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=15)


def serve_frontend(repository: str | Path, grpc_url: str, terminal: Any, *, host: str = "127.0.0.1", port: int = 9000,
                   api_keys_file: str | Path | None = None, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> int:
    """`tritonize openai`: the frontend alone until SIGTERM or Ctrl-C (0); tritonserver runs elsewhere."""
    import signal

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with Frontend(repository, grpc_url, host=host, port=port, api_keys_file=api_keys_file,
                      max_in_flight=max_in_flight) as frontend:
            terminal.success(f"OpenAI API on http://{host}:{port}/v1 for {', '.join(sorted(frontend.models))} "
                             f"(Triton gRPC {grpc_url}); metrics http://{host}:{port}/metrics")
            stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
