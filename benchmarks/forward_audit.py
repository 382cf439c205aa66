"""Audit of forward mode meeting compiled calls (issue #9): every construct x wrapper x
composition of derivatives, against the same program in JAX; prints one line per case
(``ok``, ``WRONG``, ``NONE`` or the exception's type and first line). Not a benchmark and
not a test (it takes ~10 minutes; ``tests/test_forward_compositions.py`` keeps the fixed
cases): run ``python -m benchmarks.forward_audit [constructs|all] [wrappers] [modes]`` with
comma-separated lists. A trace failing in one case may be reused by a later one in the same
process (tfscan's cache): run a failing case alone to confirm it.

Constructs: scan, fori_static, fori_runtime, while_max (``max_steps``), cond, switch, map,
tfcond_jit (a ``tf.cond`` in a ``tfscan.jit`` function). Wrappers of the function holding
it: eager, tf.function, jit_compile, tfscan.jit. Modes: acc_out (an accumulator outside),
acc_in (inside the wrapper), tape_out, hvp (a tape inside an accumulator), acc_in_tape,
nested_acc.
"""
import sys, time
import numpy as np
import tensorflow as tf
import jax, jax.numpy as jnp
import tfscan

X = np.array([0.7, -0.4, 1.1], np.float32)
V = np.array([0.3, 1.0, -0.5], np.float32)
N = 3

def tf_prog(name):
    if name == "scan":
        return lambda x, n: tf.reduce_sum(tfscan.scan(lambda c, xi: (tf.sin(c) * xi + c, c * xi), x[0], x)[1])
    if name == "fori_static":
        return lambda x, n: tf.reduce_sum(tfscan.fori_loop(0, 3, lambda i, c: tf.sin(c) * 1.5 + x[1], x))
    if name == "fori_runtime":
        return lambda x, n: tf.reduce_sum(tfscan.fori_loop(0, n, lambda i, c: tf.sin(c) * 1.5 + x[1], x))
    if name == "while_max":
        return lambda x, n: tf.reduce_sum(tfscan.while_loop(lambda s: s[0] < 3, lambda s: (s[0] + 1, tf.sin(s[1]) * 1.5 + x[1]),
                                                            (tf.constant(0), x), max_steps=10)[1])
    if name == "cond":
        return lambda x, n: tfscan.cond(x[0] > 0, lambda v: tf.reduce_sum(tf.sin(v) * v), lambda v: tf.reduce_sum(v), x)
    if name == "switch":
        return lambda x, n: tfscan.switch(tf.cast(tf.stop_gradient(x[0]) > 0, tf.int32),
                                          [lambda v: tf.reduce_sum(v), lambda v: tf.reduce_sum(tf.sin(v) * v)], x)
    if name == "map":
        return lambda x, n: tf.reduce_sum(tfscan.map(lambda r: tf.sin(r) * r, x))
    if name == "tfcond_jit":
        j = tfscan.jit(lambda x: tf.cond(x[0] > 0, lambda: tf.reduce_sum(tf.sin(x) * x), lambda: tf.reduce_sum(x)))
        return lambda x, n: j(x)

def jax_prog(name):
    if name == "scan":
        return lambda x: jnp.sum(jax.lax.scan(lambda c, xi: (jnp.sin(c) * xi + c, c * xi), x[0], x)[1])
    if name in ("fori_static", "while_max"):
        return lambda x: jnp.sum(jax.lax.fori_loop(0, 3, lambda i, c: jnp.sin(c) * 1.5 + x[1], x))
    if name == "fori_runtime":
        return lambda x: jnp.sum(jax.lax.fori_loop(0, jnp.asarray(N) + 0 * jnp.int32(0), lambda i, c: jnp.sin(c) * 1.5 + x[1], x))
    if name in ("cond", "switch", "tfcond_jit"):
        return lambda x: jax.lax.cond(x[0] > 0, lambda v: jnp.sum(jnp.sin(v) * v), lambda v: jnp.sum(v), x)
    if name == "map":
        return lambda x: jnp.sum(jax.lax.map(lambda r: jnp.sin(r) * r, x))

