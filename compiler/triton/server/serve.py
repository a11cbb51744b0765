"""`tritonize serve`: one supervised server in the foreground until Ctrl-C or SIGTERM.

Layout: tritonserver's HTTP, gRPC and metrics endpoints listen on private loopback ports behind
the fronts: the guard (guard.py) owns the public HTTP and metrics ports, the relay (grpc_relay.py)
the public gRPC port; they bind `host` (127.0.0.1 unless told otherwise). The server runs in
explicit model-control mode with every model loaded and the model-repository, shared-memory,
logging and trace APIs behind a key of its own, which the fronts give to clients showing the
operator's key (access.py); the supervisor (supervisor.py) reloads models whose python stub died
and restarts a server that died.
"""
from __future__ import annotations

import contextlib
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import TritonizeError
from ...terminal import Terminal
from .access import RESTRICTED_APIS, KeyExchange, RestrictedApis, resolve_key, server_key
from .availability import Availability
from .grpc_relay import GrpcRelay
from .guard import HttpGuard
from .logs import UnloadReport, last_line_hint, last_unload_report
from .process import EXIT_TIMEOUT_S, LOOPBACK, MODEL_CONTROL_MODES, ServerError, TritonServer, connect_host, free_ports
from .supervisor import Supervisor

DEFAULT_MAX_REQUEST_MB = 64


@dataclass(frozen=True)
class OpenAIOptions:
    """`--openai`: the OpenAI-compatible frontend next to the server (tritonize.openai)."""

    port: int = 9000
    api_keys_file: Path | None = None


def serve_forever(repository: str | Path, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                  terminal: Terminal | None = None, *, host: str = LOOPBACK, api_key_file: Path | None = None,
                  restart: str = "on-failure", exit_timeout_s: int = EXIT_TIMEOUT_S,
                  max_request_mb: float = DEFAULT_MAX_REQUEST_MB, log_path: Path | None = None,
                  model_control: str = "none", load_models: Sequence[str] = (),
                  openai: OpenAIOptions | None = None) -> int:
    """`tritonize serve`: start, wait until ready, list the models, supervise until Ctrl-C or
    SIGTERM; 0 after a clean stop, 1 when tritonserver reports that it did not stop cleanly.

    model_control "none" (the default) serves every model, with explicit control under the hood
    so the supervisor can reload one; "explicit" loads only load_models at start and leaves the
    model-repository API open (Model Analyzer's remote mode loads and unloads through it);
    "poll" reloads models whose files change (the supervisor cannot reload a model there)."""
    terminal = terminal or Terminal()
    repository = Path(repository).resolve()
    if not repository.is_dir():
        raise ServerError("model repository not found", file=repository,
                          fix="build one with `tritonize build model.yaml`")
    if model_control not in MODEL_CONTROL_MODES:
        raise TritonizeError(f"--model-control-mode {model_control!r} is not one of {', '.join(MODEL_CONTROL_MODES)}",
                             fix="use none, poll or explicit")
    if load_models and model_control != "explicit":
        raise TritonizeError("--load-model needs --model-control-mode explicit (the other modes load every model)",
                             fix="add --model-control-mode explicit, or drop --load-model")
    if model_control == "none":
        mode, loads = "explicit", ["--load-model=*"]
    else:
        mode, loads = model_control, [f"--load-model={name}" for name in load_models]
    # Other than the public ones: the fronts bind those only after this, and a private port equal
    # to its own would relay to itself.
    private_http_port, private_grpc_port, private_metrics_port = free_ports(
        3, exclude={http_port, grpc_port, metrics_port})
    server = TritonServer(repository, private_http_port, private_grpc_port, private_metrics_port, host=LOOPBACK,
                          model_control=mode, extra_args=loads, log_path=log_path, exit_timeout_s=exit_timeout_s)
    key, key_source = resolve_key(api_key_file, server.log_path.parent / "api-key")
    apis: tuple[str, ...] = RESTRICTED_APIS
    if model_control == "explicit":
        apis = tuple(api for api in RESTRICTED_APIS if api != "model-repository")
        terminal.warning("--model-control-mode explicit: the model-repository API (load/unload) is open to every "
                         "client that reaches the server, as Model Analyzer's remote mode needs")
    server.restricted = RestrictedApis(server_key(), apis=apis)
    keys = KeyExchange(key, server.restricted)
    availability = Availability()
    max_body_bytes = int(max_request_mb * 1024 * 1024)
    guard = HttpGuard(host, http_port, private_http_port, max_body_bytes=max_body_bytes, availability=availability,
                      keys=keys, metrics_port=metrics_port, metrics_upstream_port=private_metrics_port)
    relay = GrpcRelay(host, grpc_port, private_grpc_port, availability=availability, keys=keys,
                      max_message_bytes=max_body_bytes)
    supervisor = Supervisor(server, availability, restart=restart, terminal=terminal)
    guard.extra_metrics = supervisor.metrics_text
    frontend = None
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        try:
            guard.start()
            relay.start()
        except OSError as error:
            raise ServerError(f"cannot listen on {host}:{http_port}, {host}:{grpc_port} or {host}:{metrics_port}: "
                              f"{error.strerror}", fix="stop what listens there, or choose others with "
                              "--http-port/--grpc-port/--metrics-port") from None
        with terminal.status(f"Starting tritonserver on {repository}"):
            server.start()
            server.wait_ready()
        version = server.metadata().get("version", "?")
        public = connect_host(host)
        terminal.success(f"tritonserver {version} is ready")
        terminal.info(f"  HTTP     http://{public}:{http_port}   (guarded: bodies up to {max_request_mb:g} MB)")
        terminal.info(f"  gRPC     {public}:{grpc_port}   (relayed: messages up to {max_request_mb:g} MB)")
        terminal.info(f"  metrics  http://{public}:{metrics_port}/metrics")
        terminal.info(f"  log      {server.log_path}")
        terminal.info(f"  key      from {key_source}, sent as header '{keys.http_header}' (gRPC: "
                      f"'{keys.grpc_header}'), unlocks the " + ", ".join(server.restricted.apis) + " APIs")
        rows = [[m["name"], m.get("version", ""), m.get("state", ""), m.get("reason", "")]
                for m in server.repository_index()]
        terminal.table("Models", ["Model", "Version", "State", "Reason"], rows)
        if openai is not None:
            from ...openai import Frontend

            # Straight to tritonserver's private port: the relay would be a second hop on this
            # process's GIL; the frontend reads the availability the relay would apply.
            frontend = Frontend(repository, f"{LOOPBACK}:{private_grpc_port}", port=openai.port,
                                api_keys_file=openai.api_keys_file, availability=availability)
            frontend.start()
            terminal.info(f"  OpenAI   {frontend.url} (models: {', '.join(frontend.models)}; "
                          f"metrics http://localhost:{openai.port}/metrics"
                          + (", API keys required" if frontend.api_keys else "") + ")")
        check = f"tritonize check {repository}"
        if (http_port, grpc_port) != (8000, 8001) or public != "localhost":
            check += f" --url {public}:{http_port}" + (f" --grpc-url {public}:{grpc_port}"
                                                      if grpc_port != http_port + 1 else "")
        terminal.info(f"Check it with `{check}`; press Ctrl-C to stop.")
        supervisor.watch()
        return 1  # watch() only returns by an exception
    except KeyboardInterrupt:
        return _stop(server, guard, relay, supervisor, terminal, [frontend.backend] if frontend else [])
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        if frontend is not None:
            frontend.stop()
        server.stop()
        relay.stop()
        guard.stop()
        signal.signal(signal.SIGTERM, previous_sigterm)


