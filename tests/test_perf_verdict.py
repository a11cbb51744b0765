"""The perf verdict's statistics on synthetic per-window samples, the per-window samples taken from
a profile export, and the CI outputs (markdown summary, JUnit, non-TTY tables). No server."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

from tritonize.perf.ci_output import junit_xml, summary_markdown
from tritonize.perf.results import ModelResult, PerfResult, PointResult, RepeatResult
from tritonize.perf.verdict import compare, compare_samples
from tritonize.perf.windows import windows_from_profile
from tritonize.terminal import Terminal


def windows(centre: float, spread: float, count: int = 12, seed: int = 0) -> list[float]:
    """`count` values around `centre`, each off by up to +-spread (relative), from a fixed seed."""
    rng = np.random.default_rng(seed)
    return list(centre * (1 + spread * rng.uniform(-1, 1, count)))


def test_a_significant_drop_beyond_the_tolerance_is_worse():
    result = compare_samples(windows(1000, 0.05), windows(850, 0.05, seed=1), tolerance=0.10, higher_is_better=True)
    assert result.status == "worse" and result.p_value < 0.01
    # The estimate is the true -15 % within the +-5 % jitter of either side.
    assert -0.22 < result.change < -0.08 and result.low < result.change < result.high < 0


def test_the_same_drop_hidden_in_wide_spread_is_inconclusive():
    # Windows spread +-40 %: a 15 % drop can be neither confirmed nor ruled out.
    result = compare_samples(windows(1000, 0.4), windows(850, 0.4, seed=1), tolerance=0.10, higher_is_better=True)
    assert result.status == "inconclusive" and result.low < -0.10


def test_unchanged_and_tight_is_same_and_a_large_gain_is_better():
    assert compare_samples(windows(1000, 0.05), windows(1000, 0.05, seed=1), tolerance=0.10,
                           higher_is_better=True).status == "same"
    assert compare_samples(windows(1000, 0.05), windows(1300, 0.05, seed=1), tolerance=0.10,
                           higher_is_better=True).status == "better"


def test_a_significant_change_within_the_tolerance_is_not_a_regression():
    # 4 % fewer inferences/s with 1 % jitter: clearly real (p tiny), but smaller than the 10 %
    # minimum effect, so not slower.
    result = compare_samples(windows(1000, 0.01), windows(960, 0.01, seed=1), tolerance=0.10, higher_is_better=True)
    assert result.p_value < 0.01 and result.status == "same"


def test_latency_is_worse_when_it_rises():
    result = compare_samples(windows(1.0, 0.05), windows(1.5, 0.05, seed=1), tolerance=0.25, higher_is_better=False)
    assert result.status == "worse" and result.change > 0.25


def test_three_samples_a_side_can_never_be_significant():
    # An old baseline without windows gives one sample per repeat: 3 against 3 has a smallest
    # two-sided p of 0.1, so even a 30 % drop is inconclusive, not a regression.
    result = compare_samples([1000, 1010, 990], [700, 705, 695], tolerance=0.10, higher_is_better=True)
    assert result.status == "inconclusive" and result.p_value >= 0.1 and math.isinf(result.high)


def _result(throughputs: list[float], p99s: list[float], name: str = "m", concurrency: int = 1) -> PerfResult:
    """One point whose single repeat carries the given windows."""
    repeat = RepeatResult(float(np.median(throughputs)), float(np.median(p99s)), True, 1, 20, [],
                          [{"throughput": t, "p99_ms": p, "requests": 20} for t, p in zip(throughputs, p99s)])
    point = PointResult(concurrency, repeat.throughput, 1, 1, 1, repeat.p99_ms, {}, [repeat])
    return PerfResult([ModelResult(name, "model", {}, "random", [point])], "repo", "url", "grpc", 1, {},
                      {"logical_cpus": 2}, {}, "now")


def test_point_status_combines_throughput_and_p99():
    baseline = _result(windows(1000, 0.05), windows(1.0, 0.05))
    slower = compare(_result(windows(850, 0.05, seed=1), windows(1.0, 0.05, seed=1)), baseline)
    assert slower.points[0].status == "slower"
    tail = compare(_result(windows(1000, 0.05, seed=1), windows(1.6, 0.05, seed=1)), baseline)
    assert tail.regressed and "p99" in tail.points[0].reasons[0]
    noisy = compare(_result(windows(850, 0.4, seed=1), windows(1.0, 0.05, seed=1)), baseline)
    assert noisy.points[0].status == "inconclusive" and not noisy.regressed and "1 inconclusive" in noisy.summary
    same = compare(_result(windows(1000, 0.05, seed=1), windows(1.0, 0.05, seed=1)), baseline)
    assert same.points[0].status == "same"


def test_windows_from_profile_export(tmp_path):
    ms = 1_000_000  # nanoseconds
    # Four windows of 100 ms; the first (warm-up) is dropped, the last three kept. A request
    # belongs to the window its last response lands in.
    requests = [{"timestamp": t * ms, "response_timestamps": [(t + latency) * ms]}
                for t, latency in [(10, 5), (120, 2), (130, 4), (150, 2), (210, 1), (310, 2), (320, 8), (390, 5)]]
    requests.append({"timestamp": 395 * ms, "response_timestamps": []})  # never answered: not counted
    export = {"experiments": [{"experiment": {"mode": "concurrency", "value": 1}, "requests": requests,
                               "window_boundaries": [0, 100 * ms, 200 * ms, 300 * ms, 400 * ms]}]}
    (tmp_path / "profile.json").write_text(json.dumps(export))
    found = windows_from_profile(tmp_path / "profile.json")
    assert [w.requests for w in found] == [3, 1, 3]
    assert [round(w.throughput) for w in found] == [30, 10, 30]   # requests / 0.1 s
    assert found[1].p99_ms == pytest.approx(1.0) and 7.0 < found[2].p99_ms <= 8.0


def _judged() -> PerfResult:
    baseline = _result(windows(1000, 0.05), windows(1.0, 0.05))
    current = _result(windows(850, 0.05, seed=1), windows(1.0, 0.05, seed=1))
    for name, concurrency, throughput in (("m", 2, windows(950, 0.4, seed=2)), ("other", 1, windows(1000, 0.05, 3))):
        for result, values in ((baseline, windows(1000, 0.05, seed=4)), (current, throughput)):
            point = _result(values, windows(1.0, 0.05, seed=5), name, concurrency)
            model = result.model(name)
            if model is None:
                result.models.append(point.models[0])
            else:
                model.points.extend(point.models[0].points)
    current.baseline = "base.json"
    current.verdict = compare(current, baseline)
    return current


def test_junit_has_one_case_per_point_and_regressions_fail():
    suite = ElementTree.fromstring(junit_xml(_judged()))
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert sorted(cases) == ["m@1", "m@2", "other@1"]
    assert cases["m@1"].find("failure") is not None and "throughput" in cases["m@1"].find("failure").get("message")
    assert cases["m@2"].find("skipped") is not None and "inconclusive" in cases["m@2"].find("skipped").get("message")
    assert cases["other@1"].find("failure") is None and cases["other@1"].find("skipped") is None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")


def test_summary_markdown_names_every_point_and_the_outcome():
    text = summary_markdown(_judged())
    assert text.startswith("### 🔴 tritonize perf: REGRESSION: 1 of 3 points slower than the baseline")
    rows = [line for line in text.splitlines() if line.startswith("| m ") or line.startswith("| other ")]
    # 3 verdict rows + 3 measured-point rows, every one a complete table row.
    assert len(rows) == 6 and all(row.count("|") == rows[0].count("|") or row.endswith("|") for row in rows)
    assert "🟡 inconclusive" in text and "🔴 slower: throughput" in text


def test_tables_are_markdown_and_never_cut_when_stdout_is_not_a_terminal(capsys):
    long_note = "FAILED: " + "x" * 400  # far wider than any terminal default
    Terminal().table("perf results", ["model", "notes"], [["iris|v2", long_note]])
    out = capsys.readouterr().out
    assert "| model | notes |" in out and long_note in out and "iris\\|v2" in out
    assert "…" not in out and "┃" not in out


def test_verdict_json_is_strict_json():
    # Three samples a side: the interval is unbounded above, which JSON cannot write as a number.
    verdict = compare(_result([700, 705, 695], [1.0, 1.0, 1.0]), _result([1000, 1010, 990], [1.0, 1.0, 1.0]))
    text = json.dumps(verdict.to_json(), allow_nan=False)
    assert json.loads(text)["points"][0]["throughput_test"]["high"] is None


def test_junit_without_a_verdict_lists_measured_points_and_unmeasurable_models():
    result = _result(windows(1000, 0.05), windows(1.0, 0.05))
    result.models.append(ModelResult("broken", "model", {}, "random", [], error="perf_analyzer failed"))
    suite = ElementTree.fromstring(junit_xml(result))
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert sorted(cases) == ["broken", "m@1"] and cases["broken"].find("error") is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "1")
