"""Memory per fresh traced graph through the loop family and conditionals, side by side.

Each row traces and runs fresh ``tf.function``s through ``tfscan.cond`` / ``switch`` /
``while_loop`` and through TensorFlow's own ``tf.cond`` / ``tf.switch_case`` /
``tf.while_loop`` (forward, tape gradient, Hessian-vector product), interleaved in one
subprocess, and reports the RSS growth per graph (after ``malloc_trim``, ``gc.collect()``
between graphs). Used by ``python -m benchmarks.everyday`` and the slow soak tests.
"""

from __future__ import annotations

import ast
import os
import statistics
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))

# The loop family and conditionals: ``one(kind, impl, mode)`` traces and runs a fresh
# ``tf.function`` over a 16x16 tanh layer in ``kind`` (``cond``, ``switch``, ``while``: 5 steps,
# bounded by ``max_steps=10`` / ``maximum_iterations=10``) built with ``impl`` (``tfscan`` or
# ``tf``: tf.cond, tf.switch_case, tf.while_loop), returning ``mode``: the forward value
# (``fwd``), a tape gradient w.r.t. the weights (``grad``) or a Hessian-vector product w.r.t.
# the operand (``hvp``: forward over reverse; impl ``tf-rr``: TensorFlow's reverse over
# reverse, since its forward over reverse fails on tf.cond and tf.switch_case in a tf.function).
CONTROL_SIDE_BY_SIDE = textwrap.dedent("""
    import ctypes, gc, os, sys, tensorflow as tf, tfscan
    W = tf.Variable(tf.random.stateless_normal([16, 16], seed=[1, 2]) * 0.3)
    V = tf.random.stateless_normal([16, 16], seed=[5, 6])
    h0 = tf.random.stateless_normal([16], seed=[3, 4])

    def rss():
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

    def model(kind, impl, h):
        step = lambda v: tf.tanh(tf.linalg.matvec(W, v))
        if kind == "cond":
            if impl == "tfscan":
                return tfscan.cond(h[0] > -10.0, step, lambda v: -v, h)
            return tf.cond(h[0] > -10.0, lambda: step(h), lambda: -h)
        if kind == "switch":
            fns = [lambda v: -v, step, lambda v: v * 2.0]
            if impl == "tfscan":
                return tfscan.switch(1, fns, h)
            return tf.switch_case(tf.constant(1), [lambda f=f: f(h) for f in fns])
        if impl == "tfscan":
            return tfscan.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, step(c[1])), (0, h), max_steps=10)[1]
        return tf.while_loop(lambda i, v: i < 5, lambda i, v: (i + 1, step(v)), (0, h), maximum_iterations=10)[1]

    def one(kind, impl, mode):
        @tf.function
        def g(h):
            if mode == "fwd":
                return tf.reduce_sum(model(kind, impl, h))
            if mode == "grad":
                with tf.GradientTape() as t:
                    loss = tf.reduce_sum(model(kind, impl, h))
                return t.gradient(loss, W)
            if impl == "tf-rr":  # the HVP w.r.t. the operand h, along V[0]
                with tf.GradientTape() as outer:
                    outer.watch(h)
                    with tf.GradientTape() as t:
                        t.watch(h)
                        loss = tf.reduce_sum(model(kind, "tf", h))
                    gv = tf.reduce_sum(t.gradient(loss, h) * V[0])
                return outer.gradient(gv, h)
            with tf.autodiff.ForwardAccumulator(h, V[0]) as acc:
                with tf.GradientTape() as t:
                    t.watch(h)
                    loss = tf.reduce_sum(model(kind, impl, h))
                gr = t.gradient(loss, h)
            return acc.jvp(gr)
        return g(h0)

    kind, mode, n, rounds, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    impls, failed = list(sys.argv[6:]), {}
    for impl in list(impls):
        try:
            one(kind, impl, mode)
        except Exception as e:  # noqa: BLE001 - reported: TensorFlow's own HVP of tf.cond fails
            failed[impl] = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            impls.remove(impl)
    for _ in range(warm):
        for impl in impls:
            one(kind, impl, mode)
    gc.collect()
    blocks = {impl: [] for impl in impls}
    for r in range(rounds):  # interleaved blocks of n graphs, the order alternating
        for impl in (impls if r % 2 == 0 else impls[::-1]):
            r0 = rss()
            for _ in range(n):
                one(kind, impl, mode)
                gc.collect()
            blocks[impl].append((rss() - r0) * 1024 / n)
    print("KIB", " ".join(f"{k}={sum(v) / rounds:.1f}" for k, v in blocks.items()))
    print("BLOCKS", repr(blocks))
    print("FAILED", repr(failed))
""")


