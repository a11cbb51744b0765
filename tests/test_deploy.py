"""`tritonize deploy`: the emitted files pass the real tools that consume them.

kubectl kustomize (every overlay), kubernetes-validate against the Kubernetes 1.32 OpenAPI schemas
(strict: unknown fields are errors), the vendored CRD schemas for the Prometheus Operator and KEDA
objects, promtool check config/rules, nginx -t, and check-jsonschema's vendored compose spec.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tritonize.cli import main
from tritonize.deploy import deploy
from tritonize.errors import SpecError, TritonizeError
from tritonize.terminal import Terminal

KUBERNETES_VERSION = "1.32.0"
CRD_DIR = Path(__file__).parent / "schemas" / "crds"
QUIET = Terminal(quiet=True, stderr=True)

DEPLOY_BLOCK = """\
deploy:
  name: tritonize-demo
  namespace: ml-serving
  repository: {delivery: sync, uri: "s3://models/demo"}
  resources: {gpus: 1, cpu: "4", memory: 16Gi, node_selector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}}
  replicas: {min: 2, max: 6}
  autoscaling: {queue_time_target_ms: 20, keda: true}
  gateway:
    rate_limits: {per_key_rps: 10, per_key_burst: 20, per_model_rps: {pre: 5, pipe: 7}}
    max_body_size: 4m
