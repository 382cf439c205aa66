"""The forward and backward loops of a plan, emitted inline or as compiled functions.

``forward`` runs the step and may save each step's input carry (the residuals the
backward loop needs); ``backward`` walks the steps in the opposite order, recomputing
one step and applying its vector-Jacobian product, accumulating the gradients of the
closed-over constants in its carry. Both are single ``While`` loops.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Sequence

import tensorflow as tf

from tfscan import _tf
from tfscan._core import context as _context
from tfscan._core.flat import scatter, split_list
from tfscan._scan import buffered_loop as _buffered_loop
from tfscan._scan import cotangent as _cotangent
from tfscan._scan import launched as _launched
from tfscan._scan import remat as _remat
from tfscan._scan.plan import Plan, float_indices
from tfscan._scan.residuals import NotSplittable, StepVJP, warn_recompute

__all__ = []  # private module


class Static:
    """The arguments of a scan that are fixed when it is traced."""

    def __init__(self, length: int | None, reverse: bool, unroll: int | bool):
        self.length, self.reverse, self.unroll = length, reverse, unroll

    def key(self) -> tuple:
        return (self.length, self.reverse, self.unroll)


def _length(static: Static, xs: Sequence[tf.Tensor], dynamic: Any) -> Any:
    if static.length is not None:
        return static.length
    if dynamic is not None:  # given with xs: they are padded past it (:func:`_bucketed`)
        return dynamic
    if xs:
        return tf.shape(xs[0], out_type=tf.int32)[0]
    return dynamic


def _rows(static: Static, xs: Sequence[tf.Tensor], dynamic: Any) -> Any:
    """The rows of padded ``xs`` (a run-time length given with xs), else ``None``."""
    if static.length is None and dynamic is not None and xs:
        return tf.shape(xs[0], out_type=tf.int32)[0]
    return None


def _bucketed(static: Static, xs: Sequence[tf.Tensor], dynamic_length: Any) -> Any:
    """The run-time length of ``xs`` when they should be padded to a bucket, else ``None``.

    XLA compiles a program per input shape: in a graph whose sequences have an unknown
    length (Keras' ``Input((None, d))``, ``tf.function(reduce_retracing=True)``), every new
    length would compile the loops again and keep them for the life of the process. The
    sequences are padded to the next power of two (at least 8) and the loop runs the true
    length, so at most one program per bucket is compiled.
    """
    if (static.length is not None or dynamic_length is not None or not xs or tf.executing_eagerly()
            or _context.in_xla_context() or any(x.shape.rank is None for x in xs)):
        return None
    return tf.shape(xs[0], out_type=tf.int32)[0]


def _bucket(length: tf.Tensor) -> tf.Tensor:
    exponent = tf.math.ceil(tf.math.log(tf.cast(tf.maximum(length, 8), tf.float64)) / tf.math.log(
        tf.constant(2.0, tf.float64)))
    return tf.bitwise.left_shift(tf.constant(1, tf.int32), tf.cast(exponent, tf.int32))


def _pad(xs: Sequence[tf.Tensor], rows: tf.Tensor) -> list:
    return [tf.pad(x, tf.concat([[[0, rows - tf.shape(x, out_type=tf.int32)[0]]],
                                 tf.zeros([x.shape.rank - 1, 2], tf.int32)], 0)) for x in xs]


def captured(consts: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    graph = _tf.default_graph()
    return [_tf.in_graph(graph, c) for c in consts]


def forward(plan: Plan, static: Static, init, xs, consts, dynamic_length=None, save: bool = False,
            split=None):
    """``(carry, ys, saved)``; ``saved`` is empty unless ``save``.

    What is saved per step for the backward loop: with a ``split``, the carry leaves its
    backward piece reads and its residuals; without one, the whole input carry — except
    the carry leaves that are also ys (:func:`carry_aliases`), read back from the ys.
    """
    length = _length(static, xs, dynamic_length)
    kept = [i for i in _needed_carry(plan, split) if i not in plan.carry_is_y]

    def body(carry, slices):
        k = captured(consts)
        if save and split is not None:
            new_carry, ys, residuals = split.step_forward(carry, slices, k)
            residuals = [r for j, r in enumerate(residuals) if j not in split.y_alias]
            return new_carry, list(ys) + [carry[i] for i in kept] + residuals
        new_carry, ys = plan.apply(carry, slices, k)
        return new_carry, list(ys) + ([carry[i] for i in kept] if save else [])

    out_specs = list(plan.y_specs)
    if save:
        out_specs += [plan.carry_specs[i] for i in kept]
        if split is not None:
            out_specs += [r for j, r in enumerate(split.residual_specs) if j not in split.y_alias]
    rows = _rows(static, xs, dynamic_length)
    carry, bufs = _buffered_loop.run(body, list(init), list(xs), length, static.reverse, static.unroll, out_specs,
                                     rows=rows)
    ny = len(plan.y_specs)
    return carry, bufs[:ny], bufs[ny:]


def _needed_carry(plan: Plan, split) -> list[int]:
    """The carry leaves the backward loop reads at each step."""
    return list(range(plan.n_carry)) if split is None else list(split.saved_carry)


def carry_aliases(plan: Plan, split) -> list[tuple[int, int]]:
    """``(carry leaf, y leaf)`` pairs the backward loop reads from the ys instead of a saved
    copy: step ``t``'s input carry is the y of the step before it, or ``init`` for the first.
    The forward pass then keeps each such value once (in the ys), as JAX's does."""
    return [(i, plan.carry_is_y[i]) for i in _needed_carry(plan, split) if i in plan.carry_is_y]


def _carry_at(plan: Plan, static: Static, length, kept: list, kept_vals: list, pairs: list, extras: list, idx):
    """The carry leaves the backward step reads (``None`` for the others) at step ``idx``:
    saved ones from ``kept_vals``, aliased ones from the ys (``extras``: init, ys per pair)."""
    vals = scatter(plan.n_carry, kept, kept_vals)
    if pairs:
        first = (length - 1 if static.reverse else 0)
        prev = tf.minimum(idx + 1, length - 1) if static.reverse else tf.maximum(idx - 1, 0)
        for n, (i, _) in enumerate(pairs):
            init_i, ys_j = captured(extras[2 * n: 2 * n + 2])
            vals[i] = tf.where(tf.equal(idx, first), init_i, tf.gather(ys_j, prev))
    return vals


def step_vjp(plan: Plan, c_t, x_t, k, d_c, dy_t, wanted=None, vjp: StepVJP | None = None):
    """Recompute one step and pull ``(d_new_carry, d_y)`` (float leaves) back to its inputs.

    Returns the gradients for the float leaves of the carry, of x and of the constants.
    With a traced ``vjp`` its ops are emitted; otherwise (a step that could not be traced
    with its gradient) ``tf.gradients`` differentiates the re-emitted step.
    """
    k = captured(k)
    if vjp is not None:
        return vjp.vjp(c_t, x_t, k, d_c, dy_t)
    fc, fx, fy, fk = float_indices(plan, k, wanted)
    new_c, y = plan.apply(c_t, x_t, k)
    targets = [new_c[i] for i in fc] + [y[i] for i in fy]
    sources = [c_t[i] for i in fc] + [x_t[i] for i in fx] + [k[i] for i in fk]
    if targets:
        grads = tf.gradients(targets, sources, grad_ys=list(d_c) + list(dy_t),
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)
    else:
        grads = [tf.zeros_like(s) for s in sources]
    grads = [_dense(g) for g in grads]
    return grads[: len(fc)], grads[len(fc): len(fc) + len(fx)], grads[len(fc) + len(fx):]


def backward(plan: Plan, static: Static, xs, consts, saved, d_carry, d_ys, dynamic_length=None,
             vjp: StepVJP | None = None, remat: bool = False, wanted=None, dy_rows: dict | None = None):
    """Gradients ``(d_init, d_xs, d_consts)`` for the float leaves ``wanted`` (``None`` for the others).

    With ``vjp.split`` (and not ``remat``) each step reads its saved residuals; otherwise
    it recomputes the step from its saved input carry. ``saved`` ends with ``init`` and
    ``ys`` leaves of :func:`carry_aliases`. ``dy_rows`` ``{y leaf: row}``: the cotangents
    that are the same at every step (a broadcast, or zeros), never read as sequences.
    ``vjp`` may give more gradients than ``wanted`` (residuals saved for every input, in a
    graph): the loop keeps only the wanted ones, and XLA drops the ops of the others.
    """
    dy_rows = dy_rows or {}
    if _remat.is_binomial(remat):  # ``saved``: the forward pass's snapshots; see _remat
        return _remat.binomial_backward(plan, static.length, static.reverse, xs, consts, saved, d_carry, d_ys,
                                        remat[1], lambda *a: step_vjp(*a, vjp=vjp), captured, wanted, dy_rows)
    split = vjp.split if vjp is not None and not remat else None
    length = _length(static, xs, dynamic_length)
    fc, fx, fy, fk = float_indices(plan, consts, wanted)
    # positions of the wanted x and constant gradients among those the VJP gives
    pick_x, pick_k = ([vjp.fx.index(i) for i in fx], [vjp.fk.index(i) for i in fk]) if vjp is not None \
        else (range(len(fx)), range(len(fk)))
    pairs = carry_aliases(plan, split)
    kept = [i for i in _needed_carry(plan, split) if i not in plan.carry_is_y]
    n_extra = 2 * len(pairs)
    saved, extras = list(saved[: len(saved) - n_extra]), list(saved[len(saved) - n_extra:])
    nx, nc, ns = len(xs), len(plan.carry_specs), len(saved)
    seq_y = [i for i in fy if i not in dy_rows]
    invariants = split.invariants(consts) if split is not None else []

    def body(acc, slices):
        k = captured(consts)
        d_c, d_k = acc[: len(fc)], acc[len(fc):]
        x_t, s_t = slices[:nx], slices[nx: nx + ns]
        dy_seq = dict(zip(seq_y, slices[nx + ns: nx + ns + len(seq_y)]))
        rows = captured([dy_rows[i] for i in fy if i in dy_rows])
        dy_row = dict(zip([i for i in fy if i in dy_rows], rows))
        dy_t = [dy_seq[i] if i in dy_seq else dy_row[i] for i in fy]
        idx = slices[-1] if pairs else None
        c_t = _carry_at(plan, static, length, kept, s_t[: len(kept)], pairs, extras, idx)
        if split is None:
            g_c, g_x, g_k = step_vjp(plan, c_t, x_t, k, d_c, dy_t, wanted, vjp)
        else:
            residuals = s_t[len(kept):]
            g_c, g_x, g_k = split.step_backward(c_t, x_t, k, residuals, captured(invariants), d_c, dy_t)
        g_x, g_k = [g_x[j] for j in pick_x], [g_k[j] for j in pick_k]  # the wanted ones
        return list(g_c) + [a + g for a, g in zip(d_k, g_k)], list(g_x)

    acc0 = [d_carry[i] for i in fc] + [tf.zeros_like(consts[i]) for i in fk]
    seqs = list(xs) + saved + [d_ys[i] for i in seq_y]  # with ``pairs``, the step index ends the slices
    x_specs = [plan.x_specs[i] for i in fx]
    x_shapes = [xs[i].shape[1:].as_list() if xs[i].shape[1:].is_fully_defined() else tf.shape(xs[i])[1:]
                for i in fx]  # d_x has x's shape: no probe of the body needed
    acc, d_xs_f = _buffered_loop.run(body, acc0, seqs, length, not static.reverse, static.unroll, x_specs, x_shapes,
                                     rows=_rows(static, xs, dynamic_length), index=bool(pairs))
    return scatter(nc, fc, acc), scatter(nx, fx, d_xs_f), scatter(len(consts), fk, acc[len(fc):])


def _dense(g: Any) -> tf.Tensor:
    return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g


class Programs:
    """The compiled functions of one plan and static arguments, created once, thread-safe."""

    def __init__(self, plan: Plan, static: Static, remat: bool = False):
        self.plan, self.static, self.remat = plan, static, remat
        if static.length is None:
            # A run-time length: the loops may run on sequences padded to a bucket
            # (:func:`_bucketed`), so the carries are saved, not read back from the ys.
            plan.carry_is_y = {}
        self._fns: dict = {}
        self._concrete: dict = {}
        self._lock = threading.Lock()
        self._vjps: dict = {}
        self._unsplit: dict = {}  # wanted -> why its VJP recomputes the step, until told
        self._replica_concrete: dict = {}  # (name, argument shapes and dtypes) -> concrete function

    @property
    def graph_bound(self) -> bool:
        """Whether these programs hold tensors of one graph (and so must stay in it)."""
        return self.plan.step.graph_bound

    @property
    def replica_safe(self) -> bool:
        """Whether every replica of a ``tf.distribute`` strategy may run these programs."""
        return self.plan.step.replica_safe

    def vjp(self, consts: Sequence[tf.Tensor], wanted=None, announce: bool = True) -> StepVJP | None:
        """The step's traced VJP (with its residual split when it has one), or ``None``.

        ``announce``: a gradient will read it, so say now (a ``RecomputeWarning``, once) if
        its backward loop recomputes the step; a VJP traced ahead of any gradient (inference
        in a graph, where one may be asked later) says so when one is."""
        with self._lock:
            if wanted not in self._vjps:
                specs = [tf.TensorSpec(c.shape, c.dtype) for c in consts]
                try:
                    self._vjps[wanted] = vjp = StepVJP(self.plan, specs, wanted)
                    self._unsplit[wanted] = vjp.unsplit
                except NotSplittable as e:
                    self._vjps[wanted] = None
                    self._unsplit[wanted] = None if e.quiet else str(e)
            why = self._unsplit.pop(wanted, None) if announce else None
        if why:
            warn_recompute(self.plan.name, why)
        return self._vjps[wanted]

    def backward_vjp(self, consts: Sequence[tf.Tensor], wanted=None, saved_for=None,
                     announce: bool = True) -> StepVJP | None:
        """The step VJP the backward loop for the gradients ``wanted`` runs, when the forward
        loop saved residuals for ``saved_for``: with ``remat`` (carries saved) the one for
        ``wanted``; otherwise the one whose residual split was saved."""
        return self.vjp(consts, wanted if self.remat else saved_for, announce)

    def split(self, consts: Sequence[tf.Tensor], wanted=None, announce: bool = True):
        """The residual split the forward loop saves for, or ``None`` to save carries."""
        vjp = None if self.remat else self.vjp(consts, wanted, announce)
        return vjp.split if vjp is not None else None

    def _compiled(self, name: str, build):
        with self._lock:
            fn = self._fns.get(name)
            if fn is None:
                # One tf.function per plan, each traced once: TF's "frequent retracing" warning
                # (it counts all functions sharing this code) does not apply.
                fn = self._fns[name] = _tf.quiet_retracing(
                    tf.function(build, jit_compile=True, autograph=False, reduce_retracing=False))
            return fn

    def _call(self, name: str, build, args: list, run_time: Sequence[int] = ()) -> list:
        """``build(*args)`` (a flat list) inline under XLA, else through its compiled function.

        ``run_time``: indices of integer ``args`` the program never needs as compile-time
        constants (a run-time length, when buffers are sized by the padded rows).
        """
        if _context.in_xla_context():
            return list(build(*args))
        fn = self._compiled(name, build)
        if not tf.executing_eagerly():
            outs = self._launched(name, fn, args, run_time)
            return outs if outs is not None else list(fn(*args))
        # Eagerly, call the one concrete function directly: this skips tf.function's
        # argument canonicalization, a large part of a short scan's cost.
        concrete = self._concrete.get(name)
        if concrete is None:
            with _tf.xla_trace():
                concrete = self._concrete[name] = fn.get_concrete_function(*args)
        return _tf.call_concrete(concrete, args, xla=True)

    def _launched(self, name: str, fn, args: list, run_time: Sequence[int]) -> list | None:
        """The outputs of ``fn`` launched as one ``XlaLaunch`` op in the graph being built
        (:func:`launch`), or ``None`` (nothing emitted)."""
        if not launchable():
            return None
        # Under a strategy, the program every replica may run is traced once and
        # launched where it compiles once (_graph_concrete, _launch_device).
        device = self._launch_device()
        with tf.device(device) if device is not None else contextlib.nullcontext():
            return launch(self._graph_concrete(name, fn, args), args, run_time=run_time)

    def _in_loop(self) -> bool:
        """Whether the loops run their steps inside an XLA ``While`` (not straight-line code,
        where a program may fold a carry or an x into a compile-time constant)."""
        length, unroll = self.static.length, self.static.unroll
        if length is None:
            return True
        per_iteration = length if unroll is True else max(int(unroll), 1)
        return length // per_iteration != 1

    def _graph_concrete(self, name: str, fn, args: list):
        """``fn``'s concrete function for ``args`` in a graph. Under a ``tf.distribute``
        strategy, ``tf.function`` traces again for each replica's device scope; programs
        every replica may run (:attr:`replica_safe`) are traced once, outside any device
        scope, and that one function serves every replica and graph."""
        if not (tf.distribute.has_strategy() and self.replica_safe):
            with _tf.xla_trace():
                return fn.get_concrete_function(*args)
        key = (name, tuple((None if a.shape.rank is None else tuple(a.shape.as_list()), a.dtype) for a in args))
        concrete = self._replica_concrete.get(key)
        if concrete is None:
            with _tf.xla_trace(), tf.device(None):
                concrete = fn.get_concrete_function(*args)
            concrete = self._replica_concrete.setdefault(key, concrete)
        return concrete

    def _launch_device(self) -> str | None:
        """Where a replica launches a program every replica may run (``None``: its own device).

        XLA keeps one compilation cache per device: replicas on logical CPUs of one host
        (``MirroredStrategy`` over ``tf.config.set_logical_device_configuration``) would each
        compile the same program for the same cores. They launch it on the first replica's
        CPU instead, so it compiles once; the cores, and the host memory the tensors live
        in, are the same.
        """
        if not (tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context() is False
                and self.replica_safe):
            return None
        devices = [tf.DeviceSpec.from_string(d) for d in tf.distribute.get_strategy().extended.worker_devices]
        hosts = {(d.job, d.replica, d.task) for d in devices}
        if len(devices) < 2 or len(hosts) != 1 or any(d.device_type != "CPU" for d in devices):
            return None
        return devices[0].to_string()

    def direct_forward(self) -> tuple[Any, list] | None:
        """``(concrete function, its captured inputs)`` of the forward program without
        residuals, once an eager call has made it (``None`` before, or when a capture is
        deferred): the short-call fast path calls it with ``init + xs + consts``."""
        concrete = self._concrete.get("forward_False_None")
        captured = _tf.fixed_captures(concrete) if concrete is not None else None
        return None if captured is None else (concrete, captured)

    def forward(self, init, xs, consts, dynamic_length=None, save=False, wanted=None, defer=False):
        """``(carry, ys, saved)``; ``wanted`` (a bool per xs and consts leaf, or ``None`` for
        all) limits the residuals to what the gradients of those leaves need.

        ``defer`` (with ``save``): in a ``tf.function`` graph where nothing records, the loop
        runs without residuals and ``saved`` is a :class:`Deferred`, which adds them to the
        launched program only if a gradient is ever asked (inference never computes them).
        It is a list as usual when the program could not be launched."""
        plan, static = self.plan, self.static
        n_i = len(init)
        split = self.split(consts, wanted, announce=not defer) if save else None
        # ``build`` is kept by the cached tf.function: it must close over counts, never over
        # this call's tensors (they would stay alive as long as the cache entry).
        binomial = save and _remat.is_binomial(self.remat)  # keeps a few snapshots, see _remat
        true_length = _bucketed(static, xs, dynamic_length)
        if true_length is not None:  # padded to a bucket; the loop runs the true length
            xs, dynamic_length = _pad(xs, _bucket(true_length)), true_length
        args = _join(init, xs, consts, dynamic_length)
        run_time = _run_time_length(args, xs, dynamic_length)
        if self._in_loop() and not binomial:  # changed integer carries, integer xs: loop values
            run_time += self.plan.step.changed_integers(n_i) + [n_i + i for i, x in enumerate(xs)
                                                                if x.dtype.is_integer]
        ny = len(plan.y_specs)
        flat = saved = None
        if defer and save and not binomial:
            flat = self._launched(self._forward_name(False), self._compiled(
                self._forward_name(False), self._forward_build(init, xs, consts, False)), args, run_time)
            if flat is not None:
                saved = Deferred(self, flat[0].op if flat else None, (n_i, len(xs), len(consts), len(args)),
                                 wanted)
        if flat is None:
            name = self._forward_name(save, wanted)
            flat = self._call(name, self._forward_build(init, xs, consts, save, split), args, run_time)
        carry, ys, rest = split_list(flat, [n_i, ny])
        if saved is None:
            saved = rest if binomial or not save else self.saved(init, ys, rest, split)
        if true_length is not None:  # ``saved`` stays padded: the backward loop reads it so
            ys = [y[:true_length] for y in ys]
        return carry, ys, saved

    @staticmethod
    def _forward_name(save: bool, wanted=None) -> str:
        # ``wanted`` shapes only what is saved: without saving, every ``wanted`` is one program.
        return f"forward_{save}_{wanted if save else None}"

    def _forward_build(self, init, xs, consts, save: bool, split=None):
        """The forward program's function of ``init + xs + consts (+ length)``: its carry, ys and
        (with ``save``) what the backward loop reads, flat."""
        plan, static = self.plan, self.static
        n_i, n_x, n_k = len(init), len(xs), len(consts)
        binomial = save and _remat.is_binomial(self.remat)

        def build(*args):
            i, x, k, dl = _split(args, n_i, n_x, n_k)
            if binomial:
                carry, ys, saved = _remat.binomial_forward(plan, static.length, static.reverse, static.unroll,
                                                           i, x, k, self.remat[1], captured)
            else:
                carry, ys, saved = forward(plan, static, i, x, k, dl, save, split)
            return list(carry) + list(ys) + list(saved)
        return build

    def relaunch_saving(self, op: Any, counts: tuple, wanted=None) -> list | None:
        """Make ``op``, this plan's forward program launched without residuals
        (:class:`Deferred`), run the program that saves them for the gradients ``wanted``
        (:func:`tfscan._tf.relaunch`), and return what the backward loop reads, in ``op``'s
        graph; ``None`` when ``op`` cannot be changed. ``counts``: ``(n_init, n_xs, n_consts,
        n_args)`` of its inputs."""
        n_i, n_x, n_k, n_args = counts
        args = list(op.inputs[:n_args])
        init, xs, consts, _ = _split(args, n_i, n_x, n_k)
        split = self.split(consts, wanted)
        quiet, saving = self._forward_name(False), self._forward_name(True, wanted)
        def trace():
            before = self._graph_concrete(quiet, self._compiled(quiet, self._forward_build(init, xs, consts, False)), args)
            after = self._graph_concrete(saving, self._compiled(
                saving, self._forward_build(init, xs, consts, True, split)), args)
            return before, after
        before, after = _context.traced_alone(trace) if _context.accumulating() else trace()
        extra = _launched.relaunch(op, after, before)
        if extra is None:
            return None
        ys = list(op.outputs)[n_i: n_i + len(self.plan.y_specs)]
        saved = self.saved(init, ys, extra, split)
        # Read by the backward loop only: a higher-order gradient of the function (which
        # TensorFlow builds through every tensor its backward function reads) gives the
        # forward loop no cotangent through them, as the scan's IdentityN does for its outputs.
        with op.graph.as_default():
            return [tf.stop_gradient(t) for t in saved]

    def saved(self, init, ys, rest, split) -> list:
        """What the backward loop reads, from a saving forward program's outputs past its
        carry (``ys``, and ``rest``): the saved carry leaves and residuals, then the ``init``
        and ys leaves of :func:`carry_aliases`."""
        n_sc = len([i for i in _needed_carry(self.plan, split) if i not in self.plan.carry_is_y])
        saved = list(rest)
        if split is not None and split.y_alias:  # residuals that are ys: the ys buffers themselves
            saved_carry, others = split_list(saved, [n_sc])
            others = iter(others)
            saved = saved_carry + [ys[split.y_alias[j]] if j in split.y_alias else next(others)
                                   for j in range(len(split.residual_specs))]
        # Carries that are ys are read back from the ys: the init and ys leaves go last.
        return saved + [t for i, j in carry_aliases(self.plan, split) for t in (init[i], ys[j])]

    def backward(self, xs, consts, saved, d_carry, d_ys, dynamic_length=None, wanted=None, saved_for=None):
        """``(d_init, d_xs, d_consts)`` for the float leaves ``wanted`` (a bool per xs and
        consts leaf, ``None`` for all), from ``saved``: what :meth:`forward` saved for the
        gradients ``saved_for`` (which must include ``wanted``)."""
        plan, static = self.plan, self.static
        n_x, n_k, n_s, n_c = len(xs), len(consts), len(saved), len(d_carry)
        vjp, remat = self.backward_vjp(consts, wanted, saved_for), self.remat
        # None entries (non-float leaves) cannot cross a function boundary: drop and restore.
        d_carry_idx = [i for i, d in enumerate(d_carry) if d is not None]
        d_ys_idx = [i for i, d in enumerate(d_ys) if d is not None and not isinstance(d, _cotangent.Row)]
        row_idx = [i for i, d in enumerate(d_ys) if isinstance(d, _cotangent.Row)]
        n_y = len(d_ys)

        def build(*args):
            x, k, s, dc, dy, rows, dl = split_list(args, [n_x, n_k, n_s, len(d_carry_idx), len(d_ys_idx),
                                                          len(row_idx)])
            dc, dy, rows = scatter(n_c, d_carry_idx, dc), scatter(n_y, d_ys_idx, dy), dict(zip(row_idx, rows))
            d_init, d_xs, d_k = backward(plan, static, x, k, s, dc, dy, dl[0] if dl else None, vjp, remat,
                                         wanted, rows)
            return [g for g in d_init + d_xs + d_k if g is not None]

        true_length = _bucketed(static, xs, dynamic_length)
        if true_length is not None:  # as the forward loop: padded to its bucket
            rows = _bucket(true_length)
            xs, saved, dynamic_length = _pad(xs, rows), _pad(saved, rows), true_length
            d_ys = [d if d is None or isinstance(d, _cotangent.Row) else _pad([d], rows)[0] for d in d_ys]
        args = list(xs) + list(consts) + list(saved) + [d_carry[i] for i in d_carry_idx] + \
            [d_ys[i] for i in d_ys_idx] + [d_ys[i].value for i in row_idx] + \
            ([dynamic_length] if dynamic_length is not None else [])
        run_time = _run_time_length(args, xs, dynamic_length)
        if self._in_loop() and not _remat.is_binomial(remat):  # xs and saved values: read per step
            run_time += [i for i in list(range(n_x)) + list(range(n_x + n_k, n_x + n_k + n_s))
                         if args[i].dtype.is_integer]
        flat = list(self._call(f"backward_{saved_for}_{wanted}_{tuple(row_idx)}", build, args, run_time))
        fc, fx, _, fk = float_indices(plan, consts, wanted)
        d_init, d_xs, d_k = split_list(flat, [len(fc), len(fx)])
        if true_length is not None:
            d_xs = [d[:true_length] for d in d_xs]
        return scatter(n_c, fc, d_init), scatter(n_x, fx, d_xs), scatter(n_k, fk, d_k)


class Deferred:
    """The residuals of a forward loop launched without them, made when a gradient asks.

    In a ``tf.function`` graph where nothing records (inference, ``model.predict``, a
    served SavedModel) a scan's forward program saves nothing per step. A gradient asked
    of that graph later (``tf.gradients``, a tape around the function's call) makes the
    launched op run the saving program instead (:func:`tfscan._tf.relaunch`, as
    TensorFlow's ``while_v2`` adds accumulators to a ``While`` op already built): the
    backward loop reads residuals, and the inference function made before never computes
    them. Holds the programs weakly (the graphs that use them keep them), the op and its
    residuals as :class:`tfscan._scan.launched.Added` (weakly, by name).
    """

    def __init__(self, programs: "Programs | None", op: Any, counts: tuple, wanted):
        self._programs = weakref.ref(programs) if programs is not None else lambda: None
        self._added = _launched.Added(op)
        self._counts, self._wanted = counts, wanted

    def saved(self) -> list | None:
        """What the backward loop reads, in the forward graph (the op made to save it, once),
        or ``None`` when the op cannot be changed (a SavedModel traces the gradient apart
        from it): the gradient then runs the saving forward program itself."""
        programs = self._programs()
        return None if programs is None else self._added.get(
            lambda op: programs.relaunch_saving(op, self._counts, self._wanted))

    def apart(self) -> "Deferred":
        """The same residuals for a gradient traced apart from the forward graph (a
        SavedModel saves that graph as it was): its :meth:`saved` is ``None``."""
        return Deferred(self._programs(), None, self._counts, self._wanted)


def launchable() -> bool:
    """Whether :func:`launch` may emit an ``XlaLaunch`` op here: in a ``tf.function`` graph
    where no tape or accumulator could record, outside an XLA context (which compiles a
    nested call inline but cannot compile an ``XlaLaunch`` op), outside steps tfscan traces
    and copies and outside ``vmap`` traces."""
    return not (tf.executing_eagerly() or _tf.record.could_possibly_record() or _context.in_xla_context()
                or _context.in_internal_trace() or _context.in_vmap_trace())


def launch(fn: Any, args: Sequence[tf.Tensor], captured: Sequence[Any] | None = None,
           run_time: Sequence[int] = ()) -> list | None:
    """``fn`` (a held ``jit_compile=True`` ``tf.function``, or a concrete function of one)
    called on ``args`` in the ``tf.function`` graph being built as one ``XlaLaunch`` op, or
    ``None`` (nothing emitted): eagerly, while a tape or accumulator could record, inside a
    step tfscan traces and copies or a ``vmap`` trace (those keep the call op their rules
    convert), or when :func:`tfscan._tf.launch_compiled` refuses. TensorFlow's own call of a
    compiled function keeps memory for every graph that runs it; this op does not. Its
    gradient (for ``tf.gradients`` and tapes outside the function) is the program's VJP
    (:mod:`tfscan._scan.launched`).

    ``captured``: values fed for the concrete function's captures; ``run_time``: indices of
    integer ``args`` the program never needs as compile-time constants. Every compiled call
    tfscan makes in a graph (scan's loops, the loop family, conditionals) goes through here.
    """
    if not launchable():
        return None
    concrete = fn
    if hasattr(fn, "get_concrete_function"):
        with _tf.xla_trace():
            concrete = fn.get_concrete_function(*args)
    outs = _tf.launch_compiled(concrete, args, captured, not_constant=run_time)
    if outs is not None:
        from tfscan._transforms import batching  # noqa: PLC0415 - a transform, used here only
        batching.install()  # so that pfor (tf.vectorized_map) converts the op
        if outs:  # so that tf.gradients (a tape outside the tf.function) differentiates it
            _launched.note(outs[0].op, concrete)
    return outs


def _run_time_length(args: list, xs, dynamic_length) -> list:
    """The index of the run-time length in ``args`` when the loops size their buffers by the
    rows of ``xs`` (:func:`_rows`): the length is then only a trip count, never a shape."""
    return [len(args) - 1] if dynamic_length is not None and len(xs) else []


def _join(init, xs, consts, dynamic_length) -> list:
    return list(init) + list(xs) + list(consts) + ([dynamic_length] if dynamic_length is not None else [])


def _split(args, n_i, n_x, n_k):
    """The inverse of :func:`_join`: ``(init, xs, consts, dynamic_length or None)``."""
    init, xs, consts, dl = split_list(args, [n_i, n_x, n_k])
    return init, xs, consts, dl[0] if dl else None