def _stop(server: TritonServer, guard: HttpGuard, relay: GrpcRelay, supervisor: Supervisor, terminal: Terminal,
          other_fronts: Sequence[Any]) -> int:
    """Stop the server after its in-flight requests: 0 when it stopped cleanly, 1 when Triton reports
    that it did not within its exit timeout."""
    stuck, stuck_models = supervisor.stuck_unloading, supervisor.stuck_models
    left: list[int] = []
    seen: list[UnloadReport | None] = [None]

    def only_stuck_left(log: str) -> bool:
        """Every request through the fronts finished and Triton waits only for model objects
        that requests left by dead stubs hold, which it never finishes unloading."""
        report = last_unload_report(log)
        complete, seen[0] = report is not None and report == seen[0], report  # no newer report since the last look
        if not complete or report is None or report.requests or not report.live or report.live > stuck \
                or not set(report.served) <= stuck_models \
                or any(front.in_flight for front in [guard, relay, *other_fronts]):
            return False
        left.append(report.live)
        return True

    with terminal.status("Stopping tritonserver"):
        guard.drain()  # in-flight requests finish; new ones get 503 while Triton drains
        for front in other_fronts:  # an idle stream of the OpenAI frontend keeps its model loaded
            front.release_idle_streams()
        if stuck:  # Triton lists the models it still waits for only at verbose level 1
            with contextlib.suppress(OSError):
                server.update_log_settings({"log_verbose_level": 1})
        code = server.stop(settled=only_stuck_left if stuck else None)
    if left:
        terminal.success(f"tritonserver stopped: every request finished and every model unloaded but {left[0]} "
                         "model object(s) held by requests of a python stub that had died, which tritonserver "
                         "2.51 never finishes unloading; it was ended instead of waiting its exit timeout")
        return 0
    if code not in (0, None):
        terminal.error(f"tritonserver did not stop cleanly (exit code {code}{last_line_hint(server.log_text())})")
        return 1
    terminal.success("tritonserver stopped")
    return 0


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
