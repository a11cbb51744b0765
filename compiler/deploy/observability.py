"""Prometheus scrape config, recording and alerting rules, prometheus-adapter rules and the Grafana
dashboard, for Triton's own metrics and, with deploy.openai, the OpenAI frontend's LLM metrics
(time to first token, inter-token latency, tokens/s: compiler/openai/metrics.py).

The rule groups are built once here and written twice: as promtool-checkable rule files (compose,
`serve --stack`) and inside the PrometheusRule object (Kubernetes, via kubernetes.py).
Metric names: triton-inference-server/server r24.10, docs/user_guide/metrics.md, and checked on the
embedded 2.51 server's /metrics (tests/test_deploy_stack.py reads them there).
"""
from __future__ import annotations

import json
from typing import Any

from .context import RATE_WINDOW, TRITON_METRICS_PORT, DeployContext, queue_time_query

PROMETHEUS_CONFIG = "prometheus/prometheus.yml"
RECORDING_RULES = "prometheus/rules/tritonize-recording.yml"
ALERTING_RULES = "prometheus/rules/tritonize-alerts.yml"
# In the kustomize base (a ConfigMap for Grafana's dashboard sidecar); compose mounts it too.
DASHBOARD = "base/grafana/dashboards/tritonize.json"
GRAFANA_DATASOURCE = "grafana/provisioning/datasources/prometheus.yml"
GRAFANA_DASHBOARD_PROVIDER = "grafana/provisioning/dashboards/tritonize.yml"
SCRAPE_JOB = "triton"
OPENAI_SCRAPE_JOB = "openai"

# The name prometheus-adapter serves the autoscaling query as (custom.metrics.k8s.io, per pod).
HPA_METRIC = "triton_queue_time_per_request_us"

W = RATE_WINDOW


def _per_request(counter: str, by: str = "model") -> str:
    """Mean microseconds per successful request of a cumulative-duration counter."""
    return (f"sum by ({by}) (rate({counter}[{W}])) / clamp_min(sum by ({by}) "
            f"(rate(nv_inference_request_success[{W}])), 1e-9)")


def _llm_quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (model, le) (rate({histogram}_bucket[{W}])))"


TTFT = "tritonize_openai_time_to_first_token_seconds"
INTER_TOKEN = "tritonize_openai_inter_token_latency_seconds"
TOKENS_PER_SECOND = "tritonize_openai_tokens_per_second"
OPENAI_REQUESTS = "tritonize_openai_requests_total"
LLM_RECORDING_RULES = (
    ("tritonize:llm_ttft_seconds:p50", _llm_quantile(0.5, TTFT)),
    ("tritonize:llm_ttft_seconds:p95", _llm_quantile(0.95, TTFT)),
    ("tritonize:llm_inter_token_latency_seconds:p95", _llm_quantile(0.95, INTER_TOKEN)),
    # Per request, first to last token: the median stream's decoding rate.
    ("tritonize:llm_tokens_per_second:p50", _llm_quantile(0.5, TOKENS_PER_SECOND)),
    ("tritonize:llm_error_ratio:rate1m",
     f'sum by (model) (rate({OPENAI_REQUESTS}{{status=~"5.."}}[{W}])) / clamp_min(sum by (model) '
     f"(rate({OPENAI_REQUESTS}[{W}])), 1e-9)"),
)


def recording_rules(*, llm: bool = False) -> dict[str, Any]:
    """llm: the deployment runs the OpenAI frontend (deploy.openai), whose metrics add LLM rules."""
    rules = [
        ("tritonize:request_success:rate1m", f"sum by (model) (rate(nv_inference_request_success[{W}]))"),
        ("tritonize:request_failure:rate1m", f"sum by (model) (rate(nv_inference_request_failure[{W}]))"),
        ("tritonize:inference_count:rate1m", f"sum by (model) (rate(nv_inference_count[{W}]))"),
        ("tritonize:exec_count:rate1m", f"sum by (model) (rate(nv_inference_exec_count[{W}]))"),
        ("tritonize:queue_time_us_per_request:rate1m", queue_time_query("", "model")),
        ("tritonize:compute_infer_us_per_request:rate1m", _per_request("nv_inference_compute_infer_duration_us")),
        ("tritonize:request_time_us_per_request:rate1m", _per_request("nv_inference_request_duration_us")),
        # Inferences per execution: how well dynamic batching fills batches.
        ("tritonize:batch_size:rate1m",
         f"sum by (model) (rate(nv_inference_count[{W}])) / clamp_min(sum by (model) (rate(nv_inference_exec_count[{W}])), 1e-9)"),
        ("tritonize:error_ratio:rate1m",
         f"sum by (model) (rate(nv_inference_request_failure[{W}])) / clamp_min(sum by (model) "
         f"(rate(nv_inference_request_success[{W}])) + sum by (model) (rate(nv_inference_request_failure[{W}])), 1e-9)"),
        ("tritonize:pending_requests", "sum by (model) (nv_inference_pending_request_count)"),
    ] + (list(LLM_RECORDING_RULES) if llm else [])
    return {"name": "tritonize.recording", "rules": [{"record": name, "expr": expr} for name, expr in rules]}


