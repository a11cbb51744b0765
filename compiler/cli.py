"""The `tritonize` command: a thin Typer layer over the Python API.

Exit codes: 0 ok, 1 internal bug (traceback) or, for `build --check`, a repository that is not
what its spec builds, 2 user error (one line), 3 performance regression. An inconclusive perf
point (noise larger than the tolerance) exits 0 with a warning.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import typer

from .errors import TritonizeError
from .terminal import Terminal

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compile a declarative spec into a verified Triton Inference Server model repository.")
terminal = Terminal()
# `build --check` found a stale repository: not 1, which is a crash (a bug), so CI can tell them apart.
STALE_EXIT = 4


@app.command()
def build(spec: Path = typer.Argument(..., help="The spec file (model.yaml)."),
          output: Path | None = typer.Option(None, "-o", "--output",
                                                help="Repository to write (default: the spec's `repository`)."),
          force: bool = typer.Option(False, "--force", help="Rebuild even when the inputs are unchanged."),
          stage: str = typer.Option("all", "--stage", help="all, or engines: finish pending TensorRT-LLM engine builds."),
          runtime: str | None = typer.Option(None, "--runtime",
                                                help="Override the spec's runtime: embedded or container."),
          check: bool = typer.Option(False, "--check", help="Write nothing; exit 4 listing the files that differ "
                                                           "when the repository is not what SPEC builds."),
          strict: bool = typer.Option(False, "--strict", help="With --check: also fail on the values another CPU "
                                                             "rounds differently (torch models' recorded outputs, and "
                                                             "the weights of those the build trains)."),
          lock_timeout: float = typer.Option(600.0, "--lock-timeout", min=0,
                                             help="Seconds to wait for another build of the same output."),
          verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="Also print the traceback of a failing factory (your code).")):
    """Convert, verify and emit every model of SPEC into a Triton model repository (and, when SPEC has
    a `deploy:` block, its deployment files into deploy/ beside SPEC)."""
    try:
        if strict and not check:
            raise TritonizeError("it applies to --check only", loc=("--strict",),
                                 fix="add --check, or leave --strict out")
        if check:
            from .buildcheck import check_build, failures, report

            committed, found = check_build(spec, output, runtime=runtime, terminal=terminal)
            report(committed, spec, found, terminal, strict=strict)
            raise typer.Exit(STALE_EXIT if failures(found, strict) else 0)
        from .deploy import deploy_built
        from .pipeline import build as build_repository

        result = build_repository(spec, output, force=force, stage=stage, runtime=runtime, terminal=terminal,
                                  lock_timeout=lock_timeout)
        if stage == "all":
            deploy_built(spec, result.repository, terminal=terminal)
    except TritonizeError as error:
        if verbose and error.details:
            print(error.details, end="", file=sys.stderr)
        raise


@app.command()
def validate(repository: Path = typer.Argument(..., help="A model repository, hand-written or built.")):
    """Check REPOSITORY against Triton's config schema and load rules."""
    from .triton.config import CONFIG_NAME
    from .triton.rules import check_repository

    if not repository.is_dir():
        raise TritonizeError("not a directory", file=repository, fix="pass the path of a model repository")
    try:
        violations = check_repository(repository)
        damage = [error.one_line() for error in _built_file_damage(repository)]
    except OSError as exc:
        raise _user_os_error(exc) from None
    for violation in violations:
        where = repository / violation.model / CONFIG_NAME if violation.model else repository
        (terminal.error if violation.is_error else terminal.warning)(violation.one_line(file=where))
    for line in damage:
        terminal.error(line)
    if damage or any(v.is_error for v in violations):
        raise typer.Exit(2)
    warned = f" ({len(violations)} warning{'s' if len(violations) > 1 else ''})" if violations else ""
    terminal.success(f"{repository}: every model passes Triton's schema and load rules{warned}")


def _built_file_damage(repository: Path) -> list[TritonizeError]:
    """A built repository (one with a manifest) must hold exactly the files the manifest hashed."""
    from . import manifest

    if not manifest.path_of(repository).exists():
        return []  # hand-written: Triton's rules are all there is to check
    try:
        return manifest.check_files(repository, manifest.load(repository))
    except TritonizeError as error:
        return [error]


def _user_os_error(exc: OSError) -> Exception:
    from .errors import os_error

    return os_error(exc) or exc


