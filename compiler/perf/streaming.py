"""Token metrics of a streaming (decoupled) model, derived from perf_analyzer's profile export.

perf_analyzer 2.51 measures a decoupled model's latency up to its *first* response and counts
responses per second; it reports no token metrics itself. Its `--profile-export-file` keeps, per
request, the send timestamp and every response's timestamp and outputs, from which:

- time to first token (TTFT) = first response carrying output - request sent;
- inter-token latency (ITL) = (last token response - first token response) / (token responses - 1),
  per request;
- output tokens/s = token responses across all requests / (last response - first request sent).

With a tokenizer (a text-generation ensemble or BLS model: the one its detokenizing step loads),
a request's tokens are those of its streamed text (the pieces joined, encoded again): a response
may carry several tokens (tritonize's CPU engine paces concurrent streams,
python_backends/llm_cpu_engine/back_channel.py; TensorRT-LLM's speculative decoding does too), so
ITL is then (last token response - first) / (tokens - 1). Without one, a "token" is a streamed
response carrying output: right for an LLM API model, which answers once per decoding step. A
last response with empty outputs is the one that only closes the stream (flag COMPLETE_FINAL, which
perf_analyzer records as an empty value) and is not counted.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TokenMetrics:
    requests: int
    output_tokens: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_mean_ms: float | None      # None when every request produced at most one token
    itl_p99_ms: float | None
    output_tokens_per_s: float
    tokens_per_request: float


def token_metrics(profile_export: Path, count_tokens: Callable[[str], int] | None = None) -> TokenMetrics | None:
    """count_tokens: a streamed text's tokens (see above); None: one token a response."""
    data = json.loads(profile_export.read_text())
    requests = [r for experiment in data.get("experiments", []) for r in experiment.get("requests", [])]
    ttfts, itls, tokens, first_sent, last_response = [], [], 0, None, None
    for request in requests:
        sent = request["timestamp"]
        outputs = request.get("response_outputs") or []
        stamps = request.get("response_timestamps") or []
        token_stamps = list(stamps[:len(outputs)])
        if outputs and not any(value not in ("", [], None) for value in outputs[-1].values()):
            token_stamps.pop()  # the stream's closing response: perf_analyzer shows it with empty outputs
        if not token_stamps:
            continue
        count = len(token_stamps)
        if count_tokens is not None:
            count = max(count_tokens("".join(str(o.get("text_output", "")) for o in outputs)), 1)
        ttfts.append((token_stamps[0] - sent) / 1e6)
        if count > 1:
            itls.append((token_stamps[-1] - token_stamps[0]) / (count - 1) / 1e6)
        tokens += count
        first_sent = sent if first_sent is None else min(first_sent, sent)
        last_response = stamps[-1] if last_response is None else max(last_response, stamps[-1])
    if not ttfts or first_sent is None or last_response is None:
        return None
    elapsed_s = max((last_response - first_sent) / 1e9, 1e-9)
    return TokenMetrics(
        requests=len(ttfts), output_tokens=tokens,
        ttft_p50_ms=statistics.median(ttfts), ttft_p99_ms=_percentile(ttfts, 99),
        itl_mean_ms=statistics.fmean(itls) if itls else None,
        itl_p99_ms=_percentile(itls, 99) if itls else None,
        output_tokens_per_s=tokens / elapsed_s, tokens_per_request=tokens / len(ttfts))


def _percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(percent / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]
