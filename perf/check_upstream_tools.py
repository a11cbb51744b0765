"""Issue 12's tool checks: Model Analyzer and genai-perf, unmodified, against `tritonize serve`.

One `tritonize serve --model-control-mode explicit --load-model digits_mlp --load-model tiny_llm`
on the demo's repository, then:

1. Model Analyzer 1.58, remote launch mode, quick search on digits_mlp with small limits (it loads
   each config it tries through the repository API, which serve's explicit mode leaves open):
   passes when it exits 0 having measured at least two configs, and serve reported no stub death
   (its supervisor once took each of Model Analyzer's reloads for one and undid the config).
2. genai-perf 0.0.16 `profile -m tiny_llm --endpoint-type kserve --backend tensorrtllm
   --streaming --tokenizer <the repository's tokenizer>` with the project's perf_analyzer on PATH:
   passes when it exits 0 and every request produced tokens.

Not a test: each tool needs its own venv (Model Analyzer pins numpy; ~0.6-0.8 GB each), and the
two runs take minutes on 2 cores. `make check-tools` creates the venvs and runs it.

    .venv/bin/python perf/check_upstream_tools.py --model-analyzer .venv-ma/bin/model-analyzer \\
        --genai-perf .venv-genai/bin/genai-perf [--repository DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import REPORTS_DIR, built_repository, serving
from bench_tune_vs_model_analyzer import SearchLimits, run_model_analyzer
from tritonize.perf.analyzer import find_perf_analyzer
from tritonize.terminal import Terminal

MA_MODEL, LLM = "digits_mlp", "tiny_llm"
# Small enough for minutes: 2 instances, batch sizes up to 16, concurrency up to 4, 100-request
# windows. The check is whether it works, not a figure: any stability is accepted (genai-perf
# itself runs perf_analyzer with -s 999), since on a busy machine even 50 % was seen to fail.
MA_LIMITS = SearchLimits(max_concurrency=4, max_instances=2, max_batch=16, window_requests=100,
                         stability_percent=999, max_trials=3, auto_adjusts=1)
GENAI_REQUESTS = 8


def check_model_analyzer(binary: Path, repository: Path, endpoints: tuple[int, int, int], serve_log: Path,
                         terminal: Terminal) -> tuple[bool, str]:
    before = serve_log.read_text()
    result = run_model_analyzer(binary, repository, MA_MODEL, 1000.0, REPORTS_DIR / "check-model-analyzer",
                                endpoints, terminal, MA_LIMITS)
    deaths = serve_log.read_text()[len(before):].count("died")
    ok = result["exit_code"] == 0 and result["configs"] >= 2 and deaths == 0
    return ok, (f"exit {result['exit_code']}, {result['configs']} configs, {result['measurements']} measurements "
                f"in {result['seconds']:.0f} s, stub deaths reported by serve: {deaths} (log {result['log']})")


def check_genai_perf(binary: Path, repository: Path, grpc_port: int, terminal: Terminal) -> tuple[bool, str]:
    analyzer = find_perf_analyzer()
    work = REPORTS_DIR / "check-genai-perf"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tritonize-pa-") as bin_dir:
        # genai-perf runs `perf_analyzer` from PATH: the project's one (tritonclient 2.51.0's).
        os.symlink(analyzer.path, Path(bin_dir) / "perf_analyzer")
        env = {**analyzer.env, "PATH": bin_dir + os.pathsep + analyzer.env.get("PATH", "")}
        command = [str(binary), "profile", "-m", LLM, "--endpoint-type", "kserve", "--backend", "tensorrtllm",
                   "--streaming", "--tokenizer", str(repository / f"{LLM}_preprocessing" / "1" / "tokenizer"),
                   "-u", f"127.0.0.1:{grpc_port}", "--synthetic-input-tokens-mean", "24",
                   "--output-tokens-mean", "12", "--concurrency", "1", "--request-count", str(GENAI_REQUESTS),
                   "--warmup-request-count", "1", "--artifact-dir", str(work / "artifacts")]
        terminal.step(f"genai-perf on {LLM} (log {work / 'genai-perf.log'})")
        began = time.perf_counter()
        with open(work / "genai-perf.log", "w") as log:
            proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work, check=False)
        seconds = time.perf_counter() - began
    exports = sorted((work / "artifacts").glob("*/profile_export_genai_perf.json"), key=lambda p: p.stat().st_mtime)
    if proc.returncode != 0 or not exports:
        return False, f"exit {proc.returncode}, no profile export (log {work / 'genai-perf.log'})"
    stats = json.loads(exports[-1].read_text())
    count = stats.get("request_count", {}).get("avg", 0)
    tokens = stats.get("output_sequence_length", {}).get("min", 0)
    ttft = stats.get("time_to_first_token", {}).get("p50", 0.0)
    ok = count == GENAI_REQUESTS and tokens > 0
    return ok, (f"exit 0 in {seconds:.0f} s: {count:g} requests, output tokens min {tokens:g}, "
                f"TTFT p50 {ttft:.1f} ms, {stats.get('output_token_throughput', {}).get('avg', 0):.1f} tok/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-analyzer", type=Path, default=Path(".venv-ma/bin/model-analyzer"))
    parser.add_argument("--genai-perf", type=Path, default=Path(".venv-genai/bin/genai-perf"))
    parser.add_argument("--repository", type=Path, default=None, help="a built demo (default: build model.yaml)")
    parser.add_argument("--only", choices=["model-analyzer", "genai-perf"], default=None)
    args = parser.parse_args()
    terminal = Terminal()
    for tool in (args.model_analyzer, args.genai_perf):
        if not tool.is_file():
            sys.exit(f"{tool} not found: `make venv-ma venv-genai` installs both")
    repository = (args.repository or built_repository(terminal)).resolve()
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    serve_log = REPORTS_DIR / "check-tools.serve.log"
    with serving(repository, [MA_MODEL, LLM], serve_log) as endpoints:
        outcomes = {}
        if args.only in (None, "genai-perf"):
            outcomes["genai-perf"] = check_genai_perf(args.genai_perf, repository, endpoints[1], terminal)
        if args.only in (None, "model-analyzer"):
            outcomes["model-analyzer"] = check_model_analyzer(args.model_analyzer, repository, endpoints, serve_log,
                                                              terminal)
    for name, (ok, detail) in outcomes.items():
        (terminal.success if ok else terminal.error)(f"{name}: {'ok' if ok else 'FAILED'}: {detail}")
    sys.exit(0 if all(ok for ok, _ in outcomes.values()) else 1)


if __name__ == "__main__":
    main()
