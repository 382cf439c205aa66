"""``python -m benchmarks.assoc_vs_scan``: parallel associative_scan vs sequential scan.

Times ``tfscan.associative_scan`` (O(log T) depth, ~2T applications of the operator)
against ``tfscan.scan`` (T sequential steps of one XLA ``While``) for T = 1e3 … 1e6 on

- ``cumsum``: ``x_0 + … + x_t`` (operator ``+``; scan step ``c + x``);
- ``linrec``: the linear recurrence ``h_t = a_t h_{t-1} + b_t`` with ``h_{-1} = 0``
  (operator: composition of affine maps ``(a1, b1) ∘ (a2, b2) = (a1 a2, a2 b1 + b2)``).

with, for reference, ``jax.lax.associative_scan`` / ``jax.lax.scan`` under ``jax.jit``
and ``tf.math.cumsum``. Every implementation is called from eager Python (tfscan
compiles itself); a call's time includes waiting for its result. The first call
(tracing + XLA compilation) is reported separately. Results of the two tfscan
implementations are checked against each other. Writes
``benchmarks/results/assoc_vs_scan.md`` (or ``--out``).

Options: ``--sizes 1000,10000`` (default 1e3…1e6), ``--budget SECONDS`` per point
(default 1.0), ``--no-jax``, ``--grad`` (also time the gradient of ``sum(h)``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfscan  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SIZES = [1_000, 10_000, 100_000, 1_000_000]


def _compose(p, q):
    """Apply affine map ``p`` then ``q``: ``h -> q_a (p_a h + p_b) + q_b``."""
    return q[0] * p[0], q[0] * p[1] + q[1]


def _linrec_step(h, ab):
    h = ab[0] * h + ab[1]
    return h, h


def _cumsum_step(c, x):
    c = c + x
    return c, c


def _sync(out):
    for leaf in tf.nest.flatten(out):
        if hasattr(leaf, "numpy"):
            leaf.numpy()
        elif hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return out


def time_call(fn: Callable[[], object], budget: float, min_reps: int = 3, max_reps: int = 50):
    """``(first call seconds, median seconds of the next calls, last output)``."""
    t0 = time.perf_counter()
    out = _sync(fn())
    first = time.perf_counter() - t0
    times: list[float] = []
    spent = 0.0
    while len(times) < max_reps and (len(times) < min_reps or spent < budget):
        t0 = time.perf_counter()
        out = _sync(fn())
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return first, statistics.median(times), out


def tf_impls(workload: str, grad: bool):
    """name -> builder(inputs) -> zero-argument callable returning the ``h`` sequence."""
    if workload == "cumsum":
        assoc = lambda x: tfscan.associative_scan(lambda u, v: u + v, x)  # noqa: E731
        seq = lambda x: tfscan.scan(_cumsum_step, tf.zeros([], x.dtype), x)[1]  # noqa: E731
        impls = {"tfscan.associative_scan": assoc, "tfscan.scan": seq, "tf.math.cumsum": tf.math.cumsum}
        unpack = lambda inputs: (inputs[0],)  # noqa: E731
    else:
        assoc = lambda a, b: tfscan.associative_scan(_compose, (a, b))[1]  # noqa: E731
        seq = lambda a, b: tfscan.scan(_linrec_step, tf.zeros([], a.dtype), (a, b))[1]  # noqa: E731
        impls = {"tfscan.associative_scan": assoc, "tfscan.scan": seq}
        unpack = lambda inputs: inputs  # noqa: E731

    def build(fn):
        def make(inputs):
            args = [tf.constant(v) for v in unpack(inputs)]
            if not grad:
                return lambda: fn(*args)

            def with_grad():
                with tf.GradientTape() as tape:
                    tape.watch(args)
                    loss = tf.reduce_sum(fn(*args))
                return tape.gradient(loss, args)
            return with_grad
        return make

    return {name: build(fn) for name, fn in impls.items()}


def jax_impls(workload: str, grad: bool):
    import jax
    import jax.numpy as jnp

    if workload == "cumsum":
        assoc = lambda x: jax.lax.associative_scan(jnp.add, x)  # noqa: E731
        seq = lambda x: jax.lax.scan(_cumsum_step, jnp.zeros((), x.dtype), x)[1]  # noqa: E731
        unpack = lambda inputs: (inputs[0],)  # noqa: E731
    else:
        assoc = lambda a, b: jax.lax.associative_scan(_compose, (a, b))[1]  # noqa: E731
        seq = lambda a, b: jax.lax.scan(_linrec_step, jnp.zeros((), a.dtype), (a, b))[1]  # noqa: E731
        unpack = lambda inputs: inputs  # noqa: E731

    def build(fn):
        if grad:
            n = 1 if workload == "cumsum" else 2
            forward = fn
            fn = jax.grad(lambda *xs: forward(*xs).sum(), argnums=tuple(range(n)))
        jitted = jax.jit(fn)

        def make(inputs):
            args = [jnp.asarray(v) for v in unpack(inputs)]
            return lambda: jitted(*args)
        return make

    return {"jax.lax.associative_scan (jit)": build(assoc), "jax.lax.scan (jit)": build(seq)}


def make_inputs(workload: str, n: int, rng: np.random.Generator):
    if workload == "cumsum":
        return (rng.normal(size=n).astype(np.float32),)
    # |a| < 1 keeps h bounded, so float32 results of both orders stay comparable.
    return (rng.uniform(0.5, 0.99, size=n).astype(np.float32), rng.normal(size=n).astype(np.float32))


def run(sizes, budget: float, use_jax: bool, grad: bool):
    rows = []
    rng = np.random.default_rng(0)
    for workload in ("cumsum", "linrec"):
        impls = dict(tf_impls(workload, grad))
        if use_jax:
            impls.update(jax_impls(workload, grad))
        for n in sizes:
            inputs = make_inputs(workload, n, rng)
            results = {}
            for name, make in impls.items():
                try:
                    first, steady, out = time_call(make(inputs), budget)
                except Exception as e:  # a failure is a result too; keep going
                    print(f"  {workload} T={n} {name}: FAILED {type(e).__name__}: {str(e)[:200]}")
                    continue
                results[name] = (first, steady, out)
                print(f"  {workload:7s} T={n:>8,d} {name:32s} first {first * 1e3:9.1f} ms   "
                      f"steady {steady * 1e3:9.3f} ms", flush=True)
            a, s = results.get("tfscan.associative_scan"), results.get("tfscan.scan")
            err = None
            if a and s:
                got = [np.asarray(v) for v in tf.nest.flatten(a[2])]
                want = [np.asarray(v) for v in tf.nest.flatten(s[2])]
                err = max(float(np.max(np.abs(g - w) / (1 + np.abs(w)))) if g.size else 0.0
                          for g, w in zip(got, want))
            rows.append(dict(workload=workload, n=n, results={k: v[:2] for k, v in results.items()}, err=err))
    return rows


def _ms(t: float | None) -> str:
    if t is None:
        return "—"
    return f"{t * 1e3:.3f}" if t < 0.01 else f"{t * 1e3:.1f}"


def _findings(rows) -> list[str]:
    """One line per workload at the largest T: which of the two tfscan scans is faster."""
    out = []
    for workload in ("cumsum", "linrec"):
        mine = [r for r in rows if r["workload"] == workload and
                {"tfscan.associative_scan", "tfscan.scan"} <= set(r["results"])]
        if not mine:
            continue
        r = max(mine, key=lambda r: r["n"])
        a, s = r["results"]["tfscan.associative_scan"][1], r["results"]["tfscan.scan"][1]
        verdict = ("about as fast as" if max(a, s) < 1.1 * min(a, s) else
                   f"{s / a:.1f}× faster than" if a < s else f"{a / s:.1f}× slower than")
        out.append(f"- {workload}, T = {r['n']:,}: associative_scan is {verdict} the sequential "
                   f"scan ({_ms(a)} ms vs {_ms(s)} ms).")
    return out


def report(rows, sizes, use_jax: bool, grad: bool, elapsed: float) -> str:
    what = "gradient of sum(h) (forward + backward)" if grad else "forward pass"
    lines = [
        "# associative_scan vs sequential scan",
        "",
        f"Generated by `python -m benchmarks.assoc_vs_scan` on {datetime.date.today().isoformat()}: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"TensorFlow {tf.__version__}, tfscan {tfscan.__version__}; {what}; float32; "
        f"{elapsed:.0f} s in total.",
        "",
        "Steady-state time per call (median, milliseconds; called from eager Python, result "
        "awaited). *first* is the first call (trace + XLA compile + run). *speedup* = "
        "`tfscan.scan` time / `tfscan.associative_scan` time. *rel. diff* = max |assoc − scan| / "
        "(1 + |scan|) between the two tfscan results. On a machine shared with other work, "
        "repeated runs vary (up to ~2× at the largest T); compare within a row.",
        "",
    ]
    for workload, title in (("cumsum", "Cumulative sum: `x_0 + … + x_t`"),
                            ("linrec", "Linear recurrence `h_t = a_t h_{t-1} + b_t`")):
        names = ["tfscan.associative_scan", "tfscan.scan"]
        if workload == "cumsum":
            names.append("tf.math.cumsum")
        if use_jax:
            names += ["jax.lax.associative_scan (jit)", "jax.lax.scan (jit)"]
        lines += [f"## {title}", "",
                  "| T | " + " | ".join(names) + " | speedup | first: assoc / scan (ms) | rel. diff |",
                  "|---:|" + "---:|" * len(names) + "---:|---:|---:|"]
        for row in rows:
            if row["workload"] != workload:
                continue
            res = row["results"]
            cells = [_ms(res[n][1]) if n in res else "failed" for n in names]
            a, s = res.get("tfscan.associative_scan"), res.get("tfscan.scan")
            speed = f"{s[1] / a[1]:.1f}×" if a and s else "—"
            first = f"{_ms(a[0])} / {_ms(s[0])}" if a and s else "—"
            err = "—" if row["err"] is None else f"{row['err']:.1e}"
            lines.append(f"| {row['n']:,} | " + " | ".join(cells) + f" | {speed} | {first} | {err} |")
        lines.append("")
    lines += ["## Reading the numbers", ""] + _findings(rows) + [
        "",
        "- `tfscan.scan` is one XLA `While` loop: T dependent steps of a few scalar ops, so its "
        "time grows linearly with T once the fixed cost of a call (dispatching the compiled "
        "function from eager Python, ~0.1–0.2 ms for TensorFlow) is amortized. XLA's CPU loop "
        "is cheap per step (a few ns here), so a sequential scan is a strong baseline on CPU.",
        "- `tfscan.associative_scan` does ~2T operator applications in ~2 log2(T) vectorized "
        "levels (strided slices, the operator on half-length vectors, interleaving) and moves "
        "every element through memory ~log2(T) times. On a CPU it wins when its vectorized "
        "levels beat the loop's per-step cost (the one-op cumulative sum at large T); for the "
        "affine composition (3 ops per application, two outputs) the extra work and memory "
        "traffic cancel the gain or outweigh it. Its depth is what pays off on accelerators, "
        "where a T-step loop is latency-bound.",
        "- Its first call compiles a graph of O(log T) levels (0.3–2 s here), against ~50 ms for "
        "the loop.",
        "- `tfscan.associative_scan` builds on `tfp.math.scan_associative` and runs at JAX's speed "
        "for large T; for small T the difference is the per-call dispatch cost.",
        "- Float32 results differ by rounding only (the two compute in different orders).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.assoc_vs_scan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=",".join(str(n) for n in DEFAULT_SIZES))
    p.add_argument("--budget", type=float, default=1.0, help="seconds of repetitions per point")
    p.add_argument("--no-jax", action="store_true", help="skip the JAX reference columns")
    p.add_argument("--grad", action="store_true", help="time the gradient of sum(h) instead")
    p.add_argument("--out", default=os.path.join(HERE, "results", "assoc_vs_scan.md"))
    args = p.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    t0 = time.perf_counter()
    rows = run(sizes, args.budget, not args.no_jax, args.grad)
    text = report(rows, sizes, not args.no_jax, args.grad, time.perf_counter() - t0)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
