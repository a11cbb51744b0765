"""tune: a short hill climb on a tiny python model against the real server, written back into the
spec; and the search and spec-editing logic on fixed inputs. No assertion depends on timings."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tritonize.errors import TritonizeError
from tritonize.perf import SearchSpace, tune
from tritonize.perf.analyzer import MeasurementSettings
from tritonize.perf.specedit import write_model_settings
from tritonize.perf.tune.evaluate import sweep
from tritonize.perf.tune.search import Evaluation, hill_climb
from tritonize.perf.tune.space import TunePoint
from tritonize.spec import load_spec

ECHO_MODEL = textwrap.dedent("""
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            return [pb_utils.InferenceResponse([pb_utils.Tensor(
                        "y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())]) for r in requests]
""")
SPEC = textwrap.dedent("""
    # A comment the tuner must keep.
    repository: repo
    models:
      - name: echo
        source: {framework: python, path: echo.py}
        max_batch_size: 8   # kept comment
        inputs: [{name: x, dtype: FP32, dims: [4]}]
        outputs: [{name: y, dtype: FP32, dims: [4]}]
      - name: other
        source: {framework: python, path: echo.py}
        max_batch_size: 4
        inputs: [{name: x, dtype: FP32, dims: [4]}]
        outputs: [{name: y, dtype: FP32, dims: [4]}]
""")


@pytest.fixture
def spec_path(tmp_path) -> Path:
    (tmp_path / "echo.py").write_text(ECHO_MODEL)
    (tmp_path / "model.yaml").write_text(SPEC)
    return tmp_path / "model.yaml"


@pytest.mark.server
def test_tune_explores_reports_and_writes_back(spec_path, tmp_path):
    space = SearchSpace(max_batch_size=[4, 8], preferred=["none"], max_queue_delay_us=[0, 100], instances=[1])
    result = tune(spec_path, model="echo", write=True, concurrency="1:2", space=space, max_points=3,
                  report_dir=tmp_path / "tune", terminal=_quiet(),
                  settings=MeasurementSettings(window_requests=20, stability_percent=50, max_trials=4, retries=0))

    # Start point (the spec: mbs 8, no batching block -> delay 0) plus its neighbours in the space.
    assert result.explored[0].point == TunePoint(8, "none", 0, 1)
    assert {e.point for e in result.explored[1:]} == {TunePoint(4, "none", 0, 1), TunePoint(8, "none", 100, 1)}
    assert all(e.throughput > 0 and e.levels for e in result.explored)
    # The first level of all is measured in count windows (nothing known yet); a level measured
    # before, in time windows of at least 300 ms (perf_analyzer's count windows last >= 1 s).
    assert "window_ms" not in result.explored[0].levels[0]
    assert all(level["window_ms"] >= 300 for e in result.explored[1:] for level in e.levels)
    report = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert len(report["explored"]) == 3 and (tmp_path / "tune" / "tune.md").is_file()

    text = spec_path.read_text()
    assert "# A comment the tuner must keep." in text
    reloaded = load_spec(spec_path).model("echo")
    best = result.best.point
    if result.written:  # written only when a neighbour beat the spec's own settings
        assert (reloaded.max_batch_size, reloaded.dynamic_batching.max_queue_delay_microseconds) == \
            (best.max_batch_size, best.max_queue_delay_us)
    else:
        assert best == result.explored[0].point and text == SPEC
    assert f"max_batch_size: {best.max_batch_size}" in result.yaml


def test_tune_rejects_unknown_model_and_bad_budget(spec_path):
    with pytest.raises(TritonizeError, match="unknown model 'nope'"):
        tune(spec_path, model="nope")
    with pytest.raises(TritonizeError, match="latency budget must be positive"):
        tune(spec_path, model="echo", latency_budget_ms=0)


def _evaluation(point: TunePoint, throughput: float, p99: float = 1.0, feasible: bool = True) -> Evaluation:
    return Evaluation(point, throughput, p99, 1, feasible, [], 0.0, 0)


def test_hill_climb_moves_uphill_and_stops_early():
    space = SearchSpace(max_batch_size=[4, 8, 16, 32, 64], preferred=["none"], max_queue_delay_us=[0],
                        instances=[1, 2, 3])
    # Throughput peaks at mbs 32 with 2 instances; the climb must find it without the full grid.
    def score(point: TunePoint, step: int, around: int | None) -> Evaluation:
        return _evaluation(point, 1000 - abs(point.max_batch_size - 32) * 10 - abs(point.instances - 2) * 100)

    explored = hill_climb(space, TunePoint(4, "none", 0, 1), score)
    best = max(explored, key=lambda e: e.throughput)
    assert best.point == TunePoint(32, "none", 0, 2)
    assert len(explored) < len(space.grid())


def test_hill_climb_does_not_move_on_a_gain_inside_the_measurements_noise():
    space = SearchSpace(max_batch_size=[4, 8, 16], preferred=["none"], max_queue_delay_us=[0], instances=[1])

    def climb(noise: float) -> list[Evaluation]:
        def score(point: TunePoint, step: int, around: int | None) -> Evaluation:
            evaluation = _evaluation(point, {4: 1000.0, 8: 1040.0, 16: 1080.0}[point.max_batch_size])
            evaluation.noise = noise
            return evaluation
        return hill_climb(space, TunePoint(4, "none", 0, 1), score)

    # +4 % a step: past the 3 % min_gain, but not past 2 standard errors of 3 % each (8.5 %).
    assert [e.point.max_batch_size for e in climb(0.0)] == [4, 8, 16]
    assert [e.point.max_batch_size for e in climb(0.03)] == [4, 8]


def test_infeasible_points_lose_to_any_point_within_budget():
    fast_but_slow_tail = _evaluation(TunePoint(8, "none", 0, 1), 0.0, p99=50.0, feasible=False)
    modest = _evaluation(TunePoint(4, "none", 0, 1), 10.0)
    assert modest.better_than(fast_but_slow_tail) and not fast_but_slow_tail.better_than(modest)


def test_write_model_settings_edits_only_the_tuned_keys(spec_path):
    write_model_settings(spec_path, "other", {
        "max_batch_size": 2, "dynamic_batching": {"preferred_batch_size": [2], "max_queue_delay_microseconds": 100},
        "instance_group": [{"count": 2, "kind": "cpu"}]})
    text = spec_path.read_text()
    assert "max_batch_size: 8   # kept comment" in text  # the other model untouched
    other = load_spec(spec_path).model("other")
    assert other.max_batch_size == 2 and other.dynamic_batching.preferred_batch_size == [2]
    assert other.instance_group[0].count == 2


def _quiet():
    from tritonize.terminal import Terminal

    return Terminal(quiet=True)


def _curve(saturates_at: int, p99_per_client_ms: float):
    """A served model's throughput/p99 against concurrency: linear up to saturation, flat after;
    p99 grows with the clients. Records the levels measured."""
    measured: list[int] = []

    def measure(level: int) -> dict[str, float]:
        measured.append(level)
        return {"concurrency": level, "throughput": 1000.0 * min(level, saturates_at), "p99_ms": p99_per_client_ms * level}

    return measure, measured


def test_sweep_from_a_neighbours_level_finds_the_same_best_with_fewer_levels():
    levels = [1, 2, 4, 8, 16, 32]
    full, full_levels = _curve(saturates_at=8, p99_per_client_ms=1.0)
    _, best = sweep(levels, full, budget_ms=None)
    assert best is not None and best["concurrency"] == 8 and full_levels == [1, 2, 4, 8, 16, 32]
    hinted, hinted_levels = _curve(saturates_at=8, p99_per_client_ms=1.0)
    _, best_from_hint = sweep(levels, hinted, budget_ms=None, around=4)
    # From a neighbour's level one flat level ends it: 16 adds nothing over 8.
    assert best_from_hint == best and hinted_levels == [4, 8, 16]


def test_sweep_from_a_level_over_the_budget_comes_down_to_one_that_fits():
    measure, measured = _curve(saturates_at=16, p99_per_client_ms=1.0)
    levels, best = sweep([1, 2, 4, 8, 16], measure, budget_ms=5.0, around=8)
    # 8 is over 5 ms (from a neighbour's level one over ends the upward sweep); 4 is the first level
    # down that fits.
    assert measured == [8, 4] and best is not None and best["concurrency"] == 4
    assert [entry["concurrency"] for entry in levels] == measured
    nothing, none_fits = _curve(saturates_at=16, p99_per_client_ms=10.0)
    _, best = sweep([1, 2, 4], nothing, budget_ms=5.0, around=2)
    assert best is None and none_fits == [2, 1]
