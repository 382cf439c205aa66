"""``unroll=None`` (scan's default): how many steps one iteration of the forward loop runs.

XLA:CPU compiles a scan's ``While`` into one native kernel whose loop state lives in
memory: every iteration stores and reloads the carry, the counter and the state's buffer
pointers. For a step of a few scalar ops that round trip *is* the cost of a step (a
``c + x`` step costs ~4 ns, an empty loop ~4 ns in TensorFlow 2.21's XLA, ~3.5 ns in
jaxlib's). Running ``k`` steps per iteration keeps the carry in registers between them
and pays the round trip once per ``k`` steps. Unrolling never changes a value (the same
ops in the same order: results are bitwise those of ``unroll=1``), only speed and the
size of the compiled program, which costs compile time (each copy of the step is traced
into the graph and compiled again) — worth it only for long loops of cheap steps.

So ``unroll=None`` unrolls the forward loop by :data:`FACTOR` only when all of these hold:

* the length is known when the scan is traced, at least :data:`MIN_LENGTH`, and a
  multiple of the factor (no remainder loop: still one ``While``);
* the step is plain (no nested loop, conditional, call, variable or state) with at most
  :data:`MAX_OPS` compute ops;
* every carry, x and y leaf has a static shape, :data:`MAX_ELEMENTS` elements in all.

Otherwise, and for the backward loop of a gradient, it is 1: what JAX's ``unroll=1`` does.
The forward loop that saves residuals for a gradient is unrolled alike: inside a
``tf.function`` (and ``tfscan.jit``) the forward is that loop, whose unused residuals XLA
prunes. An explicit ``unroll`` is always obeyed.
"""

from __future__ import annotations

from typing import Any

__all__ = []  # private module

FACTOR = 4          # steps per iteration of an automatically unrolled loop
MIN_LENGTH = 4096   # shorter loops: the saving per call is below the call's own cost
MAX_OPS = 8         # compute ops of the step (not its inputs, constants or Identity ops)
MAX_ELEMENTS = 32   # elements of the carry, x and y leaves together


def forward_unroll(unroll: int | bool | None, plan: Any, length: int | None) -> int | bool:
    """The forward loop's steps per iteration: ``unroll`` if given, else the rule above."""
    if unroll is not None:
        return unroll
    return FACTOR if cheap(plan, length) else 1


def cheap(plan: Any, length: int | None) -> bool:
    """Whether ``plan``'s step over ``length`` steps is unrolled when ``unroll=None``."""
    if not isinstance(length, int) or length < MIN_LENGTH or length % FACTOR:
        return False
    specs = plan.carry_specs + plan.x_specs + plan.y_specs
    if not all(s.shape.is_fully_defined() for s in specs):
        return False
    if sum(s.shape.num_elements() for s in specs) > MAX_ELEMENTS or not plan.step.plain:
        return False
    return plan.step.op_count() <= MAX_OPS
