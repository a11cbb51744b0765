"""The frontend's Prometheus metrics (its own registry, served on the frontend's /metrics)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..optional import optional

prometheus_client = optional("prometheus_client", purpose="the OpenAI frontend's /metrics", extra="openai")

# Buckets for a CPU test model up to large GPU models: 1 ms .. 30 s; tokens/s 1 .. 10k.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


@dataclass(frozen=True)
class ModelMetrics:
    ttft: Any
    inter_token: Any
    tokens_per_second: Any


class FrontendMetrics:
    def __init__(self) -> None:
        p = prometheus_client
        self.registry = p.CollectorRegistry()
        self.requests = p.Counter("tritonize_openai_requests", "Requests by model, endpoint and HTTP status",
                                  ["model", "endpoint", "status"], registry=self.registry)
        self.ttft = p.Histogram("tritonize_openai_time_to_first_token_seconds", "Time to the first token",
                                ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inter_token = p.Histogram("tritonize_openai_inter_token_latency_seconds", "Mean time between the tokens of a request",
                                       ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tokens_per_second = p.Histogram("tritonize_openai_tokens_per_second", "Generated tokens per second "
                                             "per request (first to last token)", ["model"], buckets=RATE_BUCKETS,
                                             registry=self.registry)
        self.in_flight = p.Gauge("tritonize_openai_requests_in_flight", "Requests being answered", ["model"],
                                 registry=self.registry)
        self._models: dict[str, ModelMetrics] = {}

    def of_model(self, model: str) -> ModelMetrics:
        """The per-token series of one model (labels() looked up once per model, not per token)."""
        children = self._models.get(model)
        if children is None:
            children = self._models[model] = ModelMetrics(
                self.ttft.labels(model), self.inter_token.labels(model), self.tokens_per_second.labels(model))
        return children

    def request(self, model: str, endpoint: str, status: int) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()

    def exposition(self) -> tuple[bytes, str]:
        return prometheus_client.generate_latest(self.registry), prometheus_client.CONTENT_TYPE_LATEST
