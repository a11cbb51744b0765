"""`tritonize serve REPO --stack`: the deployment's gateway and Prometheus configs run for real, as
local processes, in front of the embedded tritonserver.

nginx gets the same rendered nginx.conf as Kubernetes and compose, with only ports, the Triton
address and file locations changed (gateway.Placement); Prometheus gets the same recording and
alerting rules, scraping the local metrics port every second. Triton runs with the restricted
APIs behind a fresh admin key. Every port is picked free, every file lives in a temp directory,
and stop() ends every process this started (each in its own process group).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import TritonizeError
from ..triton.server import ServerError, TritonServer, free_port, free_ports
from ..triton.server.access import RestrictedApis
from ..triton.server.process import _exit_with_parent_hook
from .context import ADMIN_HEADER, RESTRICTED_APIS, DeployContext, load_context
from .gateway import Placement, api_keys_map, render_nginx
from .observability import alerting_rules, prometheus_config, recording_rules

STACK_CLIENT = "stack-client"


class StackError(TritonizeError):
    """nginx or Prometheus could not start for `serve --stack`."""


def _require(binary: str, package: str) -> str:
    path = shutil.which(binary) or next((p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}")
                                         if os.access(p, os.X_OK)), None)
    if path is None:
        raise StackError(f"`serve --stack` needs {binary}, which is not installed",
                         fix=f"run scripts/install-system-deps (Debian package {package})")
    return path


class Stack:
    """tritonserver + nginx gateway + Prometheus on free local ports.

        with Stack(repo) as stack:
            client = tritonclient.http.InferenceServerClient(stack.gateway_http_url,)
            client.infer(..., headers=stack.auth_headers)
    """

    def __init__(self, repository: str | Path, *, context: DeployContext | None = None,
                 api_keys: dict[str, str] | None = None, work_dir: str | Path | None = None,
                 startup_timeout_s: float = 180):
        self.repository = Path(repository)
        self.context = context or load_context(self.repository)
        self.admin_key = secrets.token_hex(16)
        self.api_keys = api_keys or {STACK_CLIENT: secrets.token_hex(16)}
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="tritonize-stack-"))
        self.startup_timeout_s = startup_timeout_s
        self.server = TritonServer(
            self.repository, log_path=self.work_dir / "tritonserver.log", startup_timeout_s=startup_timeout_s,
            restricted=RestrictedApis(self.admin_key, apis=RESTRICTED_APIS, header=ADMIN_HEADER),
            exit_timeout_s=self.context.deploy.drain_timeout_s, extra_args=["--metrics-config=summary_latencies=true"])
        self.gateway_http_port = self.gateway_grpc_port = self.prometheus_port = 0
        self.nginx_process: subprocess.Popen | None = None
        self.prometheus_process: subprocess.Popen | None = None

    # -- endpoints ------------------------------------------------------------------------------
    @property
    def gateway_http_url(self) -> str:
        return f"localhost:{self.gateway_http_port}"

    @property
    def gateway_grpc_url(self) -> str:
        return f"localhost:{self.gateway_grpc_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://localhost:{self.prometheus_port}"

    @property
    def api_key(self) -> str:
        return next(iter(self.api_keys.values()))

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def access_log(self) -> Path:
        return self.work_dir / "gateway" / "access.log"

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        nginx, prometheus = _require("nginx", "nginx"), _require("prometheus", "prometheus")
        self.server.start()
        self.server.wait_ready()
        self._start_nginx(nginx)
        self._start_prometheus(prometheus)

    def stop(self) -> None:
        """Gateway first (nginx -s quit semantics: SIGQUIT finishes open requests), then
        Prometheus, then Triton (SIGTERM: drains in-flight requests)."""
        for process, sig in ((self.nginx_process, signal.SIGQUIT), (self.prometheus_process, signal.SIGTERM)):
            if process is None:
                continue
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=15)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.server.stop()

    # -- nginx ----------------------------------------------------------------------------------
    def nginx_conf(self) -> str:
        base = self.work_dir / "gateway"
        placement = Placement(listen_http=f"127.0.0.1:{self.gateway_http_port}",
                              listen_grpc=f"127.0.0.1:{self.gateway_grpc_port}",
                              triton_http=f"127.0.0.1:{self.server.http_port}",
                              triton_grpc=f"127.0.0.1:{self.server.grpc_port}",
                              pid_path=str(base / "nginx.pid"), temp_dir=str(base),
                              error_log=str(base / "error.log"), access_log=str(self.access_log),
                              worker_processes="1")
        return render_nginx(self.context, placement)

    def _start_nginx(self, binary: str) -> None:
        base = self.work_dir / "gateway"
        (base / "conf").mkdir(parents=True, exist_ok=True)
        (base / "keys").mkdir(exist_ok=True)
        keys = base / "keys" / "api-keys.map"
        keys.write_text(api_keys_map(self.api_keys))
        keys.chmod(0o600)
        for attempt in range(3):  # a free port can be taken between picking and binding
            self.gateway_http_port, self.gateway_grpc_port = free_ports(2)
            conf = base / "conf" / "nginx.conf"
            conf.write_text(self.nginx_conf())
            self.nginx_process = _spawn([binary, "-e", str(base / "error.log"), "-c", str(conf), "-g", "daemon off;"],
                                 base / "nginx.out")
            if _wait_port(self.gateway_http_port, self.nginx_process, 15) \
                    and _wait_port(self.gateway_grpc_port, self.nginx_process, 5):
                return
            log = _tail(base / "error.log") or _tail(base / "nginx.out")
            if self.nginx_process.poll() is not None and "Address already in use" in log and attempt < 2:
                continue
            raise StackError(f"nginx did not start: {log}", file=conf, fix=f"see {base / 'error.log'}")

    # -- Prometheus -----------------------------------------------------------------------------
    def _start_prometheus(self, binary: str) -> None:
        base = self.work_dir / "prometheus"
        (base / "rules").mkdir(parents=True, exist_ok=True)
        import yaml

        rule_files = []
        for name, group in (("tritonize-recording.yml", recording_rules()),
                            ("tritonize-alerts.yml", alerting_rules(self.context, kubernetes=False))):
            (base / "rules" / name).write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))
            rule_files.append(str(base / "rules" / name))
        config = prometheus_config(f"127.0.0.1:{self.server.metrics_port}", scrape_interval="1s", rule_files=rule_files)
        (base / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        for attempt in range(3):
            self.prometheus_port = free_port()
            self.prometheus_process = _spawn([binary, f"--config.file={base / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={base / 'data'}",
                                       f"--web.listen-address=127.0.0.1:{self.prometheus_port}"],
                                      base / "prometheus.log")
            if _wait_http(f"{self.prometheus_url}/-/ready", self.prometheus_process, 30):
                return
            log = _tail(base / "prometheus.log")
            if self.prometheus_process.poll() is not None and "address already in use" in log and attempt < 2:
                continue
            raise StackError(f"Prometheus did not start: {log}", file=base / "prometheus.yml",
                             fix=f"see {base / 'prometheus.log'}")

    def query(self, promql: str) -> dict[str, Any]:
        """Prometheus' instant query API: the parsed `data` on success, StackError otherwise."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise StackError(f"Prometheus rejected {promql!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_exit_with_parent_hook())


