"""One tritonserver process: ports, start in its own process group, wait until ready (with a
one-line error quoting the log when it fails), stop the whole group."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ...errors import TritonizeError
from .access import RestrictedApis
from .install import ServerInstall, find_tritonserver
from .logs import has_stub_failure, last_line_hint, model_load_failures, port_in_use

MODEL_CONTROL_MODES = ("none", "poll", "explicit")
STUB_FAILURE_GRACE_S = 10.0  # an initialize() error makes the server exit by itself within a few s
LOOPBACK = "127.0.0.1"
EXIT_TIMEOUT_S = 30  # tritonserver's own default for --exit-timeout-secs
CONTROL_WATCH_S = 0.2  # how often a repository API call looks whether the server is still running


class ServerError(TritonizeError):
    """tritonserver could not start, did not become ready, or a model in the repository failed to load."""


class ServerExited(ConnectionError):
    """tritonserver exited while a repository API call waited for its answer (an OSError, as a
    refused connection is)."""


# The python backend's shared memory with each stub, /dev/shm/<prefix><uuid> (the prefix:
# triton-inference-server/python_backend r24.10, src/python_be.cc, backend_state->
# shared_memory_region_prefix; a uuid a stub in tritonserver 2.51's "Starting Python backend stub"
# log lines). The server unlinks a region when its model unloads; a killed server leaves them all
# (354 of 1 MB after a day of this project's tests that kill servers and stubs).
PYTHON_BACKEND_SHM_PREFIX = "triton_python_backend_shm_region_"
SHM_DIR = Path("/dev/shm")
ORPHAN_MIN_AGE_S = 10.0  # a region a starting server created an instant ago may not be mapped yet


def remove_orphaned_shm_regions(shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink the python backend's regions that no process maps (their server and stubs are dead),
    older than ORPHAN_MIN_AGE_S; the names removed. Nothing is removed when the memory map of a
    tritonserver or a stub cannot be read (another user's): it may be using them."""
    now = time.time()
    try:
        candidates = [p for p in shm_dir.glob(PYTHON_BACKEND_SHM_PREFIX + "*")
                      if now - p.stat().st_mtime > ORPHAN_MIN_AGE_S]
    except OSError:
        return []
    if not candidates:
        return []
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text(errors="replace")
        except FileNotFoundError:  # the process ended meanwhile
            continue
        except OSError:
            if _may_map_regions(maps.parent):
                return []
            continue
        mapped |= regions_in_memory_map(text)
    removed = []
    for region in candidates:
        if region.name not in mapped:
            with contextlib.suppress(FileNotFoundError):
                region.unlink()
                removed.append(region.name)
    return removed


def regions_in_memory_map(maps: str) -> set[str]:
    """The python backend's regions a /proc/PID/maps text maps ("... /dev/shm/NAME [(deleted)]")."""
    return {line.rsplit("/", 1)[-1].split(" ")[0] for line in maps.splitlines() if PYTHON_BACKEND_SHM_PREFIX in line}