def alerting_rules(context: DeployContext, *, kubernetes: bool) -> dict[str, Any]:
    target_us = context.queue_target_us
    rules = [
        {"alert": "TritonHighErrorRate", "expr": "tritonize:error_ratio:rate1m > 0.05", "for": "5m",
         "labels": {"severity": "critical"},
         "annotations": {"summary": "More than 5% of {{ $labels.model }}'s requests fail",
                         "description": "Error ratio {{ $value | humanizePercentage }} over the last 5 minutes."}},
        # Twice the autoscaling target for 10 minutes: the HPA is at max replicas or cannot add pods.
        {"alert": "TritonHighQueueTime", "expr": f"tritonize:queue_time_us_per_request:rate1m > {2 * target_us}",
         "for": "10m", "labels": {"severity": "warning"},
         "annotations": {"summary": "Requests for {{ $labels.model }} wait in Triton's queue",
                         "description": f"Mean queue time {{{{ $value }}}} us, over twice the {target_us} us "
                                        "autoscaling target for 10 minutes: check max replicas and GPU capacity."}},
        # The ServiceMonitor's job is the Service's name.
        {"alert": "TritonDown", "expr": f'up{{job="{SCRAPE_JOB}"}} == 0' if not kubernetes else
         f'up{{job="{context.deploy.name}"}} == 0', "for": "2m", "labels": {"severity": "critical"},
         "annotations": {"summary": "Prometheus cannot scrape tritonserver on {{ $labels.instance }}"}},
    ]
    if kubernetes:
        # kube-state-metrics' readiness series (shipped with kube-prometheus-stack).
        rules.append({"alert": "TritonPodNotReady",
                      "expr": f'sum by (pod) (kube_pod_status_ready{{namespace="{context.deploy.namespace}",'
                              f'condition="true",pod=~"{context.deploy.name}-.*"}}) == 0',
                      "for": f"{max(5, context.startup_budget_s // 60 + 5)}m", "labels": {"severity": "warning"},
                      "annotations": {"summary": "Triton pod {{ $labels.pod }} is not ready",
                                      "description": "Past its startup budget and not ready: a model failed to "
                                                     "load, or the repository did not arrive."}})
    return {"name": "tritonize.alerts", "rules": rules}


def prometheus_config(target: str, *, scrape_interval: str = "15s", rule_files: list[str] | None = None,
                      openai_target: str | None = None) -> dict[str, Any]:
    jobs = [(SCRAPE_JOB, target)] + ([(OPENAI_SCRAPE_JOB, openai_target)] if openai_target else [])
    return {"global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": rule_files if rule_files is not None else ["rules/*.yml"],
            "scrape_configs": [{"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": [where]}]}
                               for job, where in jobs]}


def compose_prometheus_config(context: DeployContext) -> dict[str, Any]:
    openai = context.deploy.openai
    # The frontend shares triton's network namespace in compose (compose.py): same host name.
    return prometheus_config(f"triton:{TRITON_METRICS_PORT}",
                             openai_target=f"triton:{openai.port}" if openai is not None else None)


def adapter_rules() -> dict[str, Any]:
    """prometheus-adapter's `rules` config: serves HPA_METRIC per pod from the queue-time query."""
    return {"rules": [{
        "seriesQuery": 'nv_inference_queue_duration_us{namespace!="",pod!=""}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^nv_inference_queue_duration_us$", "as": HPA_METRIC},
        "metricsQuery": queue_time_query("<<.LabelMatchers>>", "<<.GroupBy>>"),
    }]}


def hpa_query_for(labels: str, group_by: str = "instance") -> str:
    """The adapter's query with its placeholders filled as the adapter would for one pod."""
    return queue_time_query(labels, group_by)


# -- Grafana ---------------------------------------------------------------------------------

DATASOURCE_UID = "tritonize-prometheus"


def llm_dashboard_panels() -> list[tuple[str, str, str, list[str]]]:
    """The OpenAI frontend's panels (deploy.openai): what an LLM's users feel."""
    return [
        ("LLM time to first token p50 / p95", "s", "From the request to the first streamed token, per model "
         "(OpenAI frontend).", [_llm_quantile(0.5, TTFT), _llm_quantile(0.95, TTFT)]),
        ("LLM inter-token latency p50 / p95", "s", "Time between streamed tokens.",
         [_llm_quantile(0.5, INTER_TOKEN), _llm_quantile(0.95, INTER_TOKEN)]),
        ("LLM tokens per second per request p50", "none", "Each request's decoding rate, first to last token.",
         [_llm_quantile(0.5, TOKENS_PER_SECOND)]),
        ("LLM requests per second by status", "reqps", "OpenAI frontend answers, by HTTP status.",
         [f"sum by (model, status) (rate({OPENAI_REQUESTS}[{W}]))"]),
    ]