def _wait_port(port: int, process: subprocess.Popen, timeout_s: float) -> bool:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def _wait_http(url: str, process: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def serve_stack(repository: str | Path, terminal) -> int:
    """`tritonize serve REPO --stack`: start the stack, print where everything is, wait for Ctrl-C."""
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    stack = Stack(repository)
    try:
        with terminal.status(f"Starting tritonserver, nginx and Prometheus on {repository}"):
            stack.start()
        for warning in stack.context.warnings:
            if "embedded runtime" not in warning:  # serving embedded here is the point
                terminal.warning(warning)
        terminal.success("stack is ready")
        terminal.info(f"  gateway HTTP   http://{stack.gateway_http_url}   (Authorization: Bearer {stack.api_key})")
        terminal.info(f"  gateway gRPC   {stack.gateway_grpc_url}")
        terminal.info(f"  Prometheus     {stack.prometheus_url}")
        terminal.info(f"  tritonserver   http://{stack.server.http_url} (admin header {ADMIN_HEADER}: {stack.admin_key})")
        terminal.info(f"  files, logs    {stack.work_dir}")
        terminal.info("Press Ctrl-C to stop.")
        processes = (stack.server.process, stack.nginx_process, stack.prometheus_process)
        while all(p is not None and p.poll() is None for p in processes):
            time.sleep(0.5)
        raise ServerError("a process of the stack exited unexpectedly", fix=f"see the logs in {stack.work_dir}")
    except KeyboardInterrupt:
        with terminal.status("Stopping the stack"):
            stack.stop()
        terminal.success("stack stopped")
        return 0
    finally:
        stack.stop()
        signal.signal(signal.SIGTERM, previous)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
