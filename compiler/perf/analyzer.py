"""perf_analyzer: where it is, how it is run for one measurement point, and what its output says.

One perf_analyzer process measures one (model, concurrency) point so that an unstable point is
retried on its own and progress can be shown point by point. Its CSV (`-f`), its stdout (which
alone carries the composing-model statistics of an ensemble) and, for streaming models, its
profile export (per-request response timestamps) are all kept next to the report. Every run
writes a profile export, the source of the per-window samples (windows.py); for models without
token metrics it is dropped once read (it holds every request and grows to megabytes).
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TritonizeError
from .windows import Window, windows_from_profile


class PerfAnalyzerMissing(TritonizeError):
    """perf_analyzer (or a library it loads) is not installed."""


class PerfAnalyzerFailed(TritonizeError):
    """perf_analyzer ran but could not measure (server unreachable, unknown model, bad input)."""


@dataclass(frozen=True)
class MeasurementSettings:
    """How each point is stabilised. Count windows keep slow and fast models equally sampled."""

    window_requests: int = 200       # --measurement-request-count for the first attempt
    stability_percent: float = 15.0  # -s: max/min of the last 3 windows (avg latency and throughput)
    max_trials: int = 8              # -r: windows per attempt before perf_analyzer gives up
    retries: int = 2                 # attempts after the first, each with windows twice as long
    timeout_s: float = 300.0         # per perf_analyzer process
    # Time windows of this many ms instead of count windows. perf_analyzer's count windows last
    # at least 1 s each (they start at 1 s and grow until window_requests completed: Perf
    # Analyzer docs, measurements_metrics.md "Count Windows"), so a stable level costs >= 3 s
    # however fast the model; a caller that knows the throughput can ask for windows that hold
    # window_requests requests in less (tune does: perf/tune/evaluate.py).
    window_ms: int | None = None


# Last resort when every attempt was unstable: this stability bound always holds, so the point is
# measured (and marked unstable in the report) instead of being lost.
_ACCEPT_ANY_STABILITY = 1000.0


@dataclass
class Breakdown:
    """Mean time per request in microseconds, as perf_analyzer splits it."""

    client_send: float = 0.0
    network: float = 0.0
    queue: float = 0.0
    compute_input: float = 0.0
    compute_infer: float = 0.0
    compute_output: float = 0.0
    client_recv: float = 0.0


@dataclass
class ComposingStats:
    """One composing model of an ensemble, from perf_analyzer's stdout (microseconds)."""

    model: str
    inference_count: int
    execution_count: int
    latency_us: float
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float


@dataclass
class Measurement:
    concurrency: int
    throughput: float              # inferences/s
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    avg_us: float | None
    breakdown: Breakdown
    response_throughput: float | None = None  # decoupled models: responses/s
    composing: list[ComposingStats] = field(default_factory=list)
    stable: bool = True
    attempts: int = 1
    window_requests: int = 0       # count windows: requests per window of the attempt that held
    window_ms: int | None = None   # time windows: their length
    raw_files: list[str] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)  # the stable windows, for the verdict's test


@dataclass(frozen=True)
class PointRequest:
    model: str
    concurrency: int
    url: str
    protocol: str                   # "grpc" | "http"
    input_data: Path | None = None  # perf_analyzer JSON; random data when None
    shapes: tuple[str, ...] = ()    # "name:d1,d2" for variable dims when input data is random
    streaming: bool = False
    profile_export: bool = False    # keep the profile export (per-request timestamps, for token metrics)
    batch_size: int = 1
    bls_composing: tuple[str, ...] = ()  # models a BLS model calls, for their statistics


