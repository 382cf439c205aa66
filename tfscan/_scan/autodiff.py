"""The gradient of a scan: a VJP of our own, recorded on the live tapes.

The forward loop saves what the backward pass needs (``_residuals``); first-order
gradients run one compiled reverse loop (``_program.backward``). When the
gradient itself is being recorded (nested tapes, ``ForwardAccumulator``), the backward
pass is instead written as two differentiable scans — recompute the carries, then walk
back — so gradients of gradients come out of the same machinery. Forward mode never
transposes this VJP: the recorded operation carries a forward function, the scan's own JVP
loop (:mod:`tfscan._scan.forward`).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Sequence

import tensorflow as tf

from tfscan import _tf
from tfscan._core import cache as _cache
from tfscan._core import context as _context
from tfscan._core import gradients as _gradients
from tfscan._core.flat import scatter, split_list
from tfscan._scan import cotangent as _cotangent
from tfscan._scan import forward as _forward
from tfscan._scan import forward_eager as _forward_eager
from tfscan._scan import program as _program
from tfscan._scan.plan import float_indices, is_float
from tfscan._scan.program import Programs
from tfscan._tf import record

__all__ = []  # private module


def differentiable_scan(programs: Programs, init: Sequence[tf.Tensor], xs: Sequence[tf.Tensor],
                        consts: Sequence[tf.Tensor], dynamic_length: Any = None) -> list[tf.Tensor]:
    """``carry + ys`` (flat) of the scan, recorded with its VJP for every float input.

    Live tapes and accumulators see one operation whose backward function is the compiled
    reverse loop. In a graph, the results also pass through an ``IdentityN`` whose
    registered gradient reads everything from ``op.inputs`` (for ``tf.gradients``):
    ``tf.custom_gradient`` would keep the forward tensors in a Python closure, which breaks
    when the graph is copied, as a step holding a nested scan is, into the outer loop.
    """
    eager = tf.executing_eagerly()
    wanted, save, taped = None, True, None
    inputs = list(init) + list(xs) + list(consts)
    # The live tapes (eager, or inside a tf.function) tell which inputs can be asked for a
    # gradient: the backward loop skips the others (a Keras step never computes d(xs)).
    if eager or record.could_possibly_record():
        taped = [record.should_record_backprop([t]) for t in inputs]
        wanted = None if all(taped[len(init):]) else tuple(taped[len(init):])
    # A graph where nothing records this scan (inference; or a tf.function traced under a tape
    # outside it, which TensorFlow differentiates later, for every input, through the
    # registered gradient): its residuals are made only if a gradient asks for them.
    # (Not under XLA, which drops the residuals nobody reads by itself.)
    quiet = not eager and not _context.in_internal_trace() and not _context.in_xla_context() \
        and not _recording(inputs)
    if quiet:
        wanted = None
    # In a graph the forward loop saves the residuals of every input's gradient: the tapes
    # live while it is traced may be outside the function (TensorFlow's gradient of its call
    # then asks for every input) or inside it (asking for ``wanted`` only); which, nothing
    # here tells. The backward loop computes the ``wanted`` ones only, and XLA drops the
    # residuals no gradient reads. Eagerly the tapes are known: only ``wanted``'s are saved.
    saved_for = wanted if eager else None
    if eager:
        # Only a tape asks for the VJP: forward mode alone (accumulators) saves nothing.
        save = record.should_record_backprop(inputs)
        if save and record.tangent_indices(inputs):
            # forward over reverse: the gradient is computed under an accumulator, by
            # _recorded_backward, from the step VJP for every input (traced now, while a
            # tape inside the step can still record)
            programs.vjp(consts)
    elif _context.is_vmap_example(_tf.default_graph()) and not record.should_record_backprop(inputs):
        # Traced for vmap, read by no tape: the batching rule replaces this scan with a batched
        # one that saves its own residuals. Only a per-example VJP (which traces the function
        # again, ``Batched.vjp_pe``) or ``tf.gradients`` could differentiate it: it recomputes.
        save = False
    if save:  # traced now, while a tape inside the step can still record
        programs.backward_vjp(consts, wanted, saved_for, announce=not quiet)
    # forward mode (an accumulator) runs the scan's own JVP loop, never this VJP transposed
    forward_function = lambda *tangents: _forward.scan_tangents(  # noqa: E731
        programs, init, xs, consts, dynamic_length, tangents, run)
    first = None if save or not eager else _forward_eager.first_tangents(programs, init, xs, consts, dynamic_length)
    recorded = None  # the inputs the operation is recorded on (None: all)
    if first is not None:  # forward mode alone: the JVP loop gives the values too
        outs, make_forward_function, recorded = first
        result, saved, forward_function = outs, None, make_forward_function(run)
    else:
        with record.stop_recording():  # the tapes see only the operation recorded below
            graph = None if eager or not _context.in_vmap_trace() else _tf.default_graph()
            first_op = len(graph.get_operations()) if graph is not None else 0
            # In a graph where nothing records, the residuals are made only if a gradient asks.
            carry, ys, saved = programs.forward(init, xs, consts, dynamic_length, save=save, wanted=saved_for,
                                                defer=quiet)
            saved = saved if save else None
            outs = list(carry) + list(ys)
            result = outs if eager else _with_registered_gradient(programs, outs, saved, init, xs, consts,
                                                                  dynamic_length)
            if graph is not None:  # vmap batches this scan as a whole, not its loop's ops
                from tfscan._transforms import scan_batching
                scan_batching.mark_forward(graph.get_operations()[first_op:], result[0].op if result else None)
        # Recorded on the inputs a tape or an accumulator can ask about, as JAX's symbolic
        # zeros: an accumulator would hand the forward function zeros for every other one
        # (its data xs, closed-over tensors), and the JVP loop would carry and differentiate them.
        recorded = _asked(inputs, taped)
        if recorded is not None:
            forward_function = _compact(forward_function, len(inputs), recorded)
    # The closure keeps what the backward pass reads (``saved``: the ys only where they are
    # residuals), and of the outputs only their types: a ys buffer nothing else holds is freed.
    specs = [tf.TensorSpec(o.shape, o.dtype) for o in outs] if eager else outs

    def backward(*d_outs):
        grads = _backward(programs, init, xs, consts, saved, d_outs, specs, dynamic_length, wanted, saved_for)
        return grads if recorded is None else [grads[i] for i in recorded]

    # Forward mode alone records the inputs with a tangent only (``first_tangents``): no tape
    # reads this operation, and accumulators would make eager zeros for the others.
    record.record_operation("TfscanScan", result, inputs if recorded is None else [inputs[i] for i in recorded],
                            backward, forward_function)
    return result


def _asked(inputs: Sequence[tf.Tensor], taped: Sequence[bool] | None) -> list[int] | None:
    """Indices of ``inputs`` that a live tape watches (``taped[i]``) or a live accumulator has
    a tangent of (what recording an operation on them can serve), or ``None`` when that is all
    of them, when nothing can record (``taped`` is ``None``: recording is then a no-op),
    or when the scan is traced inside tfscan's own trace of a step or a VJP: the tapes and
    accumulators live there are tfscan's own derivative machinery, and restricting what they
    record made a Hessian-vector product through a scan in a scan's step come out 0
    (``tests/test_nested_derivatives.py``; which of them reads an unrecorded input was not
    pinned down, so none is restricted there)."""
    if taped is None or _context.in_internal_trace():
        return None
    asked = {i for i, on_tape in enumerate(taped) if on_tape}
    asked |= {i for i in _context.watched_indices(inputs) if i < len(inputs)}
    return None if len(asked) == len(inputs) else sorted(asked)


def _compact(forward_function, n_in: int, recorded: list[int]):
    """``forward_function`` (tangents of all ``n_in`` inputs, ``None`` for none) called with
    the tangents of the inputs ``recorded`` only."""
    return lambda *tangents: forward_function(*scatter(n_in, recorded, tangents))


def run(programs: Programs, init: Sequence[tf.Tensor], xs: Sequence[tf.Tensor], consts: Sequence[tf.Tensor],
        dynamic_length: Any = None) -> list[tf.Tensor]:
    """``carry + ys`` (flat) of a scan's programs, recorded when a derivative may be asked for."""
    if any(is_float(t.dtype) for g in (init, xs, consts) for t in g) and (
            not tf.executing_eagerly() or record.could_possibly_record()):
        return differentiable_scan(programs, init, xs, consts, dynamic_length)
    carry, ys, _ = programs.forward(init, xs, consts, dynamic_length)
    return list(carry) + list(ys)


