"""The `tritonize` command: a thin Typer layer over the Python API.

Exit codes: 0 ok, 1 internal bug (traceback), 2 user error (one line), 3 performance regression.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from .errors import TritonizeError
from .terminal import Terminal

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compile a declarative spec into a verified Triton Inference Server model repository.")
terminal = Terminal()


@app.command()
def build(spec: Path = typer.Argument(..., help="The spec file (model.yaml)."),
          output: Optional[Path] = typer.Option(None, "-o", "--output",
                                                help="Repository to write (default: the spec's `repository`)."),
          force: bool = typer.Option(False, "--force", help="Rebuild even when the inputs are unchanged."),
          stage: str = typer.Option("all", "--stage", help="all, or engines: finish pending TensorRT-LLM engine builds."),
          runtime: Optional[str] = typer.Option(None, "--runtime",
                                                help="Override the spec's runtime: embedded or container.")):
    """Convert, verify and emit every model of SPEC into a Triton model repository."""
    from .pipeline import build as build_repository

    build_repository(spec, output, force=force, stage=stage, runtime=runtime, terminal=terminal)


@app.command()
def validate(repository: Path = typer.Argument(..., help="A model repository, hand-written or built.")):
    """Check REPOSITORY against Triton's config schema and load rules."""
    from .model_config import CONFIG_NAME
    from .rules import check_repository

    if not repository.is_dir():
        raise TritonizeError("not a directory", file=repository, fix="pass the path of a model repository")
    violations = check_repository(repository)
    for violation in violations:
        where = repository / violation.model / CONFIG_NAME if violation.model else repository
        terminal.error(violation.one_line(file=where))
    if violations:
        raise typer.Exit(2)
    terminal.success(f"{repository}: every model passes Triton's schema and load rules")


@app.command()
def serve(repository: Path = typer.Argument(..., help="The model repository to serve."),
          http_port: int = typer.Option(8000, "--http-port"),
          grpc_port: int = typer.Option(8001, "--grpc-port"),
          metrics_port: int = typer.Option(8002, "--metrics-port")):
    """Run the bundled tritonserver on REPOSITORY in the foreground until Ctrl-C."""
    from .server import serve_forever

    raise typer.Exit(serve_forever(repository, http_port, grpc_port, metrics_port, terminal))


@app.command()
def check(repository: Path = typer.Argument(..., help="The repository the server was started on."),
          url: str = typer.Option("localhost:8000", "--url", help="Server address (HTTP; gRPC is --grpc-url)."),
          grpc_url: Optional[str] = typer.Option(None, "--grpc-url", help="gRPC address (default: HTTP port + 1)."),
          protocol: str = typer.Option("both", "--protocol", help="http, grpc or both."),
          model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Only these models.")):
    """Smoke-test a running server with the sample inputs and answers recorded at build time."""
    from .check import check_deployment

    result = check_deployment(repository, url, protocol=protocol, models=model, grpc_url=grpc_url,
                              terminal=terminal)
    raise typer.Exit(0 if result.passed else 2)


@app.command()
def schema():
    """Print the JSON Schema of the spec (model.yaml)."""
    from .spec import Spec

    print(json.dumps(Spec.model_json_schema(), indent=2))


@app.command()
def perf(repository: Path = typer.Argument(..., help="The model repository to profile."),
         model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Only these models."),
         url: Optional[str] = typer.Option(None, "--url", help="A running server (default: start one)."),
         protocol: str = typer.Option("grpc", "--protocol", help="grpc or http."),
         concurrency: str = typer.Option("1:8", "--concurrency", help="start:end[:step] client concurrency."),
         baseline: Optional[Path] = typer.Option(None, "--baseline", help="results.json to compare against."),
         save_baseline: Optional[Path] = typer.Option(None, "--save-baseline", help="Write this run as a baseline."),
         report: Path = typer.Option(Path("perf/reports/latest"), "--report", help="Report directory."),
         repeats: int = typer.Option(3, "--repeats", help="Measurements per point (medians are compared)."),
         tolerance: Optional[float] = typer.Option(
             None, "--tolerance", help="Throughput drop (fraction) that counts as slower (default: spec perf.tolerance)."),
         latency_tolerance: Optional[float] = typer.Option(
             None, "--latency-tolerance", help="p99 rise (fraction) that counts as slower (default: spec perf.latency_tolerance).")):
    """Profile REPOSITORY with perf_analyzer; report, and judge against a baseline (exit 3 if slower)."""
    from .perf import run_perf

    result = run_perf(repository, models=model, url=url, protocol=protocol, concurrency=concurrency,
                      baseline=baseline, save_baseline=save_baseline, report_dir=report, repeats=repeats,
                      tolerance=tolerance, latency_tolerance=latency_tolerance, terminal=terminal)
    raise typer.Exit(result.exit_code)


@app.command()
def tune(spec: Path = typer.Argument(..., help="The spec file (model.yaml)."),
         model: str = typer.Option(..., "--model", "-m", help="The model to tune."),
         latency_budget_ms: Optional[float] = typer.Option(None, "--latency-budget-ms",
                                                           help="p99 latency the winner must stay under."),
         write: bool = typer.Option(False, "--write", help="Write the winning settings back into SPEC."),
         concurrency: str = typer.Option("1:16", "--concurrency", help="start:end[:step] client concurrency per point."),
         max_points: int = typer.Option(40, "--max-points", help="Stop the search after this many points."),
         report: Optional[Path] = typer.Option(None, "--report", help="Directory for the report of every point explored.")):
    """Search batching and instance settings for MODEL against the real server (hill climb, early stop)."""
    from .perf import tune as tune_model

    tune_model(spec, model=model, latency_budget_ms=latency_budget_ms, write=write, concurrency=concurrency,
               max_points=max_points, report_dir=report, terminal=terminal)


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps user errors to one line and exit 2, bugs to a traceback and exit 1."""
    try:
        # Outside standalone mode click returns a command's typer.Exit code instead of raising it.
        code = app(args=argv, standalone_mode=False)
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
        if callable(getattr(error, "show", None)) and isinstance(getattr(error, "exit_code", None), int):
            error.show()
            return 2
        traceback.print_exc()
        terminal.error("internal error in tritonize (a bug): please report it with the traceback above")
        return 1
    return code if isinstance(code, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