class PerfAnalyzer:
    """A located perf_analyzer binary with the environment it needs to start."""

    def __init__(self, path: Path, env: dict[str, str]):
        self.path = path
        self.env = env

    def version(self) -> str:
        proc = subprocess.run([str(self.path), "--version"], capture_output=True, text=True, env=self.env,
                              timeout=30)
        match = re.search(r"Version\s+(\S+)", proc.stdout + proc.stderr)
        return match.group(1) if match else "unknown"

    def measure(self, point: PointRequest, settings: MeasurementSettings, raw_dir: Path,
                tag: str) -> Measurement:
        """Measure one point, retrying with longer windows while perf_analyzer reports instability."""
        raw_dir.mkdir(parents=True, exist_ok=True)
        window = settings.window_ms or settings.window_requests
        plans = [(window * 2 ** i, settings.stability_percent) for i in range(settings.retries + 1)]
        plans.append((plans[-1][0], _ACCEPT_ANY_STABILITY))
        for attempt, (requests, stability) in enumerate(plans, start=1):  # requests: or ms (time windows)
            stem = raw_dir / f"{tag}.attempt{attempt}"
            proc = self._run(point, settings, requests, stability, stem)
            if proc.returncode == 0 and _file(stem, ".csv").exists():
                measurement = parse_csv(_file(stem, ".csv"))
                measurement.composing = parse_composing(proc.stdout)
                measurement.stable = stability != _ACCEPT_ANY_STABILITY
                measurement.attempts = attempt
                if settings.window_ms is None:
                    measurement.window_requests = requests
                else:
                    measurement.window_ms = requests
                profile = _file(stem, ".profile.json")
                if profile.exists():
                    measurement.windows = windows_from_profile(profile)
                    if not point.profile_export:
                        profile.unlink()
                measurement.raw_files = sorted(p.name for p in raw_dir.glob(f"{stem.name}.*"))
                return measurement
            if not _unstable(proc.stdout + proc.stderr):
                raise PerfAnalyzerFailed(
                    f"perf_analyzer failed for model '{point.model}' at concurrency {point.concurrency}: "
                    f"{_first_error(proc.stdout + proc.stderr)}",
                    file=_file(stem, ".log"),
                    fix="check that the server is up and serves this model (full output in the log file)")
        raise AssertionError("the last plan accepts any stability")  # pragma: no cover

    def _run(self, point: PointRequest, settings: MeasurementSettings, window: int, stability: float,
             stem: Path) -> subprocess.CompletedProcess:
        """One perf_analyzer process; `window` is requests (count windows) or ms (settings.window_ms)."""
        mode = ["--measurement-mode", "count_windows", "--measurement-request-count", str(window)] \
            if settings.window_ms is None else ["--measurement-mode", "time_windows", "--measurement-interval", str(window)]
        command = [str(self.path), "-m", point.model, "-u", point.url, "-i", point.protocol,
                   "-b", str(point.batch_size),
                   "--concurrency-range", str(point.concurrency), *mode,
                   "-s", f"{stability:g}", "-r", str(settings.max_trials),
                   "-f", str(_file(stem, ".csv"))]
        if point.input_data is not None:
            command += ["--input-data", str(point.input_data)]
        for shape in point.shapes:
            command += ["--shape", shape]
        if point.bls_composing:
            command += ["--bls-composing-models", ",".join(point.bls_composing)]
        if point.streaming:
            command.append("--streaming")
        command += ["--profile-export-file", str(_file(stem, ".profile.json"))]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, env=self.env,
                                  timeout=settings.timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise PerfAnalyzerFailed(
                f"perf_analyzer did not finish within {settings.timeout_s:.0f} s for model '{point.model}' "
                f"at concurrency {point.concurrency}", fix="lower the concurrency or the window size") from exc
        _file(stem, ".log").write_text("$ " + " ".join(command) + "\n\n" + proc.stdout + proc.stderr)
        return proc


def find_perf_analyzer() -> PerfAnalyzer:
    """The perf_analyzer of tritonclient 2.51.0 (installed next to this Python), else one on PATH.

    It links libcudart.so.12 even on CPU; the `nvidia-cuda-runtime-cu12` wheel provides it and its
    lib directory is put on LD_LIBRARY_PATH here.
    """
    candidates = [Path(sys.executable).parent / "perf_analyzer"]
    on_path = shutil.which("perf_analyzer")
    if on_path:
        candidates.append(Path(on_path))
    binary = next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
    if binary is None:
        raise PerfAnalyzerMissing(
            "perf_analyzer is not installed",
            fix='pip install "tritonclient[grpc,http]==2.51.0" (its wheel ships bin/perf_analyzer)')
    env = dict(os.environ)
    lib_dirs = [str(d) for d in _cuda_runtime_lib_dirs()]
    if lib_dirs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    analyzer = PerfAnalyzer(binary, env)
    _check_loads(analyzer)
    return analyzer