@app.command()
def serve(repository: Path = typer.Argument(..., help="The model repository to serve."),
          http_port: int = typer.Option(8000, "--http-port"),
          grpc_port: int = typer.Option(8001, "--grpc-port"),
          metrics_port: int = typer.Option(8002, "--metrics-port"),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
          api_key_file: Path | None = typer.Option(
              None, "--api-key-file", help="File holding the key for the restricted APIs (default: "
              "$TRITONIZE_API_KEY, else a generated key written next to the server log)."),
          restart: str = typer.Option("on-failure", "--restart", help="on-failure: restart a server that dies; no."),
          exit_timeout_secs: int = typer.Option(30, "--exit-timeout-secs", min=0,
                                                help="Seconds a stop waits for in-flight requests."),
          max_request_mb: float = typer.Option(64, "--max-request-mb", min=0.001,
                                               help="Largest HTTP request body accepted."),
          stack: bool = typer.Option(False, "--stack", help="Also run the deploy gateway (nginx) and Prometheus "
                                                           "in front of it, on free ports."),
          model_control_mode: str = typer.Option(
              "none", "--model-control-mode", help="none, poll or explicit (Model Analyzer's remote mode)."),
          load_model: list[str] | None = typer.Option(
              None, "--load-model", help="With explicit model control: a model to load at start (repeatable)."),
          openai: bool = typer.Option(False, "--openai", help="Also serve the LLMs over an OpenAI-compatible API."),
          openai_port: int = typer.Option(9000, "--openai-port"),
          openai_api_keys: Path | None = typer.Option(
              None, "--openai-api-keys", help="File of API keys (one a line) the OpenAI API requires as Bearer tokens.")):
    """Run the bundled tritonserver on REPOSITORY in the foreground, supervised, until Ctrl-C."""
    if stack:
        from .deploy.stack import serve_stack

        raise typer.Exit(serve_stack(repository, terminal))
    from .triton.server import serve_forever
    from .triton.server.serve import OpenAIOptions
    from .triton.server.supervisor import RESTART_POLICIES

    if restart not in RESTART_POLICIES:
        raise TritonizeError(f"--restart {restart!r} is not one of {', '.join(RESTART_POLICIES)}",
                             fix="use --restart on-failure or --restart no")
    options = OpenAIOptions(openai_port, openai_api_keys) if openai else None
    raise typer.Exit(serve_forever(repository, http_port, grpc_port, metrics_port, terminal, host=host,
                                   api_key_file=api_key_file, restart=restart, exit_timeout_s=exit_timeout_secs,
                                   max_request_mb=max_request_mb, model_control=model_control_mode,
                                   load_models=load_model or (), openai=options))


@app.command()
def openai(repository: Path = typer.Argument(..., help="The model repository tritonserver serves (its LLM ensembles)."),
           grpc_url: str = typer.Option("localhost:8001", "--grpc-url", help="tritonserver's gRPC address."),
           host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
           port: int = typer.Option(9000, "--port"),
           api_keys: Path | None = typer.Option(
               None, "--api-keys", help="File of API keys (one a line, or the deploy gateway's api-keys.map)."),
           max_in_flight: int = typer.Option(64, "--max-in-flight", min=1, help="Requests at once before 503.")):
    """Only the OpenAI-compatible frontend, for a tritonserver already running (a container next to it)."""
    from .openai.app import serve_frontend

    raise typer.Exit(serve_frontend(repository, grpc_url, terminal, host=host, port=port, api_keys_file=api_keys,
                                    max_in_flight=max_in_flight))


@app.command()
def deploy(source: Path = typer.Argument(..., help="The spec (model.yaml, its repository built) or a built repository."),
           output: Path | None = typer.Option(None, "-o", "--output",
                                                 help="Directory to write (default: deploy/ beside SOURCE).")):
    """Write Kubernetes (kustomize), gateway (nginx), Prometheus, Grafana and compose files for SOURCE."""
    from .deploy import deploy as write_deployment

    write_deployment(source, output, terminal=terminal)


@app.command()
def check(repository: Path = typer.Argument(..., help="The repository the server was started on."),
          url: str = typer.Option("localhost:8000", "--url", help="Server address (HTTP; gRPC is --grpc-url)."),
          grpc_url: str | None = typer.Option(None, "--grpc-url", help="gRPC address (default: HTTP port + 1)."),
          protocol: str = typer.Option("both", "--protocol", help="http, grpc or both."),
          model: list[str] | None = typer.Option(None, "--model", "-m", help="Only these models.")):
    """Smoke-test a running server with the sample inputs and answers recorded at build time."""
    from .check import check_deployment

    if protocol not in ("http", "grpc", "both"):
        raise TritonizeError(f"unknown protocol '{protocol}'", loc=("--protocol",), fix="use http, grpc or both")
    result = check_deployment(repository, url, protocol=protocol, models=model, grpc_url=grpc_url,  # type: ignore[arg-type]
                              terminal=terminal)
    raise typer.Exit(0 if result.passed else 2)


@app.command()
def schema():
    """Print the JSON Schema of the spec (model.yaml)."""
    from .spec.models import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))


