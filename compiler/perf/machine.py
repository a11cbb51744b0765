"""The machine and tool versions a measurement was taken on (numbers mean little without them)."""
from __future__ import annotations

import os
import platform
from pathlib import Path

from ..versions import installed_versions


def machine_info() -> dict[str, object]:
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def tool_versions(perf_analyzer_version: str, server_version: str | None) -> dict[str, str]:
    return {"perf_analyzer": perf_analyzer_version, "tritonserver": server_version or "unknown",
            **installed_versions("tritonize", "tritonclient", "nvidia-pytriton", "onnxruntime", "numpy")}


def server_version(url: str, protocol: str) -> str | None:
    """The server's own version from its metadata endpoint."""
    from ..triton.client import connect

    try:
        with connect(url, protocol) as client:
            return client.server_version()
    except Exception:  # the version is informative only; a dead server fails loudly elsewhere
        return None


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    return None
