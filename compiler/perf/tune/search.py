"""tune's search: how two evaluated points compare, and the steepest-ascent hill climb with its
early stop."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .space import SearchSpace, TunePoint

# Two standard errors: a gain the windows cannot tell from noise 95 % of the time does not move.
NOISE_SIGMAS = 2.0


@dataclass
class Evaluation:
    point: TunePoint
    throughput: float             # best infer/s within the budget (0 when no level fits)
    p99_ms: float                 # p99 at that level (or the lowest p99 seen when none fits)
    concurrency: int
    feasible: bool
    levels: list[dict[str, float]]
    seconds: float
    step: int                     # climb step that explored it (0 = the starting point)
    noise: float = 0.0            # relative standard error of `throughput` over its stable windows

    def beats(self, current: Evaluation, min_gain: float) -> bool:
        """Better than `current` by more than min_gain and than the two measurements' noise
        (NOISE_SIGMAS standard errors of their difference): a climb that moves on a gain inside
        the noise explores a whole step more for nothing."""
        noise = NOISE_SIGMAS * math.hypot(self.noise, current.noise) if self.feasible and current.feasible else 0.0
        return self.better_than(current, max(min_gain, noise))

    def better_than(self, other: Evaluation, min_gain: float = 0.0) -> bool:
        if self.feasible != other.feasible:
            return self.feasible
        if not self.feasible:
            return self.p99_ms < other.p99_ms * (1 - min_gain)
        return self.throughput > other.throughput * (1 + min_gain)


def hill_climb(space: SearchSpace, start: TunePoint, evaluate: Callable[[TunePoint, int, int | None], Evaluation], *,
               min_gain: float = 0.03, max_points: int = 40,
               on_point: Callable[[Evaluation, Evaluation], None] | None = None) -> list[Evaluation]:
    """Steepest-ascent hill climb with early stop; returns every evaluation in order. The start is
    swept from the lowest concurrency; each neighbour from the level where the current point did
    best (`evaluate(point, step, around)`): neighbours differ in one setting by one notch."""
    explored: dict[TunePoint, Evaluation] = {}
    current = explored[start] = evaluate(start, 0, None)
    if on_point:
        on_point(current, current)
    step = 0
    while len(explored) < max_points:
        step += 1
        candidates = [p for p in space.neighbours(current.point) if p not in explored]
        best_neighbour = None
        for point in candidates[:max_points - len(explored)]:
            evaluation = explored[point] = evaluate(point, step, current.concurrency)
            if best_neighbour is None or evaluation.better_than(best_neighbour):
                best_neighbour = evaluation
            if on_point:
                on_point(evaluation, current)
        if best_neighbour is None or not best_neighbour.beats(current, min_gain):
            break
        current = best_neighbour
    return list(explored.values())


def best_of(evaluations: list[Evaluation]) -> Evaluation:
    best = evaluations[0]
    for evaluation in evaluations[1:]:
        if evaluation.better_than(best):
            best = evaluation
    return best