def FA(x, v):
    return tf.autodiff.ForwardAccumulator(x, v)

# compositions on a function F(x, n) -> scalar
def c_jvp(F, x, v, n):
    with FA(x, v) as acc:
        y = F(x, n)
    return acc.jvp(y)
def c_grad(F, x, v, n):
    with tf.GradientTape() as t:
        t.watch(x); y = F(x, n)
    return t.gradient(y, x)
def c_hvp(F, x, v, n):
    with FA(x, v) as acc:
        with tf.GradientTape() as t:
            t.watch(x); y = F(x, n)
        g = t.gradient(y, x)
    return acc.jvp(g)
def c_acc_in_tape(F, x, v, n):
    with tf.GradientTape() as t:
        t.watch(x)
        with FA(x, v) as acc:
            y = F(x, n)
        j = acc.jvp(y)
    return t.gradient(j, x)
def c_nested(F, x, v, n):
    with FA(x, v) as a2:
        with FA(x, v) as a1:
            y = F(x, n)
        j = a1.jvp(y)
    return a2.jvp(j)

COMPS = {"acc_out": c_jvp, "tape_out": c_grad, "hvp": c_hvp, "acc_in_tape": c_acc_in_tape, "nested_acc": c_nested}

def jax_ref(mode, jf):
    x, v = jnp.asarray(X), jnp.asarray(V)
    jv = lambda f: (lambda x: jax.jvp(f, (x,), (v,))[1])
    if mode in ("acc_out", "acc_in"): return jv(jf)(x)
    if mode == "tape_out": return jax.grad(jf)(x)
    if mode == "hvp": return jv(jax.grad(jf))(x)
    if mode == "acc_in_tape": return jax.grad(jv(jf))(x)
    if mode == "nested_acc": return jv(jv(jf))(x)

WRAPS = {"eager": lambda f: f, "tf.function": lambda f: tf.function(f),
         "jit_compile": lambda f: tf.function(f, jit_compile=True), "tfscan.jit": lambda f: tfscan.jit(f)}

def run(name, wrap, mode):
    F0 = tf_prog(name)
    x, v, n = tf.constant(X), tf.constant(V), tf.constant(N)
    if mode == "acc_in":
        G = WRAPS[wrap](lambda x, v, n: c_jvp(F0, x, v, n))
        return G(x, v, n)
    return COMPS[mode](WRAPS[wrap](F0), x, v, n)

def main(names, wraps, modes=None):
    modes = modes or ["acc_out", "acc_in", "tape_out", "hvp", "acc_in_tape", "nested_acc"]
    for name in names:
        for wrap in wraps:
            for mode in modes:
                if wrap == "eager" and mode == "acc_in":
                    continue
                t0 = time.time()
                try:
                    want = jax_ref(mode, jax_prog(name))
                    want = np.asarray(want); jerr = None
                except Exception as e:
                    want, jerr = None, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
                try:
                    got = run(name, wrap, mode)
                    if want is None:
                        res = f"WORKS-BUT-JAX-RAISES ({jerr})"
                    elif got is None:
                        res = "NONE"
                    else:
                        ok = np.allclose(got.numpy(), want, rtol=1e-4, atol=1e-5) and got.dtype == tf.float32
                        res = "ok" if ok else f"WRONG got={got.numpy()} want={want}"
                except Exception as e:
                    line = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
                    res = f"ERR {type(e).__name__}: {line}" + (f" [jax: {jerr}]" if jerr else "")
                print(f"{name:13s} {wrap:12s} {mode:12s} {time.time()-t0:5.1f}s {res}", flush=True)

if __name__ == "__main__":
    names = sys.argv[1].split(",") if len(sys.argv) > 1 and sys.argv[1] != "all" else \
        ["scan", "fori_static", "fori_runtime", "while_max", "cond", "switch", "map", "tfcond_jit"]
    wraps = sys.argv[2].split(",") if len(sys.argv) > 2 else list(WRAPS)
    modes = sys.argv[3].split(",") if len(sys.argv) > 3 else None
    main(names, wraps, modes)
