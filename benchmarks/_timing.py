"""Timing: one first call (trace + compile + run), one warm-up call, then the median of reps.

Every callable timed here must block until its result is ready (JAX results go through
``block_until_ready``; TensorFlow's eager and ``tf.function`` calls on CPU return finished
tensors). Short calls are repeated ``inner`` times per rep so that one rep lasts at least
``min_rep_s`` (as ``timeit`` does); the reported time is per call.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Settings:
    reps: int = 5            # repetitions after warm-up (median is reported)
    point_budget_s: float = 1.0   # stop adding reps to one point after this much time
    series_budget_s: float = 1.0  # a steady call slower than this ends its series ("over budget")
    min_rep_s: float = 0.002      # shortest rep: fast calls are looped within a rep
    warmup: bool = True           # one untimed call between the first call and the reps
    abort_first_s: float = 3.0    # a first call slower than this is not repeated at all


@dataclass
class Timing:
    first_s: float                 # first call: tracing + compilation + one run
    median_s: float                # steady time per call (median over reps)
    min_s: float
    reps: int
    inner: int
    samples: list = field(default_factory=list)
    aborted: bool = False          # the first call alone was over budget: nothing else ran

    @property
    def compile_s(self) -> float:
        """First call minus a steady call: the price of tracing and compiling."""
        return max(self.first_s - self.median_s, 0.0)


def measure(fn: Callable[[], Any], settings: Settings, first_out: list | None = None) -> Timing:
    """Time ``fn``; the first call's result is appended to ``first_out`` (for checking)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    if first_out is not None:
        first_out.append(out)
    del out
    if first > settings.abort_first_s:
        return Timing(first, float("nan"), float("nan"), 0, 0, [], aborted=True)
    est = None
    if settings.warmup:
        t0 = time.perf_counter()
        fn()
        est = time.perf_counter() - t0
        if est >= settings.point_budget_s:
            # One steady call already used the budget: it is the measurement.
            return Timing(first, est, est, 1, 1, [est])
    base = est if est is not None else first
    inner = 1 if base >= settings.min_rep_s else max(1, math.ceil(settings.min_rep_s / max(base, 1e-7)))
    samples = []
    start = time.perf_counter()
    for _ in range(max(1, settings.reps)):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
        if time.perf_counter() - start > settings.point_budget_s:
            break
    return Timing(first, statistics.median(samples), min(samples), len(samples), inner, samples)


def predicted_over_budget(points: list[tuple[float, float]], next_size: float, budget_s: float) -> float | None:
    """Extrapolate a series (size, seconds) to ``next_size``; the estimate if it is over budget.

    The growth exponent comes from the last two points (at least 1, at most 2.5), so a
    quadratic series is stopped before it runs a call that would take minutes.
    """
    if not points:
        return None
    (s1, t1) = points[-1]
    p = 1.0
    if len(points) >= 2:
        (s0, t0) = points[-2]
        if t0 > 0 and t1 > 0 and s1 > s0:
            p = min(max(math.log(t1 / t0) / math.log(s1 / s0), 1.0), 2.5)
    est = t1 * (next_size / s1) ** p
    return est if est > budget_s else None
