"""What every deploy artefact is rendered from: the deploy block plus facts read from the built
repository's manifest (models, runtime, image). One place derives the shared numbers (ports,
startup budget, the autoscaling query) so the gateway, Kubernetes, compose and `serve --stack`
agree on them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import manifest as manifest_io
from ..artifacts import REQUIREMENTS_FILE
from ..errors import TritonizeError
from ..manifest import Manifest
from ..openai.models import SERVED_KINDS
from ..triton.server.access import KEY_HEADER
from .spec import DeploySpec

if TYPE_CHECKING:
    from ..spec import Spec

# Ports inside the pod / compose network. Triton's own (8000-8002) are its defaults; the gateway
# listens next to them and is what the Service publishes for HTTP and gRPC.
TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT = 8000, 8001, 8002
GATEWAY_HTTP_PORT, GATEWAY_GRPC_PORT = 8080, 8081

# Header carrying the admin key for Triton's restricted APIs. Over gRPC Triton expects it as
# `triton-grpc-protocol-<key>` (triton-inference-server/server r24.10,
# docs/customization_guide/inference_protocols.md, "Limit Endpoint Access").
ADMIN_HEADER = KEY_HEADER  # the one `tritonize serve` uses too (triton/server/access.py)
ADMIN_GRPC_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
# API groups only operators may use. `inference`, `health`, `metadata` and `statistics` stay open
# to the gateway; the gateway itself only forwards inference, health and metadata.
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "logging", "trace")

# Seconds a model kind needs to load, for the startup probe's budget (generous: a probe that
# gives up restarts the pod and starts the wait over). TensorRT-LLM engines deserialize GBs of
# weights and allocate the KV cache: minutes.
LOAD_SECONDS = {"onnx": 20, "python": 30, "ensemble": 0, "llm-ensemble": 0, "llm-bls": 10,
                "llm-preprocessing": 30, "llm-postprocessing": 30, "llm-engine-cpu": 120,
                "llm-engine-trtllm": 900, "llm-llmapi-cpu": 120, "llm-llmapi": 900}
SERVER_START_SECONDS = 60
STARTUP_PERIOD_S = 10  # the startup probe's period; its failureThreshold covers the budget

# Rate window of the queue-time query: the HPA, the recording rules and the alerts use the same.
RATE_WINDOW = "1m"
# The NGC release an embedded build's deployment names when no spec says otherwise (2.51 = 24.10,
# the embedded server's own version).
DEFAULT_RELEASE = "24.10"


def queue_time_query(matchers: str, group_by: str) -> str:
    """Average queue time per request (us) over RATE_WINDOW: the autoscaling signal.

    Triton counts cumulative queue microseconds and successful requests per model
    (triton-inference-server/server r24.10, docs/user_guide/metrics.md); their rates' ratio is the
    mean wait of a request, as in that release's deploy/k8s-onprem/values.yaml adapter rule. The
    clamp keeps an idle server at 0 instead of 0/0 = NaN. `matchers` and `group_by` are the
    prometheus-adapter placeholders (<<.LabelMatchers>>, <<.GroupBy>>) or concrete labels.
    """
    return (f"sum(rate(nv_inference_queue_duration_us{{{matchers}}}[{RATE_WINDOW}])) by ({group_by})"
            f" / clamp_min(sum(rate(nv_inference_request_success{{{matchers}}}[{RATE_WINDOW}])) by ({group_by}), 1e-9)")


@dataclass
class DeployModel:
    name: str
    kind: str
    gpu: bool  # a KIND_GPU instance group or a TensorRT-LLM engine: needs a GPU in the pod


@dataclass
class DeployContext:
    deploy: DeploySpec
    repository: Path
    runtime: str
    image: str
    models: list[DeployModel]
    warnings: list[str] = field(default_factory=list)

    @property
    def gpus(self) -> int:
        if self.deploy.resources.gpus is not None:
            return self.deploy.resources.gpus
        return 1 if any(m.gpu for m in self.models) else 0

    @property
    def startup_budget_s(self) -> int:
        if self.deploy.startup_budget_s is not None:
            return self.deploy.startup_budget_s
        return SERVER_START_SECONDS + sum(LOAD_SECONDS.get(m.kind, 30) for m in self.models)

    @property
    def startup_failure_threshold(self) -> int:
        return math.ceil(self.startup_budget_s / STARTUP_PERIOD_S)

    @property
    def queue_target_us(self) -> int:
        return int(self.deploy.autoscaling.queue_time_target_ms * 1000)

    @property
    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.deploy.name, "app.kubernetes.io/component": "inference-server",
                "app.kubernetes.io/managed-by": "tritonize"}

    @property
    def selector(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.deploy.name}


def load_context(source: Path) -> DeployContext:
    """The context for a spec file (its repository must be built) or a built repository."""
    from ..spec import load_spec

    source = Path(source)
    spec: Spec | None
    if source.is_file():
        spec = load_spec(source)
        repository = spec.resolve(spec.repository)
        if not manifest_io.path_of(repository).is_file():
            raise spec.source.error(("repository",), "the spec's repository is not built yet",
                                    fix=f"run `tritonize build {source}` first")
    elif source.is_dir():
        repository = source
        spec = _spec_of(repository)
    else:
        raise TritonizeError("no such spec file or repository", file=source,
                             fix="pass model.yaml or a repository built by `tritonize build`")
    manifest = manifest_io.load(repository)
    if spec is None:
        return context_from(DeploySpec(), repository, manifest, release=DEFAULT_RELEASE)
    return context_for(spec, repository, manifest)


def context_for(spec: Spec, repository: Path, manifest: Manifest) -> DeployContext:
    """The context of a repository built from `spec`; its errors point at the spec's deploy block."""
    try:
        return context_from(spec.deploy or DeploySpec(), repository, manifest, release=spec.container.release)
    except TritonizeError as error:
        raise spec.source.locate(error) from None


