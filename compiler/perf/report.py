"""report.md, report.html, results.json and PNG plots for one perf run."""
from __future__ import annotations

from pathlib import Path

from ..optional import loaded, optional
from ..resources import TEMPLATES_DIR
from .results import ModelResult, PerfResult

jinja2 = optional("jinja2", purpose="perf reports")
matplotlib = optional("matplotlib", purpose="perf report plots", extra="perf")
pyplot = optional("matplotlib.pyplot", purpose="perf report plots", extra="perf", package="matplotlib")

PERF_TEMPLATES_DIR = TEMPLATES_DIR / "perf"
# Stacked in this order, bottom first: where a request's time goes from server entry to client.
BREAKDOWN_STAGES = (("queue", "server queue"), ("compute_input", "compute input"),
                    ("compute_infer", "compute infer"), ("compute_output", "compute output"))
COMPOSING_STAGES = (("queue_us", "queue"), ("compute_input_us", "compute input"),
                    ("compute_infer_us", "compute infer"), ("compute_output_us", "compute output"))


def write_report(result: PerfResult, report_dir: Path) -> dict[str, Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(result, report_dir / "plots")
    result.write(report_dir / "results.json")
    context = {"result": result, "plots": {name: {kind: f"plots/{path.name}" for kind, path in kinds.items()}
                                           for name, kinds in plots.items()},
               "verdict": result.verdict}
    files = {"results": report_dir / "results.json"}
    for template, name in (("report.md.j2", "report.md"), ("report.html.j2", "report.html")):
        files[name] = report_dir / name
        files[name].write_text(render(template, context))
    return files


def render(template: str, context: dict) -> str:
    # Own environment (not resources.render_template): the HTML report needs autoescaping and
    # both reports share number filters.
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(PERF_TEMPLATES_DIR),
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                     autoescape=jinja2.select_autoescape(["html.j2"]))
    environment.filters["num"] = _number
    environment.filters["pct"] = lambda value: f"{value:+.1%}"
    return environment.get_template(template).render(**context)


def _number(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def write_plots(result: PerfResult, plot_dir: Path) -> dict[str, dict[str, Path]]:
    """Per model: throughput vs p99, latency breakdown, composing models (ensembles), tokens (streaming)."""
    matplotlib.use("Agg")  # files only: no display on servers and CI (before pyplot loads)
    plt = loaded(pyplot)

    plot_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, dict[str, Path]] = {}
    for model in result.models:
        if not model.points:
            continue
        kinds = {"throughput_p99": _throughput_vs_p99(plt, model, plot_dir / f"{model.name}.throughput_p99.png"),
                 "breakdown": _breakdown(plt, model, plot_dir / f"{model.name}.breakdown.png")}
        if any(p.composing for p in model.points):
            kinds["composing"] = _composing(plt, model, plot_dir / f"{model.name}.composing.png")
        if any(p.tokens for p in model.points):
            kinds["tokens"] = _tokens(plt, model, plot_dir / f"{model.name}.tokens.png")
        plots[model.name] = kinds
    if len(plots) > 1:
        plots["_all"] = {"throughput_p99": _overview(plt, result, plot_dir / "all.throughput_p99.png")}
    return plots


def _throughput_vs_p99(plt, model: ModelResult, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(6, 4))
    p99 = [p.p99_ms for p in model.points]
    throughput = [p.throughput for p in model.points]
    axes.plot(p99, throughput, marker="o")
    for point in model.points:
        axes.annotate(f"c={point.concurrency}", (point.p99_ms, point.throughput), textcoords="offset points",
                      xytext=(4, 4), fontsize=8)
    axes.set_xlabel("p99 latency (ms)")
    axes.set_ylabel("throughput (infer/s)")
    axes.set_title(f"{model.name}: throughput vs p99 latency")
    axes.grid(alpha=0.3)
    return _save(plt, figure, path)


def _breakdown(plt, model: ModelResult, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(6, 4))
    labels = [str(p.concurrency) for p in model.points]
    bottom = [0.0] * len(labels)
    for key, label in BREAKDOWN_STAGES:
        values = [p.breakdown_us.get(key) or 0.0 for p in model.points]
        axes.bar(labels, [v / 1000 for v in values], bottom=bottom, label=label)
        bottom = [b + v / 1000 for b, v in zip(bottom, values)]
    # perf_analyzer splits the mean client latency into these stages plus client send, network and
    # client receive; stacked together they make the mean latency.
    other = [sum(p.breakdown_us.get(k) or 0.0 for k in ("client_send", "network", "client_recv")) / 1000
             for p in model.points]
    axes.bar(labels, other, bottom=bottom, label="client + network")
    axes.set_xlabel("concurrency")
    axes.set_ylabel("latency per request (ms)")
    axes.set_title(f"{model.name}: where the time goes")
    axes.legend(fontsize=8)
    return _save(plt, figure, path)


def _composing(plt, model: ModelResult, path: Path) -> Path:
    measured = dict.fromkeys(c["model"] for p in model.points for c in p.composing)
    # Ensemble step order when known (perf_analyzer prints composing models alphabetically).
    steps = [s for s in model.settings.get("steps", []) if s in measured] + \
        [s for s in measured if s not in model.settings.get("steps", [])]
    figure, subplots = plt.subplots(1, len(steps), figsize=(4 * len(steps), 4), squeeze=False, sharey=True)
    for axes, step in zip(subplots[0], steps):
        rows = [(p.concurrency, next((c for c in p.composing if c["model"] == step), None)) for p in model.points]
        labels = [str(level) for level, _ in rows]
        bottom = [0.0] * len(rows)
        for key, label in COMPOSING_STAGES:
            values = [(stats[key] if stats else 0.0) / 1000 for _, stats in rows]
            axes.bar(labels, values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values)]
        axes.set_title(step)
        axes.set_xlabel("concurrency")
    subplots[0][0].set_ylabel("latency per request (ms)")
    subplots[0][-1].legend(fontsize=8)
    figure.suptitle(f"{model.name}: composing models")
    return _save(plt, figure, path)


def _tokens(plt, model: ModelResult, path: Path) -> Path:
    points = [p for p in model.points if p.tokens]
    tokens = [p.tokens for p in points if p.tokens]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    levels = [p.concurrency for p in points]
    left.plot(levels, [t["ttft_p50_ms"] for t in tokens], marker="o", label="TTFT p50")
    left.plot(levels, [t["ttft_p99_ms"] for t in tokens], marker="o", label="TTFT p99")
    itl = [t["itl_mean_ms"] for t in tokens]
    if any(v is not None for v in itl):
        left.plot(levels, [v if v is not None else float("nan") for v in itl], marker="o", label="inter-token (mean)")
    left.set_xlabel("concurrency")
    left.set_ylabel("ms")
    left.legend(fontsize=8)
    right.plot(levels, [t["output_tokens_per_s"] for t in tokens], marker="o")
    right.set_xlabel("concurrency")
    right.set_ylabel("output tokens/s")
    figure.suptitle(f"{model.name}: streaming")
    return _save(plt, figure, path)


def _overview(plt, result: PerfResult, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for model in result.models:
        if model.points:
            axes.plot([p.p99_ms for p in model.points], [p.throughput for p in model.points], marker="o",
                      label=model.name)
    axes.set_xscale("log")
    axes.set_xlabel("p99 latency (ms, log)")
    axes.set_ylabel("throughput (infer/s)")
    axes.set_title("all models: throughput vs p99 latency")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(plt, figure, path)


def _save(plt, figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