def _backward(programs: Programs, init, xs, consts, saved, d_outs, outs, dynamic_length,
              wanted: tuple | None = None, saved_for: tuple | None = None, apart: bool = False) -> list:
    """Flat gradients for ``init + xs + consts`` (those ``wanted``) given the cotangents of
    ``outs``, from ``saved``: the residuals of the gradients ``saved_for``."""
    n_i = len(init)
    d_carry = [_zeros_if_none(d, o) for d, o in zip(d_outs[:n_i], outs[:n_i])]
    # A gradient TensorFlow builds apart from the forward graph (a function's backward
    # function, a SavedModel's saved gradient) is recorded by no tape: the tapes live then
    # watch the forward graph's tensors, which the ops built here never read. An accumulator
    # does differentiate it (forward over reverse around a call). A scan whose residuals wait
    # for a gradient (it records nothing, outside XLA) is asked finely whether its backward
    # pass is recorded; any other by whether anything could record.
    deferred = isinstance(saved, _program.Deferred)
    ins = [t for t in list(init) + list(xs) + list(consts) + list(d_outs) if isinstance(t, tf.Tensor)]
    if apart and not _context.accumulating():
        recording = False
    else:
        recording = _recording(ins) if deferred else record.could_possibly_record()
    if saved is None or recording:
        d_ys = [_zeros_if_none(d, o) for d, o in zip(d_outs[n_i:], outs[n_i:])]
        grads = _recorded_backward(programs, init, xs, consts, d_carry, d_ys, dynamic_length)
    else:
        if deferred:  # the forward op saves them from now on
            saved = saved.saved()
            if saved is None:  # it cannot (a SavedModel's saved gradient): the saving program runs here
                saved = programs.forward(init, xs, consts, dynamic_length, save=True, wanted=saved_for)[2]
        # A ys cotangent that is the same at every step (zeros, a broadcast) goes in as one row.
        d_ys = [None if not is_float(o.dtype) else _cotangent.zero_row(o) if d is None
                else (_cotangent.row_of(d) or d) for d, o in zip(d_outs[n_i:], outs[n_i:])]
        grads = programs.backward(xs, consts, saved, d_carry, d_ys, dynamic_length, wanted, saved_for)
        if not tf.executing_eagerly():
            return _differentiable_in_graph(programs, init, xs, consts, d_carry, list(d_outs[n_i:]),
                                            list(outs[n_i:]), dynamic_length, [g for part in grads for g in part])
    return [g for part in grads for g in part]


