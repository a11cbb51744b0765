"""The nginx gateway: one template rendered for where it runs.

`deployed` (Kubernetes sidecar, compose) and `local` (`tritonize serve --stack`) differ only in
ports, the Triton address and file locations; the rules (keys, limits, routes) are the same text.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from ..resources import render_template
from .context import (
    ADMIN_GRPC_HEADER,
    ADMIN_HEADER,
    GATEWAY_GRPC_PORT,
    GATEWAY_HTTP_PORT,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    DeployContext,
)

# Inside the kustomize base, which turns it into the gateway ConfigMap (kustomize reads files only
# below a kustomization); compose mounts the same directory.
NGINX_CONF = "base/gateway/nginx.conf"
API_KEYS_EXAMPLE = "keys/api-keys.map.example"
# Relative to nginx.conf (nginx resolves includes against the configuration file's directory): in
# Kubernetes the Secret is mounted beside the ConfigMap, in compose ./keys beside ./base/gateway.
API_KEYS_INCLUDE = "../keys/api-keys.map"


@dataclass(frozen=True)
class Placement:
    listen_http: str
    listen_grpc: str
    triton_http: str
    triton_grpc: str
    pid_path: str
    temp_dir: str
    error_log: str
    access_log: str
    worker_processes: str = "auto"
    # Where the OpenAI frontend listens when the deployment runs one (deploy.openai), else None.
    openai_http: str | None = None


# In the pod / compose network Triton is on localhost (shared network namespace).
DEPLOYED = Placement(listen_http=str(GATEWAY_HTTP_PORT), listen_grpc=str(GATEWAY_GRPC_PORT),
                     triton_http=f"127.0.0.1:{TRITON_HTTP_PORT}", triton_grpc=f"127.0.0.1:{TRITON_GRPC_PORT}",
                     pid_path="/tmp/nginx.pid", temp_dir="/tmp", error_log="/dev/stderr",
                     access_log="/dev/stdout")


def deployed_placement(context: DeployContext) -> Placement:
    """The pod / compose network, with the OpenAI frontend's port when the deployment runs it."""
    openai = context.deploy.openai
    return dataclasses.replace(DEPLOYED, openai_http=f"127.0.0.1:{openai.port}" if openai is not None else None)


def render_nginx(context: DeployContext, placement: Placement | None = None) -> str:
    placement = placement or deployed_placement(context)
    limits = context.deploy.gateway.rate_limits
    per_model = [{"id": re.sub(r"[^A-Za-z0-9_]", "_", name), "model": name, "rps": rps}
                 for name, rps in sorted(limits.per_model_rps.items())]
    return render_template("deploy/nginx.conf.j2", models=context.models, rate_limits=limits,
                           per_model_limits=per_model, max_body_size=context.deploy.gateway.max_body_size,
                           keepalive=context.deploy.gateway.upstream_keepalive, api_keys_include=API_KEYS_INCLUDE,
                           admin_header=ADMIN_HEADER, admin_grpc_header=ADMIN_GRPC_HEADER,
                           **placement.__dict__)


def api_keys_example() -> str:
    return ("# Copy to api-keys.map here (compose) and create the Secret from it (Kubernetes); never commit it.\n"
            "# One line per client: \"Bearer <key>\" <client-name>;  (the name appears in the access log)\n"
            "# Make keys with: openssl rand -hex 24\n"
            "\"Bearer REPLACE-WITH-A-RANDOM-KEY\" example-client;\n")


def api_keys_map(keys: dict[str, str]) -> str:
    """client name -> key, as the include file nginx reads."""
    return "".join(f'"Bearer {key}" {client};\n' for client, key in sorted(keys.items()))