def dashboard_panels(*, llm: bool = False) -> list[tuple[str, str, str, list[str]]]:
    """(title, unit, description, [PromQL, ...]) per panel; every query is checked against a real
    Prometheus in the stack tests (the LLM ones for parsing: the stack runs no frontend)."""
    q = {
        "throughput": [f"sum by (model) (rate(nv_inference_count[{W}]))"],
        "requests": [f"sum by (model) (rate(nv_inference_request_success[{W}]))",
                     f"sum by (model) (rate(nv_inference_request_failure[{W}]))"],
        # Summaries (--metrics-config summary_latencies=true) give per-pod quantiles; the max over
        # pods is the honest aggregate (quantiles do not average).
        "latency": ['max by (model) (nv_inference_request_summary_us{quantile="0.5"})',
                    'max by (model) (nv_inference_request_summary_us{quantile="0.95"})',
                    'max by (model) (nv_inference_request_summary_us{quantile="0.99"})'],
        "queue": [queue_time_query("", "model"), 'max by (model) (nv_inference_queue_summary_us{quantile="0.99"})'],
        "compute": [_per_request("nv_inference_compute_input_duration_us"),
                    _per_request("nv_inference_compute_infer_duration_us"),
                    _per_request("nv_inference_compute_output_duration_us")],
        "errors": [f"sum by (model) (rate(nv_inference_request_failure[{W}])) / clamp_min(sum by (model) "
                   f"(rate(nv_inference_request_success[{W}])) + sum by (model) (rate(nv_inference_request_failure[{W}])), 1e-9)"],
        "batch": [f"sum by (model) (rate(nv_inference_count[{W}])) / clamp_min(sum by (model) (rate(nv_inference_exec_count[{W}])), 1e-9)"],
        "pending": ["sum by (model) (nv_inference_pending_request_count)"],
        # Share of wall time the backend spends computing, per model: instance utilization
        # (1.0 = one instance busy all the time).
        "utilization": [f"sum by (model) (rate(nv_inference_compute_infer_duration_us[{W}])) / 1e6"],
        "gpu": ["avg by (gpu_uuid) (nv_gpu_utilization)", "max by (gpu_uuid) (nv_gpu_memory_used_bytes)"],
    }
    return [
        ("Inferences per second", "reqps", "Inferences (a batch of n counts n) per model.", q["throughput"]),
        ("Requests per second: success / failure", "reqps", "Requests answered and failed per model.", q["requests"]),
        ("Request latency p50 / p95 / p99", "µs", "End-to-end in Triton, from its latency summaries.", q["latency"]),
        ("Queue time per request (autoscaling signal)", "µs", "Mean wait in Triton's scheduler queue, and p99.", q["queue"]),
        ("Compute time per request: input / infer / output", "µs", "Backend time per request.", q["compute"]),
        ("Error ratio", "percentunit", "Failed / all requests per model.", q["errors"]),
        ("Batch size achieved", "none", "Inferences per execution: how full dynamic batches are.", q["batch"]),
        ("Pending requests", "none", "Requests waiting for a backend (queue depth).", q["pending"]),
        ("Instance utilization", "percentunit", "Compute seconds per second per model.", q["utilization"]),
        ("GPU utilization and memory", "none", "Empty on CPU-only servers.", q["gpu"]),
    ] + (llm_dashboard_panels() if llm else [])


# Panels name the datasource through a dashboard variable, so the same JSON works with the
# provisioned datasource (compose) and with whatever uid a cluster's Grafana gave its Prometheus.
PANEL_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def dashboard(context: DeployContext) -> dict[str, Any]:
    panels = []
    for index, (title, unit, description, queries) in enumerate(dashboard_panels(llm=context.deploy.openai is not None)):
        panels.append({
            "id": index + 1, "type": "timeseries", "title": title, "description": description,
            "datasource": PANEL_DATASOURCE,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
            "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": "{{model}}",
                         "datasource": PANEL_DATASOURCE}
                        for i, expr in enumerate(queries)],
        })
    return {"title": f"Triton: {context.deploy.name}", "uid": f"tritonize-{context.deploy.name}"[:40],
            "schemaVersion": 39, "version": 1, "editable": True, "time": {"from": "now-1h", "to": "now"},
            "refresh": "10s", "tags": ["triton", "tritonize"], "panels": panels,
            "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                     "query": "prometheus", "hide": 0, "current": {}}]}}


def dashboard_json(context: DeployContext) -> str:
    return json.dumps(dashboard(context), indent=2) + "\n"


def grafana_datasource(url: str = "http://prometheus:9090") -> dict[str, Any]:
    return {"apiVersion": 1, "datasources": [{"name": "Prometheus", "type": "prometheus", "uid": DATASOURCE_UID,
                                              "access": "proxy", "url": url, "isDefault": True}]}


def grafana_dashboard_provider() -> dict[str, Any]:
    return {"apiVersion": 1, "providers": [{"name": "tritonize", "type": "file", "disableDeletion": False,
                                            "options": {"path": "/var/lib/grafana/dashboards"}}]}