def _recording(tensors: Sequence[Any]) -> bool:
    """Whether a live tape or accumulator would record an operation that reads ``tensors``:
    one watches one of them, or has a tangent of one. A tape merely being live is not enough:
    TensorFlow builds the backward function of a ``tf.function`` called under a tape (or
    differentiated by ``tf.gradients`` in it) with that tape live, on placeholders no tape
    watches; recording there records nothing, and the backward pass would recompute the
    forward loops it has residuals for. Asked of a scan whose residuals wait for a gradient
    (:class:`~tfscan._scan.program.Deferred`) only; any other's backward pass is built apart
    from its forward graph (not recorded) or asks :func:`record.could_possibly_record`."""
    ts = [t for t in tensors if isinstance(t, tf.Tensor)]
    return record.could_possibly_record() and (record.should_record_backprop(ts) or _context.watched(ts))


def _differentiable_in_graph(programs: Programs, init, xs, consts, d_carry, d_ys, ys, dynamic_length,
                             grads: list) -> list:
    """``grads`` (the compiled reverse loop's, flat) through an ``IdentityN`` whose gradient
    is that of the backward pass written as differentiable scans (``_recorded_backward``).

    A gradient computed where nothing records it (``tf.gradients``, the tape of a traced
    ``tfscan.grad``) may be differentiated later by TensorFlow, op by op: ``tf.gradients`` of
    ``tf.gradients``, or a tape around a call of a function traced without one (a
    ``tfscan.jit`` reused from its cache). TensorFlow has no gradient for the reverse loop;
    this ``IdentityN`` gives its outputs none to take, and differentiates the backward pass
    again from its inputs, as JAX transposes a scan's transpose. A ys cotangent that is
    ``None`` stays out of it (zeros of ``ys``' shape are made only if that gradient is asked):
    the first-order gradient never materialises a ``[T, ...]`` buffer of zeros to pass along."""
    idx = [i for i, g in enumerate(grads) if g is not None and is_float(g.dtype)]
    if not idx:
        return grads
    dl = [dynamic_length] if dynamic_length is not None else []
    n_i, n_x, n_k = len(init), len(xs), len(consts)
    ins = list(init) + list(xs) + list(consts) + list(d_carry) + list(d_ys)
    have = [j for j, t in enumerate(ins) if t is not None]
    xla = _context.in_xla_context()

    def grad(op, *d_all):
        rest = list(op.inputs[len(idx):])
        given, dl_in = rest[: len(have)], rest[len(have):]
        full = scatter(len(ins), have, given)
        init_, xs_, consts_, d_carry_, d_ys_ = split_list(full, [n_i, n_x, n_k, n_i])
        d_ys_ = [_zeros_if_none(d, y) for d, y in zip(d_ys_, ys)]
        # one source per tensor: an input passed twice (a carry's init that the step also
        # closes over) gets its whole derivative once, as TensorFlow sums what ``grad`` returns
        firsts: dict = {}
        sources = [firsts.setdefault(full[j].ref(), j) for j in have if is_float(full[j].dtype)]
        sources = sorted(set(sources))
        inline = _tf.xla_trace() if xla and not _context.in_xla_context() else contextlib.nullcontext()
        # Recording even inside a busy accumulator (forward over reverse transposes this
        # gradient as it builds it): otherwise the tape sees nothing, and the derivative is zero.
        # (Both passes in XLA's context when the program's are: a compiled call there is inline.)
        with inline:
            with record.forwardprop_state(), tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch([full[j] for j in sources])
                again = _recorded_backward(programs, init_, xs_, consts_, d_carry_, d_ys_,
                                           dl_in[0] if dl_in else None)
                again = [g for part in again for g in part]
            d_in = tape.gradient([again[i] for i in idx], [full[j] for j in sources],
                                 output_gradients=[_zeros_if_none(d, grads[i]) for d, i in zip(d_all, idx)],
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)
        out = [None] * (len(idx) + len(have) + len(dl_in))
        for j, d in zip(sources, d_in):
            out[len(idx) + have.index(j)] = d
        return out

    flat = [grads[i] for i in idx] + [ins[j] for j in have] + dl
    wrapped = _gradients.graph_owned_identity("TfscanScanGradGrad", grad, flat)
    out = list(grads)
    for k, i in enumerate(idx):
        out[i] = wrapped[k]
    return out


