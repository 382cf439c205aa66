"""The batching rule of a scan: ``vmap`` of a scan is one tfscan scan of the batched step.

JAX batches ``lax.scan`` as a primitive: the scan of a batched step, whose own VJP then
applies, so ``grad(vmap(scan))`` is one batched forward loop saving residuals and one
batched backward loop reading them. tfscan does the same inside :func:`tfscan.vmap`:
when ``pfor`` meets the ``IdentityN`` that carries a scan's outputs (and its gradient,
:mod:`tfscan._scan.autodiff`), this rule replaces the scan with a :func:`tfscan.scan` of
the step batched by ``pfor`` (carry leaves batched where the inputs make them so, found
by a fixpoint as ``jax.vmap`` does; mapped ``xs`` moved to axis 1, the ``ys`` back to
axis 0). The new scan is an ordinary differentiable tfscan scan: its forward loop saves
the batched residuals and its gradient is tfscan's compiled reverse loop. Without this
rule ``pfor`` would batch the scan's ``While`` op by op, and the gradient of ``vmap``
would recompute every example's forward pass.
"""

from __future__ import annotations

import contextlib
from typing import Any

import tensorflow as tf

from tfscan import _tf
from tfscan._core import context as _context
from tfscan._core import gradients as _gradients
from tfscan._core.flat import split_list
from tfscan._scan import autodiff as _autodiff
from tfscan._tf import record
from tfscan._transforms import batching as _batching

__all__ = []  # private module


class _Restack(Exception):
    """A carry leaf came out of the batched step batched while it went in unbatched."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


class _Unstack(_Restack):
    """A carry leaf batched on a guess (:func:`_guess`) came out of the batched step unbatched."""


def _guess(plan, c_stacked: list, x_stacked: list, k_stacked: list) -> list:
    """The carry leaves the batched step will batch, guessed from the step's dependencies
    (:meth:`tfscan._scan.step.Traced.depends_on`) as ``jax.vmap``'s fixpoint: a leaf whose new
    value depends on a batched carry, x or constant is batched from the start. With the guess
    the batched step is usually traced once, not once per leaf found batched."""
    deps = plan.step.depends_on()
    stacked = list(c_stacked)
    changed = True
    while changed:
        changed = False
        inputs = stacked + list(x_stacked)
        for j, (args, consts) in enumerate(deps[: len(stacked)]):
            if not stacked[j] and (any(inputs[i] for i in args) or any(k_stacked[i] for i in consts)):
                stacked[j] = changed = True
    return stacked


def mark_forward(ops_: list, identity: Any) -> None:
    """The ops of a scan's forward loop (``ops_``, up to its ``IdentityN`` ``identity``) traced
    for ``vmap``: inside ``tfscan.vmap``, ``pfor`` leaves them as they are when only the
    ``IdentityN`` reads them (its rule below builds the batched scan from the scan's inputs
    and never uses them); when anything else reads them (a per-example gradient that reads
    the residuals), they are batched as usual."""
    if identity is None:
        return
    group = _Group([op for op in ops_ if op is not identity], identity)
    for op in group.ops:
        if op.outputs:
            _tf.set_pfor_converter(op, group.convert)


class _Group:
    """The forward ops of one scan, and whether ``pfor`` may leave them unbatched."""

    def __init__(self, ops_: list, identity: Any):
        self.ops, self.identity = ops_, identity
        self._names = {op.name for op in ops_} | {identity.name}
        self._checked: tuple | None = None  # (graph outputs seen, verdict)

    def _only_scan_reads(self) -> bool:
        graph = self.identity.graph
        outputs = getattr(graph, "outputs", None) or []
        if self._checked is not None and self._checked[0] == len(outputs):
            return self._checked[1]
        returned = {t.name for t in outputs}
        ok = all(t.name not in returned and all(c.name in self._names for c in t.consumers())
                 for op in self.ops for t in op.outputs)
        self._checked = (len(outputs), ok)
        return ok

    def convert(self, pfor_input):
        op = pfor_input.op
        if _batching.whole_scans() and self._only_scan_reads():
            return [_tf.pfor.wrap(t, False) for t in op.outputs]
        converter = _tf.pfor.converter(op.type)  # batched op by op, as pfor does
        if converter is None:
            raise ValueError(f"No pfor vectorization defined for {op.type}")
        return converter(pfor_input)


def convert(pfor_input) -> list | None:
    """The batched scan for a scan's ``IdentityN`` (``None``: not a scan, let pfor convert it)."""
    op = pfor_input.op
    name = _gradients.gradient_type(op)
    site = None if name is None else _autodiff.scan_site(name)
    if site is None:
        return None
    programs, (n_out, n_saved, n_i, n_x, n_k), has_dl = site
    ins = [pfor_input.input(j) for j in range(pfor_input.num_inputs)]
    _, _, init, xs, consts, dl = split_list(ins, [n_out, n_saved, n_i, n_x, n_k])
    dl = dl[0] if has_dl else None
    inputs = init + xs + consts
    if not any(w.is_stacked for w in inputs):
        return None
    if any(w.is_sparse_stacked for w in inputs) or (dl is not None and dl.is_stacked):
        raise NotImplementedError(
            "vmap: a scan inside the vectorized function has a length or an input that pfor batches "
            "sparsely (e.g. a per-example length); scan lengths must be the same for every example.")
    outs = _batched_scan(programs, init, xs, consts, dl, pfor_input.pfor.loop_len_vector)
    # The IdentityN's other outputs (residuals and inputs passed through) are never read.
    return outs + [_tf.pfor.wrap(w.t, w.is_stacked) for w in ins[n_out:]]


