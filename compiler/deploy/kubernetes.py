"""Kubernetes manifests: a kustomize base plus overlays.

kustomize rather than Helm: `kubectl` (1.32 here) has kustomize built in, so the output is
checked offline by the same tool that applies it (`kubectl kustomize`, `kubectl apply -k`), and
there is no template language between the spec and the YAML. The base's kustomization.yaml sits at
base/, which also holds base/gateway/nginx.conf: kustomize generates the gateway ConfigMap from
it (it reads files only below a kustomization) and docker compose mounts the same file.
"""
from __future__ import annotations

from typing import Any

from ..triton.server.access import RestrictedApis
from .context import (
    ADMIN_HEADER,
    GATEWAY_GRPC_PORT,
    GATEWAY_HTTP_PORT,
    RESTRICTED_APIS,
    STARTUP_PERIOD_S,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    DeployContext,
    queue_time_query,
)
from .gateway import NGINX_CONF
from .observability import DASHBOARD, HPA_METRIC, adapter_rules, alerting_rules, recording_rules

BASE_DIR = "base"
OVERLAYS_DIR = "overlays"
GATEWAY_IMAGE = "nginx:1.27-alpine"
# Default init-container images per URI scheme (their CLIs: aws s3 sync, gcloud storage rsync, wget).
SYNC_IMAGES = {"s3": "amazon/aws-cli:2.17.0", "gs": "google/cloud-sdk:489.0.0-slim", "http": "busybox:1.36",
               "https": "busybox:1.36"}
# Seconds the pod stays in the Service's endpoints after termination starts while kube-proxy and
# load balancers drop it: new requests still find a server during that time.
ENDPOINT_DRAIN_S = 10
MODELS_PATH = "/models"


def restricted_api_args() -> list[str]:
    """tritonserver flags putting model control, config, shared memory, logging and trace behind the
    admin key: `--http-restricted-api=<api>,<api>:<header>=<value>` and, for gRPC (2.51's name),
    `--grpc-restricted-protocol=...` (triton-inference-server/server r24.10,
    docs/customization_guide/inference_protocols.md). $(TRITON_ADMIN_KEY) is expanded by the
    kubelet from the container's env (the Secret), so the key is never in a manifest."""
    return RestrictedApis("$(TRITON_ADMIN_KEY)", apis=RESTRICTED_APIS, header=ADMIN_HEADER).server_args()


def tritonserver_args(context: DeployContext, repository: str = MODELS_PATH) -> list[str]:
    return [f"--model-repository={repository}", f"--http-port={TRITON_HTTP_PORT}", f"--grpc-port={TRITON_GRPC_PORT}",
            f"--metrics-port={TRITON_METRICS_PORT}", "--model-control-mode=none",
            # In-flight requests get this long after SIGTERM; new ones are refused meanwhile.
            f"--exit-timeout-secs={context.deploy.drain_timeout_s}",
            # Latency summaries (p50/p95/p99 in the dashboard).
            "--metrics-config=summary_latencies=true"]


# Where the gateway's key Secret is mounted in the OpenAI frontend's container.
OPENAI_KEYS_DIR = "/etc/tritonize/keys"


def openai_command(context: DeployContext) -> list[str]:
    """`tritonize openai` next to tritonserver (same pod / compose network): the repository for
    its tokenizers and limits, Triton's gRPC port, and the gateway's key file."""
    openai = context.deploy.openai
    assert openai is not None
    return ["tritonize", "openai", MODELS_PATH, "--grpc-url", f"127.0.0.1:{TRITON_GRPC_PORT}", "--host", "0.0.0.0",
            "--port", str(openai.port), "--api-keys", f"{OPENAI_KEYS_DIR}/api-keys.map",
            "--max-in-flight", str(openai.max_in_flight)]


def _meta(context: DeployContext, name: str, **extra) -> dict[str, Any]:
    return {"name": name, "labels": dict(context.labels), **extra}


def namespace(context: DeployContext) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": context.deploy.namespace}}