# Gradient name -> (programs, weakly; counts; has a run-time length): what the scan's batching
# rule (:mod:`tfscan._transforms.scan_batching`) reads from an ``IdentityN`` it converts.
_SITES: dict = {}


def scan_site(name: str):
    """``(programs, counts, has_dl)`` of the scan whose ``IdentityN`` has gradient ``name``, or ``None``."""
    site = _SITES.get(name)
    if site is None:
        return None
    programs = site[0]()
    return None if programs is None else (programs,) + site[1:]


def _with_registered_gradient(programs: Programs, outs, saved, init, xs, consts, dynamic_length) -> list:
    dl = [dynamic_length] if dynamic_length is not None else []
    recompute = saved is None  # nothing saved: its gradient recomputes (``_recorded_backward``)
    deferred = saved if isinstance(saved, _program.Deferred) else None  # made if a gradient asks
    saved = [] if saved is None or deferred is not None else saved
    flat = list(outs) + list(saved) + list(init) + list(xs) + list(consts) + dl
    counts = (len(outs), len(saved), len(init), len(xs), len(consts))
    site: list = []  # the IdentityN, weakly, once made
    exported = not _context.in_internal_trace()
    name = _register_gradient(programs, counts, bool(dl), site, exported, recompute,
                              xla=_context.in_xla_context(), deferred=deferred)
    graph = _tf.default_graph()
    # The graph keeps the programs its op's gradient reads: a JVP scan (made for a forward
    # function, ``_forward.scan_jvp``) is found by no cache lookup in this graph, and TensorFlow
    # differentiates the graph later (nested accumulators around a tf.function call).
    _cache.pin(programs)
    result = _gradients.identity(name, flat)
    site.append(weakref.ref(result[0].op))
    if exported:
        # The registration is owned by the graph: its op lives (and is differentiated) only
        # there. A scan traced inside a step (not exported) is copied into the loops built
        # from that step, which may outlive the step's own graph: its name stays registered.
        weakref.finalize(graph, _tf.unregister_gradient, name)
    return list(result[: len(outs)])


