"""tune's search space: a point (max_batch_size, preferred batch sizes, queue delay, instances),
the ordered values of each dimension, a point's neighbours, and the start point a spec gives."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

PREFERRED_CHOICES = ("none", "max", "half+max")


@dataclass(frozen=True)
class TunePoint:
    max_batch_size: int
    preferred: str            # one of PREFERRED_CHOICES, or the spec's own sizes ("32,64")
    max_queue_delay_us: int
    instances: int

    def preferred_sizes(self) -> list[int]:
        if self.preferred[0].isdigit():  # the spec's own list, e.g. "32,64", kept as the start point
            return [size for size in map(int, self.preferred.split(",")) if size <= self.max_batch_size]
        if self.preferred == "max":
            return [self.max_batch_size]
        if self.preferred == "half+max":
            return sorted({max(1, self.max_batch_size // 2), self.max_batch_size})
        return []

    def label(self) -> str:
        return (f"mbs={self.max_batch_size} pref={self.preferred} delay={self.max_queue_delay_us}us "
                f"inst={self.instances}")


@dataclass
class SearchSpace:
    max_batch_size: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128])
    preferred: list[str] = field(default_factory=lambda: list(PREFERRED_CHOICES))
    max_queue_delay_us: list[int] = field(default_factory=lambda: [0, 100, 500, 1000, 2000, 5000])
    instances: list[int] = field(default_factory=lambda: [1, 2, 3, 4])

    def dimensions(self) -> list[tuple[str, list]]:
        return [("max_batch_size", self.max_batch_size), ("preferred", self.preferred),
                ("max_queue_delay_us", self.max_queue_delay_us), ("instances", self.instances)]

    def grid(self) -> list[TunePoint]:
        import itertools

        return [TunePoint(*values) for values in itertools.product(*(v for _, v in self.dimensions()))]

    def neighbours(self, point: TunePoint) -> list[TunePoint]:
        result = []
        for name, values in self.dimensions():
            index = values.index(getattr(point, name))
            for step in (-1, 1):
                if 0 <= index + step < len(values):
                    result.append(dataclasses.replace(point, **{name: values[index + step]}))
        return result


def start_point(model_spec) -> TunePoint:
    batching = model_spec.dynamic_batching
    sizes = list(batching.preferred_batch_size) if batching else []
    mbs = model_spec.max_batch_size
    named = {"none": [], "max": [mbs], "half+max": sorted({max(1, mbs // 2), mbs})}
    preferred = next((name for name, value in named.items() if value == sizes), ",".join(map(str, sizes)))
    instances = sum(group.count for group in model_spec.instance_group) if model_spec.instance_group else 1
    return TunePoint(mbs, preferred, batching.max_queue_delay_microseconds if batching else 0, instances)


def min_batch_size(spec, model: str) -> int:
    """An ensemble step's max_batch_size must be >= the ensemble's: the floor for this model."""
    floors = [e.max_batch_size for e in spec.ensembles if any(step.model == model for step in e.steps)]
    return max(floors, default=1)


def fit_space(space: SearchSpace, start: TunePoint, min_batch_size: int) -> SearchSpace:
    """The space with the start point's own values in it, and batch sizes the ensembles allow."""
    preferred = list(space.preferred)
    if start.preferred not in preferred:
        preferred.append(start.preferred)
    sizes = sorted({s for s in space.max_batch_size if s >= min_batch_size} | {start.max_batch_size})
    return SearchSpace(max_batch_size=sizes, preferred=preferred,
                       max_queue_delay_us=sorted(set(space.max_queue_delay_us) | {start.max_queue_delay_us}),
                       instances=sorted(set(space.instances) | {start.instances}))
