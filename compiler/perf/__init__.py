"""Performance: perf_analyzer profiling with reports and a regression verdict, and config tuning.

`run_perf` measures a repository (`tritonize perf`), `tune` searches one model's batching and
instance settings (`tritonize tune`). Heavy imports (matplotlib, the build pipeline) stay inside.
"""
from .run import parse_concurrency, run_perf
from .results import PerfResult

__all__ = ["PerfResult", "parse_concurrency", "run_perf"]