def _register_gradient(programs: Programs, counts: tuple, has_dl: bool, site: list, exported: bool,
                       recompute: bool = False, xla: bool = False,
                       deferred: _program.Deferred | None = None) -> str:
    """A gradient name for one ``IdentityN``: one per op, since ``tf.saved_model`` saves one
    traced gradient function per name, capturing that op's inputs. A scan built inside a
    step tfscan traces and copies (``exported=False``) has no op of its own in a SavedModel:
    its copies are differentiated by the enclosing scan's saved gradient, and a saved
    gradient for the copies alone raises when run."""
    name = None  # set below, once registered
    n_out, n_saved, n_i, n_x, n_k = counts
    # TF's registry keeps ``grad`` until the graph is collected (for ever for a non-exported
    # site): it holds ``programs`` only weakly (the graphs that use them keep them alive,
    # :mod:`tfscan._core.cache`).
    ref = weakref.ref(programs)

    def grad(op, *d_all):
        programs = ref()
        if programs is None:
            raise RuntimeError(
                f"tfscan: the gradient of this scan ({name}) was freed with the function graph that "
                "traced it. Differentiate inside the tf.function that calls scan (or keep it alive).")
        if op is None and not exported:
            tf.debugging.Assert(False, [f"tfscan: the gradient of a scan nested in a step ({name}) "
                                        "was not saved on its own; differentiate the enclosing scan."])
            return [None] * len(d_all)
        saving = op is None
        if saving:  # tf.saved_model traces the gradient to save it: read the op's inputs
            op = site[0]() if site else None  # (captured by the saved gradient function)
            if op is None:
                raise ValueError(f"tfscan: cannot save the gradient of a scan ({name}): its graph "
                                 "is gone. Save with tf.saved_model.SaveOptions("
                                 "experimental_custom_gradients=False) to save the forward pass only.")
        _, _, init, xs, consts, dl = split_list(op.inputs, [n_out, n_saved, n_i, n_x, n_k])
        # The outputs and residuals as this op passes them on, not as the loop made them: a
        # function's first-order gradient adds the tensors its backward pass reads to the
        # forward graph's outputs, and a later higher-order gradient of the same (held)
        # function differentiates each of them -- through this op, never through the loop,
        # which has no gradient of TensorFlow's. Their cotangents are zero: only the reverse
        # loop reads the residuals, and its outputs' gradient recomputes from the inputs
        # (``_differentiable_in_graph``).
        outs, saved = split_list(op.outputs, [n_out, n_saved])[:2]
        if deferred is not None:
            # The forward op is made to save its residuals, except for a SavedModel: it saves
            # the forward function as it was, so its saved gradient runs the saving program.
            saved = deferred if not saving else deferred.apart()
        dl = dl[0] if has_dl else None
        # A scan of a program XLA compiles whole: so is its gradient (TensorFlow compiles the
        # backward function of a ``jit_compile`` function), built here outside XLA's context:
        # the backward loop goes inline, never as a compiled call XLA cannot hold.
        inline = _tf.xla_trace() if xla and not _context.in_xla_context() else contextlib.nullcontext()
        with inline:
            if not recompute:  # a graph's scan saves the residuals of every input's gradient
                grads = _backward(programs, init, xs, consts, saved, d_all[:n_out], outs, dl,
                                  apart=saving or op.graph is not _tf.default_graph())
            else:  # nothing saved (a vmap example's scan): recomputed
                d_outs = [_zeros_if_none(d, o) for d, o in zip(d_all[:n_out], outs)]
                grads = _recorded_backward(programs, init, xs, consts, d_outs[:n_i], d_outs[n_i:], dl)
                grads = [g for part in grads for g in part]
        return [None] * (n_out + n_saved) + grads + ([None] if has_dl else [])

    name = _gradients.register("TfscanScanGrad", grad)
    _SITES[name] = (ref, counts, has_dl)
    return name


