"""What serving the LLM through Triton costs: tokens/s and time to first token at concurrency 1, 4
and 8, streamed and not, through the ensemble (gRPC streaming, tritonclient) against transformers'
own generate on the same dequantized checkpoint the CPU engine serves.

Direct, c requests are one left-padded batch through `generate()` (what batched transformers
does best), at torch's default thread count and at one thread (what the build gives the CPU
engine of a model this small); the faster of the two is the baseline. Through Triton they are c
concurrent requests started at once. Every generation is
greedy and runs `--tokens` new tokens (end_id -1 / min_new_tokens: no early stop). Each level is
measured path after path, alternating, `--rounds` times, each timed run right after an untimed short
one on the same path (WARM_TOKENS); medians are reported with the spread
(min..max) over the rounds, and the load average at the start and the end. Each concurrent request
goes on a gRPC stream of its own, opened before and kept (as perf_analyzer's streaming clients do).

    .venv/bin/python perf/bench_llm_streaming.py [--repository DIR] [--model tiny_llm] [--tokens 64] [--rounds 5]

Without --repository it builds the root model.yaml (the demo's tiny_llm).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _bench import GrpcStream, built_repository, save
from tritonize.resources import back_channel
from tritonize.terminal import Terminal
from tritonize.triton.server import TritonServer

PROMPTS = ["The river runs", "A doctor listens to", "The train leaves", "In winter the mountains"]
LEVELS = (1, 4, 8)
# streamed: one response a token (the default, upstream's contract); streamed_multi_token: the
# client sets back_channel.MULTI_TOKEN_PARAMETER, so the engine paces the stream (as the OpenAI
# frontend does).
PATHS = ("direct_default_threads", "direct_1_thread", "streamed", "streamed_multi_token", "unstreamed")
# Every timed run follows an untimed one of WARM_TOKENS tokens on the same path and concurrency. On
# the 2-core VMs here a process that slept runs its next milliseconds several times slower (a plain
# tokenizer+numpy loop: 0.4 ms back to back, 1.7 ms after 0.2 s asleep, 5.8 ms after 1 s; a request
# to the ensemble after 1 s idle: TTFT 33 vs 6 ms, every step's execute slower alike), so without it a
# path's c=1 TTFT is how long the server sat idle while the path before it ran.
WARM_TOKENS = 4
THROUGH_TRITON = {"streamed": (True, False), "streamed_multi_token": (True, True), "unstreamed": (False, False)}


class Direct:
    """transformers' generate on the checkpoint as the engine loads it (its own loader)."""

    def __init__(self, repository: Path, model: str):
        import torch
        from tokenizers import Tokenizer

        engine_dir = repository / f"{model}_tensorrt_llm" / "1"
        sys.path.insert(0, str(engine_dir))
        import trtllm_checkpoint  # ships in the repository next to the engine's model.py

        self.torch = torch
        self.model = trtllm_checkpoint.load_model(str(engine_dir / "checkpoint")).eval()
        tokenizer = Tokenizer.from_file(str(repository / f"{model}_preprocessing" / "1" / "tokenizer" / "tokenizer.json"))
        self.prompts = [tokenizer.encode(p, add_special_tokens=False).ids for p in PROMPTS]
        self.pad_id = int(self.model.config.pad_token_id or 0)
        self.default_threads = torch.get_num_threads()

    def run(self, concurrency: int, tokens: int, threads: int) -> dict:
        from transformers.generation.streamers import BaseStreamer

        torch = self.torch
        torch.set_num_threads(threads)
        prompts = [self.prompts[i % len(self.prompts)] for i in range(concurrency)]
        width = max(len(p) for p in prompts)
        ids = torch.full((concurrency, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1

        class FirstToken(BaseStreamer):
            calls, first = 0, 0.0

            def put(self, value):
                self.calls += 1
                if self.calls == 2:  # the first call carries the prompt
                    self.first = time.perf_counter()

            def end(self):
                pass

        streamer = FirstToken()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=tokens,
                                      min_new_tokens=tokens, pad_token_id=self.pad_id, streamer=streamer)
        wall = time.perf_counter() - start
        generated = concurrency * (out.shape[1] - width)
        return {"tokens_per_s": generated / wall, "ttft_p50_ms": 1000 * (streamer.first - start)}


async def one_request(stream: GrpcStream, model: str, prompt: str, tokens: int, streamed: bool,
                      multi_token: bool) -> tuple[float, str]:
    import tritonclient.grpc.aio as grpc

    inputs = []
    for name, array, datatype in (("text_input", np.array([[prompt.encode()]], dtype=object), "BYTES"),
                                  ("max_tokens", np.array([[tokens]], dtype=np.int32), "INT32"),
                                  ("end_id", np.array([[-1]], dtype=np.int32), "INT32"),  # never stop early
                                  ("top_k", np.array([[1]], dtype=np.int32), "INT32"),
                                  ("stream", np.array([[streamed]]), "BOOL")):
        tensor = grpc.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    parameters = {"triton_enable_empty_final_response": True, back_channel().MULTI_TOKEN_PARAMETER: multi_token}
    start, first, pieces = time.perf_counter(), 0.0, []
    async for result in stream.generate({"model_name": model, "inputs": inputs, "parameters": parameters}):
        text = result.as_numpy("text_output")
        if text is not None:
            first = first or time.perf_counter() - start
            pieces.append(text.reshape(-1)[0].decode())
    return first, "".join(pieces)


async def through_triton(streams: list[GrpcStream], model: str, concurrency: int, tokens: int, path: str) -> dict:
    """`concurrency` requests started at once, each on a stream of its own (opened before)."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(concurrency)]
    start = time.perf_counter()
    results = await asyncio.gather(*(one_request(stream, model, p, tokens, *THROUGH_TRITON[path])
                                     for stream, p in zip(streams, prompts)))
    wall = time.perf_counter() - start
    # end_id -1: every generation runs exactly `tokens` tokens, as generate(min_new_tokens) does.
    return {"tokens_per_s": concurrency * tokens / wall, "ttft_p50_ms": 1000 * statistics.median(f for f, _ in results),
            "texts": [text for _, text in results]}


def summarize(runs: list[dict]) -> dict:
    out = {}
    for key in ("tokens_per_s", "ttft_p50_ms"):
        values = [r[key] for r in runs]
        out[key] = round(statistics.median(values), 2)
        out[key + "_spread"] = [round(min(values), 2), round(max(values), 2)]
    return out


async def measure(args: argparse.Namespace, grpc_url: str, direct: Direct) -> dict:
    import tritonclient.grpc.aio as grpc

    client = grpc.InferenceServerClient(grpc_url)
    streams = [GrpcStream(client) for _ in range(max(LEVELS))]
    for path in THROUGH_TRITON:  # warm up every path and stream, and the direct model
        await through_triton(streams, args.model, max(LEVELS), args.tokens, path)
    direct.run(2, args.tokens, 1)
    levels: dict = {}
    for concurrency in LEVELS:
        runs: dict[str, list[dict]] = {path: [] for path in PATHS}
        for _ in range(args.rounds):
            for path, threads in (("direct_default_threads", direct.default_threads), ("direct_1_thread", 1)):
                direct.run(concurrency, WARM_TOKENS, threads)
                runs[path].append(direct.run(concurrency, args.tokens, threads))
            for path in THROUGH_TRITON:
                await through_triton(streams, args.model, concurrency, WARM_TOKENS, path)
                runs[path].append(await through_triton(streams, args.model, concurrency, args.tokens, path))
            # Streamed pieces must join to the one-shot text of the same request.
            for path in ("streamed", "streamed_multi_token"):
                if runs[path][-1]["texts"] != runs["unstreamed"][-1]["texts"]:
                    raise SystemExit(f"c={concurrency}: {path} text differs from the one-shot text")
        medians = {path: summarize(r) for path, r in runs.items()}
        baseline = max(("direct_default_threads", "direct_1_thread"), key=lambda p: medians[p]["tokens_per_s"])
        direct_rate, direct_ttft = medians[baseline]["tokens_per_s"], medians[baseline]["ttft_p50_ms"]
        medians["ratio"] = {"baseline": baseline, **{
            f"{path}_tokens_per_s": round(medians[path]["tokens_per_s"] / direct_rate, 3)
            for path in THROUGH_TRITON},
            **{f"{path}_ttft_minus_direct_ms": round(medians[path]["ttft_p50_ms"] - direct_ttft, 2)
               for path in ("streamed", "streamed_multi_token")}}
        levels[f"c{concurrency}"] = medians
        print(f"c={concurrency}: {json.dumps(medians)}", flush=True)
    for stream in streams:
        stream.close()
    await client.close()
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path)
    parser.add_argument("--model", default="tiny_llm")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per generation (<= max_output_len)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    terminal = Terminal()
    args.repository = (args.repository or built_repository(terminal)).resolve()
    direct = Direct(args.repository, args.model)
    load_before = os.getloadavg()
    with TritonServer(args.repository) as server:
        levels = asyncio.run(measure(args, server.grpc_url, direct))
    load_after = os.getloadavg()
    print(f"load average: {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end")
    summary = {"model": args.model, "tokens": args.tokens, "rounds": args.rounds,
               "load_average": [round(load_before[0], 2), round(load_after[0], 2)], "levels": levels}
    terminal.success(f"wrote {save('llm_streaming', summary)}")


if __name__ == "__main__":
    main()