"""


def _built(spec: Path, block: str = DEPLOY_BLOCK) -> Path:
    from tritonize import build

    spec.write_text(spec.read_text() + block)
    build(spec, terminal=QUIET)
    return spec


@pytest.fixture(scope="module")
def emitted(tmp_path_factory) -> Path:
    from specs import MODEL_PY, VALID

    root = tmp_path_factory.mktemp("deploy")
    (root / "pre.py").write_text(MODEL_PY)
    (root / "spec.yaml").write_text(VALID)
    spec = _built(root / "spec.yaml")
    return deploy(spec, root / "deploy", terminal=QUIET).directory


def _run(*command: str, cwd: Path | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _kustomize(overlay: Path) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl (with built-in kustomize) is not on PATH: scripts/install-system-deps installs it")
    return [doc for doc in yaml.safe_load_all(_run("kubectl", "kustomize", str(overlay))) if doc]


def test_every_overlay_builds_and_validates(emitted: Path, tmp_path: Path):
    overlays = sorted(p.name for p in (emitted / "overlays").iterdir())
    assert overlays == ["fixed", "hpa", "keda"]
    for overlay in overlays:
        objects = _kustomize(emitted / "overlays" / overlay)
        kinds = sorted(o["kind"] for o in objects)
        builtin = [o for o in objects if o["apiVersion"].split("/")[0] not in ("monitoring.coreos.com", "keda.sh")]
        path = tmp_path / f"{overlay}.yaml"
        path.write_text(yaml.safe_dump_all(builtin))
        out = _run(sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION, str(path))
        assert out.count("passed for resource") == len(builtin), out
        for obj in objects:
            if obj not in builtin:
                _validate_crd_object(obj)
        autoscalers = {k for k in kinds if k in ("HorizontalPodAutoscaler", "ScaledObject")}
        assert autoscalers == {"fixed": set(), "hpa": {"HorizontalPodAutoscaler"},
                               "keda": {"ScaledObject"}}[overlay]
        assert kinds.count("ConfigMap") == 2  # gateway config, Grafana dashboard
        assert {"Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor",
                "PrometheusRule"} <= set(kinds)
        assert all(o["metadata"].get("namespace") == "ml-serving" for o in objects if o["kind"] != "Namespace")


def _validate_crd_object(obj: dict) -> None:
    import jsonschema

    version = obj["apiVersion"].split("/")
    path = CRD_DIR / f"{version[0]}_{version[1]}_{obj['kind']}.json"
    schema = _forbid_unknown(json.loads(path.read_text()))
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, f"{obj['kind']}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def _forbid_unknown(schema):
    """Structural schemas: properties listed and no preserve-unknown-fields -> no other keys."""
    if isinstance(schema, dict):
        schema = {k: _forbid_unknown(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_forbid_unknown(v) for v in schema]
    return schema


def test_crd_check_catches_a_misspelt_field():
    # The CRD check above could pass vacuously if the schema allowed anything.
    with pytest.raises(AssertionError, match="endpoints"):
        _validate_crd_object({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                              "metadata": {"name": "x"},
                              "spec": {"selector": {}, "endpoints": [{"port": "metrics", "intervall": "15s"}]}})


def test_deployment_follows_the_spec(emitted: Path):
    objects = {o["kind"]: o for o in _kustomize(emitted / "overlays" / "hpa")}
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    triton, gateway = pod["containers"]
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"  # embedded build: the plain image
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["initContainers"][0]["command"][:3] == ["aws", "s3", "sync"]
    assert "s3://models/demo" in pod["initContainers"][0]["command"]
    args = triton["args"]
    assert "--http-restricted-api=model-repository,model-config,shared-memory,logging,trace:" \
           "triton-admin-key=$(TRITON_ADMIN_KEY)" in args
    assert any(a.startswith("--grpc-restricted-protocol=model-repository,") for a in args)
    assert "--exit-timeout-secs=60" in args
    # The key comes from the Secret, never from the spec or the manifests.
    assert triton["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "triton-admin-key"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert pod["terminationGracePeriodSeconds"] > 60
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"][0]["pods"]["target"]["averageValue"] == "20000"  # 20 ms in us
    ports = {p["name"]: p["targetPort"] for p in objects["Service"]["spec"]["ports"]}
    assert ports == {"http": "gateway-http", "grpc": "gateway-grpc", "metrics": "metrics"}


def test_startup_budget_grows_with_llm_engines(emitted: Path):
    from tritonize.deploy.context import context_from
    from tritonize.deploy.spec import DeploySpec
    from tritonize.manifest import Manifest

    def manifest(models: dict) -> Manifest:
        return Manifest.model_validate({
            "tritonize": "0", "spec": "model.yaml", "input_hash": "x", "runtime": "container", "tools": {},
            "perf": {"tolerance": 0.1, "latency_tolerance": 0.25}, "models": models,
            "container": {"release": "24.10", "image": "nvcr.io/nvidia/tritonserver:24.10-py3"}})

    small = context_from(DeploySpec(), emitted, manifest({"a": {"kind": "onnx"}}), release="24.10")
    large = context_from(DeploySpec(), emitted, manifest({
        "a": {"kind": "onnx"}, "llm": {"kind": "llm-engine-trtllm", "engine": {"status": "built", "image": "img-trtllm"}}}),
        release="24.10")
    assert large.startup_budget_s >= small.startup_budget_s + 600
    assert large.image == "img-trtllm" and large.gpus == 1
    assert small.image == "nvcr.io/nvidia/tritonserver:24.10-py3" and small.gpus == 0


def test_promtool_accepts_config_and_rules(emitted: Path):
    _run("promtool", "check", "config", str(emitted / "prometheus" / "prometheus.yml"))
    out = _run("promtool", "check", "rules", *map(str, sorted((emitted / "prometheus" / "rules").glob("*.yml"))))
    assert "SUCCESS" in out
    # The PrometheusRule object carries the same groups (plus the Kubernetes-only alert).
    rule = yaml.safe_load((emitted / "base" / "prometheusrule.yaml").read_text())
    path = emitted / "k8s-rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    _run("promtool", "check", "rules", str(path))
    path.unlink()


def test_nginx_accepts_the_gateway_config(emitted: Path, tmp_path: Path):
    # The exact emitted file, laid out as it is mounted: conf/ beside keys/.
    (tmp_path / "conf").mkdir()
    (tmp_path / "keys").mkdir()
    shutil.copy(emitted / "base" / "gateway" / "nginx.conf", tmp_path / "conf" / "nginx.conf")
    (tmp_path / "keys" / "api-keys.map").write_text('"Bearer k1" client-one;\n')
    out = _run("nginx", "-t", "-c", str(tmp_path / "conf" / "nginx.conf"))
    assert "test is successful" in out
    conf = (emitted / "base" / "gateway" / "nginx.conf").read_text()
    assert "zone=model_pre:1m rate=5r/s" in conf and "zone=model_pipe:1m rate=7r/s" in conf
    assert "client_max_body_size 4m;" in conf and "grpc_pass grpc://triton_grpc;" in conf


def test_compose_file_matches_the_compose_spec(emitted: Path):
    # check-jsonschema vendors the compose-spec schema (compose-spec/compose-spec, schema/compose-spec.json).
    _run(sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(emitted / "compose.yaml"))
    services = yaml.safe_load((emitted / "compose.yaml").read_text())["services"]
    assert services["gateway"]["network_mode"] == "service:triton"
    assert set(services) == {"triton", "gateway", "prometheus", "grafana"}


def test_dashboard_and_provisioning_parse(emitted: Path):
    dashboard = json.loads((emitted / "base" / "grafana" / "dashboards" / "tritonize.json").read_text())
    assert len(dashboard["panels"]) >= 8
    assert all(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    source = yaml.safe_load((emitted / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {"${datasource}"}
    variable = dashboard["templating"]["list"][0]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")
    assert source["datasources"][0]["type"] == "prometheus" and source["datasources"][0]["isDefault"]


def test_rerun_keeps_keys_and_refuses_foreign_directories(emitted: Path, tmp_path: Path):
    spec = emitted.parent / "spec.yaml"
    keys = emitted / "keys" / "api-keys.map"
    keys.write_text('"Bearer secret" me;\n')
    deploy(spec, emitted, terminal=QUIET)
    assert keys.read_text() == '"Bearer secret" me;\n'
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(TritonizeError, match="was not written by `tritonize deploy`"):
        deploy(spec, foreign, terminal=QUIET)


@pytest.mark.parametrize("block, message", [
    ("deploy:\n  replica: {min: 1}\n", "unknown key 'replica'"),
    ("deploy:\n  repository: {delivery: sync}\n", "needs 'uri'"),
    ("deploy:\n  repository: {delivery: baked, image: x, uri: 's3://a/b'}\n", "'uri' does not apply"),
    ("deploy:\n  name: Bad_Name\n", "not a Kubernetes name"),
    ("deploy:\n  replicas: {min: 3, max: 2}\n", "below replicas.min"),
])
def test_bad_deploy_blocks_are_one_line_spec_errors(spec: Path, block: str, message: str):
    from tritonize.spec import load_spec

    spec.write_text(spec.read_text() + block)
    with pytest.raises(SpecError, match=message) as raised:
        load_spec(spec)
    assert "\n" not in str(raised.value) and "deploy" in str(raised.value)


def test_rate_limit_for_an_unknown_model_is_a_user_error(spec: Path, capsys):
    _built(spec, "deploy:\n  gateway: {rate_limits: {per_model_rps: {nosuch: 3}}}\n")
    assert main(["deploy", str(spec), "-o", str(spec.parent / "d")]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "per_model_rps" in err


def test_build_writes_deploy_files_when_the_spec_has_a_deploy_block(spec: Path, capsys):
    spec.write_text(spec.read_text() + "deploy: {namespace: team-a}\n")
    assert main(["build", str(spec)]) == 0
    deployment = yaml.safe_load((spec.parent / "deploy" / "base" / "kustomization.yaml").read_text())
    assert deployment["namespace"] == "team-a"
    # Without the block, build writes no deploy directory.
    plain = spec.parent / "plain"
    plain.mkdir()
    from specs import MODEL_PY, VALID

    (plain / "pre.py").write_text(MODEL_PY)
    (plain / "spec.yaml").write_text(VALID)
    assert main(["build", str(plain / "spec.yaml")]) == 0
    assert not (plain / "deploy").exists()


def test_container_build_names_its_image_and_gpu(repo_root: Path):
    """The committed container golden build: a TensorRT-LLM engine pending, KIND_GPU instances."""
    from tritonize import manifest
    from tritonize.deploy.context import context_from
    from tritonize.deploy.spec import DeploySpec

    golden = repo_root / "tests" / "golden" / "container"
    context = context_from(DeploySpec(), golden, manifest.load(golden), release="24.10")
    assert context.image == "nvcr.io/nvidia/tritonserver:24.10-trtllm-python-py3"
    assert context.gpus == 1
    assert context.startup_budget_s >= 900
    assert any("not built yet" in w for w in context.warnings)


def test_a_container_repository_whose_steps_need_packages_warns_on_the_plain_image(repo_root: Path, tmp_path: Path):
    """An encoder's tokenizer step needs tokenizers, which the NGC image lacks: delivered by sync
    or pvc into that image it would fail to load, so deploy says what image to give."""
    import shutil

    from tritonize import manifest
    from tritonize.deploy.context import context_from
    from tritonize.deploy.spec import DeploySpec

    repository = tmp_path / "repo"
    shutil.copytree(repo_root / "tests" / "golden" / "container", repository)
    plain = context_from(DeploySpec(), repository, manifest.load(repository), release="24.10")
    assert not any("pip packages" in w for w in plain.warnings)
    (repository / "tiny_llm_preprocessing" / "requirements.txt").write_text("tokenizers==0.23.3\n")
    context = context_from(DeploySpec(), repository, manifest.load(repository), release="24.10")
    assert ("tiny_llm_preprocessing need pip packages that nvcr.io/nvidia/tritonserver:24.10-trtllm-python-py3 lacks "
            "(their requirements.txt): set deploy.image to an image built from docker/Dockerfile") in \
        "\n".join(context.warnings)
    own = context_from(DeploySpec(image="registry.example/models:1"), repository, manifest.load(repository),
                       release="24.10")
    assert not any("pip packages" in w for w in own.warnings)


def test_deploy_of_an_unbuilt_spec_says_build_first(spec: Path, capsys):
    assert main(["deploy", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "not built yet" in err and "tritonize build" in err


OPENAI_IMAGE = "registry.example/tritonize-openai:24.10"


@pytest.fixture(scope="module")
def emitted_with_openai(emitted: Path, tmp_path_factory) -> Path:
    """The same deployment with deploy.openai, for a repository that has an LLM ensemble (the
    emitted files depend only on the model kinds, so one is added to the context)."""
    import dataclasses

    from tritonize.deploy import emit_files, write_deploy_dir
    from tritonize.deploy.context import DeployModel, load_context
    from tritonize.deploy.spec import OpenAIFrontend

    context = load_context(emitted.parent / "spec.yaml")
    context = dataclasses.replace(
        context, deploy=context.deploy.model_copy(update={"openai": OpenAIFrontend(image=OPENAI_IMAGE, port=9100)}),
        models=context.models + [DeployModel("chat", "llm-ensemble", gpu=False)])
    out = tmp_path_factory.mktemp("deploy-openai") / "deploy"
    write_deploy_dir(out, emit_files(context))
    return out


def test_openai_frontend_runs_next_to_triton_behind_the_gateway(emitted_with_openai: Path, tmp_path: Path):
    objects = _kustomize(emitted_with_openai / "overlays" / "fixed")
    builtin = [o for o in objects if o["apiVersion"].split("/")[0] not in ("monitoring.coreos.com", "keda.sh")]
    path = tmp_path / "fixed.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    out = _run(sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION, str(path))
    assert out.count("passed for resource") == len(builtin), out
    by_kind = {o["kind"]: o for o in objects}
    _validate_crd_object(by_kind["ServiceMonitor"])
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["tritonserver", "gateway", "openai"]
    frontend = pod["containers"][2]
    assert frontend["image"] == OPENAI_IMAGE
    command = frontend["command"]
    # The frontend alone, on the pod's Triton gRPC port, with the gateway's key Secret.
    assert command[:3] == ["tritonize", "openai", "/models"]
    assert command[command.index("--grpc-url") + 1] == "127.0.0.1:8001"
    assert command[command.index("--port") + 1] == "9100"
    keys = command[command.index("--api-keys") + 1]
    mounts = {m["name"]: m["mountPath"] for m in frontend["volumeMounts"]}
    assert mounts == {"models": "/models", "gateway-keys": str(Path(keys).parent)}
    assert Path(keys).name == "api-keys.map"  # the key the gateway's Secret holds
    ports = {p["name"]: p["targetPort"] for p in by_kind["Service"]["spec"]["ports"]}
    assert ports["openai-metrics"] == "openai" and ports["http"] == "gateway-http"
    assert {e["port"] for e in by_kind["ServiceMonitor"]["spec"]["endpoints"]} == {"metrics", "openai-metrics"}
    # compose: the same command, in Triton's network namespace, with ./keys.
    _run(sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(emitted_with_openai / "compose.yaml"))
    compose = yaml.safe_load((emitted_with_openai / "compose.yaml").read_text())["services"]["openai"]
    assert compose["command"] == command and compose["network_mode"] == "service:triton"
    assert f"./keys:{Path(keys).parent}:ro" in compose["volumes"]


def test_gateway_routes_the_openai_api_with_the_same_keys(emitted_with_openai: Path, tmp_path: Path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "keys").mkdir()
    shutil.copy(emitted_with_openai / "base" / "gateway" / "nginx.conf", tmp_path / "conf" / "nginx.conf")
    (tmp_path / "keys" / "api-keys.map").write_text('"Bearer k1" client-one;\n')
    assert "test is successful" in _run("nginx", "-t", "-c", str(tmp_path / "conf" / "nginx.conf"))
    conf = (emitted_with_openai / "base" / "gateway" / "nginx.conf").read_text()
    location = conf[conf.index("location ~ ^/v1/"):]
    location = location[:location.index("\n        }\n")]
    assert "server 127.0.0.1:9100;" in conf and "proxy_pass http://openai_http;" in location
    assert 'if ($api_client = "") { return 403; }' in location and "proxy_buffering off;" in location


def test_the_openai_frontend_is_scraped_recorded_and_charted(emitted_with_openai: Path, emitted: Path):
    """LLM metrics (TTFT, inter-token latency, tokens/s: tritonize.openai.metrics) reach Prometheus,
    its rules and the dashboard only with deploy.openai; promtool checks the rules either way."""
    prometheus = yaml.safe_load((emitted_with_openai / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]}
    assert jobs["openai"] == ["triton:9100"] and "openai" not in {
        job["job_name"] for job in yaml.safe_load((emitted / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]}
    _run("promtool", "check", "config", str(emitted_with_openai / "prometheus" / "prometheus.yml"))
    rules_file = emitted_with_openai / "prometheus" / "rules" / "tritonize-recording.yml"
    assert "SUCCESS" in _run("promtool", "check", "rules", str(rules_file))
    recorded = {r["record"] for r in yaml.safe_load(rules_file.read_text())["groups"][0]["rules"]}
    assert {"tritonize:llm_ttft_seconds:p95", "tritonize:llm_tokens_per_second:p50"} <= recorded
    k8s = yaml.safe_load((emitted_with_openai / "base" / "prometheusrule.yaml").read_text())
    assert "tritonize:llm_ttft_seconds:p95" in {r.get("record") for g in k8s["spec"]["groups"] for r in g["rules"]}
    titles = [p["title"] for p in json.loads((emitted_with_openai / "base" / "grafana" / "dashboards" / "tritonize.json").read_text())["panels"]]
    assert "LLM time to first token p50 / p95" in titles
    plain = [p["title"] for p in json.loads((emitted / "base" / "grafana" / "dashboards" / "tritonize.json").read_text())["panels"]]
    assert not any(t.startswith("LLM") for t in plain)


def test_without_deploy_openai_the_gateway_has_no_openai_route(emitted: Path):
    conf = (emitted / "base" / "gateway" / "nginx.conf").read_text()
    assert "/v1/" not in conf and "openai_http" not in conf


def test_openai_frontend_needs_an_llm_ensemble(emitted: Path):
    from tritonize.deploy.context import context_from
    from tritonize.deploy.spec import DeploySpec
    from tritonize.manifest import Manifest

    manifest = Manifest.model_validate({
        "tritonize": "0", "spec": "model.yaml", "input_hash": "x", "runtime": "embedded", "tools": {},
        "perf": {"tolerance": 0.1, "latency_tolerance": 0.25}, "models": {"a": {"kind": "onnx"}}})
    spec = DeploySpec.model_validate({"openai": {"image": OPENAI_IMAGE}})
    with pytest.raises(TritonizeError, match="LLM ensembles") as error:
        context_from(spec, emitted, manifest, release="24.10")
    assert "deploy.openai" in str(error.value)
