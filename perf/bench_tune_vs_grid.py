"""tune's hill climb against an exhaustive grid over the same space (digits_mlp, p99 budget).

Both searches run on the same server with the same evaluator and settings: first the hill climb
from the spec's settings, then every point of the grid. Reported: points measured, search time,
the best each found, and how the climb's winner ranks in the grid. The grid measures the climb's
points again (no reuse), so both see the machine in the same way.

    .venv/bin/python perf/bench_tune_vs_grid.py [--budget-ms 10]
"""
from __future__ import annotations

import argparse
import dataclasses
import time

from _bench import built_repository, evaluator, save
from tritonize.perf.run import parse_concurrency
from tritonize.perf.tune import SearchSpace
from tritonize.perf.tune.search import best_of, hill_climb
from tritonize.perf.tune.space import fit_space, start_point
from tritonize.spec import load_spec
from tritonize.terminal import Terminal

MODEL = "digits_mlp"
LEVELS = "1:16"
# 3 x 2 x 3 x 2 = 36 points: small enough for the grid to finish in minutes on 2 cores.
SPACE = SearchSpace(max_batch_size=[16, 64, 128], preferred=["none", "max"], max_queue_delay_us=[0, 500, 2000],
                    instances=[1, 2])


def main() -> None:
    from _bench import ROOT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-ms", type=float, default=10.0)
    args = parser.parse_args()
    terminal = Terminal()
    repository = built_repository(terminal)
    spec_model = load_spec(ROOT / "model.yaml").model(MODEL)
    start = start_point(spec_model)
    # The climb starts from the spec's settings; map them onto the grid's values so both
    # searches cover exactly the same points.
    start = dataclasses.replace(start, preferred="max" if start.preferred not in SPACE.preferred else start.preferred)
    space = fit_space(SPACE, start, 1)
    levels = parse_concurrency(LEVELS)
    with evaluator(repository, MODEL, levels, args.budget_ms, terminal) as running:
        began = time.perf_counter()
        climbed = hill_climb(space, start, running.evaluate)
        climb_seconds = time.perf_counter() - began
        climb_best = best_of(climbed)
        terminal.success(f"hill climb: {len(climbed)} points, {climb_seconds:.0f} s, best {climb_best.point.label()} "
                         f"{climb_best.throughput:.1f} infer/s")
        began = time.perf_counter()
        grid = []
        for index, point in enumerate(space.grid(), start=1):
            grid.append(running.evaluate(point, 0))
            terminal.info(f"  grid [{index}/{len(space.grid())}] {point.label()}: {grid[-1].throughput:.1f} infer/s")
        grid_seconds = time.perf_counter() - began
    grid_best = best_of(grid)
    ranked = sorted(grid, key=lambda e: (not e.feasible, -e.throughput))
    climb_rank = next(i for i, e in enumerate(ranked, start=1) if e.point == climb_best.point)
    climb_point_in_grid = ranked[climb_rank - 1]
    summary = {
        "model": MODEL, "p99_budget_ms": args.budget_ms, "concurrency": LEVELS,
        "space": dataclasses.asdict(space), "grid_points": len(grid),
        "hill_climb": {"points": len(climbed), "seconds": round(climb_seconds, 1),
                       "best": dataclasses.asdict(climb_best)},
        "grid": {"points": len(grid), "seconds": round(grid_seconds, 1), "best": dataclasses.asdict(grid_best)},
        "climb_winner_rank_in_grid": climb_rank,
        "climb_winner_grid_throughput_vs_grid_best": climb_point_in_grid.throughput / grid_best.throughput
        if grid_best.throughput else None,
        "grid_all": [{"point": dataclasses.asdict(e.point), "throughput": e.throughput, "p99_ms": e.p99_ms,
                      "concurrency": e.concurrency, "feasible": e.feasible} for e in ranked],
    }
    path = save("tune_vs_grid", summary)
    terminal.success(f"grid: {len(grid)} points, {grid_seconds:.0f} s, best {grid_best.point.label()} "
                     f"{grid_best.throughput:.1f} infer/s; climb winner ranks {climb_rank} in the grid -> {path}")


if __name__ == "__main__":
    main()
