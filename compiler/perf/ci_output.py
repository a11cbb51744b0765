"""What a perf run leaves for CI: a markdown summary (merge-request comment, GitHub step summary)
and a JUnit XML file (one test case per model@concurrency; regressions are failures).

JUnit mapping: `slower` and `failed` points are <failure>, `inconclusive` ones <skipped> (the
run passes, the dashboard shows they were not judged), the rest pass. Without a verdict every
measured point is a passing case and a model that could not be measured is an <error>.
"""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from ..terminal import markdown_table
from .results import PerfResult
from .verdict import TABLE_COLUMNS

_MARK = {"slower": "🔴 slower", "failed": "🔴 failed", "inconclusive": "🟡 inconclusive", "faster": "🟢 faster",
         "same": "⚪ same"}


def summary_markdown(result: PerfResult) -> str:
    verdict = result.verdict
    parts = []
    if verdict is not None:
        icon = "🔴" if verdict.regressed else ("🟡" if verdict.inconclusive else "🟢")
        parts.append(f"### {icon} tritonize perf: {verdict.summary}\n")
        parts.append(f"Against {result.baseline}; Mann-Whitney U over per-window samples, alpha {verdict.alpha:g}, "
                     f"tolerance {verdict.tolerance:.0%} throughput / {verdict.latency_tolerance:.0%} p99. "
                     "Changes are Hodges-Lehmann estimates with their confidence interval.\n")
        rows = [row[:-1] + [_MARK.get(point.status, point.status)
                            + (f": {'; '.join(point.reasons)}" if point.reasons else "")]
                for row, point in zip(verdict.table_rows(), verdict.points)]
        parts.append(markdown_table(TABLE_COLUMNS, rows))
        if verdict.missing:
            parts.append(f"\nIn the reference but not measured now: {', '.join(verdict.missing)}.\n")
    else:
        parts.append("### tritonize perf\n")
    rows = []
    for model in result.models:
        if model.error:
            rows.append([model.name, "–", "–", "–", "–", f"FAILED: {model.error}"])
        for point in model.points:
            rows.append([model.name, point.concurrency, f"{point.throughput:.1f}", f"{point.p50_ms:.2f}",
                         f"{point.p99_ms:.2f}", "yes" if point.stable else "NO"])
    parts.append("\n<details><summary>measured points (median of repeats)</summary>\n\n"
                 + markdown_table(["model", "concurrency", "infer/s", "p50 ms", "p99 ms", "stable"], rows)
                 + f"\n{result.machine.get('logical_cpus', '?')} logical CPUs (load "
                 f"{result.machine.get('load_average_1m', '?')}), "
                 f"tritonserver {result.tools.get('tritonserver', '?')}, "
                 f"perf_analyzer {result.tools.get('perf_analyzer', '?')}, {result.created}.\n</details>\n")
    return "\n".join(parts)


def junit_xml(result: PerfResult) -> str:
    suite = ElementTree.Element("testsuite", name="tritonize perf")
    cases = failures = skipped = errors = 0
    verdict = result.verdict
    if verdict is not None:
        for point in verdict.points:
            case = ElementTree.SubElement(suite, "testcase", classname=f"perf.{point.model}",
                                          name=f"{point.model}@{point.concurrency}")
            cases += 1
            detail = (f"throughput {point.baseline_throughput:.1f} -> {point.throughput:.1f} infer/s "
                      f"({point.throughput_delta:+.1%}), p99 {point.baseline_p99_ms:.2f} -> {point.p99_ms:.2f} ms "
                      f"({point.p99_delta:+.1%})")
            if point.status in ("slower", "failed"):
                failures += 1
                failure = ElementTree.SubElement(case, "failure", type=point.status,
                                                 message=f"{point.status}: {'; '.join(point.reasons) or detail}")
                failure.text = detail
            elif point.status == "inconclusive":
                skipped += 1
                ElementTree.SubElement(case, "skipped", message=f"inconclusive: the windows spread more than the "
                                                                f"tolerance; {detail}")
            else:
                ElementTree.SubElement(case, "system-out").text = f"{point.status}: {detail}"
    else:
        for model in result.models:
            if model.error:
                case = ElementTree.SubElement(suite, "testcase", classname=f"perf.{model.name}", name=model.name)
                ElementTree.SubElement(case, "error", message=model.error)
                cases += 1
                errors += 1
            for point in model.points:
                case = ElementTree.SubElement(suite, "testcase", classname=f"perf.{model.name}",
                                              name=f"{model.name}@{point.concurrency}")
                ElementTree.SubElement(case, "system-out").text = (
                    f"{point.throughput:.1f} infer/s, p99 {point.p99_ms:.2f} ms")
                cases += 1
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
    ElementTree.indent(suite)
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"