def deployment(context: DeployContext) -> dict[str, Any]:
    d = context.deploy
    grace = ENDPOINT_DRAIN_S + d.drain_timeout_s + 15
    volumes: list[dict[str, Any]] = [
        {"name": "gateway-conf", "configMap": {"name": f"{d.name}-gateway"}},
        {"name": "gateway-keys", "secret": {"secretName": d.api_keys_secret}},
        # The python backend passes tensors through shared memory; the default 64 MiB /dev/shm is small.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
    ]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    init_containers: list[dict[str, Any]] = []
    delivery = d.repository
    if delivery.delivery == "sync":
        volumes.append({"name": "models", "emptyDir": {}})
        mounts.append({"name": "models", "mountPath": MODELS_PATH, "readOnly": True})
        init_containers.append(_sync_container(context))
    elif delivery.delivery == "pvc":
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": delivery.claim, "readOnly": True}})
        mounts.append({"name": "models", "mountPath": MODELS_PATH, "readOnly": True})
    # baked: the image holds the repository at /models (docker/Dockerfile).

    resources: dict[str, Any] = {"requests": {"cpu": d.resources.cpu, "memory": d.resources.memory},
                                 "limits": {"memory": d.resources.memory}}
    if context.gpus:
        resources["requests"]["nvidia.com/gpu"] = context.gpus
        resources["limits"]["nvidia.com/gpu"] = context.gpus
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}}
    triton = {
        "name": "tritonserver",
        "image": context.image,
        "command": ["tritonserver"],
        "args": tritonserver_args(context) + restricted_api_args(),
        "env": [{"name": "TRITON_ADMIN_KEY",
                 "valueFrom": {"secretKeyRef": {"name": d.admin_key_secret, "key": "key"}}}],
        "ports": [{"name": "http", "containerPort": TRITON_HTTP_PORT},
                  {"name": "grpc", "containerPort": TRITON_GRPC_PORT},
                  {"name": "metrics", "containerPort": TRITON_METRICS_PORT}],
        "resources": resources,
        # Models load before the server is ready: the startup probe allows the whole budget
        # (derived from the models), then readiness/liveness take over at their normal pace.
        "startupProbe": {**probe, "periodSeconds": STARTUP_PERIOD_S,
                         "failureThreshold": context.startup_failure_threshold, "timeoutSeconds": 5},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 2, "timeoutSeconds": 3},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                          "failureThreshold": 3, "timeoutSeconds": 5},
        # Stay in the endpoints while they are updated, then SIGTERM: Triton refuses new requests
        # and finishes in-flight ones for up to --exit-timeout-secs.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(ENDPOINT_DRAIN_S)]}}},
        "volumeMounts": mounts,
    }
    gateway = {
        "name": "gateway",
        "image": GATEWAY_IMAGE,
        "command": ["nginx", "-c", "/etc/nginx/tritonize/conf/nginx.conf", "-g", "daemon off;"],
        "ports": [{"name": "gateway-http", "containerPort": GATEWAY_HTTP_PORT},
                  {"name": "gateway-grpc", "containerPort": GATEWAY_GRPC_PORT}],
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "gateway-http"}, "periodSeconds": 5,
                           "failureThreshold": 2},
        "livenessProbe": {"tcpSocket": {"port": "gateway-http"}, "periodSeconds": 10},
        # nginx -s quit: stop accepting, finish open requests (a plain SIGTERM would cut them).
        "lifecycle": {"preStop": {"exec": {"command": [
            "/bin/sh", "-c", f"sleep {ENDPOINT_DRAIN_S}; nginx -s quit; "
                             f"while [ -e /tmp/nginx.pid ]; do sleep 1; done"]}}},
        "volumeMounts": [{"name": "gateway-conf", "mountPath": "/etc/nginx/tritonize/conf", "readOnly": True},
                         {"name": "gateway-keys", "mountPath": "/etc/nginx/tritonize/keys", "readOnly": True}],
    }
    containers = [triton, gateway]
    if d.openai is not None:
        containers.append(_openai_container(context, [m for m in mounts if m["name"] == "models"]))
    pod: dict[str, Any] = {"terminationGracePeriodSeconds": grace, "containers": containers,
                           "volumes": volumes}
    if init_containers:
        pod["initContainers"] = init_containers
    if d.resources.node_selector:
        pod["nodeSelector"] = dict(d.resources.node_selector)
    if context.gpus:
        # GPU nodes are commonly tainted so only GPU workloads land there.
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(context, d.name),
        "spec": {
            "replicas": d.replicas.min,
            "selector": {"matchLabels": context.selector},
            # Never below the current capacity during a rollout (a new pod may load for minutes).
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": dict(context.labels)}, "spec": pod},
        },
    }


