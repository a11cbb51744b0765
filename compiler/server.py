"""Run the real tritonserver that ships in the nvidia-pytriton wheel, with no container.

`find_tritonserver()` locates the binary and prepares (once per user, shared by every run) a backend
directory holding the python backend plus the stub for the running Python. `TritonServer` starts one
server as a child process in its own process group, waits until it is ready and always stops it;
`serve_forever` is what `tritonize serve` runs.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import MissingDependency, TritonizeError
from .terminal import Terminal

PYTRITON_PACKAGE = "nvidia-pytriton"
PYTRITON_VERSION = "0.7.0"  # ships Triton Inference Server 2.51.0 (NGC 24.10)
MODEL_CONTROL_MODES = ("none", "poll", "explicit")


class ServerError(TritonizeError):
    """tritonserver could not start, did not become ready, or a model in the repository failed to load."""


@dataclass(frozen=True)
class ServerInstall:
    """Where the embedded tritonserver lives and what it needs in its environment."""

    binary: Path
    backend_dir: Path  # holds python/{libtriton_python.so, triton_python_backend_utils.py, triton_python_backend_stub}
    cache_dir: Path  # response-cache plugins (local/libtritoncache_local.so)
    library_dirs: tuple[Path, ...]
    python_bin_dir: Path

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        libs = [str(p) for p in self.library_dirs]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        # The stub embeds Python and finds its prefix by looking up `python3` on PATH; the first
        # one found decides the environment (its pyvenv.cfg, its site-packages) that model.py runs in.
        env["PATH"] = os.pathsep.join([str(self.python_bin_dir), env.get("PATH", "")])
        return env

    def command(self, repository: Path, http_port: int, grpc_port: int, metrics_port: int,
                model_control: str = "none", extra_args: Sequence[str] = ()) -> list[str]:
        return [str(self.binary), f"--model-repository={repository}", f"--backend-directory={self.backend_dir}",
                f"--cache-directory={self.cache_dir}", f"--http-port={http_port}", f"--grpc-port={grpc_port}",
                f"--metrics-port={metrics_port}", f"--model-control-mode={model_control}", *extra_args]


def find_tritonserver() -> ServerInstall:
    """Locate the wheel's tritonserver and prepare its backend directory (idempotent, safe to race)."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"{PYTRITON_PACKAGE}=={PYTRITON_VERSION}", "running tritonserver")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    dist_dir = package_dir / "tritonserver"
    binary = dist_dir / "bin" / "tritonserver"
    python_backend = dist_dir / "backends" / "python"
    if not binary.is_file() or not (python_backend / "libtriton_python.so").is_file():
        raise TritonizeError(f"the installed {PYTRITON_PACKAGE} has no tritonserver binary",
                             file=dist_dir, fix=f"pip install --force-reinstall {PYTRITON_PACKAGE}=={PYTRITON_VERSION}")
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist_dir / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not stub.is_file():
        shipped = sorted(p.name for p in (dist_dir / "python_backend_stubs").iterdir())
        raise TritonizeError(f"{PYTRITON_PACKAGE} has no python-backend stub for Python {python_version}",
                             file=stub.parent.parent, fix=f"run tritonize with Python {', '.join(shipped)}")
    version = importlib.metadata.version(PYTRITON_PACKAGE)
    prepared = _prepare_backends(dist_dir, stub, key=f"pytriton-{version}-py{python_version}")

    library_dirs = [package_dir.parent / "nvidia_pytriton.libs"]
    # The stub links libpython3.X.so.1.0: prefer the running interpreter's own, so the stub's C
    # library matches the standard library it will import.
    libpython_dir = Path(sysconfig.get_config_var("LIBDIR") or "")
    ldlibrary = sysconfig.get_config_var("INSTSONAME") or ""
    if ldlibrary and (libpython_dir / ldlibrary).is_file():
        library_dirs.append(libpython_dir)
    return ServerInstall(binary=binary, backend_dir=prepared / "backends", cache_dir=prepared / "caches",
                         library_dirs=tuple(library_dirs), python_bin_dir=Path(sys.executable).parent)


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tritonize" / "tritonserver"