def _may_map_regions(process: Path) -> bool:
    """Whether a process whose memory map is unreadable may be a tritonserver or one of its stubs
    (only they map the backend's regions: clients may not register shared memory under its prefix)."""
    try:
        name = (process / "comm").read_text().strip()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return name.startswith(("tritonserver", "triton_python"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def free_ports(count: int, exclude: Iterable[int] = ()) -> list[int]:
    """`count` distinct free ports, none of `exclude`."""
    excluded = set(exclude)
    chosen: list[int] = []
    while len(chosen) < count:
        port = free_port()
        if port not in excluded and port not in chosen:
            chosen.append(port)
    return chosen


class TritonServer:
    """One tritonserver process on a model repository.

    Ports left as None are picked free at start (and picked again if another process takes one
    first). Every endpoint binds `host` (loopback unless told otherwise; `http_host` and
    `metrics_host` override it for those two). `restricted` puts the model-repository,
    shared-memory, logging and trace APIs behind a key. The server runs in its own process group, so stop() reaches the python-backend stubs
    too, and it is told to exit with the process that started it, so a killed test run leaves no
    server behind. The server's log goes to `log_path` (default: a fresh temp dir).

        with TritonServer(repo) as server:   # started and ready
            client = tritonclient.http.InferenceServerClient(server.http_url)
    """

    def __init__(self, repository: str | Path, http_port: int | None = None, grpc_port: int | None = None,
                 metrics_port: int | None = None, *, log_path: str | Path | None = None,
                 extra_args: Iterable[str] = (), startup_timeout_s: float = 180, model_control: str = "none",
                 install: ServerInstall | None = None, host: str = LOOPBACK, http_host: str | None = None,
                 metrics_host: str | None = None, restricted: RestrictedApis | None = None,
                 exit_timeout_s: int = EXIT_TIMEOUT_S):
        if model_control not in MODEL_CONTROL_MODES:
            raise ValueError(f"model_control must be one of {MODEL_CONTROL_MODES}, got {model_control!r}")
        self.repository = Path(repository).resolve()
        self._requested_ports = (http_port, grpc_port, metrics_port)
        self.http_port, self.grpc_port, self.metrics_port = self._requested_ports
        self.log_path = Path(log_path) if log_path is not None else \
            Path(tempfile.mkdtemp(prefix="tritonize-server-")) / "tritonserver.log"
        self.extra_args = tuple(extra_args)
        self.startup_timeout_s = startup_timeout_s
        self.model_control = model_control
        self.hosts = (http_host or host, host, metrics_host or http_host or host)
        self.restricted = restricted
        self.exit_timeout_s = exit_timeout_s
        self._install = install
        self.process: subprocess.Popen | None = None
        self._log_offset = 0  # where the current process's output starts in log_path

    # -- endpoints ------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """'localhost:PORT', the form tritonclient.http and perf_analyzer take."""
        return f"{connect_host(self.hosts[0])}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{connect_host(self.hosts[1])}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """'localhost:PORT/metrics', the form perf_analyzer's --metrics-url takes."""
        return f"{connect_host(self.hosts[2])}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("this TritonServer is already running")
        if not self.repository.is_dir():
            raise ServerError("model repository not found", file=self.repository,
                              fix="build one with `tritonize build model.yaml`")
        install = self._install or find_tritonserver()
        self._install = install
        self._pick_ports()
        assert self.http_port is not None and self.grpc_port is not None and self.metrics_port is not None
        http_host, grpc_host, metrics_host = self.hosts
        access = [f"--http-address={http_host}", f"--grpc-address={grpc_host}", f"--metrics-address={metrics_host}",
                  *(self.restricted.server_args() if self.restricted else [])]
        if not any(arg.startswith("--exit-timeout-secs") for arg in self.extra_args):  # callers' own wins
            access.append(f"--exit-timeout-secs={self.exit_timeout_s}")
        command = install.command(self.repository, self.http_port, self.grpc_port, self.metrics_port,
                                  self.model_control, [*access, *self.extra_args])
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            shown = " ".join(command)
            log.write(("$ " + (self.restricted.redact(shown) if self.restricted else shown) + "\n").encode())
            log.flush()
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=install.environment(),
                                            start_new_session=True, preexec_fn=_exit_with_parent_hook())

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Poll /v2/health/ready until the server and all its models are ready.

        If the server exits first, raise a one-line ServerError quoting why (the model that failed
        to load and its error, a port in use, ...). Auto-picked ports lost to a race are re-picked.
        A python-backend stub that dies before its model is created (e.g. no model.py) leaves
        tritonserver 2.51 waiting forever: such a failure stops the server after a short grace.
        """
        if self.process is None:
            raise RuntimeError("call start() before wait_ready()")
        deadline = time.monotonic() + (self.startup_timeout_s if timeout_s is None else timeout_s)
        port_retries = 3
        stub_failed_at: float | None = None
        while True:
            if self._endpoints_up() and self.process.poll() is None:
                return
            code = self.process.poll()
            if code is not None:
                log = self.log_text()
                taken = port_in_use(log)
                if port_retries and taken and self._requested_ports[taken[0]] is None:
                    port_retries -= 1
                    self.start()
                    continue
                raise self._startup_error(log, f"tritonserver exited with code {code} before it was ready")
            now = time.monotonic()
            if stub_failed_at is None and has_stub_failure(self.log_text()):
                stub_failed_at = now
            if stub_failed_at is not None and now - stub_failed_at > STUB_FAILURE_GRACE_S:
                log = self.log_text()
                self.stop()
                raise self._startup_error(log, "a python-backend stub failed and tritonserver did not exit")
            if now > deadline:
                log = self.log_text()
                self.stop()
                raise self._startup_error(log, "tritonserver did not become ready within "
                                               f"{self._timeout_text(timeout_s)}")
            time.sleep(0.1)

    def stop(self, timeout_s: float | None = None, *, settled: Callable[[str], bool] | None = None) -> int | None:
        """SIGTERM (Triton unloads models and exits), SIGKILL the whole group after timeout_s
        (default: the exit timeout Triton was given plus 10 s), or as soon as `settled(log)` says
        that what the stopping server still waits for never ends (log: its output since SIGTERM).

        Always reaps the server and anything left in its process group; returns its exit code
        (1 when Triton reports that it failed to stop within its exit timeout, -9 when killed).
        """
        if timeout_s is None:
            timeout_s = self.exit_timeout_s + 10
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            since = self._log_size()
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while process.poll() is None and time.monotonic() < deadline:
                if settled is not None and settled(self._log_from(since)):
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.2)
        # The group id is the server's pid (start_new_session): this reaches stubs it left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        code = process.wait()
        if code != 0:  # killed or crashed: nothing unlinked its stubs' shared memory
            remove_orphaned_shm_regions()
        return code

    def log_text(self) -> str:
        """This run's server log (stdout and stderr)."""
        return self._log_from(self._log_offset)

    def _log_from(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    # -- queries --------------------------------------------------------------------------------
    def repository_index(self, timeout_s: float = 120) -> list[dict]:
        """POST /v2/repository/index: [{'name', 'version', 'state', 'reason'}, ...]."""
        return json.loads(self.control("index", timeout_s=timeout_s))

    def control(self, action: str, model: str | None = None, timeout_s: float = 120) -> bytes:
        """POST /v2/repository[/models/MODEL]/ACTION (index, load, unload) with the key, if any.

        Raises ServerExited as soon as the server exits meanwhile: a python stub that a load
        through this API starts inherits tritonserver's sockets (23 seen, this request's
        connection among them), so a server that dies (seen: the python backend's abort, a
        boost lock_exception, while the model of a killed stub reloads) leaves the connection open
        and the answer would be waited for the whole timeout."""
        path = "/v2/repository" + (f"/models/{model}" if model else "") + f"/{action}"
        headers = {"Content-Type": "application/json", **(self.restricted.headers if self.restricted else {})}
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=b"{}", method="POST", headers=headers)
        answer: dict[str, Any] = {}

        def call() -> None:
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as response:
                    answer["body"] = response.read()
            except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
                answer["error"] = error

        worker = threading.Thread(target=call, name=f"tritonserver-{action}", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(CONTROL_WATCH_S)
            if worker.is_alive() and self.process is not None and self.process.poll() is not None:
                raise ServerExited(f"tritonserver exited (code {self.process.returncode}) during {action}"
                                   + (f" of '{model}'" if model else ""))
        if "error" in answer:
            raise answer["error"]
        return answer["body"]

    def update_log_settings(self, settings: dict) -> None:
        """POST /v2/logging (e.g. {"log_verbose_level": 1}) with the key, if any."""
        headers = {"Content-Type": "application/json", **(self.restricted.headers if self.restricted else {})}
        request = urllib.request.Request(f"http://{self.http_url}/v2/logging", data=json.dumps(settings).encode(),
                                         method="POST", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def metadata(self) -> dict:
        with urllib.request.urlopen(f"http://{self.http_url}/v2", timeout=10) as response:
            return json.load(response)

    # -- internals ------------------------------------------------------------------------------
    def _pick_ports(self) -> None:
        chosen: list[int] = []
        for requested in self._requested_ports:
            port = requested
            while port is None or (requested is None and port in chosen):
                port = free_port()
            chosen.append(port)
        self.http_port, self.grpc_port, self.metrics_port = chosen

    def _endpoints_up(self) -> bool:
        """Ready, and the metrics endpoint (started last) up: a port clash there ends the server."""
        if not _http_ok(f"http://{self.http_url}/v2/health/ready"):
            return False
        return "--allow-metrics=false" in self.extra_args or _http_ok(f"http://{self.metrics_url}")

    def _timeout_text(self, timeout_s: float | None) -> str:
        return f"{self.startup_timeout_s if timeout_s is None else timeout_s:g} s"

    def _startup_error(self, log: str, what: str) -> ServerError:
        fix = f"full server log: {self.log_path}"
        failures = model_load_failures(log, self.repository)
        if failures:
            names = ", ".join(f"'{name}'" for name, _ in failures)
            detail = failures[0][1] if len(failures) == 1 else \
                "; ".join(f"{name}: {message}" for name, message in failures)
            file = self.repository / failures[0][0] if len(failures) == 1 else self.repository
            return ServerError(f"model{'s' if len(failures) > 1 else ''} {names} failed to load: {detail}",
                               file=file, fix=f"correct the model, then start again; {fix}")
        taken = port_in_use(log)
        if taken:
            index, service, port = taken
            option = ("--http-port", "--grpc-port", "--metrics-port")[index]
            return ServerError(f"the {service} port {port} is already in use", file=self.repository,
                               fix=f"stop what listens there, or choose another port with {option}")
        return ServerError(f"{what}{last_line_hint(log)}", file=self.repository, fix=fix)


def connect_host(bound: str) -> str:
    """The host a local client reaches an address bound to `bound` with."""
    return "localhost" if bound in ("0.0.0.0", "::", LOOPBACK, "localhost") else bound


def _exit_with_parent_hook():
    """A preexec_fn giving the server SIGTERM when the thread that started it dies.

    libc is resolved here, in the parent: the child of a multi-threaded process must not dlopen.
    """
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no such guard, stop() still cleans up
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:  # URLError and refused/reset connections included: not up (yet)
        return False
