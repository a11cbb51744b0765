"""Added latency of the gateway hop: the same HTTP inference, direct to tritonserver and through the
`serve --stack` nginx gateway (API key check, rate-limit accounting, JSON access log, upstream
keepalive), at 16 concurrent connections.

    .venv/bin/python perf/bench_gateway.py [--seconds 10] [--repeats 3] [--concurrency 16]

Load comes from wrk (Debian package, C, HTTP/1.1 keepalive; scripts/install-system-deps installs
it): perf_analyzer cannot go through the gateway, which refuses the model-config and statistics
APIs it calls. Direct and gateway runs alternate, so drift on the shared machine hits both; the
summary gives the medians over repeats and their difference. The rate limits are raised far above
the offered load for this run (a 429 is not a latency). HTTP only: wrk speaks no gRPC.
Writes perf/results/gateway_hop.json.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import REPORTS_DIR, save  # noqa: E402
from tritonize.terminal import Terminal  # noqa: E402

FACTORY = '''\
def iris():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(x, y)
'''
SPEC = '''\
repository: repo
models:
  - name: iris
    source: {framework: sklearn, factory: "iris_factory:iris"}
    max_batch_size: 64
    dynamic_batching: {max_queue_delay_microseconds: 100}
    inputs: [{name: input, dtype: FP32, dims: [4], range: [0.1, 7.9]}]
deploy:
  gateway:
    rate_limits: {per_key_rps: 1000000, per_key_burst: 100000}
'''
BODY_LUA = '''\
wrk.method = "POST"
wrk.body = '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("RESULT p50_us=%d p99_us=%d requests=%d non2xx=%d errors=%d\\n",
    latency:percentile(50), latency:percentile(99), summary.requests,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
'''


def run_wrk(url: str, headers: dict[str, str], seconds: int, concurrency: int, script: Path) -> dict[str, float]:
    command = ["wrk", "-t", "2", "-c", str(concurrency), "-d", f"{seconds}s", "-s", str(script)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run(command + [url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    found = re.search(r"RESULT p50_us=(\d+) p99_us=(\d+) requests=(\d+) non2xx=(\d+) errors=(\d+)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    p50, p99, requests, non2xx, errors = map(int, found.groups())
    if non2xx or errors:
        raise RuntimeError(f"{url}: {non2xx} non-2xx answers and {errors} socket errors of {requests}")
    return {"p50_ms": p50 / 1000, "p99_ms": p99 / 1000, "requests_per_s": requests / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: run scripts/install-system-deps")

    from tritonize.deploy.stack import Stack
    from tritonize.pipeline import build

    terminal = Terminal()
    work = REPORTS_DIR / "gateway"
    work.mkdir(parents=True, exist_ok=True)
    (work / "iris_factory.py").write_text(FACTORY)
    (work / "model.yaml").write_text(SPEC)
    repository = build(work / "model.yaml", terminal=terminal).repository
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "gateway": []}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp, Stack(repository, work_dir=tmp) as stack:
        script = Path(tmp) / "infer.lua"
        script.write_text(BODY_LUA)
        targets = {"direct": (f"http://{stack.server.http_url}/v2/models/iris/infer", {}),
                   "gateway": (f"http://{stack.gateway_http_url}/v2/models/iris/infer", stack.auth_headers)}
        run_wrk(*targets["gateway"], 3, args.concurrency, script)  # warm-up: connections, caches
        for repeat in range(args.repeats):
            for name, (url, headers) in targets.items():
                result = run_wrk(url, headers, args.seconds, args.concurrency, script)
                runs[name].append(result)
                terminal.info(f"repeat {repeat + 1} {name:8s} p50 {result['p50_ms']:.2f} ms  "
                              f"p99 {result['p99_ms']:.2f} ms  {result['requests_per_s']:.0f} req/s")
    summary: dict = {"concurrency": args.concurrency, "seconds": args.seconds, "repeats": args.repeats,
                     "model": "iris (sklearn LogisticRegression, ONNX via the python backend), batch 1, HTTP/JSON",
                     "runs": runs}
    for name in runs:
        summary[name] = {key: statistics.median(r[key] for r in runs[name]) for key in runs[name][0]}
    summary["added_ms"] = {key: round(summary["gateway"][key] - summary["direct"][key], 3)
                           for key in ("p50_ms", "p99_ms")}
    path = save("gateway_hop", summary)
    terminal.success(f"gateway hop at c={args.concurrency}: {summary['added_ms']['p50_ms']:+.2f} ms p50, "
                     f"{summary['added_ms']['p99_ms']:+.2f} ms p99 (medians of {args.repeats}); {path}")


if __name__ == "__main__":
    main()
