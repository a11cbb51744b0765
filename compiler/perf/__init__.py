"""Performance: perf_analyzer profiling with reports and a regression verdict, and config tuning.

`run_perf` measures a repository (`tritonize perf`), `tune` searches one model's batching and
instance settings (`tritonize tune`). Heavy imports (matplotlib, the build pipeline) stay inside.
"""
from .results import PerfResult
from .run import parse_concurrency, run_perf
from .tune import SearchSpace, TuneResult, tune

__all__ = ["PerfResult", "SearchSpace", "TuneResult", "parse_concurrency", "run_perf", "tune"]