def _prepare_backends(dist_dir: Path, stub: Path, key: str) -> Path:
    """Copy backends/python + the stub and caches/ into <cache>/<key>/ once.

    Built in a temporary sibling directory and renamed into place, so concurrent callers either
    see a complete directory or none; the loser of a rename race drops its copy.
    """
    final = _cache_root() / key
    if _backends_complete(final):
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # no writable home (CI users, containers): a per-user temp dir serves as well
        final = Path(tempfile.gettempdir()) / f"tritonize-{os.getuid()}" / "tritonserver" / key
        if _backends_complete(final):
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        shutil.copytree(dist_dir / "backends", staging / "backends",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, staging / "backends" / "python" / "triton_python_backend_stub")
        shutil.copytree(dist_dir / "caches", staging / "caches")
        if final.exists() and not _backends_complete(final):
            shutil.rmtree(final, ignore_errors=True)  # a partial copy left by hand or a full disk
        try:
            os.rename(staging, final)
        except OSError:
            if not _backends_complete(final):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _backends_complete(root: Path) -> bool:
    python = root / "backends" / "python"
    return all((python / name).is_file() for name in
               ("libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class TritonServer:
    """One tritonserver process on a model repository.

    Ports left as None are picked free at start (and picked again if another process takes one
    first). The server runs in its own process group, so stop() reaches the python-backend stubs
    too, and it is told to exit with the process that started it, so a killed test run leaves no
    server behind. The server's log goes to `log_path` (default: a fresh temp dir).

        with TritonServer(repo) as server:   # started and ready
            client = tritonclient.http.InferenceServerClient(server.http_url)
    """

    def __init__(self, repository: str | Path, http_port: int | None = None, grpc_port: int | None = None,
                 metrics_port: int | None = None, *, log_path: str | Path | None = None,
                 extra_args: Iterable[str] = (), startup_timeout_s: float = 180, model_control: str = "none",
                 install: ServerInstall | None = None):
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
        self._install = install
        self.process: subprocess.Popen | None = None
        self._log_offset = 0  # where the current process's output starts in log_path

    # -- endpoints ------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """'localhost:PORT', the form tritonclient.http and perf_analyzer take."""
        return f"localhost:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """'localhost:PORT/metrics', the form perf_analyzer's --metrics-url takes."""
        return f"localhost:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "TritonServer":
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
        command = install.command(self.repository, self.http_port, self.grpc_port, self.metrics_port,
                                  self.model_control, self.extra_args)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(("$ " + " ".join(command) + "\n").encode())
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
                taken = _port_in_use(log)
                if port_retries and taken and self._requested_ports[taken[0]] is None:
                    port_retries -= 1
                    self.start()
                    continue
                raise self._startup_error(log, f"tritonserver exited with code {code} before it was ready")
            now = time.monotonic()
            if stub_failed_at is None and _STUB_FAILURE.search(self.log_text()):
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

    def stop(self, timeout_s: float = 40) -> int | None:
        """SIGTERM (Triton unloads models and exits), SIGKILL the whole group after timeout_s.

        Always reaps the server and anything left in its process group; returns its exit code.
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        # The group id is the server's pid (start_new_session): this reaches stubs it left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait()

    def log_text(self) -> str:
        """This run's server log (stdout and stderr)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # -- queries --------------------------------------------------------------------------------
    def repository_index(self) -> list[dict]:
        """POST /v2/repository/index: [{'name', 'version', 'state', 'reason'}, ...]."""
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

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
        failures = _model_load_failures(log, self.repository)
        if failures:
            names = ", ".join(f"'{name}'" for name, _ in failures)
            detail = failures[0][1] if len(failures) == 1 else \
                "; ".join(f"{name}: {message}" for name, message in failures)
            file = self.repository / failures[0][0] if len(failures) == 1 else self.repository
            return ServerError(f"model{'s' if len(failures) > 1 else ''} {names} failed to load: {detail}",
                               file=file, fix=f"correct the model, then start again; {fix}")
        taken = _port_in_use(log)
        if taken:
            index, service, port = taken
            option = ("--http-port", "--grpc-port", "--metrics-port")[index]
            return ServerError(f"the {service} port {port} is already in use", file=self.repository,
                               fix=f"stop what listens there, or choose another port with {option}")
        return ServerError(f"{what}{_last_line_hint(log)}", file=self.repository, fix=fix)


def serve_forever(repository: str | Path, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                  terminal: Terminal | None = None) -> int:
    """`tritonize serve`: start, wait until ready, list the models, block until Ctrl-C or SIGTERM."""
    terminal = terminal or Terminal()
    repository = Path(repository)
    server = TritonServer(repository, http_port, grpc_port, metrics_port)
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with terminal.status(f"Starting tritonserver on {repository}"):
            server.start()
            server.wait_ready()
        version = server.metadata().get("version", "?")
        terminal.success(f"tritonserver {version} is ready")
        terminal.info(f"  HTTP     http://{server.http_url}")
        terminal.info(f"  gRPC     {server.grpc_url}")
        terminal.info(f"  metrics  http://{server.metrics_url}")
        terminal.info(f"  log      {server.log_path}")
        rows = [[m["name"], m.get("version", ""), m.get("state", ""), m.get("reason", "")]
                for m in server.repository_index()]
        terminal.table("Models", ["Model", "Version", "State", "Reason"], rows)
        check = f"tritonize check {repository}"
        if (http_port, grpc_port) != (8000, 8001):
            check += f" --url {server.http_url}" + (f" --grpc-url {server.grpc_url}" if grpc_port != http_port + 1 else "")
        terminal.info(f"Check it with `{check}`; press Ctrl-C to stop.")
        code = server.process.wait()
        raise ServerError(f"tritonserver exited unexpectedly with code {code}{_last_line_hint(server.log_text())}",
                          fix=f"see the server log {server.log_path}")
    except KeyboardInterrupt:
        with terminal.status("Stopping tritonserver"):
            server.stop()
        terminal.success("tritonserver stopped")
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous_sigterm)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


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


# E1122 11:30:57.340335 5907 model_lifecycle.cc:642] "failed to load 'broken' version 1: Internal: ..."
_LOAD_FAILURE = re.compile(r"^E\d{4} [\d:.]+ +\d+ \S+\] \"failed to load '([^']+)' version \d+: (.*)\"\s*$")
# Errors before a model is even tried, e.g. a config.pbtxt that does not parse.
_REPOSITORY_FAILURE = re.compile(r"^E\d{4} [\d:.]+ +\d+ \S+\] \"Poll failed for model directory '([^']+)': (.*)\"\s*$")
_PARSE_ERROR = re.compile(r"Error parsing text-format inference\.ModelConfig: (\d+):(\d+): (.*)$")
# A stub that dies before its model exists: "Failed to preinitialize Python stub: Python model file
# not found in '/repo/m/1/model.py'" (the server then hangs; see wait_ready).
_STUB_FAILURE = re.compile(r"Failed to (?:pre)?initialize Python stub: (.*?)\"?\s*$", re.MULTILINE)
STUB_FAILURE_GRACE_S = 10.0  # an initialize() error makes the server exit by itself within a few s


def _model_load_failures(log: str, repository: Path) -> list[tuple[str, str]]:
    failures: dict[str, str] = {}
    parse_error = ""  # protobuf logs where a config.pbtxt stops parsing just before the poll failure
    for line in log.splitlines():
        if (found := _PARSE_ERROR.search(line)) is not None:
            parse_error = f" (line {found.group(1)}, column {found.group(2)}: {found.group(3).strip()})"
        match = _LOAD_FAILURE.match(line) or _REPOSITORY_FAILURE.match(line)
        if match and match.group(1) not in failures:
            message = _one_line_message(match.group(2))
            if "failed to read text proto" in message:
                message, parse_error = message + parse_error, ""
            failures[match.group(1)] = message
    for match in _STUB_FAILURE.finditer(log):
        model = _model_in_path(match.group(1), repository)
        if model not in failures:
            failures[model] = _one_line_message(match.group(1))
    return list(failures.items())


def _model_in_path(message: str, repository: Path) -> str:
    """The model whose directory a message names: '/repo/<model>/1/model.py' -> '<model>'."""
    found = re.search(re.escape(str(repository)) + r"/([^/'\s]+)/", message)
    return found.group(1) if found else "?"


def _one_line_message(message: str) -> str:
    """Triton logs Python errors as 'Internal: ValueError: ...\\n\\nAt:\\n  file(line): function\\n'."""
    head, _, frames = message.partition("\\n\\nAt:\\n")
    head = head.replace("\\n", " ").removeprefix("Internal: ").strip()
    frame_lines = [f.strip() for f in frames.split("\\n") if f.strip()]
    return f"{head} (at {frame_lines[0]})" if frame_lines else head


# E1122 11:41:32.683948 18745 main.cc:257] "failed to start HTTP service: Unavailable - Socket '0.0.0.0:60167' already in use "
_PORT_IN_USE = re.compile(r"failed to start (HTTP|GRPC|Metrics) service: .*?'[^']*:(\d+)' already in use")
_PORT_INDEX = {"HTTP": 0, "GRPC": 1, "Metrics": 2}


def _port_in_use(log: str) -> tuple[int, str, int] | None:
    """(index into (http, grpc, metrics), service, port) of the port tritonserver could not bind."""
    found = _PORT_IN_USE.search(log)
    if found is None:
        return None
    service = found.group(1)
    return _PORT_INDEX[service], {"GRPC": "gRPC", "Metrics": "metrics"}.get(service, service), int(found.group(2))


def _last_line_hint(log: str) -> str:
    """': <last error line>' for a one-line message, skipping CPU-only noise (NVML, DCGM, CUDA)."""
    noise = ("CudaDriverHelper", "NVML", "DCGM", "CUDA", "pinned memory")
    lines = [line.strip() for line in log.splitlines()
             if line.strip() and not line.startswith(("+", "|", "$")) and not any(n in line for n in noise)]
    errors = [line for line in lines if line.startswith(("E", "error"))]
    chosen = errors[-1] if errors else (lines[-1] if lines else "")
    return f": {chosen[:300]}" if chosen else ""
