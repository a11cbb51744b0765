"""A guard in front of tritonserver's HTTP and metrics ports (what `tritonize serve` publishes).

tritonserver 2.51 segfaults on a POST of >= 6 MB with `Content-Type:
application/x-www-form-urlencoded` (what `curl -d` sends), on any endpoint; it has no option that
limits request bodies. So `serve` runs Triton's HTTP endpoint on a private loopback port and puts
this small HTTP/1.1 reverse proxy on the public one: it answers 415 to form-encoded bodies (no
Triton API takes them), 413 to bodies above the limit (Content-Length, or counted while a chunked
body streams), 400 to ambiguous framing, and relays everything else byte for byte with
keep-alive, including streamed (SSE, chunked) responses. While the server is down (restarting)
it answers 503 at once. It swaps the operator's key for the server's own (access.KeyExchange).
The metrics port is relayed the same way, with the supervisor's own counters appended to /metrics.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from .access import KeyExchange
from .availability import Availability
from .loop_thread import LoopThread

MAX_HEAD_BYTES = 64 * 1024
IDLE_TIMEOUT_S = 75.0
RELAY_CHUNK = 256 * 1024
DISCARD_LIMIT, DISCARD_TIMEOUT_S = 256 * 1024 * 1024, 10.0
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# tritonserver's 500s that answer a malformed request body (_is_request_json_error), relayed as 400.
REQUEST_JSON_ERRORS = ("failed to parse the request JSON buffer", "Unable to parse ", "attempt to access JSON ")
MAX_CLIENT_ERROR_BODY = 64 * 1024


class Rejected(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class HttpGuard(LoopThread):
    """Listens on (host, port) and relays to 127.0.0.1:upstream_port in a thread of its own.

    `upstream_port` is read for every new upstream connection. `availability` (set by the
    supervisor) says what to refuse; `keys` swaps the operator's key for the server's.
    `extra_metrics` returns Prometheus text appended to the relayed /metrics."""

    thread_name = "tritonize-http-guard"

    def __init__(self, host: str, port: int, upstream_port: int, *, max_body_bytes: int,
                 availability: Availability | None = None, keys: KeyExchange | None = None,
                 metrics_port: int | None = None, metrics_upstream_port: int | None = None,
                 extra_metrics: Callable[[], str] | None = None):
        super().__init__()
        self.host, self.port, self.upstream_port = host, port, upstream_port
        self.metrics_port, self.metrics_upstream_port = metrics_port, metrics_upstream_port
        self.max_body_bytes = max_body_bytes
        self.extra_metrics = extra_metrics
        self.rejected: Counter[str] = Counter()
        self.availability = availability or Availability()
        self.availability.on_fail(self.fail_waiting)
        self.keys = keys
        self.in_flight = 0  # requests being relayed (read by serve at a stop)
        self._idle: set[asyncio.StreamWriter] = set()  # upstream connections between two requests
        self._waiting: dict[str, set[asyncio.Event]] = {}  # model -> requests waiting for their answer
        self._servers: list[asyncio.base_events.Server] = []

    # -- lifecycle (called from the supervisor's thread) -------------------------------------------
    def drain(self) -> None:
        """Before the server stops: refuse new requests (503) and close idle upstream keep-alive
        connections, which tritonserver 2.51 otherwise waits for until its exit timeout."""
        self.availability.draining = True
        self.call_soon(self._close_idle)

    def fail_waiting(self, models: list[str]) -> None:
        """Answer 503 now to the requests of these models still waiting for Triton's answer (a
        dead stub answers them only after 1 s each), and end their streams already answering with
        an error event (tritonserver 2.51 never ends those, _relay_unless_failed)."""
        def fail() -> None:
            for model in models:
                for event in self._waiting.get(model, ()):
                    event.set()

        self.call_soon(fail)

    def _close_idle(self) -> None:
        for connection in list(self._idle):
            connection.close()
        self._idle.clear()

    async def _bind(self) -> None:
        self._servers.append(await asyncio.start_server(self._http_client, self.host, self.port,
                                                        limit=MAX_HEAD_BYTES, reuse_address=True))
        if self.metrics_port is not None:
            self._servers.append(await asyncio.start_server(self._metrics_client, self.host, self.metrics_port,
                                                            limit=MAX_HEAD_BYTES, reuse_address=True))

    async def _close(self, bound: None) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    # -- the HTTP relay ----------------------------------------------------------------------------
    async def _http_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
                except asyncio.TimeoutError:
                    return  # an idle keep-alive connection (nginx's default keepalive_timeout)
                except asyncio.LimitOverrunError:
                    await _answer(writer, 431, "request head is larger than 64 KiB")
                    self.rejected["head_too_large"] += 1
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the client closed between requests
                method, target, version, headers = _parse_head(head)
                head = self._exchange_key(head, headers)
                try:
                    self._check_available(target)
                    framing = self._check(headers)
                except Rejected as rejected:
                    self.rejected[rejected.reason] += 1
                    if headers.get("expect", "").lower() != "100-continue":
                        await _discard_body(reader, headers)
                    await _answer(writer, rejected.status, rejected.message)
                    return  # the connection is closed after a refusal
                if upstream is None or upstream[1].is_closing():
                    try:
                        upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port, limit=MAX_HEAD_BYTES)
                    except OSError:
                        await _answer(writer, 503, "tritonserver is not running (restarting): try again shortly")
                        return
                up_reader, up_writer = upstream
                self._idle.discard(up_writer)
                if headers.get("expect", "").lower() == "100-continue":
                    # Answered here, after the checks, so a rejected body is never sent at all.
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = _drop_header(head, b"expect")
                up_writer.write(head)
                self.in_flight += 1
                try:
                    await self._relay_body(reader, up_writer, framing)
                    keep_alive = await self._relay_unless_failed(_model_of(target), up_reader, writer, method)
                except Rejected as rejected:  # a body over the limit, or a model that failed meanwhile
                    self.rejected[rejected.reason] += 1
                    await _answer(writer, rejected.status, rejected.message)
                    return
                finally:
                    self.in_flight -= 1
                client_close = headers.get("connection", "").lower() == "close" or (
                    version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive")
                if not keep_alive or client_close or self.availability.draining:
                    return
                self._idle.add(up_writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            return  # either side went away mid-message: closing both ends is the answer
        finally:
            if upstream:
                self._idle.discard(upstream[1])
            for stream_writer in ([writer] + ([upstream[1]] if upstream else [])):
                with contextlib.suppress(Exception):
                    stream_writer.close()

    async def _relay_unless_failed(self, model: str | None, up_reader: asyncio.StreamReader,
                                   writer: asyncio.StreamWriter, method: str) -> bool:
        """Relay the response; Rejected(503) if the model fails before its answer starts."""
        if model is None:
            return await _relay_response(up_reader, writer, method, _Progress())
        failed = asyncio.Event()
        self._waiting.setdefault(model, set()).add(failed)
        if model in self.availability.recovering:
            # Its failure notice ran while this request was passing the checks and reaching
            # tritonserver (open_connection and the body yield to the loop): Triton 2.51 would
            # hold it forever behind the dead stub, so it is failed like the ones waiting.
            failed.set()
        progress = _Progress()
        relay = asyncio.ensure_future(_relay_response(up_reader, writer, method, progress))
        watch: asyncio.Future[Any] = asyncio.ensure_future(failed.wait())
        try:
            while True:
                await asyncio.wait({relay, watch}, return_when=asyncio.FIRST_COMPLETED)
                if relay.done():
                    return relay.result()
                relay.cancel()
                message = self.availability.refusal(model) or f"model '{model}' failed"
                if not progress.started:  # nothing sent to the client yet: answer it now
                    raise Rejected(503, "recovering", message)
                # A stream already answering: tritonserver 2.51 never ends the streams of a dead
                # decoupled stub that run behind an ensemble, so the guard ends it with an error
                # event (SSE, as Triton's own) at a chunk boundary, or by closing mid-chunk.
                if progress.chunked and progress.at_boundary:
                    event = b"data: " + json.dumps({"error": message}).encode() + b"\n\n"
                    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                self.rejected["recovering"] += 1
                return False
        finally:
            watch.cancel()
            self._waiting[model].discard(failed)

    def _exchange_key(self, head: bytes, headers: dict[str, str]) -> bytes:
        """The head with the operator's key replaced by the server's, or without the key header
        when it is not the operator's (Triton then answers 403 naming the header)."""
        if self.keys is None or self.keys.http_header not in headers:
            return head
        head = _drop_header(head[:-4], self.keys.http_header.encode())
        if self.keys.matches(headers[self.keys.http_header]):
            head += f"\r\n{self.keys.http_header}: {self.keys.server.key}".encode()
        return head + b"\r\n\r\n"

    def _check_available(self, target: str) -> None:
        """503 at once for a model being reloaded (instead of Triton's 1 s wait on a dead stub),
        for readiness while one is, and for new requests while the server stops."""
        state = self.availability
        if state.draining:
            raise Rejected(503, "stopping", "tritonserver is stopping")
        if state.restarting is not None:
            raise Rejected(503, "restarting", state.restarting)
        if not state.recovering:
            return
        path = target.split("?")[0]
        if path.rstrip("/") == "/v2/health/ready":
            raise Rejected(503, "recovering", "; ".join(state.recovering.values()))
        parts = path.split("/")
        if len(parts) > 3 and parts[1:3] == ["v2", "models"] and parts[3] in state.recovering:
            raise Rejected(503, "recovering", state.recovering[parts[3]])

    def _check(self, headers: dict[str, str]) -> tuple[str, int]:
        """('length', n) or ('chunked', 0) for a request the server may see; Rejected otherwise."""
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in FORM_TYPES:
            raise Rejected(415, "form_content_type", f"Content-Type {content_type} is not accepted: send "
                           "application/json or application/octet-stream (curl: use --data-binary with "
                           "-H 'Content-Type: application/json')")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length_text = headers.get("content-length")
        if chunked and length_text is not None:
            raise Rejected(400, "bad_framing", "a request with both Content-Length and Transfer-Encoding is refused")
        if chunked:
            return "chunked", 0
        if length_text is None:
            return "length", 0
        if not length_text.strip().isdigit():
            raise Rejected(400, "bad_framing", f"Content-Length {length_text!r} is not a number")
        length = int(length_text)
        if length > self.max_body_bytes:
            raise Rejected(413, "too_large", f"request body of {length} bytes is above this server's limit of "
                           f"{self.max_body_bytes} bytes (tritonize serve --max-request-mb)")
        return "length", length

    async def _relay_body(self, reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter,
                          framing: tuple[str, int]) -> None:
        kind, length = framing
        if kind == "length":
            await _copy_exactly(reader, up_writer, length)
            return
        total = 0
        while True:  # chunked: forward each chunk as it comes, counting the body
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            total += size
            if total > self.max_body_bytes:
                raise Rejected(413, "too_large", f"chunked request body above this server's limit of "
                               f"{self.max_body_bytes} bytes (tritonize serve --max-request-mb)")
            up_writer.write(size_line)
            if size == 0:
                while True:  # trailers, up to the empty line
                    line = await reader.readuntil(b"\r\n")
                    up_writer.write(line)
                    if line == b"\r\n":
                        await up_writer.drain()
                        return
            await _copy_exactly(reader, up_writer, size + 2)

    # -- the metrics relay -------------------------------------------------------------------------
    async def _metrics_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                await reader.readuntil(b"\r\n\r\n")
            body = b""
            if self.metrics_upstream_port is not None:
                with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                    body = await asyncio.wait_for(_get_body("127.0.0.1", self.metrics_upstream_port, "/metrics"), 10)
            extra = self.extra_metrics() if self.extra_metrics else ""
            extra += counter_text("tritonize_guard_rejected_requests_total",
                                   "HTTP requests the guard in front of tritonserver refused, by reason",
                                   {f'reason="{reason}"': n for reason, n in sorted(self.rejected.items())})
            payload = body + extra.encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload) + payload)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()


