"""What tritonserver's log says when it fails: models that failed to load, a port in use, a
python-backend stub that died, and the last error line as a one-line hint."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# E1122 11:30:57.340335 5907 model_lifecycle.cc:642] "failed to load 'broken' version 1: Internal: ..."
_LOAD_FAILURE = re.compile(r"^E\d{4} [\d:.]+ +\d+ \S+\] \"failed to load '([^']+)' version \d+: (.*)\"\s*$")
# Errors before a model is even tried, e.g. a config.pbtxt that does not parse.
_REPOSITORY_FAILURE = re.compile(r"^E\d{4} [\d:.]+ +\d+ \S+\] \"Poll failed for model directory '([^']+)': (.*)\"\s*$")
_PARSE_ERROR = re.compile(r"Error parsing text-format inference\.ModelConfig: (\d+):(\d+): (.*)$")
# A stub that dies before its model exists: "Failed to preinitialize Python stub: Python model file
# not found in '/repo/m/1/model.py'" (the server then hangs; see wait_ready).
STUB_FAILURE = re.compile(r"Failed to (?:pre)?initialize Python stub: (.*?)\"?\s*$", re.MULTILINE)


def has_stub_failure(log: str) -> bool:
    """A python-backend stub failed before its model was created (see TritonServer.wait_ready)."""
    return STUB_FAILURE.search(log) is not None


def model_load_failures(log: str, repository: Path) -> list[tuple[str, str]]:
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
    for match in STUB_FAILURE.finditer(log):
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


def port_in_use(log: str) -> tuple[int, str, int] | None:
    """(index into (http, grpc, metrics), service, port) of the port tritonserver could not bind."""
    found = _PORT_IN_USE.search(log)
    if found is None:
        return None
    service = found.group(1)
    return _PORT_INDEX[service], {"GRPC": "gRPC", "Metrics": "metrics"}.get(service, service), int(found.group(2))


def last_line_hint(log: str) -> str:
    """': <last error line>' for a one-line message, skipping CPU-only noise (NVML, DCGM, CUDA)."""
    noise = ("CudaDriverHelper", "NVML", "DCGM", "CUDA", "pinned memory")
    lines = [line.strip() for line in log.splitlines()
             if line.strip() and not line.startswith(("+", "|", "$")) and not any(n in line for n in noise)]
    errors = [line for line in lines if line.startswith(("E", "error"))]
    chosen = errors[-1] if errors else (lines[-1] if lines else "")
    return f": {chosen[:300]}" if chosen else ""



# While it stops (triton-inference-server/core r24.10 src/server.cc InferenceServer::Stop), tritonserver
# logs once a second how many models have in-flight inferences until none has, then "All models are
# stopped, unloading models", then once a second "Timeout N: Found M live models and K in-flight
# non-inference requests" until M and K are 0. M counts the served model versions still live (at
# verbose level 1 each is listed after the report as '"NAME vVERSION: STATE"') plus the model
# objects unloading in the background: the old instances a reload replaced while they were still
# unloading (src/model_repository_manager/model_lifecycle.cc, background_models_).
_ALL_STOPPED = "All models are stopped, unloading models"
_LIVE_REPORT = re.compile(r'"Timeout -?\d+: Found (\d+) live models and (\d+) in-flight non-inference requests"')
_LIVE_MODEL = re.compile(r'\] "(\S+) v-?\d+: [A-Z]+"')


@dataclass(frozen=True)
class UnloadReport:
    """tritonserver's last live-model report while it stops (after every inference finished)."""

    number: int  # how many such reports the log holds so far
    live: int  # model objects not unloaded yet, served or replaced (in the background)
    requests: int  # non-inference requests in flight
    served: tuple[str, ...]  # the served models among them (listed at verbose level 1 only)


def last_unload_report(log: str) -> UnloadReport | None:
    """The last report of a stopping tritonserver (None before every inference finished). A caller
    takes it once a later look finds no newer one, so the listing that follows it is complete."""
    _, stopped, after = log.rpartition(_ALL_STOPPED)
    reports = list(_LIVE_REPORT.finditer(after)) if stopped else []
    if not reports:
        return None
    last = reports[-1]
    return UnloadReport(len(reports), int(last.group(1)), int(last.group(2)),
                        tuple(_LIVE_MODEL.findall(after, last.end())))