def control_side_by_side(kind: str, mode: str, n: int, rounds: int, impls: tuple = ("tfscan", "tf"),
                         warm: int = 20) -> dict:
    """``{impl: KiB}`` per fresh traced graph of :data:`CONTROL_SIDE_BY_SIDE`, measured side by
    side in one subprocess: the mean over ``rounds`` interleaved blocks of ``n`` graphs each,
    ``"blocks"``: ``{impl: [KiB per graph of each block]}``, and ``{impl: "error: ..."}`` for an
    implementation that fails."""
    proc = subprocess.run([sys.executable, "-c", CONTROL_SIDE_BY_SIDE, kind, mode, str(n), str(rounds), str(warm),
                           *impls], capture_output=True, text=True, timeout=3600, cwd=os.path.dirname(HERE))
    if "KIB" not in proc.stdout:
        raise RuntimeError(proc.stderr[-3000:])
    text = proc.stdout.split("KIB")[1]
    out: dict = {k: float(v) for k, v in (kv.split("=") for kv in text.split("BLOCKS")[0].split())}
    out["blocks"] = ast.literal_eval(text.split("BLOCKS")[1].split("FAILED")[0].strip())
    out.update({k: "error: " + v for k, v in ast.literal_eval(text.split("FAILED")[1].strip()).items()})
    return out


_TF_NAMES = {"cond": "tf.cond", "switch": "tf.switch_case", "while": "tf.while_loop"}


def control_rows(graphs: int, blocks: int = 4) -> dict:
    """Per fresh traced graph through cond / switch / while_loop (forward, gradient, HVP):
    tfscan against TensorFlow's own, side by side in one subprocess per row; each value is
    the median over ``blocks`` interleaved blocks of ``graphs / blocks`` graphs (20 warm-ups)."""
    rows = {}
    for kind in ("cond", "switch", "while"):
        for mode in ("fwd", "grad", "hvp"):
            impls = ("tfscan", "tf", "tf-rr") if mode == "hvp" else ("tfscan", "tf")
            out = control_side_by_side(kind, mode, max(1, graphs // blocks), blocks, impls, warm=20)
            rows[f"{kind}-{mode}"] = {k: (statistics.median(out["blocks"][k]) if k in out["blocks"] else out[k])
                                      for k in impls} | {"blocks": out["blocks"]}
    return rows


def control_table(rows: dict) -> str:
    lines = ["| fresh `tf.function` through | tfscan KiB/graph | TensorFlow's KiB/graph |", "|---|---|---|"]
    fmt = lambda v: f"{v:.0f}" if isinstance(v, float) else "fails" + (  # noqa: E731
        " (XLA: TensorList size)" if "tensor list" in v.lower() else "")
    for name, r in rows.items():
        kind, mode = name.split("-")
        ref = f"{_TF_NAMES[kind]}: {fmt(r['tf'])}" + (f"; reverse over reverse: {fmt(r['tf-rr'])}" if "tf-rr" in r else "")
        what = {"fwd": "forward", "grad": "tape gradient", "hvp": "HVP (forward over reverse)"}[mode]
        lines.append(f"| `tfscan.{'while_loop' if kind == 'while' else kind}`, {what} | {fmt(r['tfscan'])} | {ref} |")
    return "\n".join(lines)