def _spec_of(repository: Path) -> Spec | None:
    """The spec a repository was built from, when it is still beside it (its deploy block)."""
    from ..spec import load_spec

    manifest = manifest_io.read(repository)
    if manifest is None:
        return None
    candidate = repository.resolve().parent / manifest.spec
    if candidate.is_file():
        spec = load_spec(candidate)
        # Its deploy block applies to any repository built from it (e.g. with -o for containers).
        if spec.resolve(spec.repository) == repository.resolve() or spec.deploy is not None:
            return spec
    return None


def context_from(deploy: DeploySpec, repository: Path, manifest: Manifest, *, release: str) -> DeployContext:
    models = []
    for name, entry in sorted(manifest.models.items()):
        config = repository / name / "config.pbtxt"
        gpu_instances = config.is_file() and "KIND_GPU" in config.read_text()
        models.append(DeployModel(name, entry.kind, gpu=gpu_instances or entry.kind in ("llm-engine-trtllm", "llm-llmapi")))
    warnings: list[str] = []
    if manifest.runtime == "container":
        image = manifest.serving_image()  # the TensorRT-LLM image of its engines, else <release>-py3
    else:
        image = f"nvcr.io/nvidia/tritonserver:{release}-py3"
        warnings.append(f"{repository} was built for the embedded runtime: its model.py files import "
                        f"onnxruntime/transformers, which {image} does not ship; rebuild with "
                        "`--runtime container` for production (the manifests use that image either way)")
    pending = sorted(n for n, e in manifest.models.items() if e.engine is not None and e.engine.status == "pending")
    if pending:
        warnings.append(f"TensorRT-LLM engine(s) of {', '.join(pending)} not built yet: run "
                        "`tritonize build SPEC --stage engines` on a GPU before delivering the repository")
    own_image = deploy.image is not None or (deploy.repository.delivery == "baked" and deploy.repository.image is not None)
    needs = sorted(path.parent.name for path in repository.glob(f"*/{REQUIREMENTS_FILE}"))
    if manifest.runtime == "container" and needs and not own_image:
        # NGC's images install numpy only for the python backend (docker/Dockerfile installs the rest).
        warnings.append(f"{', '.join(needs)} need pip packages that {image} lacks (their {REQUIREMENTS_FILE}): "
                        "set deploy.image to an image built from docker/Dockerfile, which installs them, or use "
                        "repository delivery: baked with such an image")
    if deploy.repository.delivery == "baked" and deploy.repository.image is not None:
        image = deploy.repository.image
    if deploy.image is not None:
        image = deploy.image
    if deploy.openai is not None and not any(m.kind in SERVED_KINDS for m in models):
        raise TritonizeError("the OpenAI frontend serves LLM ensembles and LLM API models, and this repository has none",
                             loc=("deploy", "openai"), fix="add a model with an `llm` block, or drop deploy.openai")
    unknown = sorted(set(deploy.gateway.rate_limits.per_model_rps) - set(manifest.models))
    if unknown:
        raise TritonizeError(f"names unknown model(s) {', '.join(unknown)}",
                             loc=("deploy", "gateway", "rate_limits", "per_model_rps"),
                             fix=f"use model names of the repository: {', '.join(sorted(manifest.models))}")
    return DeployContext(deploy, repository, manifest.runtime, image, models, warnings)
