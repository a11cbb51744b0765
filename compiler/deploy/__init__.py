"""`tritonize deploy`: from the spec's `deploy:` block and the built repository's manifest, write
everything production needs (Kubernetes, gateway, observability, compose) into one directory.

Each artefact family has its module: kubernetes.py, gateway.py, observability.py, compose.py;
context.py derives the facts they share. `serve --stack` (stack.py) runs the gateway and
Prometheus configs for real in front of the embedded server.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TritonizeError
from ..terminal import Terminal

# Lists the files a deploy run wrote, so the next run replaces exactly those (and keeps keys/).
DEPLOY_MARKER = ".tritonize-deploy.json"


@dataclass
class DeployResult:
    directory: Path
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def to_yaml(obj: Any, header: str | None = None) -> str:
    import yaml

    class NoAliases(yaml.SafeDumper):  # a dict used twice is written twice, not as &id001 / *id001
        def ignore_aliases(self, data):
            return True

    text = yaml.dump(obj, Dumper=NoAliases, sort_keys=False, width=10_000, default_flow_style=False)
    return (f"# {header}\n" if header else "") + text


def emit_files(context) -> dict[str, str]:
    """relative path -> content of every emitted file."""
    from ..resources import render_template
    from . import compose, gateway, kubernetes, observability

    written_by = f"Written by `tritonize deploy` for {context.repository.name}; edit the spec's deploy block instead."
    files: dict[str, str] = {}
    files[gateway.NGINX_CONF] = gateway.render_nginx(context)
    files[gateway.API_KEYS_EXAMPLE] = gateway.api_keys_example()
    files[observability.PROMETHEUS_CONFIG] = to_yaml(observability.compose_prometheus_config(context), written_by)
    files[observability.RECORDING_RULES] = to_yaml(
        {"groups": [observability.recording_rules(llm=context.deploy.openai is not None)]}, written_by)
    files[observability.ALERTING_RULES] = to_yaml(
        {"groups": [observability.alerting_rules(context, kubernetes=False)]}, written_by)
    files[observability.DASHBOARD] = observability.dashboard_json(context)
    files[observability.GRAFANA_DATASOURCE] = to_yaml(observability.grafana_datasource(), written_by)
    files[observability.GRAFANA_DASHBOARD_PROVIDER] = to_yaml(observability.grafana_dashboard_provider(), written_by)
    files[compose.COMPOSE_FILE] = to_yaml(compose.compose(context), written_by)
    files[f"{kubernetes.BASE_DIR}/kustomization.yaml"] = to_yaml(kubernetes.base_kustomization(context), written_by)
    for name, obj in kubernetes.base_objects(context).items():
        files[f"{kubernetes.BASE_DIR}/{name}"] = to_yaml(obj, written_by)
    for overlay, members in kubernetes.overlays(context).items():
        for name, obj in members.items():
            files[f"{kubernetes.OVERLAYS_DIR}/{overlay}/{name}"] = to_yaml(obj, written_by)
    files["prometheus-adapter/values.yaml"] = to_yaml(kubernetes.adapter_values(context), written_by)
    files["prometheus-adapter/config.yaml"] = to_yaml(observability.adapter_rules(), written_by)
    files["README.md"] = render_template(
        "deploy/README.md.j2", context=context, overlays=sorted(kubernetes.overlays(context)),
        files=sorted(files), hpa_metric=observability.HPA_METRIC, admin_header=kubernetes.ADMIN_HEADER)
    return files


def deploy(source: str | Path, output: str | Path | None = None, *, terminal: Terminal | None = None) -> DeployResult:
    from .context import load_context

    source = Path(source)
    out = Path(output) if output is not None else (source.resolve().parent / "deploy")
    return _write(load_context(source), out, terminal or Terminal())


def _write(context, out: Path, terminal: Terminal) -> DeployResult:
    files = emit_files(context)
    write_deploy_dir(out, files)
    for warning in context.warnings:
        terminal.warning(warning)
    terminal.success(f"wrote {len(files)} deployment files for {context.repository.name} into {out} "
                     f"(see {out / 'README.md'})")
    return DeployResult(out, sorted(files), context.warnings)


def deploy_built(spec_path: str | Path, repository: Path, *, terminal: Terminal | None = None) -> DeployResult | None:
    """After `tritonize build`: write deploy/ beside the spec for the repository just built, when
    the spec has a deploy block (the repository may be a -o / --runtime container build)."""
    from .. import manifest as manifest_io
    from ..spec import load_spec
    from .context import context_for

    spec = load_spec(spec_path)
    if spec.deploy is None:
        return None
    context = context_for(spec, repository, manifest_io.load(repository))
    return _write(context, spec.base_dir / "deploy", terminal or Terminal())


def write_deploy_dir(out: Path, files: dict[str, str]) -> None:
    marker = out / DEPLOY_MARKER
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not marker.is_file())):
        raise TritonizeError(f"output directory {out} exists and was not written by `tritonize deploy` "
                             f"(no {DEPLOY_MARKER})", fix="choose another directory with -o, or remove it first")
    if marker.is_file():
        for relative in json.loads(marker.read_text()).get("files", []):
            (out / relative).unlink(missing_ok=True)
    for relative, content in files.items():
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    (out / "keys").mkdir(exist_ok=True)
    marker.write_text(json.dumps({"files": sorted(files)}, indent=2) + "\n")
