"""What the OpenAI frontend costs: tokens/s and time to first token at concurrency 1 and 8,
streaming through the frontend (SSE, /v1/completions) vs gRPC streaming straight to the ensemble.

Both paths send the same prompt, max_tokens and greedy sampling to the same server in the same
run; each level is measured path after path, alternating, `--rounds` times (medians reported).
Two setups (`--setup`): "serve" is `tritonize serve REPO --openai` as a user runs it (direct gRPC
goes through serve's relay, the frontend straight to tritonserver's private port); "standalone" is
a plain tritonserver with `tritonize openai` as a process of its own (direct gRPC goes straight
to tritonserver), as the deployment's separate frontend container runs it.

    .venv/bin/python perf/bench_openai.py [--setup serve|standalone] [--repository DIR] [--requests 24]

Without --repository it builds the root model.yaml (the demo's tiny_llm).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from _bench import GrpcStream, built_repository, save
from tritonize.resources import back_channel
from tritonize.terminal import Terminal
from tritonize.triton.server import free_port, free_ports

PROMPT = "The river runs"
LEVELS = (1, 8)


async def direct(stream: GrpcStream, model: str, max_tokens: int) -> tuple[float, str]:
    """One generation on a kept gRPC stream (the frontend pools its streams), taking multi-token
    responses as the frontend does (back_channel.MULTI_TOKEN_PARAMETER): both paths are paced alike."""
    import tritonclient.grpc.aio as grpc

    inputs = []
    for name, array, datatype in (("text_input", np.array([[PROMPT.encode()]], dtype=object), "BYTES"),
                                  ("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
                                  ("top_k", np.array([[1]], dtype=np.int32), "INT32"),
                                  ("stream", np.array([[True]]), "BOOL")):
        tensor = grpc.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    request = {"model_name": model, "inputs": inputs,
               "parameters": {"triton_enable_empty_final_response": True, back_channel().MULTI_TOKEN_PARAMETER: True}}
    start, first, pieces = time.perf_counter(), None, []
    async for result in stream.generate(request):
        text = result.as_numpy("text_output")
        if text is not None:
            pieces.append(text.reshape(-1)[0].decode())
            first = first or time.perf_counter() - start
    return first or 0.0, "".join(pieces)


async def frontend(session, url: str, model: str, max_tokens: int) -> tuple[float, str]:
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    start, first, pieces = time.perf_counter(), None, []
    async with session.post(f"{url}/completions", json=body) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["text"]:
                pieces.append(chunk["choices"][0]["text"])
                first = first or time.perf_counter() - start
    return first or 0.0, "".join(pieces)


async def level(path: str, concurrency: int, count: int, streams: list[GrpcStream], url: str, model: str,
                max_tokens: int, count_tokens: Callable[[str], int]) -> dict:
    """tokens/s counts the texts' tokens (the model's tokenizer): a response may carry several.
    A worker sends its requests one after another: direct ones on a gRPC stream of its own, the
    frontend's on the session's pooled HTTP connections."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        queue = list(range(count))
        results: list[tuple[float, str]] = []

        async def worker(stream: GrpcStream) -> None:
            while queue:
                queue.pop()
                if path == "frontend":
                    results.append(await frontend(session, url, model, max_tokens))
                else:
                    results.append(await direct(stream, model, max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(worker(streams[i]) for i in range(concurrency)))
        wall = time.perf_counter() - start
    return {"tokens_per_s": sum(count_tokens(text) for _, text in results) / wall,
            "ttft_p50_ms": 1000 * statistics.median(f for f, _ in results)}


async def measure(args: argparse.Namespace, grpc_url: str, url: str, count_tokens: Callable[[str], int]) -> dict:
    """Everything on one event loop (grpc.aio binds its poller to the first loop it runs on)."""
    import tritonclient.grpc.aio as grpc

    levels: dict = {}
    client = grpc.InferenceServerClient(grpc_url)
    streams = [GrpcStream(client) for _ in range(max(LEVELS))]
    for path in ("direct", "frontend"):  # warm up both, and every stream
        await level(path, max(LEVELS), 2 * max(LEVELS), streams, url, args.model, args.max_tokens, count_tokens)
    for concurrency in LEVELS:
        rounds: dict[str, list[dict]] = {"direct": [], "frontend": []}
        for _ in range(args.rounds):
            for path in rounds:
                rounds[path].append(await level(path, concurrency, args.requests, streams, url, args.model,
                                                args.max_tokens, count_tokens))
        medians = {path: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                   for path, runs in rounds.items()}
        medians["frontend_cost"] = {
            "tokens_per_s_pct": 100 * (1 - medians["frontend"]["tokens_per_s"] / medians["direct"]["tokens_per_s"]),
            "ttft_p50_ms": medians["frontend"]["ttft_p50_ms"] - medians["direct"]["ttft_p50_ms"]}
        levels[f"c{concurrency}"] = medians
        print(f"c={concurrency}: {json.dumps(medians)}", flush=True)
    for stream in streams:
        stream.close()
    await client.close()
    return levels


def _wait_healthy(api: int, process: subprocess.Popen, timeout_s: float, what: str) -> None:
    """Until the frontend on port `api` answers /health; SystemExit if `process` exits or the time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"http://localhost:{api}/health", timeout=2)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.terminate()
                raise SystemExit(f"{what} did not become ready in {timeout_s:g} s (exit {process.poll()})") from None
            time.sleep(0.5)


def serve(repository: Path) -> tuple[subprocess.Popen, str, str]:
    """`tritonize serve REPO --openai` in its own process, as a user runs it; ready when both answer."""
    http, grpc, metrics, api = free_ports(4)
    process = subprocess.Popen([sys.executable, "-m", "tritonize", "serve", str(repository), "--http-port", str(http),
                                "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--openai",
                                "--openai-port", str(api)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_healthy(api, process, 600, "tritonize serve")
    return process, f"localhost:{grpc}", f"http://localhost:{api}/v1"


def standalone(repository: Path) -> tuple[list, str, str]:
    """A plain tritonserver and `tritonize openai` against its gRPC port, each its own process."""
    from tritonize.triton.server import TritonServer

    server = TritonServer(repository)
    server.start()
    server.wait_ready()
    api = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tritonize", "openai", str(repository), "--grpc-url",
                                server.grpc_url, "--port", str(api)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(api, process, 120, "tritonize openai")
    except SystemExit:
        server.stop()
        raise
    return [process, server], server.grpc_url, f"http://localhost:{api}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path)
    parser.add_argument("--model", default="tiny_llm")
    parser.add_argument("--requests", type=int, default=24, help="requests per level and path")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--setup", choices=("serve", "standalone"), default="serve")
    args = parser.parse_args()
    terminal = Terminal()
    repository = args.repository or built_repository(terminal)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(repository / f"{args.model}_preprocessing" / "1" / "tokenizer" / "tokenizer.json"))

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    if args.setup == "serve":
        process, grpc_url, url = serve(repository)
        running: list = [process]
    else:
        running, grpc_url, url = standalone(repository)
    try:
        levels = asyncio.run(measure(args, grpc_url, url, count_tokens))
    finally:
        for each in running:
            if isinstance(each, subprocess.Popen):
                each.send_signal(signal.SIGTERM)
                each.wait(timeout=120)
            else:
                each.stop()
    summary = {"setup": args.setup, "model": args.model, "max_tokens": args.max_tokens, "requests": args.requests,
               "levels": levels}
    name = "openai_frontend" if args.setup == "serve" else "openai_frontend_standalone"
    terminal.success(f"wrote {save(name, summary)}")


if __name__ == "__main__":
    main()