def _cuda_runtime_lib_dirs() -> list[Path]:
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    dirs = []
    for root in (spec.submodule_search_locations or []) if spec else []:
        lib = Path(root) / "cuda_runtime" / "lib"
        if (lib / "libcudart.so.12").exists():
            dirs.append(lib)
    return dirs


def _check_loads(analyzer: PerfAnalyzer) -> None:
    proc = subprocess.run([str(analyzer.path), "--version"], capture_output=True, text=True,
                          env=analyzer.env, timeout=30)
    output = proc.stdout + proc.stderr
    missing = re.search(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file", output)
    if missing:
        library = missing.group(1)
        fix = {"libb64.so.0d": "install the Debian package libb64-0d (scripts/install-system-deps)",
               "libcudart.so.12": 'pip install "tritonize[perf]" (brings nvidia-cuda-runtime-cu12)'}
        raise PerfAnalyzerMissing(f"perf_analyzer at {analyzer.path} cannot load {library}",
                                  fix=fix.get(library, f"install the package that provides {library}"))


# --- parsing -------------------------------------------------------------------------------------

def parse_csv(path: Path) -> Measurement:
    """perf_analyzer's `-f` CSV: one row per concurrency, times in microseconds."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise PerfAnalyzerFailed("perf_analyzer wrote an empty CSV", file=path)
    row = rows[0]

    def number(column: str) -> float:
        return float(row.get(column) or 0.0)

    return Measurement(
        concurrency=int(float(row["Concurrency"])),
        throughput=number("Inferences/Second"),
        response_throughput=float(row["Response Throughput"]) if row.get("Response Throughput") else None,
        p50_us=number("p50 latency"), p90_us=number("p90 latency"), p95_us=number("p95 latency"),
        p99_us=number("p99 latency"),
        avg_us=float(row["Avg latency"]) if row.get("Avg latency") else None,
        breakdown=Breakdown(
            client_send=number("Client Send"), network=number("Network+Server Send/Recv"),
            queue=number("Server Queue"), compute_input=number("Server Compute Input"),
            compute_infer=number("Server Compute Infer"), compute_output=number("Server Compute Output"),
            client_recv=number("Client Recv")),
    )


_COMPOSING_HEADER = re.compile(r"^\s*(\S+), version: (\S+)\s*$")
_COMPOSING_LATENCY = re.compile(
    r"Avg request latency: (\d+) usec \(overhead \d+ usec \+ queue (\d+) usec \+ compute input (\d+) usec "
    r"\+ compute infer (\d+) usec \+ compute output (\d+) usec\)")


def parse_composing(stdout: str) -> list[ComposingStats]:
    """The 'Composing models:' section perf_analyzer prints for ensembles (absent from its CSV)."""
    if "Composing models:" not in stdout:
        return []
    section = stdout.split("Composing models:", 1)[1].split("Inferences/Second vs.", 1)[0]
    stats: list[Any] = []
    current: Any = None
    counts: dict[str, int] = {}
    for line in section.splitlines():
        header = _COMPOSING_HEADER.match(line)
        if header:
            current, counts = header.group(1), {}
            continue
        count = re.match(r"\s*(Inference|Execution) count: (\d+)", line)
        if count:
            counts[count.group(1)] = int(count.group(2))
        latency = _COMPOSING_LATENCY.search(line)
        if latency and current:
            total, queue, c_in, c_infer, c_out = (float(g) for g in latency.groups())
            stats.append(ComposingStats(current, counts.get("Inference", 0), counts.get("Execution", 0),
                                        total, queue, c_in, c_infer, c_out))
    return stats


def _file(stem: Path, suffix: str) -> Path:
    return stem.parent / (stem.name + suffix)  # stems contain dots: with_suffix would cut them


def _unstable(output: str) -> bool:
    return "Failed to obtain stable measurement" in output


def _first_error(output: str) -> str:
    for line in output.splitlines():
        if line.lower().startswith("error") or "failed" in line.lower():
            return line.strip()
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"