def _zeros_if_none(d: Any, out: Any) -> Any:
    """``d``, or zeros shaped as ``out`` (a tensor or a ``tf.TensorSpec``) when it is ``None``."""
    if not is_float(out.dtype):
        return None
    if d is not None:
        return d
    return tf.zeros(out.shape, out.dtype) if out.shape.is_fully_defined() else tf.zeros_like(out)


def _recorded_backward(programs: Programs, init, xs, consts, d_carry, d_ys, dynamic_length):
    """The VJP as differentiable scans (for higher-order and forward-mode derivatives).

    Its step VJP (for every float input) was traced by the forward call when an accumulator
    had a tangent for an input: traced here, inside the accumulator's computation, a
    ``GradientTape`` inside the user's step would record nothing, and the step's own
    gradient would come out as zero.
    """
    from tfscan._scan.scan import scan  # the public scan differentiates this backward pass

    plan, static = programs.plan, programs.static
    fc, fx, fy, fk = float_indices(plan, consts)
    vjp = programs.vjp(consts)
    length = static.length if static.length is not None else dynamic_length

    def carries_step(c, x):
        new_c, _ = plan.apply(c, x, consts)
        return list(new_c), list(c)

    _, carries = scan(carries_step, list(init), list(xs), length=length, reverse=static.reverse)

    def vjp_step(acc, sl):
        d_c, d_k = acc
        x_t, c_t, dy_t = sl
        g_c, g_x, g_k = _program.step_vjp(plan, c_t, x_t, list(consts), d_c, dy_t, vjp=vjp)
        return (g_c, [a + g for a, g in zip(d_k, g_k)]), g_x

    acc0 = ([d_carry[i] for i in fc], [tf.zeros_like(consts[i]) for i in fk])
    seqs = (list(xs), list(carries), [d_ys[i] for i in fy])
    (g_c, g_k), g_x = scan(vjp_step, acc0, seqs, length=length, reverse=not static.reverse)
    return scatter(len(init), fc, g_c), scatter(len(xs), fx, g_x), scatter(len(consts), fk, g_k)
