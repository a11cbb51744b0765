"""An asyncio front (the HTTP guard, the gRPC relay) served in a daemon thread of its own, driven
from the supervisor's thread: start() binds and raises the bind's error there, stop() ends it."""
from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any


class LoopThread:
    thread_name = "tritonize-front"

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    async def _bind(self) -> Any:
        """Listen (raise OSError if a port is taken); what it returns goes to _serve_until_stopped."""
        raise NotImplementedError

    async def _close(self, bound: Any) -> None:
        """After stop(): close what _bind opened."""

    def start(self) -> None:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._stopped = asyncio.Event()
                bound = loop.run_until_complete(self._bind())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_until_complete(self._serve_until_stopped(bound))
            loop.close()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            self.call_soon(self._stopped.set)
            self._thread.join(timeout=10)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run callback in the front's loop, from any thread; nothing once the loop has ended."""
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(callback, *args)

    async def _serve_until_stopped(self, bound: Any) -> None:
        assert self._stopped is not None
        await self._stopped.wait()
        await self._close(bound)