def _openai_container(context: DeployContext, model_mounts: list[dict[str, Any]]) -> dict[str, Any]:
    openai = context.deploy.openai
    assert openai is not None
    probe = {"httpGet": {"path": "/health", "port": "openai"}}
    return {
        "name": "openai",
        "image": openai.image,
        "command": openai_command(context),
        "ports": [{"name": "openai", "containerPort": openai.port}],
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
        # Leaves the endpoints with the gateway; open streams get the gateway's drain time.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(ENDPOINT_DRAIN_S)]}}},
        "volumeMounts": model_mounts + [{"name": "gateway-keys", "mountPath": OPENAI_KEYS_DIR, "readOnly": True}],
    }


def _sync_container(context: DeployContext) -> dict[str, Any]:
    delivery = context.deploy.repository
    uri = delivery.uri
    assert uri is not None  # the spec requires it for delivery: sync
    scheme = uri.split("://", 1)[0]
    image = delivery.sync_image or SYNC_IMAGES[scheme]
    if scheme == "s3":
        command = ["aws", "s3", "sync", "--only-show-errors", uri, MODELS_PATH]
    elif scheme == "gs":
        command = ["gcloud", "storage", "rsync", "--recursive", uri, MODELS_PATH]
    else:
        command = ["/bin/sh", "-c", f'set -e; wget -q -O - "{uri}" | tar -xz -C {MODELS_PATH}']
    return {"name": "fetch-repository", "image": image, "command": command,
            # Cloud credentials (AWS_ACCESS_KEY_ID..., or a workload identity instead): optional.
            "envFrom": [{"secretRef": {"name": f"{context.deploy.name}-repository-credentials", "optional": True}}],
            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
            "volumeMounts": [{"name": "models", "mountPath": MODELS_PATH}]}


def service(context: DeployContext) -> dict[str, Any]:
    """Clients reach the gateway on Triton's usual port numbers (the OpenAI API at http/v1);
    Triton's own ports are not published. The frontend's port is, for its /metrics (its /v1
    routes take the same keys as the gateway)."""
    ports: list[dict[str, Any]] = [
        {"name": "http", "port": TRITON_HTTP_PORT, "targetPort": "gateway-http"},
        {"name": "grpc", "port": TRITON_GRPC_PORT, "targetPort": "gateway-grpc", "appProtocol": "kubernetes.io/h2c"},
        {"name": "metrics", "port": TRITON_METRICS_PORT, "targetPort": "metrics"}]
    if context.deploy.openai is not None:
        ports.append({"name": "openai-metrics", "port": context.deploy.openai.port, "targetPort": "openai"})
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(context, context.deploy.name),
            "spec": {"selector": context.selector, "ports": ports}}


def pod_disruption_budget(context: DeployContext) -> dict[str, Any]:
    # maxUnavailable rather than minAvailable: with one replica a minAvailable of 1 would block
    # every node drain.
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(context, context.deploy.name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": context.selector}}}


def service_monitor(context: DeployContext) -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": _meta(context, context.deploy.name),
            "spec": {"selector": {"matchLabels": context.selector},
                     "endpoints": [{"port": port, "path": "/metrics", "interval": "15s"} for port in
                                   ["metrics"] + (["openai-metrics"] if context.deploy.openai is not None else [])]}}


def prometheus_rule(context: DeployContext) -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": _meta(context, context.deploy.name),
            "spec": {"groups": [recording_rules(llm=context.deploy.openai is not None),
                                alerting_rules(context, kubernetes=True)]}}


