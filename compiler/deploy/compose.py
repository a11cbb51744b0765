"""docker compose for one GPU host: tritonserver, the nginx gateway (in Triton's network
namespace, so the same nginx.conf reaches it on 127.0.0.1), Prometheus and Grafana."""
from __future__ import annotations

from typing import Any

from ..triton.server.access import RestrictedApis
from .context import (
    ADMIN_HEADER,
    GATEWAY_GRPC_PORT,
    GATEWAY_HTTP_PORT,
    RESTRICTED_APIS,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    DeployContext,
)
from .kubernetes import ENDPOINT_DRAIN_S, GATEWAY_IMAGE, MODELS_PATH, OPENAI_KEYS_DIR, openai_command, tritonserver_args

COMPOSE_FILE = "compose.yaml"
PROMETHEUS_IMAGE = "prom/prometheus:v2.53.2"
GRAFANA_IMAGE = "grafana/grafana:11.2.2"


def compose(context: DeployContext) -> dict[str, Any]:
    d = context.deploy
    key = "${TRITON_ADMIN_KEY:?set TRITON_ADMIN_KEY (e.g. in .env) to the admin key}"
    triton: dict[str, Any] = {
        "image": context.image,
        "command": ["tritonserver", *tritonserver_args(context),
                    *RestrictedApis(key, apis=RESTRICTED_APIS, header=ADMIN_HEADER).server_args()],
        "shm_size": "2gb",
        "ulimits": {"memlock": -1},
        # Clients reach the gateway (sharing this container's network) on Triton's usual ports.
        "ports": [f"{TRITON_HTTP_PORT}:{GATEWAY_HTTP_PORT}", f"{TRITON_GRPC_PORT}:{GATEWAY_GRPC_PORT}"],
        "healthcheck": {"test": ["CMD", "curl", "-fs", f"localhost:{TRITON_HTTP_PORT}/v2/health/ready"],
                        "interval": "10s", "timeout": "3s", "retries": 3,
                        "start_period": f"{context.startup_budget_s}s"},
        "stop_grace_period": f"{d.drain_timeout_s + ENDPOINT_DRAIN_S}s",
        "restart": "unless-stopped",
    }
    if d.repository.delivery != "baked":
        triton["volumes"] = [f"${{MODEL_REPOSITORY:?set MODEL_REPOSITORY to the built repository}}:{MODELS_PATH}:ro"]
    if context.gpus:
        triton["deploy"] = {"resources": {"reservations": {"devices": [
            {"driver": "nvidia", "count": context.gpus, "capabilities": ["gpu"]}]}}}
    services: dict[str, Any] = {"triton": triton}
    if d.openai is not None:
        # In Triton's network namespace too: the gateway reaches it on 127.0.0.1, it reaches Triton's gRPC port.
        services["openai"] = {
            "image": d.openai.image,
            "network_mode": "service:triton",
            "command": openai_command(context),
            "volumes": triton.get("volumes", []) + [f"./keys:{OPENAI_KEYS_DIR}:ro"],
            "depends_on": ["triton"],
            "stop_grace_period": f"{d.drain_timeout_s}s",
            "restart": "unless-stopped",
        }
    return {
        "name": f"tritonize-{d.name}",
        "services": {
            **services,
            "gateway": {
                "image": GATEWAY_IMAGE,
                "network_mode": "service:triton",
                "command": ["nginx", "-c", "/etc/nginx/tritonize/conf/nginx.conf", "-g", "daemon off;"],
                "volumes": ["./base/gateway:/etc/nginx/tritonize/conf:ro", "./keys:/etc/nginx/tritonize/keys:ro"],
                "depends_on": ["triton"],
                # SIGQUIT is nginx's graceful stop: open requests finish.
                "stop_signal": "SIGQUIT",
                "restart": "unless-stopped",
            },
            "prometheus": {
                "image": PROMETHEUS_IMAGE,
                "command": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.retention.time=15d"],
                "volumes": ["./prometheus:/etc/prometheus:ro", "prometheus-data:/prometheus"],
                "ports": ["9090:9090"],
                "restart": "unless-stopped",
            },
            "grafana": {
                "image": GRAFANA_IMAGE,
                "environment": {"GF_SECURITY_ADMIN_PASSWORD": "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}"},
                "volumes": ["./grafana/provisioning:/etc/grafana/provisioning:ro",
                            "./base/grafana/dashboards:/var/lib/grafana/dashboards:ro", "grafana-data:/var/lib/grafana"],
                "ports": ["3000:3000"],
                "depends_on": ["prometheus"],
                "restart": "unless-stopped",
            },
        },
        "volumes": {"prometheus-data": {}, "grafana-data": {}},
    }