def counter_text(name: str, help_text: str, samples: dict[str, int]) -> str:
    """Prometheus text for one counter: samples maps a label string ('' for none) to its value."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    lines += [f"{name}{{{labels}}} {value}" if labels else f"{name} {value}" for labels, value in samples.items()]
    return "\n".join(lines) + "\n"


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    method, target = parts[0], parts[1] if len(parts) > 1 else "/"
    version = parts[-1] if len(parts) >= 3 else "HTTP/1.1"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return method, target, version, headers


def _drop_header(head: bytes, name: bytes) -> bytes:
    lines = head.split(b"\r\n")
    return b"\r\n".join(line for line in lines if line.split(b":", 1)[0].strip().lower() != name)


async def _copy_exactly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: int) -> None:
    while count > 0:
        data = await reader.read(min(count, RELAY_CHUNK))
        if not data:
            raise asyncio.IncompleteReadError(b"", count)
        writer.write(data)
        count -= len(data)
        await writer.drain()


async def _discard_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    """Read (and drop) a refused body the client is sending anyway, so it reads the answer instead
    of a connection reset; bounded in size and time."""
    length = headers.get("content-length", "0").strip()
    remaining = min(int(length), DISCARD_LIMIT) if length.isdigit() else 0

    async def discard(remaining: int) -> None:
        while remaining > 0 and (data := await reader.read(min(remaining, RELAY_CHUNK))):
            remaining -= len(data)

    with contextlib.suppress(asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
        await asyncio.wait_for(discard(remaining), DISCARD_TIMEOUT_S)


class _Progress:
    started = False  # the response head reached the client
    chunked = False
    at_boundary = False  # between two chunks of a chunked response


def _model_of(target: str) -> str | None:
    parts = target.split("?")[0].split("/")
    return parts[3] if len(parts) > 4 and parts[1:3] == ["v2", "models"] else None


async def _relay_response(up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str,
                          progress: _Progress) -> bool:
    """Relay one response; True when both connections may carry another request."""
    head = await up_reader.readuntil(b"\r\n\r\n")
    status_line, _, rest = head.partition(b"\r\n")
    status = int(status_line.split(b" ")[1])
    headers = _parse_head(head)[3]
    if status == 500 and int(headers.get("content-length", MAX_CLIENT_ERROR_BODY + 1)) <= MAX_CLIENT_ERROR_BODY:
        body = await up_reader.readexactly(int(headers["content-length"]))
        if _is_request_json_error(body):
            head = b"HTTP/1.1 400 Bad Request\r\n" + rest
        writer.write(head + body)
        progress.started = True
        await writer.drain()
        return headers.get("connection", "").lower() != "close"
    writer.write(head)
    progress.started = True
    keep_alive = headers.get("connection", "").lower() != "close"
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        await writer.drain()
        return keep_alive
    if "chunked" in headers.get("transfer-encoding", "").lower():
        progress.chunked = True
        while True:  # streamed answers (generate_stream's SSE) reach the client chunk by chunk
            progress.at_boundary = True
            size_line = await up_reader.readuntil(b"\r\n")
            progress.at_boundary = False
            writer.write(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (line := await up_reader.readuntil(b"\r\n")) != b"\r\n":
                    writer.write(line)
                writer.write(b"\r\n")
                await writer.drain()
                return keep_alive
            await _copy_exactly(up_reader, writer, size + 2)
    if "content-length" in headers:
        await _copy_exactly(up_reader, writer, int(headers["content-length"]))
        return keep_alive
    while data := await up_reader.read(RELAY_CHUNK):  # framed by the end of the connection
        writer.write(data)
        await writer.drain()
    return False


def _is_request_json_error(body: bytes) -> bool:
    """Whether a 500's body is tritonserver's error for a request body it could not read as the
    inference JSON (malformed JSON, no "inputs", a number in BYTES data): the client's mistake.
    Triton 2.51's HTTP server reads requests with triton_json, whose errors it raises as
    TRITONSERVER_ERROR_INTERNAL (server src/common.h TRITONJSON_STATUSRETURN), hence its 500."""
    try:
        message = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        return False
    return isinstance(message, str) and message.startswith(REQUEST_JSON_ERRORS)


async def _answer(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    reason = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type",
              431: "Request Header Fields Too Large", 503: "Service Unavailable"}[status]
    body = json.dumps({"error": message}).encode()
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n".encode() + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _get_body(host: str, port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        headers = _parse_head(head)[3]
        if "content-length" in headers:
            return await reader.readexactly(int(headers["content-length"]))
        return await reader.read()
    finally:
        writer.close()
