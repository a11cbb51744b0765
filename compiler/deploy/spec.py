"""The `deploy:` block of model.yaml: how `tritonize deploy` puts a built repository into production.

Strict like the rest of the spec (unknown keys are errors). Secrets never live here: API keys and
the admin key come from Kubernetes Secrets / files the operator creates (see the emitted README).
"""
from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

# RFC 1123 label: what Kubernetes accepts as a Deployment/Service name and namespace.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
_BODY_SIZE = re.compile(r"^\d+[kKmMgG]?$")


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError(f"'{value}' is not a Kubernetes name: use lower-case letters, digits and '-', "
                         "at most 63 characters, starting and ending with a letter or digit")
    return value


def _quantity(value: str) -> str:
    value = str(value)
    if not _QUANTITY.match(value):
        raise ValueError(f"'{value}' is not a Kubernetes quantity: write e.g. \"4\", \"500m\", \"16Gi\"")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
Quantity = Annotated[str, AfterValidator(_quantity)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class RepositoryDelivery(StrictModel):
    """How the model repository reaches the pod.

    baked: an image built from docker/Dockerfile holds it at /models (`image`).
    sync:  an init container copies it from `uri` (s3://, gs://, http(s):// to a .tar.gz) into an
           emptyDir before tritonserver starts.
    pvc:   a PersistentVolumeClaim (`claim`) holding it is mounted read-only.
    """

    delivery: Literal["baked", "sync", "pvc"] = "pvc"
    image: str | None = None
    uri: str | None = None
    claim: DnsLabel | None = None
    # Overrides the init container's image (defaults: aws-cli, cloud-sdk, busybox by scheme).
    sync_image: str | None = None

    @model_validator(mode="after")
    def _one_origin(self) -> RepositoryDelivery:
        needed = {"baked": "image", "sync": "uri", "pvc": "claim"}[self.delivery]
        if self.delivery == "pvc" and self.claim is None:
            self.claim = "model-repository"
        for key in ("image", "uri", "claim"):
            if key == needed and getattr(self, key) is None:
                raise ValueError(f"repository delivery '{self.delivery}' needs '{key}'")
            if key != needed and getattr(self, key) is not None:
                raise ValueError(f"'{key}' does not apply to repository delivery '{self.delivery}' "
                                 f"(it takes '{needed}')")
        if self.uri is not None and not re.match(r"^(s3|gs|https?)://\S+$", self.uri):
            raise ValueError(f"'{self.uri}' is not a repository URI: use s3://, gs://, or http(s):// "
                             "to a .tar.gz of the repository")
        if self.sync_image is not None and self.delivery != "sync":
            raise ValueError("'sync_image' applies only to repository delivery 'sync'")
        return self


class Resources(StrictModel):
    # None: one GPU when the repository has GPU instance groups or a TensorRT-LLM engine, else 0.
    gpus: int | None = Field(default=None, ge=0, le=16)
    cpu: Quantity = "2"
    memory: Quantity = "8Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)


class Replicas(StrictModel):
    min: int = Field(default=1, ge=1)
    max: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _order(self) -> Replicas:
        if self.max < self.min:
            raise ValueError(f"replicas.max {self.max} is below replicas.min {self.min}")
        return self


class Autoscaling(StrictModel):
    # Scale out when the average time a request waits in Triton's queue exceeds this.
    queue_time_target_ms: float = Field(default=50, gt=0)
    # Also emit a KEDA ScaledObject overlay (the same query, read by KEDA's prometheus scaler).
    keda: bool = False
    # The Prometheus that prometheus-adapter / KEDA query (in-cluster URL).
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"


class RateLimits(StrictModel):
    """nginx limit_req: requests per second with a burst, answered 429 beyond it."""

    per_key_rps: int = Field(default=100, ge=1)
    per_key_burst: int = Field(default=200, ge=0)
    # Model name -> requests per second for that model over all keys (HTTP only: the model name
    # of a gRPC request is inside its protobuf body, which nginx does not read).
    per_model_rps: dict[str, int] = Field(default_factory=dict)
    per_model_burst: int = Field(default=50, ge=0)

    @field_validator("per_model_rps")
    @classmethod
    def _positive(cls, limits: dict[str, int]) -> dict[str, int]:
        for name, rps in limits.items():
            if rps < 1:
                raise ValueError(f"per_model_rps of '{name}' is {rps}: give at least 1 request per second")
        return limits


class Gateway(StrictModel):
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    # nginx client_max_body_size: larger requests get 413 before reaching Triton.
    max_body_size: str = "16m"
    upstream_keepalive: int = Field(default=64, ge=1)

    @field_validator("max_body_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not _BODY_SIZE.match(str(value)):
            raise ValueError(f"'{value}' is not an nginx size: write e.g. \"16m\", \"512k\"")
        return str(value)


class OpenAIFrontend(StrictModel):
    """The OpenAI-compatible frontend (`tritonize openai`) as a container next to tritonserver,
    behind the same gateway and key file; for repositories with LLM ensembles."""

    # An image with tritonize[openai] installed (docker/openai.Dockerfile); for `baked` delivery
    # built FROM the repository image, so it holds /models too.
    image: str
    port: int = Field(default=9000, ge=1024, le=65535)
    # Requests answered at once before 503 (tritonize.openai.app.DEFAULT_MAX_IN_FLIGHT).
    max_in_flight: int = Field(default=64, ge=1)


class DeploySpec(StrictModel):
    name: DnsLabel = "triton"
    namespace: DnsLabel = "inference"
    # Overrides the image the manifest names (NGC tritonserver, or the repository image when baked).
    image: str | None = None
    repository: RepositoryDelivery = Field(default_factory=RepositoryDelivery)
    resources: Resources = Field(default_factory=Resources)
    replicas: Replicas = Field(default_factory=Replicas)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    gateway: Gateway = Field(default_factory=Gateway)
    openai: OpenAIFrontend | None = None
    # None: derived from the models (LLM engines load for minutes); the startup probe's budget.
    startup_budget_s: int | None = Field(default=None, ge=10, le=7200)
    # In-flight requests get this long to finish at scale-down (tritonserver --exit-timeout-secs).
    drain_timeout_s: int = Field(default=60, ge=5, le=3600)
    # Name of the Secret holding the admin key for Triton's restricted APIs (key: `key`).
    admin_key_secret: DnsLabel = "triton-admin-key"
    # Name of the Secret holding the gateway's API keys (key: `api-keys.map`).
    api_keys_secret: DnsLabel = "triton-api-keys"