@app.command()
def perf(repository: Path = typer.Argument(..., help="The model repository to profile."),
         model: list[str] | None = typer.Option(None, "--model", "-m", help="Only these models."),
         url: str | None = typer.Option(None, "--url", help="A running server (default: start one)."),
         protocol: str = typer.Option("grpc", "--protocol", help="grpc or http."),
         concurrency: str = typer.Option("1:8", "--concurrency", help="start:end[:step] client concurrency."),
         baseline: Path | None = typer.Option(None, "--baseline", help="results.json to compare against."),
         save_baseline: Path | None = typer.Option(None, "--save-baseline", help="Write this run as a baseline."),
         report: Path = typer.Option(Path("perf/reports/latest"), "--report", help="Report directory."),
         repeats: int = typer.Option(3, "--repeats", help="perf_analyzer runs per point (their windows are compared)."),
         tolerance: float | None = typer.Option(
             None, "--tolerance", help="Throughput drop (fraction) that counts as slower (default: spec perf.tolerance)."),
         latency_tolerance: float | None = typer.Option(
             None, "--latency-tolerance", help="p99 rise (fraction) that counts as slower (default: spec perf.latency_tolerance)."),
         against: str | None = typer.Option(
             None, "--against", help="Old build to measure alongside: a repository directory or a git ref (its spec is built)."),
         rounds: int = typer.Option(5, "--rounds", help="With --against: interleaved rounds per point (replaces --repeats)."),
         summary_md: Path | None = typer.Option(None, "--summary-md", help="Write a markdown summary (MR comment, step summary)."),
         junit: Path | None = typer.Option(None, "--junit", help="Write JUnit XML: one test case per model@concurrency.")):
    """Profile REPOSITORY with perf_analyzer; report, and judge against a baseline or an old build (exit 3 if slower)."""
    if against is not None:
        if baseline is not None or url is not None:
            raise TritonizeError("--against measures both builds on servers it starts", loc=("--against",),
                                 fix="drop --baseline and --url, or drop --against")
        from .perf.against import run_against

        result = run_against(repository, against, models=model, protocol=protocol, concurrency=concurrency,
                             rounds=rounds, report_dir=report, tolerance=tolerance,
                             latency_tolerance=latency_tolerance, summary_md=summary_md, junit=junit,
                             save_baseline=save_baseline, terminal=terminal)
    else:
        from .perf import run_perf

        result = run_perf(repository, models=model, url=url, protocol=protocol, concurrency=concurrency,
                          baseline=baseline, save_baseline=save_baseline, report_dir=report, repeats=repeats,
                          tolerance=tolerance, latency_tolerance=latency_tolerance, summary_md=summary_md,
                          junit=junit, terminal=terminal)
    raise typer.Exit(result.exit_code)


@app.command()
def tune(spec: Path = typer.Argument(..., help="The spec file (model.yaml)."),
         model: str = typer.Option(..., "--model", "-m", help="The model to tune."),
         latency_budget_ms: float | None = typer.Option(None, "--latency-budget-ms",
                                                           help="p99 latency the winner must stay under."),
         write: bool = typer.Option(False, "--write", help="Write the winning settings back into SPEC."),
         concurrency: str = typer.Option("1:16", "--concurrency", help="start:end[:step] client concurrency per point."),
         max_points: int = typer.Option(40, "--max-points", help="Stop the search after this many points."),
         report: Path | None = typer.Option(None, "--report", help="Directory for the report of every point explored.")):
    """Search batching and instance settings for MODEL against the real server (hill climb, early stop)."""
    from .perf import tune as tune_model

    tune_model(spec, model=model, latency_budget_ms=latency_budget_ms, write=write, concurrency=concurrency,
               max_points=max_points, report_dir=report, terminal=terminal)


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps user errors to one line and exit 2, bugs to a traceback and exit 1."""
    try:
        # Outside standalone mode click returns a command's typer.Exit code instead of raising it,
        # and typer turns a KeyboardInterrupt into Exit(130) (typer/core.py _main).
        code = app(args=argv, standalone_mode=False)
        if code == 130:
            terminal.error("interrupted")
    except TritonizeError as error:
        terminal.error(error.one_line())
        return error.exit_code
    except typer.Abort:
        terminal.error("aborted")
        return 130
    except KeyboardInterrupt:
        terminal.error("interrupted")
        return 130
    except Exception as error:  # noqa: BLE001 - usage errors are the user's, the rest are bugs
        # Click's usage errors (unknown command, bad option); typer vendors click in newer
        # releases, so they are recognised by their interface rather than their class.
        show = getattr(error, "show", None)
        if callable(show) and isinstance(getattr(error, "exit_code", None), int):
            show()
            return 2
        traceback.print_exc()
        terminal.error("internal error in tritonize (a bug): please report it with the traceback above")
        return 1
    return code if isinstance(code, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
