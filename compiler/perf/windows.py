"""Per-window samples of one perf_analyzer run, from its profile export.

perf_analyzer measures in windows ("passes") until the last three agree within the stability
bound, and reports their merged numbers. A verdict needs the spread, not only the centre, so
each window's own throughput and p99 latency are recovered from `--profile-export-file`: it keeps
every request's send and response timestamps plus `window_boundaries`, the start of each window
and the end of the last (nanoseconds; seen in perf_analyzer 2.51.0 for gRPC and HTTP alike).

A request belongs to the window its last response falls in; a window's throughput is its
requests over its duration, as perf_analyzer's own per-pass "throughput: N infer/sec" (checked on
this machine: the counts agree within a few requests per window).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# perf_analyzer's stability rule looks at the last three windows; those are the measurement it
# reports, the earlier ones are warm-up and unstable trials.
STABLE_WINDOWS = 3


@dataclass
class Window:
    throughput: float   # inferences/s
    p99_ms: float       # p99 of request latency (send -> last response)
    requests: int


def windows_from_profile(path: Path, last: int = STABLE_WINDOWS) -> list[Window]:
    """The last `last` non-empty windows of a profile export (all experiments; one per point here)."""
    document = json.loads(path.read_text())
    windows: list[Window] = []
    for experiment in document.get("experiments", []):
        boundaries = experiment.get("window_boundaries") or []
        ends = np.array([r["response_timestamps"][-1] for r in experiment.get("requests", [])
                         if r.get("response_timestamps")], dtype=np.int64)
        starts = np.array([r["timestamp"] for r in experiment.get("requests", []) if r.get("response_timestamps")],
                          dtype=np.int64)
        found = []
        for low, high in zip(boundaries, boundaries[1:]):
            inside = (ends >= low) & (ends < high)
            count = int(inside.sum())
            if count == 0 or high <= low:
                continue
            latencies_ms = (ends[inside] - starts[inside]) / 1e6
            found.append(Window(throughput=count / ((high - low) / 1e9),
                                p99_ms=float(np.percentile(latencies_ms, 99)), requests=count))
        windows.extend(found[-last:])
    return windows
