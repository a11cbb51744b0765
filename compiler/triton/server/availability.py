"""What `tritonize serve`'s fronts (the HTTP guard and the gRPC relay) refuse while tritonserver
is not fully serving: the one state both read, set by the supervisor and by serve's stop."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Availability:
    def __init__(self) -> None:
        self.recovering: dict[str, str] = {}  # model being reloaded -> the message its requests get
        self.restarting: str | None = None  # the server is restarting (cleared once ready and counted)
        self.draining = False  # the server is stopping
        self._fail_listeners: list[Callable[[list[str]], None]] = []

    def on_fail(self, listener: Callable[[list[str]], None]) -> None:
        """listener(models) is called (from the supervisor's thread) to end these models' requests now."""
        self._fail_listeners.append(listener)

    def fail_waiting(self, models: list[str]) -> None:
        """End the in-flight requests of these models (already in `recovering`) with its message."""
        for listener in self._fail_listeners:
            listener(models)

    def refusal(self, model: str) -> str | None:
        """Why a request for `model` is refused now, or None."""
        if self.draining:
            return "tritonserver is stopping"
        return self.restarting or self.recovering.get(model)


class FrontCall:
    """One call a front passes on to tritonserver: the models it names, and why the front ended it
    (if it did)."""

    def __init__(self) -> None:
        self.models: set[str] = set()
        self.failure: str | None = None
        self.upstream: Any = None  # the call to Triton (cancel() ends it)

    def end(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            if self.upstream is not None:
                self.upstream.cancel()  # the front's read of it raises CancelledError


def end_calls_of(calls: set[FrontCall], models: set[str], availability: Availability) -> None:
    """End the calls naming any of these models, each with the refusal its model gets now (run on
    the front's own loop: Triton would answer them after 1 s each, or never)."""
    for call in list(calls):
        if hit := call.models & models:
            model = next(iter(hit))
            call.end(availability.refusal(model) or f"model '{model}' failed")