def horizontal_pod_autoscaler(context: DeployContext) -> dict[str, Any]:
    d = context.deploy
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(context, d.name),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": d.name},
                "minReplicas": d.replicas.min, "maxReplicas": d.replicas.max,
                "metrics": [{"type": "Pods", "pods": {
                    "metric": {"name": HPA_METRIC},
                    "target": {"type": "AverageValue", "averageValue": str(context.queue_target_us)}}}],
                "behavior": {
                    # Out fast (a new pod takes its startup budget to help), in slowly: each removed
                    # pod drains its in-flight requests first.
                    "scaleUp": {"stabilizationWindowSeconds": 30,
                                "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]},
                    "scaleDown": {"stabilizationWindowSeconds": 300,
                                  "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]}}}}


def keda_query(context: DeployContext) -> str:
    d = context.deploy
    return "avg(" + queue_time_query(f'namespace="{d.namespace}",pod=~"{d.name}-.*"', "pod") + ")"


def scaled_object(context: DeployContext) -> dict[str, Any]:
    d = context.deploy
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": _meta(context, d.name),
            "spec": {"scaleTargetRef": {"name": d.name}, "minReplicaCount": d.replicas.min,
                     "maxReplicaCount": d.replicas.max, "pollingInterval": 15, "cooldownPeriod": 300,
                     "triggers": [{"type": "prometheus", "metricType": "Value", "metadata": {
                         "serverAddress": d.autoscaling.prometheus_url, "query": keda_query(context),
                         "threshold": str(context.queue_target_us)}}]}}


def adapter_values(context: DeployContext) -> dict[str, Any]:
    """Values for the prometheus-community/prometheus-adapter chart: its Prometheus and our rule."""
    url = context.deploy.autoscaling.prometheus_url
    host, _, port = url.rpartition(":")
    return {"prometheus": {"url": host, "port": int(port) if port.isdigit() else 9090},
            "rules": {"default": False, "custom": adapter_rules()["rules"]}}


def base_kustomization(context: DeployContext) -> dict[str, Any]:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "namespace": context.deploy.namespace,
            "resources": list(BASE_FILES),
            # The hash suffix kustomize adds rolls the pods when nginx.conf changes.
            "configMapGenerator": [
                {"name": f"{context.deploy.name}-gateway", "files": [f"nginx.conf={_in_base(NGINX_CONF)}"]},
                # kube-prometheus-stack's Grafana sidecar loads ConfigMaps carrying this label.
                {"name": f"{context.deploy.name}-dashboard", "files": [_in_base(DASHBOARD)],
                 "options": {"labels": {"grafana_dashboard": "1"}}}]}


def _in_base(path: str) -> str:
    return path.removeprefix(BASE_DIR + "/")


BASE_FILES = ("namespace.yaml", "deployment.yaml", "service.yaml", "pdb.yaml", "servicemonitor.yaml",
              "prometheusrule.yaml")


def overlays(context: DeployContext) -> dict[str, dict[str, Any]]:
    """overlay name -> {file name: object}. fixed: min replicas, no autoscaler; hpa: HPA on the
    queue-time metric (needs prometheus-adapter with the emitted rules); keda: the same through KEDA."""
    base = "../../base"
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "namespace": context.deploy.namespace, "resources": [base]}
    result = {"fixed": {"kustomization.yaml": kustomization},
              "hpa": {"kustomization.yaml": {**kustomization, "resources": [base, "hpa.yaml"]},
                      "hpa.yaml": horizontal_pod_autoscaler(context)}}
    if context.deploy.autoscaling.keda:
        result["keda"] = {"kustomization.yaml": {**kustomization, "resources": [base, "scaledobject.yaml"]},
                          "scaledobject.yaml": scaled_object(context)}
    return result


def base_objects(context: DeployContext) -> dict[str, dict[str, Any]]:
    return dict(zip(BASE_FILES, (namespace(context), deployment(context), service(context),
                                 pod_disruption_budget(context), service_monitor(context), prometheus_rule(context))))
