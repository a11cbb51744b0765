"""Time to first token and tokens/s of the CPU engine through Triton (ensemble, gRPC streaming)
against direct transformers generation of the same model, greedy, same prompts and lengths.

    python examples/tiny_llm/benchmark.py [--tokens 64] [--runs 5] [--concurrency 4]

Prints one table; numbers depend on the host (2 shared cores in CI), so no test asserts them.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PROMPTS = ["The river runs", "A doctor listens to", "The train leaves", "In winter the mountains"]
SPEC = """\
repository: model_repo
models:
  - name: tiny_llm
    source: {{framework: huggingface, path: {model}}}
    llm:
      streaming: true
      limits: {{max_batch_size: 8, max_input_len: 64, max_output_len: {tokens}}}
"""


def direct(model_dir: Path, tokens: int, runs: int, concurrency: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    class FirstToken(BaseStreamer):
        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2:  # the first call carries the prompt
                self.first = time.perf_counter()

        def end(self):
            pass

    def one(prompt):
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        streamer = FirstToken()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=tokens,
                                 min_new_tokens=tokens, pad_token_id=tokenizer.pad_token_id, streamer=streamer)
        return streamer.first - start, time.perf_counter() - start, out.shape[1] - ids.shape[1]

    one(PROMPTS[0])  # warm-up
    ttft, rate = [], []
    for i in range(runs):
        first, total, n = one(PROMPTS[i % len(PROMPTS)])
        ttft.append(first)
        rate.append(n / total)
    # "Concurrent" for transformers: one padded batch through generate().
    batch = tokenizer([PROMPTS[i % len(PROMPTS)] for i in range(concurrency)], return_tensors="pt", padding=True,
                      padding_side="left", add_special_tokens=False)
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(**batch, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                       pad_token_id=tokenizer.pad_token_id)
    batch_rate = concurrency * tokens / (time.perf_counter() - start)
    return {"ttft_ms": 1000 * statistics.median(ttft), "tokens_per_s": statistics.median(rate),
            "batch_tokens_per_s": batch_rate}


def through_triton(grpc_url: str, http_url: str, tokens: int, runs: int, concurrency: int) -> dict[str, float]:
    import requests

    from tritonize.client import stream as stream_request

    def stream(prompt) -> tuple[float, float, int]:
        inputs = {"text_input": np.array([[prompt]], dtype=object), "max_tokens": np.array([[tokens]], dtype=np.int32),
                  "stream": np.array([[True]]), "end_id": np.array([[-1]], dtype=np.int32)}  # never stop early
        start, first, count = time.perf_counter(), None, 0
        for _ in stream_request(grpc_url, "tiny_llm", inputs, timeout_s=120):
            count += 1
            first = first or time.perf_counter()
        return first - start, time.perf_counter() - start, count

    stream(PROMPTS[0])  # warm-up
    ttft, rate = [], []
    for i in range(runs):
        first, total, n = stream(PROMPTS[i % len(PROMPTS)])
        ttft.append(first)
        rate.append(n / total)

    def generate(prompt) -> int:
        body = {"text_input": prompt, "max_tokens": tokens, "end_id": -1}
        requests.post(f"http://{http_url}/v2/models/tiny_llm/generate", json=body, timeout=120).raise_for_status()
        return tokens  # end_id -1 never stops a sequence early

    def concurrent(streaming: bool) -> float:
        counts: list[int] = []
        call = (lambda p: stream(p)[2]) if streaming else generate
        threads = [threading.Thread(target=lambda p=p: counts.append(call(p)))
                   for p in (PROMPTS[i % len(PROMPTS)] for i in range(concurrency))]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts) / (time.perf_counter() - start)

    return {"ttft_ms": 1000 * statistics.median(ttft), "tokens_per_s": statistics.median(rate),
            "batch_tokens_per_s": concurrent(True), "batch_tokens_per_s_unstreamed": concurrent(False)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    sys.path.insert(0, str(HERE))
    from make_model import create

    from tritonize import build
    from tritonize.server import TritonServer
    from tritonize.terminal import Terminal

    with tempfile.TemporaryDirectory(prefix="tiny-llm-bench-") as tmp:
        model_dir = create(Path(tmp) / "tiny")
        spec = Path(tmp) / "model.yaml"
        spec.write_text(SPEC.format(model=model_dir, tokens=args.tokens))
        repository = build(spec, terminal=Terminal(quiet=True)).repository
        baseline = direct(model_dir, args.tokens, args.runs, args.concurrency)
        with TritonServer(repository) as server:
            served = through_triton(server.grpc_url, server.http_url, args.tokens, args.runs, args.concurrency)
    terminal = Terminal()
    terminal.table(f"tiny_llm, greedy, {args.tokens} new tokens, median of {args.runs}",
                   ["measure", "transformers (direct)", "Triton CPU engine (gRPC stream)"],
                   [["time to first token (ms)", f"{baseline['ttft_ms']:.1f}", f"{served['ttft_ms']:.1f}"],
                    ["tokens/s, one request", f"{baseline['tokens_per_s']:.0f}", f"{served['tokens_per_s']:.0f}"],
                    [f"tokens/s, {args.concurrency} at once", f"{baseline['batch_tokens_per_s']:.0f} (one batch)",
                     f"{served['batch_tokens_per_s']:.0f} ({args.concurrency} concurrent streams), "
                     f"{served['batch_tokens_per_s_unstreamed']:.0f} (HTTP generate, not streamed)"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