def _swap01(t: tf.Tensor) -> tf.Tensor:
    rank = t.shape.rank
    return tf.transpose(t, [1, 0] + list(range(2, rank)))


def _tile(t: tf.Tensor, size: Any) -> tf.Tensor:
    """``t`` repeated ``size`` times along a new leading axis."""
    return tf.tile(t[None], tf.concat([tf.reshape(tf.cast(size, tf.int32), [1]),
                                       tf.ones([t.shape.rank], tf.int32)], 0))


def _batched_scan(programs, init, xs, consts, dl, n: tf.Tensor) -> list:
    from tfscan._scan.scan import scan  # the public scan: caching, its VJP, remat
    from tfscan._transforms.vmap_program import pfor as _pfor

    plan, static = programs.plan, programs.static
    n_c = len(init)
    # The batch size, static when any batched input knows it (pfor's own is a tensor).
    known = [w.t.shape[0] for w in list(init) + list(xs) + list(consts)
             if w.is_stacked and w.t.shape.rank and w.t.shape[0] is not None]
    n_static = tf.get_static_value(n)
    size: Any = int(known[0]) if known else int(n_static[0]) if n_static is not None else n[0]
    c_stacked = [w.is_stacked for w in init]
    x_stacked = [w.is_stacked for w in xs]
    k_stacked = [w.is_stacked for w in consts]
    k_values = [w.t for w in consts]
    xs_t = [_swap01(w.t) if w.is_stacked else w.t for w in xs]  # scan walks axis 0: time first
    length = static.length if static.length is not None else (dl.t if dl is not None else None)

    def rows(values, stacked, i):
        return [tf.gather(t, i) if s else t for t, s in zip(values, stacked)]

    guessed = _guess(plan, c_stacked, x_stacked, k_stacked)
    refuted: set = set()
    for _ in range(2 * n_c + 1):
        stacked = tuple(s or (g and j not in refuted) for j, (s, g) in enumerate(zip(c_stacked, guessed)))

        def step(carry, x, stacked=stacked):
            def loop_fn(i):
                new_c, y = plan.apply(rows(carry, stacked, i), rows(x, x_stacked, i),
                                      rows(k_values, k_stacked, i), batchable=True)
                return list(new_c) + list(y)

            outs = _pfor(loop_fn, size)
            new_c = []
            for j, (w, s) in enumerate(zip(outs[:n_c], stacked)):
                if w.is_stacked and not s:
                    raise _Restack(j)
                if s and not w.is_stacked and not c_stacked[j]:
                    raise _Unstack(j)  # guessed batched, but pfor leaves it unbatched
                new_c.append(w.t if w.is_stacked or not s else _tile(w.t, size))
            return new_c, [w.t if w.is_stacked else _tile(w.t, size) for w in outs[n_c:]]

        carry0 = [w.t if w.is_stacked or not s else _tile(w.t, size) for w, s in zip(init, stacked)]
        try:
            # No tape records inside the batched program (TensorFlow derives its gradient from
            # the graph): the scan keeps the residuals for every input's gradient. Emitted inline
            # (``Batched.inline``), the tapes record it: it keeps what they ask for.
            with contextlib.nullcontext() if _context.in_inline_batching() else record.stop_recording():
                carry, ys = scan(step, carry0, xs_t, length=length, reverse=static.reverse,
                                 unroll=static.unroll, remat=programs.remat)
            break
        except _Unstack as e:  # the guess was wrong for this leaf: not batched after all
            refuted.add(e.index)
        except _Restack as e:  # the leaf depends on a mapped input: batch it from the start
            c_stacked[e.index] = True
    else:  # pragma: no cover - each retry batches a leaf or refutes a guess
        raise RuntimeError("tfscan.vmap: batching a scan's carry did not converge.")
    return [_tf.pfor.wrap(c, s) for c, s in zip(carry, stacked)] + [_tf.pfor.wrap(_swap01(y), True) for y in ys]
