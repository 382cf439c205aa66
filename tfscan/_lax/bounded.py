"""The reverse-mode derivative of ``while_loop(..., max_steps=N)``.

A while loop's trip count depends on its data, so JAX refuses its reverse mode: nothing
bounds the memory a backward pass would need. With a bound ``N`` known when the loop is
traced, every buffer has a static size and the loop can be reversed:

* the forward pass is one compiled ``While`` that stops when ``cond_fun`` is false or
  after ``N`` steps (a documented stop, not an error: the values are then those of the
  first ``N`` steps, as with ``jax.lax.scan`` of length ``N`` and a ``done`` mask). It
  counts the steps actually taken, ``n``, and writes the carry every ``k`` steps into a
  ``[ceil(N / k), ...]`` checkpoint buffer (``k = 1``: every carry);
* the backward pass is one compiled ``While`` over the ``ceil(n / k)`` segments actually
  run, last first: it reloads the segment's checkpoint, recomputes the segment's carries
  into a ``[k, ...]`` buffer (``k - 1`` steps), then walks them back applying the step's
  VJP (``tfscan._scan.program.step_vjp``, traced once from ``body_fun``), accumulating the
  gradients of the closed-over tensors and variables. Time is ``O(n)`` — the unused
  ``N - n`` steps cost nothing — and memory ``O(N / k + k)`` carries.

Where nothing records (eager inference, or a ``tf.function`` graph in which no tape or
accumulator watches the loop) the forward pass is the plain loop, with no checkpoints. In
a graph, a gradient asked later (a tape around the function's call, ``tf.gradients``)
makes that launched op run the checkpointing program instead (:func:`tfscan._tf.relaunch`,
as scan's ``Deferred`` residuals), or, when the op cannot be changed, runs it again from
the loop's inputs.

The policy is scan's ``remat``: ``False``/``True`` keep every carry (``k = 1``; the backward
pass recomputes each step's VJP from it), an int ``k`` or ``"sqrt"`` (``k = sqrt(N)``)
keep one carry per segment. Forward mode (JVP) runs the bounded loop of
``tfscan._lax.loops`` on (carry, tangents). Symbolic gradients (``tf.gradients``, a tape
outside the ``tf.function``) reach the backward pass through an ``IdentityN`` with a
registered gradient that reads everything from its op's inputs, as scan's do
(``tfscan._scan.autodiff``). Asked while an accumulator is live (one opened outside the
``tf.function`` that runs the loop: TensorFlow's JVP of a call transposes the call's
gradient), that gradient raises :data:`FORWARD_ERROR`: the backward loop is first-order.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any

import tensorflow as tf

from tfscan import _tf
from tfscan._core import context as _context
from tfscan._core import gradients as _gradients
from tfscan._core.flat import scatter, split_list
from tfscan._lax import control as _control
from tfscan._scan.buffered_loop import _write, keep_shape
from tfscan._scan.plan import Plan, float_indices, is_float
from tfscan._scan import launched as _launched
from tfscan._scan.program import captured, step_vjp
from tfscan._scan.residuals import NotSplittable, StepVJP

__all__ = []  # private module

# Raised when TensorFlow would transpose this loop's reverse mode to compute a JVP: an
# accumulator opened outside the tf.function that runs the loop (TensorFlow's JVP of a
# function call transposes the call's gradient). The backward loop is first-order: its own
# gradient would be TensorFlow's of a compiled while loop, which XLA cannot build.
FORWARD_ERROR = (
    "Forward mode (tf.autodiff.ForwardAccumulator) opened outside a tf.function does not reach "
    "a tfscan.while_loop(..., max_steps=N) inside it: TensorFlow computes the JVP of a "
    "tf.function call by transposing the call's gradient, and the bounded loop's reverse mode "
    "is first-order. Use tfscan.jit instead of tf.function for that function (a tfscan.jit "
    "call has forward rules of its own: an accumulator, nested accumulators or an accumulator "
    "inside a GradientTape work; a GradientTape inside the accumulator, a Hessian-vector "
    "product, does not), or open the ForwardAccumulator inside the tf.function.")


# Raised when the bounded loop's gradient is itself differentiated in reverse mode.
SECOND_ORDER_ERROR = (
    "The gradient of tfscan.while_loop(..., max_steps=N) is first-order: a gradient of its "
    "gradient (nested GradientTapes, tf.gradients of tf.gradients, tfscan.grad of tfscan.grad) "
    "is not available (JAX has no reverse mode of a while loop at all). Write the loop as "
    "tfscan.scan or tfscan.fori_loop with static bounds (a Python-int trip count, with a done "
    "flag in the carry), whose derivatives compose to any order, or take the second "
    "derivative in forward mode (a ForwardAccumulator inside the tape).")


def _first_order(flat: list, inputs: list) -> list:
    """The backward loop's gradients ``flat``, which TensorFlow cannot differentiate (a
    compiled loop): a tape that records them, or ``tf.gradients`` asked for their gradient,
    gets :data:`SECOND_ORDER_ERROR` instead of TensorFlow's (or XLA's) own error, or a
    silent ``None``."""
    live, ins = [t for t in flat if t is not None], [t for t in inputs if t is not None]
    if not tf.executing_eagerly():  # for tf.gradients: one IdentityN with the loop's inputs
        with _tf.record.stop_recording():
            live = _gradients.failing_identity(live + ins, SECOND_ORDER_ERROR)[: len(live)]
    if _tf.record.could_possibly_record():  # for tapes (they differentiate IdentityN as itself)
        def fail(*_):
            raise ValueError(SECOND_ORDER_ERROR)

        _tf.record.record_operation("TfscanBoundedWhileGrad", live, ins, fail, fail)
    it = iter(live)
    return [None if t is None else next(it) for t in flat]


def interval(remat: Any, max_steps: int) -> int:
    """The checkpoint interval ``k`` of a ``remat`` policy (already checked) for ``N`` steps."""
    if remat in (True, False):
        return 1
    if remat == "sqrt":
        return max(1, math.isqrt(max_steps))
    if isinstance(remat, int):
        return remat
    raise ValueError(f"while_loop: remat={remat!r} is not supported with max_steps (the binomial "
                     "schedule needs the number of steps when the loop is traced); use False, True, "
                     "an int k or 'sqrt'.")


class Reverse:
    """The checkpointing forward loop and the backward loop of one bounded while loop."""

    def __init__(self, plan: Plan, cond, max_steps: int, every: int):
        self.plan, self.cond, self.N, self.k = plan, cond, max_steps, every
        self.fc = [i for i, s in enumerate(plan.carry_specs) if is_float(s.dtype)]
        self.n_seg = -(-max_steps // every) if max_steps else 1
        self._vjp_traced = False
        # Run-time integer inputs (:class:`tfscan._lax.control.Compiled`): the carry leaves the
        # body changes; backward, the step count (a trip count) and every checkpoint buffer.
        n = plan.n_carry
        self._forward = _control.Compiled(lambda meta: self._forward_build, plan.step.changed_integers(n))
        self._backward = _control.Compiled(lambda meta: self._backward_build, [0] + [
            1 + i for i, s in enumerate(plan.carry_specs) if s.dtype.is_integer])
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- forward
    def _step(self, carry, kb):
        new, _ = self.plan.apply(carry, [], captured(kb))
        return [keep_shape(c, t.shape) for c, t in zip(new, carry)]

    def _go(self, carry, kc):
        return self.cond.apply(list(carry), captured(kc))[0]

    def _forward_build(self, *args):
        """``carry, n, checkpoints`` of the loop on ``(carry, cond consts, body consts)``."""
        n, nc = len(self.plan.carry_specs), len(self.cond.const_sources)
        carry, kc, kb = split_list(args, [n, nc])
        bufs = [tf.repeat(c[None], self.n_seg, axis=0) for c in carry]
        k, N = self.k, self.N

        def outer(i, go, carry, bufs):
            bufs = [_write(b, c, i // k) for b, c in zip(bufs, carry)]

            def inner(j, i, go, carry):
                carry = self._step(carry, kb)
                return j + 1, i + 1, self._go(carry, kc), carry

            _, i, go, carry = tf.while_loop(lambda j, i, go, c: go & (j < k) & (i < N), inner,
                                            (tf.constant(0), i, go, carry))
            return i, go, carry, bufs

        i, _, carry, bufs = tf.while_loop(lambda i, go, c, b: go & (i < N), outer,
                                          (tf.constant(0), self._go(carry, kc), carry, bufs))
        return list(carry) + [i] + list(bufs)

    def forward(self, carry: list, kc: list, kb: list) -> tuple[list, tf.Tensor, list]:
        flat = self._forward(*carry, *kc, *kb)
        carry, (steps,), bufs = split_list(flat, [len(carry), 1])
        return carry, steps, bufs

    # ---------------------------------------------------------------- backward
    def trace_vjp(self, kb: list) -> None:
        """Trace the step's VJP (once): called before recording stops, so that a tape used
        inside ``body_fun`` records, as scan does (``_autodiff.differentiable_scan``)."""
        with self._lock:
            if not self._vjp_traced:
                try:
                    self.vjp = StepVJP(self.plan, [tf.TensorSpec(c.shape, c.dtype) for c in kb])
                except NotSplittable:
                    self.vjp = None
                self._vjp_traced = True

    def _vjp(self, carry, kb, d_c):
        g_c, _, g_k = step_vjp(self.plan, carry, [], captured(kb), d_c, [], vjp=self.vjp)
        return list(g_c), list(g_k)

    def _backward_build(self, *args):
        """``d_init, d_consts`` (float leaves) from ``(n, checkpoints, body consts, d_final)``."""
        nc, nk = len(self.plan.carry_specs), len(self.plan.step.const_sources)
        steps, bufs, kb, d_final = args[0], list(args[1: 1 + nc]), list(args[1 + nc: 1 + nc + nk]), \
            list(args[1 + nc + nk:])
        _, _, _, fk = float_indices(self.plan, kb)
        k = self.k
        d_k0 = [tf.zeros_like(kb[i]) for i in fk]

        def segment(s, d_c, d_k):
            s = s - 1
            start = s * k
            length = tf.minimum(k, steps - start)
            c0 = [tf.gather(b, s) for b in bufs]
            if k == 1:
                g_c, g_k = self._vjp(c0, kb, d_c)
                return s, g_c, [a + g for a, g in zip(d_k, g_k)]
            seg0 = [tf.repeat(c[None], k, axis=0) for c in c0]

            def recompute(j, c, seg):
                seg = [_write(b, v, j) for b, v in zip(seg, c)]
                return j + 1, self._step(c, kb), seg

            _, last, seg = tf.while_loop(lambda j, c, seg: j < length - 1, recompute,
                                         (tf.constant(0), c0, seg0))
            seg = [_write(b, v, length - 1) for b, v in zip(seg, last)]

            def back(j, d_c, d_k):
                j = j - 1
                g_c, g_k = self._vjp([tf.gather(b, j) for b in seg], kb, d_c)
                return j, g_c, [a + g for a, g in zip(d_k, g_k)]

            _, d_c, d_k = tf.while_loop(lambda j, d_c, d_k: j > 0, back, (length, d_c, d_k))
            return s, d_c, d_k

        n_used = (steps + k - 1) // k
        _, d_c, d_k = tf.while_loop(lambda s, d_c, d_k: s > 0, segment, (n_used, d_final, d_k0))
        return list(d_c) + list(d_k)

    def backward(self, steps, bufs, kb, d_outs) -> list:
        """Gradients for ``carry + body consts`` (``None`` for leaves that get none)."""
        nc = len(self.plan.carry_specs)
        _, _, _, fk = float_indices(self.plan, kb)
        d_final = [tf.zeros_like(bufs[i][0]) if d_outs[i] is None else d_outs[i] for i in self.fc]
        self.trace_vjp(kb)
        inputs = [steps, *bufs, *kb, *d_final]
        with _tf.record.stop_recording():
            flat = list(self._backward(*inputs))
        flat = _first_order(flat, inputs)
        return scatter(nc, self.fc, flat[: len(self.fc)]) + scatter(len(kb), fk, flat[len(self.fc):])

    # ---------------------------------------------------------------- symbolic gradients
    def with_registered_gradient(self, outs, steps, bufs, carry, kb) -> list:
        """``outs`` through an ``IdentityN`` whose gradient is :meth:`backward` (graph mode)."""
        n_out, n_b, n_c = len(outs), len(bufs), len(carry)

        def gradients(ins, d_outs, saving):
            (steps_,), bufs_, _, kb_ = split_list(ins[n_out:], [1, n_b, n_c])
            return [None] * (1 + n_b) + self.backward(steps_, bufs_, kb_, d_outs)
        return self._through(list(outs) + [steps] + list(bufs) + list(carry) + list(kb), n_out, gradients)

    def with_deferred_gradient(self, outs, quiet: _control.Compiled, carry, kc, kb) -> list:
        """``outs`` of the loop run by ``quiet`` (no checkpoints: a graph where nothing
        records, e.g. inference) through an ``IdentityN`` whose gradient makes the launched
        op save them (:meth:`_checkpoints`) and then runs :meth:`backward`."""
        n_out, n_c, n_kc = len(outs), len(carry), len(kc)
        added = _launched.Added(outs[0].op)  # the launched op's checkpoints, once a gradient asks

        def gradients(ins, d_outs, saving):
            _, carry_, kc_, kb_ = split_list(ins, [n_out, n_c, n_kc])
            steps, bufs = self._checkpoints(added, quiet, carry_, kc_, kb_, saving)
            grads = self.backward(steps, bufs, kb_, d_outs)
            return grads[:n_c] + [None] * n_kc + grads[n_c:]
        return self._through(list(outs) + list(carry) + list(kc) + list(kb), n_out, gradients)

    def _through(self, flat: list, n_out: int, gradients) -> list:
        """``flat[:n_out]`` through an ``IdentityN`` of ``flat`` whose gradient is
        ``gradients(op inputs, output cotangents, saving)`` for the inputs past the outputs.

        One gradient name per op, as scan's (:func:`tfscan._scan.autodiff._register_gradient`):
        ``tf.saved_model`` traces each registered gradient once, without an op (``saving``),
        and saves it capturing that op's inputs, so a loaded model is differentiated through
        the loop (it got ``None`` before)."""
        site: list = []  # the IdentityN, weakly, once made
        exported = not _context.in_internal_trace()

        def grad(op, *d_all):
            saving = op is None
            if saving:  # tf.saved_model traces the gradient to save it: read the op's inputs
                op = site[0]() if site else None
                if op is None or not exported:  # a loop nested in a step has no op of its own there
                    raise ValueError("tfscan: cannot save the gradient of this while_loop(max_steps=N): "
                                     "its graph is gone, or it is nested in a step. Save with "
                                     "tf.saved_model.SaveOptions(experimental_custom_gradients=False) "
                                     "to save the forward pass only.")
            if _tf.record.accumulators():
                raise ValueError(FORWARD_ERROR)
            return [None] * n_out + gradients(list(op.inputs), list(d_all[:n_out]), saving)

        name = _gradients.register("TfscanBoundedWhileGrad", grad)
        result = _gradients.identity(name, flat)
        site.append(weakref.ref(result[0].op))
        if exported:  # owned by the graph: its op lives (and is differentiated) only there
            weakref.finalize(_tf.default_graph(), _tf.unregister_gradient, name)
        return result[:n_out]

    def _checkpoints(self, added: _launched.Added, quiet: _control.Compiled, carry, kc, kb,
                     saving: bool) -> tuple[tf.Tensor, list]:
        """``(steps, checkpoints)`` for a loop that ``quiet`` ran: the launched op is made to
        run the checkpointing program instead, once (``added``, as scan's
        :class:`~tfscan._scan.program.Deferred`); when it cannot be (not an ``XlaLaunch``
        op, or a gradient ``saving`` in a SavedModel, which saves the forward function as it
        was), the checkpointing loop runs again from the loop's inputs."""
        args = list(carry) + list(kc) + list(kb)
        known = None if saving else added.get(lambda op: self._relaunch(op, quiet, args))
        if known is None:
            _, steps, bufs = self.forward(list(carry), list(kc), list(kb))
            return steps, bufs
        return known[0], known[1:]

    def _relaunch(self, op: tf.Operation, quiet: _control.Compiled, args: list) -> list | None:
        """``op``, launched by ``quiet``, made to run the checkpointing forward program:
        its step count and checkpoints, or ``None``."""
        extra = _launched.relaunch(op, self._forward.concrete(args), quiet.concrete(args))
        if extra is None:
            return None
        with op.graph.as_default():  # read by the backward loop only (first-order)
            return [tf.stop_gradient(t) for t in extra]
